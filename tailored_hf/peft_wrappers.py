"""Sparsity-aware PEFT plumbing shared by the training-time methods (L0 masks, ATP).

`add_loss_term` lets a method add its regulariser / distillation terms to the loss that `Trainer.compute_loss`
(and TRL's `SFTTrainer`) back-propagates, without users subclassing the trainer: a forward hook on the model the
Trainer calls adds the term to `output.loss` while the model is in training mode.

TRL's `SFTTrainer` computes its loss from the per-token log-probabilities of a fused LM head rather than from
`output.loss`; `add_loss_term` folds the term into those too (`fold_into_fused_log_probs`).

`trainable_parameters` / `swapped_parameters` let one loaded model act as its own teacher: the adapter weights of a
snapshot are copied in for a no-grad forward and the student's are restored bit for bit afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

LossTerm = Callable[[nn.Module, dict[str, Any], Any], torch.Tensor | None]


def add_loss_term(model: nn.Module, term: LossTerm, request_hidden_states: bool = False) -> list[RemovableHandle]:
    """Add `term(model, forward_kwargs, output)` to `output.loss` on every training-mode forward of `model`.

    Args:
        model (`nn.Module`): the module the Trainer calls (a `PeftModel` or a plain causal LM).
        term (`Callable`): returns a scalar tensor to add, or `None` to add nothing for this forward.
        request_hidden_states (`bool`, defaults to `False`): also ask the model for `output_hidden_states=True` on
            training forwards (e.g. for layer-wise distillation).

    Returns:
        The hook handles; call `.remove()` on each to detach the term.
    """
    handles = []
    if request_hidden_states:

        def ask_for_hidden_states(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if not module.training:
                return None
            return args, {**kwargs, "output_hidden_states": True}

        handles.append(model.register_forward_pre_hook(ask_for_hidden_states, with_kwargs=True))

    def add(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not module.training or getattr(output, "loss", None) is None:
            return None
        extra = term(module, kwargs, output)
        if extra is None:
            return None
        output.loss = output.loss + extra * token_share(kwargs)
        fold_into_fused_log_probs(output, extra)
        return output

    handles.append(model.register_forward_hook(add, with_kwargs=True))
    return handles


def token_share(forward_kwargs: dict[str, Any]) -> torch.Tensor | float:
    """The weight that makes a per-optimizer-step term count once per step in `Trainer`'s loss.

    When the Trainer passes `num_items_in_batch` (N: trained tokens of the whole optimizer step, over gradient
    accumulation and, with `average_tokens_across_devices`, over ranks), the model's loss is a sum over this
    micro-batch's n trained tokens divided by N; the Trainer neither divides it by the accumulation steps nor lets
    DDP's averaging shrink it (it multiplies by the number of processes first). Weighting the term by n / N gives it
    the same treatment: one full term per optimizer step, on one process or several. Without `num_items_in_batch` the
    Trainer divides every micro-batch loss by the accumulation steps itself, so the weight is 1.
    """
    total = forward_kwargs.get("num_items_in_batch")
    labels = forward_kwargs.get("labels")
    if total is None or labels is None:
        return 1.0
    shift = forward_kwargs.get("shift_labels")
    trained = shift.ne(-100).sum() if shift is not None else labels[..., 1:].ne(-100).sum()
    return trained.to(torch.float32) / torch.as_tensor(total, device=trained.device).clamp(min=1).to(torch.float32)


def fold_into_fused_log_probs(output: Any, extra: torch.Tensor) -> None:
    """Make `extra` reach the loss of TRL's fused LM head as well.

    `SFTTrainer` (TRL >= 1.x) patches the causal LM with a fused LM head and recomputes its loss from the per-token
    `output.log_probs` as `-sum(log_probs) / N` (N: `num_items_in_batch`, else `label_mask.sum()`), ignoring
    `output.loss`. Subtracting `extra` from the log-probability of every trained token adds `extra * n / N` to that
    loss (n: this micro-batch's trained tokens): exactly `extra` without gradient accumulation, and with it `extra`
    weighted by the micro-batch's share of the tokens (summing to one `extra` per optimizer step on average).
    """
    log_probs, label_mask = getattr(output, "log_probs", None), getattr(output, "label_mask", None)
    if log_probs is None or label_mask is None:
        return
    output.log_probs = log_probs - extra.to(log_probs.dtype) * label_mask.to(log_probs.dtype)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the Trainer's optimizer updates (`requires_grad=True`), by name, in registration order.

    For a PEFT model these are the adapter weights (LoRA A/B, `modules_to_save`): the "student" part of a model whose
    frozen base is shared with its teachers.
    """
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


@contextmanager
def swapped_parameters(
    params: dict[str, nn.Parameter], values: dict[str, torch.Tensor], buffer: dict[str, torch.Tensor] | None = None
) -> Iterator[None]:
    """Temporarily copy `values` into `params` in place, restoring the originals bit for bit on exit.

    Use it outside autograd (e.g. for a no-grad teacher forward before the student forward): the copies are in-place
    writes on the parameters' storage, so optimizer state and hooks keyed by the parameter objects stay valid.

    Args:
        params (`dict[str, nn.Parameter]`): the parameters to overwrite, e.g. `trainable_parameters(model)`.
        values (`dict[str, torch.Tensor]`): replacement values with the same names and shapes (any device).
        buffer (`dict[str, torch.Tensor]`, *optional*): preallocated tensors (same shapes, dtypes and devices as
            `params`) that hold the originals meanwhile; reusing one avoids an allocation per call.
    """
    missing = sorted(set(params) - set(values))
    if missing:
        raise KeyError(f"No replacement values for {len(missing)} parameters, e.g. {missing[:3]}.")
    saved = buffer if buffer is not None else {name: torch.empty_like(p) for name, p in params.items()}
    # Multi-tensor copies (one kernel launch per device rather than one per tensor; exact copies all the same).
    targets, originals = list(params.values()), [saved[name] for name in params]
    with torch.no_grad():
        torch._foreach_copy_(originals, targets)
    try:
        with torch.no_grad():
            torch._foreach_copy_(targets, [values[name] for name in params])
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(targets, originals)
