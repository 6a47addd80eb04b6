"""L0 masks with progressive numerous-teacher distillation (NutePrune): distribution, s_hat, selection, teachers,
Trainer / SFTTrainer runs, resume and bad input (tiny random models)."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback

from tailored_hf import PrunerCallback
from tailored_hf import arch as A
from tailored_hf.methods.base import METHOD_REGISTRY, build_method
from tailored_hf.methods.l0 import (
    HardConcrete,
    L0Config,
    L0Masks,
    L0Pruner,
    MaskDivergenceError,
    MaskValues,
    TeacherBank,
    chunked_logit_distillation,
    expected_parameters,
    layer_distillation,
    logit_distillation,
    select_plan,
)
from tailored_hf.methods.l0.masks import _per_layer_parameters, _stacked_layer_parameters
from tailored_hf.peft_wrappers import swapped_parameters, trainable_parameters
from tailored_hf.structure import ModelGeometry, PruningPlan, RuntimeMasks, apply_plan, count_parameters

from ..conftest import input_batch, make_tiny_model, prompt_rows, token_rows, training_args

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SAMPLES = 200_000
BIG = 60.0  # |log_alpha| at which a gate is 0 or 1 to float64 precision


pytestmark = pytest.mark.usefixtures("single_thread")


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS, lora_dropout=0.0))


def random_plan(model, seed: int = 0, remove_layer: bool = False) -> PruningPlan:
    """A GQA-valid plan removing heads (including a whole KV group), FFN and hidden channels at random."""
    g = torch.Generator().manual_seed(seed)
    geometry = ModelGeometry.from_config(A.unwrap_model(model).config)
    n = geometry.num_layers
    plan = PruningPlan.from_scores(
        geometry,
        ffn={i: (torch.rand(geometry.layers[i].intermediate_size, generator=g), 7 + 5 * i) for i in range(n)},
        kv_groups={i: (torch.rand(geometry.layers[i].num_kv_heads, generator=g), 1 + i % 2) for i in range(n)},
        heads_per_group={
            i: (torch.rand(geometry.layers[i].num_heads, generator=g), 1 + (i + 1) % 3) for i in range(n)
        },
        hidden=(torch.rand(geometry.hidden_size, generator=g), geometry.hidden_size - 11),
    )
    if remove_layer:
        plan.removed_layers = [1]
    return plan


def values_of(plan: PruningPlan) -> MaskValues:
    """0/1 gate values equivalent to `plan`."""
    geo = plan.source

    def indicator(kept, size):
        mask = torch.zeros(size, dtype=torch.float64)
        mask[kept] = 1.0
        return mask

    return MaskValues(
        heads={i: indicator(lp.heads, geo.layers[i].num_heads) for i, lp in enumerate(plan.layers)},
        ffn={i: indicator(lp.ffn, geo.layers[i].intermediate_size) for i, lp in enumerate(plan.layers)},
        hidden=indicator(plan.hidden, geo.hidden_size),
        layers=indicator(plan.kept_layers, geo.num_layers),
    )


# ---------------------------------------------------------------------------------------------- distribution
def test_hard_concrete_matches_closed_form():
    """Empirical P(z != 0), P(z == 1) and E[L0] of sampled gates equal the closed forms; samples lie in [0, 1]."""
    hc = HardConcrete(2 / 3, -0.1, 1.1)
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 0.7, 2.5], dtype=torch.float64)
    noise = HardConcrete.noise((SAMPLES, log_alpha.numel()), torch.Generator().manual_seed(0)).double()
    z = hc.sample(log_alpha.expand(SAMPLES, -1), noise)
    assert z.min() >= 0.0 and z.max() <= 1.0
    p_nonzero, p_one = hc.prob_nonzero(log_alpha), hc.prob_one(log_alpha)
    tolerance = 4 * torch.sqrt(p_nonzero * (1 - p_nonzero) / SAMPLES) + 1e-4
    assert torch.all(((z > 0).double().mean(0) - p_nonzero).abs() < tolerance)
    assert torch.all(((z == 1).double().mean(0) - p_one).abs() < tolerance)
    # Closed form of Louizos et al.: sigmoid(log_alpha - beta * log(-l / r)).
    expected = torch.sigmoid(log_alpha - (2 / 3) * math.log(0.1 / 1.1))
    torch.testing.assert_close(p_nonzero, expected)
    assert abs(float((z > 0).double().sum(1).mean()) - float(hc.expected_l0(log_alpha))) < 0.01
    # Deterministic masks keep round(E[L0]) gates, the highest log_alpha first.
    det = hc.deterministic(log_alpha)
    assert int(det.sum()) == round(float(hc.expected_l0(log_alpha)))
    assert det.tolist() == sorted(det.tolist())  # log_alpha is ascending, so kept gates are the last ones
    # Gradients reach log_alpha through the reparameterised sample.
    la = log_alpha.clone().requires_grad_()
    hc.sample(la, noise[:16]).sum().backward()
    assert la.grad is not None and la.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- s_hat
@pytest.mark.parametrize("remove_layer", [False, True])
def test_s_hat_equals_exact_count_of_pruned_model(tiny_model, remove_layer):
    """With 0/1 gates, s_hat's parameter count equals the physically pruned model's (GQA, biases, tying, layers)."""
    plan = random_plan(tiny_model, remove_layer=remove_layer)
    assert any(len(lp.kv_heads) < tiny_model.config.num_key_value_heads for lp in plan.layers)  # GQA correction
    expected = expected_parameters(plan.source, values_of(plan))
    pruned = apply_plan(copy.deepcopy(tiny_model), plan)
    assert float(expected) == count_parameters(pruned) == plan.num_parameters()["pruned"]

    # Through the learnable masks: log_alpha = +-BIG gives keep-probabilities 0/1 and the exact sparsity.
    config = L0Config(target_sparsity=0.3, prune_layers=remove_layer)
    masks = L0Masks(plan.source, config).double()
    values = values_of(plan)
    with torch.no_grad():
        for name, param in masks.named_log_alphas().items():
            kind, _, index = name.partition(".")
            gate = getattr(values, kind)[int(index)] if index else getattr(values, kind)
            param.copy_(torch.where(gate > 0.5, BIG, -BIG))
    exact = 1 - count_parameters(pruned) / count_parameters(tiny_model)
    assert abs(float(masks.expected_sparsity().detach()) - exact) < 1e-12


def test_s_hat_gradient_and_dense_start(tiny_model):
    geometry = ModelGeometry.from_config(tiny_model.config)
    masks = L0Masks(geometry, L0Config(target_sparsity=0.3, prune_layers=True))
    s_hat = masks.expected_sparsity()
    assert 0.0 < float(s_hat.detach()) < 0.01  # droprate_init=0.01: nearly dense
    s_hat.backward()
    assert all(p.grad is not None and torch.all(p.grad <= 0) for p in masks.parameters())  # more alpha, less sparse


@pytest.mark.parametrize("prune_layers", [False, True])
def test_stacked_and_per_layer_s_hat_agree_and_flat_sample_draws_the_per_group_stream(tiny_model, prune_layers):
    """Layers of one shape take the stacked s_hat (a few tensor ops per step, not a few per layer): it equals the
    per-layer computation heterogeneous models use, value and gradient. The flat per-step sample consumes the noise
    stream exactly as one draw per group would."""
    geometry = ModelGeometry.from_config(tiny_model.config)
    masks = L0Masks(geometry, L0Config(target_sparsity=0.3, prune_layers=prune_layers)).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in masks.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 3)
    values = masks.probabilities()
    hidden = values.hidden.sum()
    stacked = _stacked_layer_parameters(geometry, values, hidden).sum()
    per_layer = _per_layer_parameters(geometry, values, hidden)
    torch.testing.assert_close(stacked, per_layer, rtol=1e-12, atol=0)
    grads = [torch.autograd.grad(v, list(masks.parameters()), retain_graph=True) for v in (stacked, per_layer)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    flat_rng, group_rng = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sample = masks.sample(flat_rng)
    per_group = masks._map(lambda p: masks.distribution.sample(p, masks.distribution.noise(p.shape, group_rng)))
    for kind in ("heads", "ffn"):
        for index, tensor in getattr(per_group, kind).items():
            torch.testing.assert_close(getattr(sample, kind)[index], tensor, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sample.hidden, per_group.hidden, rtol=1e-12, atol=1e-12)
    assert torch.equal(flat_rng.get_state(), group_rng.get_state())


# ---------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("target", [0.15, 0.35, 0.6])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_final_selection_hits_target_with_valid_gqa(kind, target):
    """Deterministic final masks: a valid GQA plan at the target, over-shooting by at most one FFN channel."""
    model = make_tiny_model(kind, tied=kind == "qwen2", num_hidden_layers=4, intermediate_size=64)
    geometry = ModelGeometry.from_config(model.config)
    config = L0Config(target_sparsity=target)
    masks = L0Masks(geometry, config)
    with torch.no_grad():
        for p in masks.parameters():
            p.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(p.numel()))
    log_alpha = masks.log_alphas()
    probs = masks.probabilities()
    plan = select_plan(geometry, log_alpha, probs, config)
    plan.validate(model)
    achieved = plan.num_parameters()["sparsity"]
    ffn_share = (3 * len(plan.hidden) + (2 if geometry.mlp_bias else 0)) / geometry.num_parameters()
    assert target <= achieved <= target + ffn_share + 1e-12
    assert apply_plan(model, plan) is model and count_parameters(model) == plan.num_parameters()["pruned"]


# ---------------------------------------------------------------------------------------------- teachers
def test_teacher_schedule_gap_then_weak_to_strong_then_intact():
    config = L0Config(target_sparsity=0.5, snapshot_interval=0.1, teacher_gap=0.1)
    bank = TeacherBank(config, HardConcrete(2 / 3, -0.1, 1.1))
    bank.capture_intact({"w": torch.zeros(1)})
    assert not bank.maybe_snapshot(0.05, 1, {"hidden": torch.zeros(2)}, {"w": torch.ones(1)})
    for step, s in enumerate((0.1, 0.12, 0.21, 0.35, 0.41, 0.49), start=2):
        bank.maybe_snapshot(s, step, {"hidden": torch.full((2,), float(step))}, {"w": torch.full((1,), s)})
    assert [round(s.sparsity, 2) for s in bank.snapshots] == [0.0, 0.1, 0.21, 0.35, 0.41]  # 0.12 < level 0.2
    assert bank.choose(0.15, 5, 100) == 0  # s - gap = 0.05: the intact model
    assert bank.snapshots[bank.choose(0.33, 5, 100)].sparsity == pytest.approx(0.21)
    assert not bank.update_reached(0.5, 10, warmup_done=False)
    assert bank.update_reached(0.497, 20, warmup_done=True)  # within the 0.005 tolerance
    assert not bank.maybe_snapshot(0.6, 21, {"hidden": torch.zeros(2)}, {"w": torch.ones(1)})
    # 80 steps left, 4 sparse snapshots + intact = 5 phases of 16 steps: 0.41, 0.35, 0.21, 0.1, intact.
    order = [round(bank.snapshots[bank.choose(0.5, step, 100)].sparsity, 2) for step in range(20, 100, 16)]
    assert order == [0.41, 0.35, 0.21, 0.1, 0.0]
    kd = TeacherBank(L0Config(target_sparsity=0.5, distillation="kd"), bank.distribution)
    kd.capture_intact({"w": torch.zeros(1)})
    assert kd.choose(0.45, 3, 10) == 0 and not kd.maybe_snapshot(0.2, 1, {}, {"w": torch.ones(1)})


def test_snapshot_swap_leaves_student_bit_for_bit_and_runs_the_teacher(tmp_path):
    """A teacher forward swaps snapshot weights + masks into the one model and restores the student exactly."""
    model = lora(make_tiny_model("llama", num_hidden_layers=3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    method = build_method(L0Config(target_sparsity=0.3, snapshot_interval=0.05))
    method.on_init_end(model, args=None)
    method.on_train_begin(model, state=None, args=None)
    # Take a snapshot with different adapter weights and masks, then move the student on.
    params = trainable_parameters(model)
    teacher_params = {n: p.detach() + 0.01 * torch.randn_like(p) for n, p in params.items()}
    teacher_alpha = {n: torch.randn_like(p) * 3 for n, p in method.masks.named_log_alphas().items()}
    method.teachers.maybe_snapshot(0.2, 3, teacher_alpha, teacher_params)
    index = len(method.teachers.snapshots) - 1
    model.train()
    model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"].eval()  # a deliberate odd flag
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    ids = input_batch()
    out = method.teacher_forward(index, (), {"input_ids": ids, "labels": ids})
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name  # bit for bit
    assert {n: m.training for n, m in model.named_modules()} == flags

    # The teacher really is "frozen base + snapshot adapters + deterministic snapshot masks".
    method.detach()
    reference = copy.deepcopy(model).eval()
    ref_params = trainable_parameters(reference)
    with torch.no_grad():
        for name, value in teacher_params.items():
            ref_params[name].copy_(value)
    with RuntimeMasks(reference) as masks:
        method.teachers.teacher_masks(index, torch.device("cpu")).install(masks)
        expected = reference(input_ids=ids).logits
    rows, seq = out["selection"], ids.shape[1]  # flat row indices into [batch * seq]
    positions = torch.arange(ids.numel())
    assert torch.equal(rows, positions[positions % seq != seq - 1])  # positions with a next-token label
    assert out["layer_selection"] is None  # layers: every position
    teacher_logits = A.lm_head(model)(out["final"])
    torch.testing.assert_close(teacher_logits, expected.flatten(0, 1)[rows], atol=1e-5, rtol=1e-5)
    assert len(out["layers"]) == 3 and out["layers"][0].shape == (ids.numel(), 48)
    assert not torch.allclose(teacher_logits, model.eval()(input_ids=ids).logits.flatten(0, 1)[rows], atol=1e-3)


def test_zero_weight_task_loss_builds_no_lm_head_graph(monkeypatch):
    """With distillation replacing the task loss (weight 0), the student's own LM head runs on a detached input: same
    loss and gradients as back-propagating the cancelled task loss, but no `[tokens, vocab]` graph is kept."""

    def step(detach_head: bool):
        if not detach_head:
            monkeypatch.setattr(L0Pruner, "_detach_head_input", lambda self, module, args: None)
        torch.manual_seed(0)
        model = lora(make_tiny_model("llama", num_hidden_layers=3))
        method = build_method(L0Config(target_sparsity=0.3, distillation="kd"))
        method.on_init_end(model, args=None)
        method.on_train_begin(model, state=None, args=None)
        model.train()
        ids = input_batch()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in trainable_parameters(model).items()}
        grads |= {f"mask.{n}": a.grad.clone() for n, a in method.masks.named_log_alphas().items()}
        monkeypatch.undo()
        return out, grads

    ours, our_grads = step(detach_head=True)
    reference, reference_grads = step(detach_head=False)
    assert not ours.logits.requires_grad and reference.logits.requires_grad
    torch.testing.assert_close(ours.loss, reference.loss)
    assert our_grads.keys() == reference_grads.keys()
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_swapped_parameters_restores_on_error():
    p = {"a": torch.nn.Parameter(torch.arange(4.0))}
    with pytest.raises(RuntimeError, match="boom"), swapped_parameters(p, {"a": torch.zeros(4)}):
        assert torch.equal(p["a"], torch.zeros(4))
        raise RuntimeError("boom")
    assert torch.equal(p["a"], torch.arange(4.0))


def test_chunked_logit_distillation_matches_direct_value_and_gradients():
    """The chunked KD (no whole [tokens, vocab] logits) equals the direct one, gradients included."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(13, 8, generator=g, dtype=torch.float64), torch.randn(13, 8, generator=g).double()
    weight = torch.randn(29, 8, generator=g, dtype=torch.float64)
    s1, w1 = student.clone().requires_grad_(), weight.clone().requires_grad_()
    direct = logit_distillation(s1 @ w1.T, teacher @ w1.detach().T, 2 / 3)
    direct.backward()
    s2, w2 = student.clone().requires_grad_(), weight.clone().requires_grad_()
    chunked = chunked_logit_distillation(s2, teacher, w2, 2 / 3, chunk=4)
    chunked.backward()
    fp32 = {"rtol": 1e-5, "atol": 1e-6}  # both compute the softmaxes in float32, in a different order of operations
    torch.testing.assert_close(chunked.double(), direct.double(), **fp32)
    torch.testing.assert_close(s2.grad, s1.grad, **fp32)
    assert w2.grad is not None  # the teacher's logits are constants: only the student path differentiates W
    w3 = weight.clone().requires_grad_()
    (logit_distillation(student @ w3.T, (teacher @ weight.T).detach(), 2 / 3)).backward()
    torch.testing.assert_close(w2.grad, w3.grad, **fp32)


def test_layer_distillation_value_and_gradients():
    """Per-layer MSE over the student's non-zero entries, skipping gated-off layers (recomputed in backward)."""
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    student[1][:, 2] = 0.0  # a pruned hidden dim
    teacher = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    leaves = [s.clone().requires_grad_() for s in student]
    loss = layer_distillation(
        tuple(leaves), tuple(teacher), layer_gates=torch.tensor([1.0, 1.0, 0.0]), normalization="none"
    )
    loss.backward()
    expected, reference = 0.0, [s.clone().requires_grad_() for s in student]
    for s, t in zip(reference[:2], teacher[:2]):
        keep = (s != 0).double()
        expected = expected + ((s - t).pow(2) * keep).sum() / keep.sum()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach())
    for leaf, ref in zip(leaves[:2], reference[:2]):
        torch.testing.assert_close(leaf.grad, ref.grad)
    assert leaves[2].grad is None


def test_token_normalized_layer_distillation_is_scale_free_per_token():
    """Default normalisation: mean over tokens of |s - t|^2 / |t|^2 on the student's non-zero entries, so a token with
    massive activations weighs as much as any other and scaling a token (both models) leaves the loss unchanged."""
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    student[0][:, 3] = 0.0  # a pruned hidden dim
    teacher = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    leaves = [s.clone().requires_grad_() for s in student]
    loss = layer_distillation(tuple(leaves), tuple(teacher))
    loss.backward()
    expected, reference = 0.0, [s.clone().requires_grad_() for s in student]
    for s, t in zip(reference, teacher):
        keep = (s != 0).double()
        expected = expected + (((s - t).pow(2) * keep).sum(-1) / (t.pow(2) * keep).sum(-1)).mean()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach().float().double())
    for leaf, ref in zip(leaves, reference):
        torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-5, atol=1e-6)
    scale = torch.ones(6, 1, dtype=torch.float64)
    scale[0] = 1e3  # an attention-sink token with massive activations
    scaled = layer_distillation(tuple(s * scale for s in student), tuple(t * scale for t in teacher))
    torch.testing.assert_close(scaled, loss.detach(), rtol=1e-5, atol=0.0)
    with pytest.raises(ValueError, match="normalization"):
        layer_distillation(tuple(student), tuple(teacher), normalization="layer")


def test_logit_distillation_is_kl_teacher_to_student():
    s, t = torch.randn(5, 11), torch.randn(5, 11)
    manual = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(logit_distillation(s, t, 1.0), manual)
    assert float(logit_distillation(t, t, 2 / 3)) == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------- trainers
def _logged(trainer, key):
    return [e[key] for e in trainer.state.log_history if key in e]


def test_end_to_end_plain_trainer(tmp_path):
    """Masks + LoRA co-trained with KD; masks stay out of the Trainer's optimizer; exact target; reloadable."""
    model = lora(make_tiny_model("llama", tied=True, num_hidden_layers=3, intermediate_size=64))
    config = L0Config(target_sparsity=0.3, sparsity_warmup_steps=2, snapshot_interval=0.001, mask_learning_rate=0.5)
    callback = PrunerCallback(config)
    trainer = Trainer(
        model=model, args=training_args(tmp_path, max_steps=4), train_dataset=token_rows(), callbacks=[callback]
    )
    method: L0Pruner = callback.method
    start = {n: p.detach().clone() for n, p in method.masks.named_log_alphas().items()}
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in method.masks.parameters()}  # the Trainer never sees the masks
    assert any(not torch.equal(start[n], p) for n, p in method.masks.named_log_alphas().items())
    assert _logged(trainer, "pruning/lambda_1")[-1] != 0.0
    last = next(e for e in reversed(trainer.state.log_history) if "pruning/kd_logit_loss" in e)
    ours = last["pruning/lagrangian_loss"] + 0.1 * last["pruning/kd_logit_loss"] + 0.9 * last["pruning/kd_layer_loss"]
    assert last["loss"] == pytest.approx(ours, rel=1e-4, abs=1e-6)  # task loss weight 0: distillation + Lagrangian
    assert _logged(trainer, "pruning/kd_logit_loss") and _logged(trainer, "pruning/s_hat")
    assert max(_logged(trainer, "pruning/snapshots")) >= 1
    params = method.plan.num_parameters()
    assert 0.3 <= params["sparsity"] <= 0.3 + 3 * 48 / params["dense"]
    assert count_parameters(trainer.model) == params["pruned"]
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    ids = input_batch()
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("distillation", ["progressive", "none"])
def test_end_to_end_sft_trainer_with_peft_config(tmp_path, tokenizer, distillation):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_length=32,
        logging_steps=1,
        disable_tqdm=True,
    )
    config = L0Config(target_sparsity=0.25, distillation=distillation, prune_layers=distillation == "none")
    trainer = SFTTrainer(
        model=make_tiny_model("qwen2", num_hidden_layers=4, intermediate_size=64),
        args=args,
        train_dataset=prompt_rows(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS),
        callbacks=[PrunerCallback(config)],
    )
    trainer.train()
    method = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PrunerCallback)).method
    # The Lagrangian reached TRL's loss (fused LM head log-probs).
    assert float(method.lambdas.detach().abs().sum()) > 0
    if distillation == "progressive":
        # task_loss_weight=None -> 0 with KD: the loss TRL back-propagates is exactly our terms.
        last = next(e for e in reversed(trainer.state.log_history) if "pruning/kd_logit_loss" in e)
        ours = (
            last["pruning/lagrangian_loss"] + 0.1 * last["pruning/kd_logit_loss"] + 0.9 * last["pruning/kd_layer_loss"]
        )
        assert last["loss"] == pytest.approx(ours, rel=1e-4, abs=1e-6)
    base = trainer.model.get_base_model()
    plan = base.tailored_hf_plan
    assert plan.metadata["method"] == "l0" and plan.metadata["achieved_sparsity"] >= 0.25
    assert count_parameters(base) == plan.num_parameters()["pruned"]
    trainer.save_model(str(tmp_path / "final"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").num_parameters() == plan.num_parameters()["pruned"]


class StopAt(TrainerCallback):
    """Interrupt a run after `step` optimizer steps (its checkpoint is written first)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _resume_run(tmp_path, name, resume=False, stop_at=None, constraint="equality"):
    model = lora(make_tiny_model("mistral", num_hidden_layers=3, intermediate_size=64, seed=3))
    config = L0Config(
        target_sparsity=0.3,
        sparsity_warmup_steps=2,
        snapshot_interval=0.001,
        mask_learning_rate=0.5,
        sparsity_constraint=constraint,
        droprate_init=0.01 if constraint == "equality" else 0.3,  # at_least: s_hat starts over t: a restart at step 1
    )
    callback = PrunerCallback(config)
    args = training_args(tmp_path / name, max_steps=4, save_strategy="steps", save_steps=2, seed=7)
    callbacks = [callback] + ([StopAt(stop_at)] if stop_at else [])
    trainer = Trainer(model=model, args=args, train_dataset=token_rows(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer, callback.method


@pytest.mark.parametrize("constraint", ["equality", "at_least"])
def test_resume_equivalence(tmp_path, constraint):
    """Train 4 steps vs train 2, checkpoint, resume to 4: same masks, multipliers, snapshots, weights and plan (with
    "at_least", a restart may have left the multiplier's optimizer without state)."""
    full, full_method = _resume_run(tmp_path, "full", constraint=constraint)
    _resume_run(tmp_path, "resumed", stop_at=2, constraint=constraint)  # interrupted after checkpoint-2
    assert not (tmp_path / "resumed" / "run" / "checkpoint-4").exists()
    resumed, resumed_method = _resume_run(tmp_path, "resumed", resume=True, constraint=constraint)
    checkpoint4 = tmp_path / "resumed" / "run" / "checkpoint-4"
    first = load_file(str(tmp_path / "full" / "run" / "checkpoint-4" / "tailored_hf_state.safetensors"))
    second = load_file(str(checkpoint4 / "tailored_hf_state.safetensors"))
    assert set(first) == set(second) and any(k.startswith("snapshot.1.") for k in first)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    for (name, a), b in zip(full_method.masks.named_log_alphas().items(), resumed_method.masks.parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(full_method.lambdas, resumed_method.lambdas)
    assert full_method.plan.to_dict()["layers"] == resumed_method.plan.to_dict()["layers"]
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)
    json_state = json.loads((checkpoint4 / "tailored_hf_state.json").read_text())
    assert json_state["l0"]["teachers"]["snapshots"][0]["intact"]


# ---------------------------------------------------------------------------------------------- bad input
def test_unreachable_target_fails_before_training(tmp_path):
    model = lora(make_tiny_model("llama", num_hidden_layers=3))
    config = L0Config(target_sparsity=0.6, prune_hidden=False, prune_ffn=False)
    with pytest.raises(ValueError, match="unreachable with the enabled units.*maximum"):
        Trainer(
            model=model, args=training_args(tmp_path), train_dataset=token_rows(), callbacks=[PrunerCallback(config)]
        )


def test_nan_masks_stop_with_clear_message_and_keep_last_checkpoint(tmp_path):
    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                with torch.no_grad():
                    pruner.method.masks.ffn[0][0] = float("nan")

    pruner = PrunerCallback(L0Config(target_sparsity=0.3, distillation="none"))
    args = training_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=1)
    trainer = Trainer(
        model=make_tiny_model("llama", num_hidden_layers=3),
        args=args,
        train_dataset=token_rows(),
        callbacks=[pruner, Poison()],
    )
    with pytest.raises(MaskDivergenceError, match=r"step 1: non-finite values in ffn\.0.*checkpoint-1"):
        trainer.train()
    kept = load_file(str(tmp_path / "run" / "checkpoint-1" / "tailored_hf_state.safetensors"))
    assert torch.isfinite(kept["mask.ffn.0"]).all()
    assert not (tmp_path / "run" / "checkpoint-2").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_sparsity=0.05, snapshot_interval=0.1), "snapshot_interval=0.1 is not smaller"),
        (dict(target_sparsity=0.95), "target_sparsity must be in"),
        (dict(distillation="teacher"), "distillation must be one of"),
        (dict(stretch_limits=(0.1, 1.1)), "stretch_limits"),
        (dict(mask_learning_rate=-1.0), "mask_learning_rate must be a positive"),
        (dict(sparsity_warmup_ratio=1.0), "sparsity_warmup_ratio"),
        (dict(prune_heads=False, prune_ffn=False, prune_hidden=False), "Nothing to prune"),
        (dict(distill_layer_normalization="layer"), "distill_layer_normalization must be one of"),
        (dict(sparsity_constraint="inequality"), "sparsity_constraint must be one of"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L0Config(**kwargs)


def test_distillation_needs_a_peft_model(tmp_path):
    with pytest.raises(ValueError, match="needs a PEFT"):
        Trainer(
            model=make_tiny_model("llama"),
            args=training_args(tmp_path),
            train_dataset=token_rows(),
            callbacks=[PrunerCallback(L0Config(target_sparsity=0.3))],
        )


def test_registered_as_l0():
    assert METHOD_REGISTRY["l0"] is L0Pruner and L0Config.method_name == "l0"
    assert L0Config(target_sparsity=0.4).to_dict()["method"] == "l0"


def test_lagrangian_drives_expected_sparsity_towards_the_target(tmp_path):
    """Masks + multipliers alone (no KD): under the target, lambda_1 < 0 and the quadratic multiplier grows, and s_hat
    climbs from the dense start towards the warmed-up target (it then oscillates around it, CoFi-style)."""
    config = L0Config(target_sparsity=0.3, distillation="none", sparsity_warmup_steps=20)
    callback = PrunerCallback(config)
    args = training_args(tmp_path, max_steps=60, per_device_train_batch_size=2, logging_steps=10)
    trainer = Trainer(
        model=make_tiny_model("llama", num_hidden_layers=2, intermediate_size=32),
        args=args,
        train_dataset=token_rows(32, length=6),
        callbacks=[callback],
    )
    trainer.train()
    s_hat = _logged(trainer, "pruning/s_hat")[:-1]  # training logs (the last entry is the pruning summary)
    assert s_hat[0] < 0.01 and s_hat[-1] > 0.1 and s_hat == sorted(s_hat)
    assert all(v < 0 for v in _logged(trainer, "pruning/lambda_1"))
    lambda_2 = _logged(trainer, "pruning/lambda_2")
    assert lambda_2 == sorted(lambda_2) and lambda_2[-1] > 1.0
    method = callback.method
    end = method.plan.metadata["expected_sparsity_at_end"]
    assert method.plan.metadata["masks_converged"] == (abs(end - 0.3) <= config.target_tolerance)
    assert 0.3 <= method.plan.metadata["achieved_sparsity"] < 0.31  # the final masks hit the target regardless


def test_at_least_constraint_keeps_a_non_negative_multiplier_and_restarts_it_at_the_target(tmp_path):
    """`sparsity_constraint="at_least"`: lambda >= 0 pushes s_hat up while it is under the target, and is reset to 0
    with its Adam state whenever s_hat reaches the target (dual restarts): no multiplier is left to carry s_hat on."""
    config = L0Config(
        target_sparsity=0.3,
        distillation="none",
        sparsity_warmup_steps=5,
        sparsity_constraint="at_least",
        lambda_learning_rate=0.5,
        mask_learning_rate=0.3,
    )
    callback = PrunerCallback(config)
    restarts = []
    method: L0Pruner = callback.method

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # runs after the pruner's on_step_end
            with torch.no_grad():
                s_hat = float(method.masks.expected_sparsity())
            lambdas = method.lambdas.detach()
            assert float(lambdas.min()) >= 0.0 and float(lambdas[1]) == 0.0
            if s_hat >= method.current_target():
                assert float(lambdas[0]) == 0.0 and not method.lambda_optimizer.state
                restarts.append(state.global_step)

    args = training_args(tmp_path, max_steps=60, per_device_train_batch_size=2, logging_steps=1)
    trainer = Trainer(
        model=make_tiny_model("llama", num_hidden_layers=2, intermediate_size=32),
        args=args,
        train_dataset=token_rows(32, length=6),
        callbacks=[callback, Watch()],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "requires_grad" in str(w.message)]  # lambda is read detached each step
    s_hat = _logged(trainer, "pruning/s_hat")[:-1]
    assert s_hat[0] < 0.01 and max(s_hat) >= 0.3 - config.target_tolerance
    assert max(_logged(trainer, "pruning/lambda_1")) > 0.0  # the multiplier did push while s_hat lagged
    assert any(step > config.sparsity_warmup_steps for step in restarts)  # restarted after reaching the full target
    assert 0.3 <= method.plan.metadata["achieved_sparsity"] < 0.31


@pytest.mark.parametrize("constraint", ["equality", "at_least"])
def test_a_step_reads_the_device_once_before_the_update_and_once_after(tmp_path, monkeypatch, host_reads, constraint):
    """Each host read of a tensor is a GPU synchronisation: per optimizer step the L0 handlers make two, the
    finiteness check before the update and one copy of s_hat, the multipliers and the loss parts after it; the step's
    begin (the teacher choice) reuses that s_hat."""
    config = L0Config(
        target_sparsity=0.3, distillation="progressive", sparsity_warmup_steps=2, sparsity_constraint=constraint
    )
    callback = PrunerCallback(config)
    method: L0Pruner = callback.method
    events = ("on_step_begin", "on_pre_optimizer_step", "on_step_end")
    for event in events:
        monkeypatch.setattr(method, event, host_reads.wrap(event, getattr(method, event)))
    steps = 6
    trainer = Trainer(
        model=lora(make_tiny_model("llama", num_hidden_layers=2, intermediate_size=32)),
        args=training_args(tmp_path, max_steps=steps, per_device_train_batch_size=2, logging_steps=1),
        train_dataset=token_rows(16, length=6),
        callbacks=[callback],
    )
    trainer.train()
    assert {event: host_reads.counts[event] for event in events} == {
        "on_step_begin": 0,
        "on_pre_optimizer_step": steps,
        "on_step_end": steps,
    }
    logged = trainer.state.log_history[0]
    assert {"pruning/s_hat", "pruning/lambda_1", "pruning/lagrangian_loss", "pruning/kd_logit_loss"} <= set(logged)


def test_loss_term_scaling_for_accumulation_and_task_weight():
    """`add_loss_term` weights a term by the micro-batch's share n / N of the step's trained tokens when the Trainer
    normalises by `num_items_in_batch` (so it counts once per optimizer step over accumulation and ranks);
    task_loss_weight rescales the model's own loss exactly, whatever that share."""
    from types import SimpleNamespace

    from tailored_hf.peft_wrappers import token_share

    model = make_tiny_model("llama", num_hidden_layers=2)
    method = build_method(L0Config(target_sparsity=0.3, distillation="none", task_loss_weight=0.25))
    method.on_init_end(model, args=None)
    method.on_train_begin(
        model,
        state=SimpleNamespace(max_steps=10, global_step=0),
        args=SimpleNamespace(gradient_accumulation_steps=2, output_dir=None),
    )
    with torch.no_grad():
        method.lambdas.copy_(torch.tensor([1.0, 0.0]))
    output = SimpleNamespace(loss=torch.tensor(2.0))
    gap = float(method.masks.expected_sparsity().detach()) - method.current_target()
    plain = method._loss_term(model, {}, output)
    torch.testing.assert_close(plain, torch.tensor(gap + (0.25 - 1.0) * 2.0, dtype=plain.dtype))
    labels = torch.tensor([[-100, 5, 6, -100, 7, 8]])  # 4 trained tokens after the causal shift
    kwargs = {"num_items_in_batch": 8, "labels": labels}
    share = token_share(kwargs)
    assert float(share) == 0.5
    added = share * method._loss_term(model, kwargs, output)
    torch.testing.assert_close(added, torch.tensor(gap / 2 + (0.25 - 1.0) * 2.0, dtype=added.dtype))


def test_hidden_sample_keeps_only_unclamped_channels_for_backward(tiny_model):
    """A sampled hidden mask keeps, for its gradient, only the channels whose gate is strictly between 0 and 1 (the
    clamp passes no gradient elsewhere): log_alpha gradients equal those of keeping whole outputs; fewer bytes."""
    model = lora(copy.deepcopy(tiny_model))
    geometry = ModelGeometry.from_config(A.unwrap_model(model).config)
    masks = L0Masks(geometry, L0Config(target_sparsity=0.3))
    with torch.no_grad():  # about a third of the gates clamped to 1, a third to 0, a third in between
        masks.hidden.copy_(torch.linspace(-6.0, 6.0, geometry.hidden_size))
    ids = input_batch()
    params = {id(p) for p in model.parameters()}

    def step(with_support: bool) -> tuple[torch.Tensor, int]:
        masks.zero_grad()
        values = masks.sample(torch.Generator().manual_seed(0))
        assert values.hidden_grad_support is not None
        support = values.hidden_grad_support
        clamped = ((values.hidden == 0) | (values.hidden == 1)).sum()
        assert 0 < support.numel() < geometry.hidden_size and clamped > 0
        if not with_support:
            values.hidden_grad_support = None
        nbytes, seen = 0, set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal nbytes
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen and id(t) not in params:
                seen.add(ptr)
                nbytes += t.untyped_storage().nbytes()
            return t

        with RuntimeMasks(model) as runtime, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            values.install(runtime)
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return masks.hidden.grad.clone(), nbytes

    grad, nbytes = step(with_support=True)
    reference, ref_nbytes = step(with_support=False)
    torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-7)
    assert grad.abs().sum() > 0
    assert nbytes < ref_nbytes
