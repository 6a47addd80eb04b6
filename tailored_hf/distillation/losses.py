"""Logit distillation losses: KL(p_teacher || p_student) on the trained tokens, whole or in token chunks.

Shared by NutePrune's teachers (snapshots of the one loaded model, `methods/l0/teachers.py`) and by the dense-teacher
recovery of a physically pruned model (`TeacherDistillationTrainer`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def token_selection(kwargs: dict[str, Any], shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Boolean `[batch, seq]` of the positions distilled: those whose next-token label is not -100 when labels are
    given (the tokens the task loss trains, e.g. completions under SFT), else the non-padding positions."""
    labels = kwargs.get("labels")
    if labels is not None and labels.shape == shape:
        selected = torch.zeros(shape, dtype=torch.bool, device=device)
        selected[:, :-1] = labels[:, 1:].to(device) != -100
        if selected.any():
            return selected
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and mask.shape == shape:
        return mask.to(device).bool()
    return torch.ones(shape, dtype=torch.bool, device=device)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) at `temperature`, averaged over the selected tokens, times T^2 (NutePrune's
    `F.kl_div(log_softmax(s / T), softmax(t / T)) * T^2`). Both are `[tokens, vocab]` logits."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class _ChunkedLogitKL(torch.autograd.Function):
    """KL(p_teacher || p_student) * T^2 averaged over tokens, from final hidden states and the LM head weights, in
    token chunks: neither the student's nor the teacher's `[tokens, vocab]` logits are ever held whole. The
    gradients are formed chunk by chunk in the forward pass (the loss is a scalar, so the backward only scales
    them), which costs two logit matmuls per chunk plus one for the gradient instead of recomputing the logits.
    The teacher's logits use `teacher_weight` (the student's `weight` when it is None: one model, two states)."""

    @staticmethod
    def forward(ctx, student, teacher, weight, teacher_weight, temperature: float, chunk: int):  # noqa: D102
        n = student.shape[0]
        teacher_weight = weight if teacher_weight is None else teacher_weight
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        want_student, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_student = torch.zeros_like(student) if want_student else None
        grad_weight = torch.zeros_like(weight) if want_weight else None
        # d(T^2 / n * KL) / d(student logits) = T / n * (p_student - p_teacher)
        scale = temperature / max(n, 1)
        with torch.no_grad():
            for start in range(0, n, chunk):
                # At most three [chunk, vocab] buffers live at once: both log-softmaxes and p_teacher (in-place ops).
                s = student[start : start + chunk]
                log_ps = _log_softmax_(s @ weight.T, temperature)
                log_pt = _log_softmax_(teacher[start : start + chunk] @ teacher_weight.T, temperature)
                p_t = log_pt.exp()
                total += log_pt.sub_(log_ps).mul_(p_t).sum()  # sum p_t (log p_t - log p_s); log_pt is spent
                del log_pt
                if want_student or want_weight:
                    g = log_ps.exp_().sub_(p_t).mul_(scale).to(weight.dtype)
                    if want_student:
                        grad_student[start : start + chunk] = g @ weight
                    if want_weight:
                        grad_weight += g.T @ s
                del log_ps, p_t
        ctx.save_for_backward(*(t for t in (grad_student, grad_weight) if t is not None))
        ctx.has = (want_student, want_weight)
        return total * temperature**2 / max(n, 1)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        saved = list(ctx.saved_tensors)
        grad_student = saved.pop(0) * grad_output if ctx.has[0] else None
        grad_weight = saved.pop(0) * grad_output if ctx.has[1] else None
        return grad_student, None, grad_weight, None, None, None


def _log_softmax_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`log_softmax(logits / T)` in float32, overwriting `logits` when it already is float32 (no extra buffer)."""
    logits = logits.float().div_(temperature)
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))


def chunked_logit_distillation(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float,
    chunk: int,
    teacher_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`logit_distillation(student_hidden @ W.T, teacher_hidden @ W_t.T, T)` for bias-free LM heads `W` (the
    student's, trained) and `W_t` (`teacher_weight`, frozen; `W` itself when None), computed `chunk` tokens at a time
    so that memory grows with `chunk x vocab` instead of `tokens x vocab`."""
    frozen = None if teacher_weight is None else teacher_weight.detach()
    return _ChunkedLogitKL.apply(student_hidden, teacher_hidden.detach(), weight, frozen, temperature, chunk)
