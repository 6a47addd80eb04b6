"""Dense-teacher distillation: the chunked KL with two LM heads, the trainer and `distill_from_teacher`."""

from __future__ import annotations

import copy

import pytest
import torch

from tailored_hf import DepGraphConfig, PruningPlan, apply_plan, prune
from tailored_hf.distillation import (
    TeacherDistillationTrainer,
    chunked_logit_distillation,
    distill_from_teacher,
    logit_distillation,
)

from .conftest import TINY_SIZES, input_batch, make_tiny_model, training_args

FP32 = {"rtol": 1e-5, "atol": 1e-6}  # softmaxes in float32, in a different order of operations


pytestmark = pytest.mark.usefixtures("single_thread")


def pruned_student(teacher: torch.nn.Module, heterogeneous: bool = False) -> torch.nn.Module:
    """A physically pruned copy of `teacher`: 30% of the parameters removed by weight magnitude (no data), or
    per-layer head and FFN sizes of their own (`heterogeneous`)."""
    student = copy.deepcopy(teacher)
    if not heterogeneous:
        return prune(student, DepGraphConfig(target_sparsity=0.3, importance="l2"), progress=False)[0]
    ffn = teacher.config.intermediate_size
    plan = PruningPlan.from_masks(
        student,
        heads={0: torch.tensor([1, 1, 0, 1, 1, 0]), 1: torch.tensor([1, 0, 0, 1, 0, 0])},
        ffn={0: (torch.arange(ffn) < 30).float(), 2: (torch.arange(ffn) % 2 == 0).float()},
    )
    return apply_plan(student, plan) or student


def direct_kl(student, teacher, input_ids, selected=None, temperature: float = 1.0) -> torch.Tensor:
    """The KL computed the plain way: both models' full logits, flattened over the selected positions."""
    s, t = student(input_ids=input_ids).logits, teacher(input_ids=input_ids).logits.detach()
    selected = torch.ones(input_ids.shape, dtype=torch.bool) if selected is None else selected
    return logit_distillation(s[selected], t[selected], temperature)


def test_chunked_kl_with_a_separate_teacher_head_matches_direct_value_and_gradients():
    """Student and teacher heads differ (a pruned student trains its own): value and student gradients match, and
    the teacher's head gets no gradient."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(13, 8, generator=g).double(), torch.randn(13, 8, generator=g).double()
    weight, teacher_weight = torch.randn(29, 8, generator=g).double(), torch.randn(29, 8, generator=g).double()
    s1, w1 = student.clone().requires_grad_(), weight.clone().requires_grad_()
    direct = logit_distillation(s1 @ w1.T, teacher @ teacher_weight.T, 1.5)
    direct.backward()
    s2, w2, wt = student.clone().requires_grad_(), weight.clone().requires_grad_(), teacher_weight.requires_grad_()
    chunked = chunked_logit_distillation(s2, teacher, w2, 1.5, chunk=4, teacher_weight=wt)
    chunked.backward()
    torch.testing.assert_close(chunked.double(), direct.double(), **FP32)
    torch.testing.assert_close(s2.grad, s1.grad, **FP32)
    torch.testing.assert_close(w2.grad, w1.grad, **FP32)
    assert wt.grad is None


@pytest.mark.parametrize("tied, heterogeneous", [(False, False), (True, False), (False, True)])
def test_trainer_loss_is_the_kl_of_the_full_logits(tmp_path, tied, heterogeneous):
    """The loss from final hidden states (chunked, `logits_to_keep=1`) equals the KL of both models' full logits,
    for a pruned student (uniform or with per-layer sizes) and its dense teacher, over every position of an
    unlabelled batch."""
    teacher = make_tiny_model(tied=tied)
    student = pruned_student(teacher, heterogeneous)
    trainer = TeacherDistillationTrainer(
        model=student, args=training_args(tmp_path), teacher_model=teacher, temperature=2.0, chunk_tokens=5
    )
    ids = input_batch()
    loss = trainer.compute_loss(student, {"input_ids": ids})
    torch.testing.assert_close(loss, direct_kl(student, teacher, ids, temperature=2.0), **FP32)
    assert teacher.training is False and not any(p.requires_grad for p in teacher.parameters())


def test_trainer_distills_only_labelled_positions(tmp_path):
    """With `labels`, only the positions whose next token is trained (label not -100) are distilled."""
    teacher = make_tiny_model()
    student = pruned_student(teacher)
    trainer = TeacherDistillationTrainer(model=student, args=training_args(tmp_path), teacher_model=teacher)
    ids = input_batch()
    labels = ids.clone()
    labels[:, :7] = -100  # a prompt of 7 tokens: the first trained label is at position 7, predicted from 6
    selected = torch.zeros(ids.shape, dtype=torch.bool)
    selected[:, 6:-1] = True
    loss = trainer.compute_loss(student, {"input_ids": ids, "labels": labels})
    torch.testing.assert_close(loss, direct_kl(student, teacher, ids, selected), **FP32)


def test_identical_student_has_zero_loss(tmp_path):
    teacher = make_tiny_model()
    student = copy.deepcopy(teacher)
    trainer = TeacherDistillationTrainer(model=student, args=training_args(tmp_path), teacher_model=teacher)
    with torch.no_grad():
        assert abs(float(trainer.compute_loss(student, {"input_ids": input_batch()}))) < 1e-6


def test_distill_from_teacher_brings_a_pruned_model_closer_to_its_teacher(tmp_path):
    """Every student weight trains, the teacher stays bit for bit, and the KL on unseen windows falls."""
    teacher = make_tiny_model()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10)  # peaked next-token distributions: pruning moves them measurably
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = pruned_student(teacher)
    before_student = {k: v.clone() for k, v in student.state_dict().items()}
    heldout = input_batch(batch=4, length=16, seed=7)
    with torch.no_grad():
        kl_before = float(direct_kl(student, teacher, heldout))
    windows = torch.randint(0, TINY_SIZES["vocab_size"], (240, 16), generator=torch.Generator().manual_seed(0))
    trained, stats = distill_from_teacher(
        student, teacher, windows, tmp_path / "run", max_steps=60, batch_size=4, learning_rate=1e-3, use_cpu=True
    )
    with torch.no_grad():
        kl_after = float(direct_kl(trained, teacher, heldout))
    assert kl_after < 0.5 * kl_before
    assert (
        stats["steps"] == 60 and stats["tokens"] == 60 * 4 * 16 and stats["windows"] == 240 and stats["train_loss"] > 0
    )
    assert all(not torch.equal(before_student[k], v) for k, v in trained.state_dict().items() if "norm" not in k)
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())


def test_distill_from_teacher_trains_only_lora_adapters_of_a_peft_student(tmp_path):
    from peft import LoraConfig, get_peft_model

    teacher = make_tiny_model()
    student = get_peft_model(pruned_student(teacher), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    frozen = {k: v.clone() for k, v in student.named_parameters() if not v.requires_grad}
    windows = torch.randint(0, TINY_SIZES["vocab_size"], (8, 16), generator=torch.Generator().manual_seed(0))
    trained, _ = distill_from_teacher(student, teacher, windows, tmp_path / "run", max_steps=3, batch_size=4)
    assert all(torch.equal(frozen[k], v) for k, v in trained.named_parameters() if k in frozen)
    lora_b = [v for k, v in trained.named_parameters() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero


def test_invalid_settings_raise(tmp_path):
    teacher = make_tiny_model()
    with pytest.raises(ValueError, match="temperature must be positive"):
        TeacherDistillationTrainer(model=teacher, args=training_args(tmp_path), teacher_model=teacher, temperature=0)
    with pytest.raises(ValueError, match="chunk_tokens must be positive"):
        TeacherDistillationTrainer(model=teacher, args=training_args(tmp_path), teacher_model=teacher, chunk_tokens=0)
    with pytest.raises(ValueError, match="non-empty"):
        distill_from_teacher(teacher, teacher, torch.zeros(0, 4, dtype=torch.long), tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="max_steps must be positive"):
        distill_from_teacher(teacher, teacher, torch.zeros(2, 4, dtype=torch.long), tmp_path, max_steps=0)
