"""The structure engine: masked == pruned, parameter accounting, save/load, LoRA, generation, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import tailored_hf
from tailored_hf.modeling import StockConfigUnavailableError
from tailored_hf.structure import (
    PLAN_FILENAME,
    PlanError,
    PruningPlan,
    RuntimeMasks,
    apply_plan,
    compose_plans,
    count_parameters,
    save_pruned,
    top_indices,
)
from tailored_hf.structure.masks import masked_rms_norm
from tailored_hf.structure.simple import magnitude_plan

from ..conftest import input_batch, make_tiny_model

TOL = 1e-5


def random_plan(model, seed: int, hidden: bool = True, drop_layer: bool = False, uniform: bool = False) -> PruningPlan:
    """A random valid plan: random KV groups, the same number of query heads per kept group, random channels."""
    g = torch.Generator().manual_seed(seed)
    plan = PruningPlan.dense(model)

    def pick(n: int, k: int) -> list[int]:
        return sorted(torch.randperm(n, generator=g)[:k].tolist())

    def count(n: int) -> int:
        return int(torch.randint(1, n + 1, (1,), generator=g))

    shared = None
    for index, geo in enumerate(plan.source.layers):
        if uniform and shared is not None:
            plan.layers[index].heads, plan.layers[index].kv_heads, plan.layers[index].ffn = shared
            continue
        kv = pick(geo.num_kv_heads, count(geo.num_kv_heads))
        per_group = count(geo.heads_per_group)
        heads = sorted(k * geo.heads_per_group + j for k in kv for j in pick(geo.heads_per_group, per_group))
        ffn = pick(geo.intermediate_size, count(geo.intermediate_size))
        plan.layers[index].heads, plan.layers[index].kv_heads, plan.layers[index].ffn = heads, kv, ffn
        shared = (heads, kv, ffn)
    if hidden:
        plan.hidden = pick(plan.source.hidden_size, plan.source.hidden_size - 6)
    if drop_layer:
        plan.removed_layers = [1]
    return plan


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("drop_layer", [False, True])
def test_masked_forward_equals_pruned_forward(tiny_model, seed, drop_layer):
    ids = input_batch()
    plan = random_plan(tiny_model, seed, drop_layer=drop_layer)
    with RuntimeMasks(tiny_model) as masks:
        masks.set_from_plan(plan)
        masked = logits(tiny_model, ids)
    apply_plan(tiny_model, plan)
    pruned = logits(tiny_model, ids)
    torch.testing.assert_close(pruned, masked, atol=TOL, rtol=TOL)


def _soft_mask_step(model, ids, kind: str, reference: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Loss, mask gradient, the first gate_proj's weight gradient and bytes saved for backward (parameters excluded) of
    one forward with a soft `kind` ("hidden" or "ffn") mask. The reference keeps every intermediate: the masked norms'
    (hidden) or the FFN product's (ffn), as a plain `x * mask` would."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            pack.nbytes += t.untyped_storage().nbytes()
        return t

    pack.nbytes = 0
    masks = RuntimeMasks(model)
    if kind == "hidden":
        logit = torch.linspace(-2.0, 2.0, model.config.hidden_size).requires_grad_()
        if reference:
            masks._norm_hook = lambda module, args, output: masked_rms_norm(
                args[0], module.weight, masks.hidden, module.variance_epsilon
            )
    else:
        logit = torch.linspace(-2.0, 2.0, model.config.intermediate_size).requires_grad_()
        if reference:  # the gated-product factors are never captured: the hook falls back to a plain product
            masks._ffn_factor_hook = lambda index, name: lambda module, args, output: None
    with masks, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if kind == "hidden":
            masks.set_hidden(torch.sigmoid(logit))
        else:
            for layer in range(model.config.num_hidden_layers):
                masks.set_ffn(layer, torch.sigmoid(logit))
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), logit.grad, model.model.layers[0].mlp.gate_proj.weight.grad.clone(), pack.nbytes


@pytest.mark.parametrize("kind", ["hidden", "ffn"])
def test_soft_masks_recompute_instead_of_storing(tiny_model, kind):
    """Soft hidden masks keep the masked RMSNorms' inputs and a per-token variance only; soft FFN masks keep act(gate)
    and up (saved by the stock product anyway) instead of their product: same loss and mask gradient, fewer bytes
    kept."""
    ids = input_batch()
    loss, grad, weight_grad, nbytes = _soft_mask_step(tiny_model, ids, kind, reference=False)
    tiny_model.zero_grad()
    ref_loss, ref_grad, ref_weight_grad, ref_nbytes = _soft_mask_step(tiny_model, ids, kind, reference=True)
    torch.testing.assert_close(loss, ref_loss, atol=0, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weight_grad, ref_weight_grad, atol=1e-6, rtol=1e-5)
    assert nbytes < ref_nbytes
    if kind == "ffn":  # exactly one [batch, seq, intermediate] product per layer less
        per_layer = ids.numel() * tiny_model.config.intermediate_size * 4
        assert ref_nbytes - nbytes == per_layer * tiny_model.config.num_hidden_layers


def test_empty_plan_is_identity(tiny_model):
    ids = input_batch()
    before, params = logits(tiny_model, ids), count_parameters(tiny_model)
    plan = PruningPlan.dense(tiny_model)
    assert plan.is_identity and plan.num_parameters()["sparsity"] == 0
    apply_plan(tiny_model, plan)
    torch.testing.assert_close(logits(tiny_model, ids), before, atol=0, rtol=0)
    assert count_parameters(tiny_model) == params == plan.num_parameters()["dense"]


def test_parameter_count_matches_plan(tiny_model):
    plan = random_plan(tiny_model, seed=3, drop_layer=True)
    assert count_parameters(tiny_model) == plan.num_parameters()["dense"]
    apply_plan(tiny_model, plan)
    assert count_parameters(tiny_model) == plan.num_parameters()["pruned"]
    assert tiny_model.num_parameters() == plan.num_parameters()["pruned"]


def test_tied_embeddings_stay_tied():
    model = make_tiny_model("llama", tied=True)
    apply_plan(model, random_plan(model, seed=4))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape[1] == model.config.hidden_size


def test_heterogeneous_round_trip(tmp_path, tiny_model):
    ids = input_batch()
    apply_plan(tiny_model, random_plan(tiny_model, seed=5))
    expected = logits(tiny_model, ids)
    assert tiny_model.config.model_type.startswith("tailored_")
    save_pruned(tiny_model, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not list((tmp_path / "out").glob("*.bin"))
    plan_json = json.loads((tmp_path / "out" / PLAN_FILENAME).read_text())
    assert plan_json["metadata"]["library"] == "tailored_hf"
    assert plan_json["metadata"]["params_pruned"] == tiny_model.num_parameters()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded).__name__.startswith("Tailored")
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=0, rtol=0)


def test_class_swapped_in_place_still_returns_hidden_states():
    """transformers records `output_hidden_states` per model class, registered when a model is built: a model whose
    class `apply_plan` swapped in place (the first tailored model of the process) must return them all the same."""
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    from tailored_hf.modeling.tailored import TailoredLlamaForCausalLM, TailoredLlamaModel

    model = make_tiny_model()
    ids = input_batch()
    keys = [str(cls) for cls in (TailoredLlamaModel, TailoredLlamaForCausalLM)]
    # As in a fresh process: no tailored class registered yet (string keys; the registry's own `get` takes a model).
    saved = {key: dict.pop(_CAN_RECORD_REGISTRY, key) for key in keys if key in _CAN_RECORD_REGISTRY}
    try:
        apply_plan(model, random_plan(model, seed=5, hidden=False))
        assert type(model).__name__ == "TailoredLlamaForCausalLM"
        with torch.no_grad():
            output = model(input_ids=ids, output_hidden_states=True)
            final = model.model(input_ids=ids).last_hidden_state
    finally:
        dict.update(_CAN_RECORD_REGISTRY, saved)
    assert output.hidden_states is not None and len(output.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(output.hidden_states[-1], final, atol=0, rtol=0)


def test_uniform_plan_saves_stock_config_loadable_without_tailored_hf(tmp_path):
    model = make_tiny_model("llama", tied=True)
    plan = random_plan(model, seed=6, hidden=False, uniform=True)
    apply_plan(model, plan)
    assert model.config.model_type == "llama" and type(model).__name__ == "LlamaForCausalLM"
    ids = input_batch()
    expected = logits(model, ids)
    save_pruned(model, tmp_path / "out")
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained(r'{tmp_path / 'out'}').eval()\n"
        f"ids = torch.load(r'{tmp_path / 'ids.pt'}', weights_only=True)\n"
        f"exp = torch.load(r'{tmp_path / 'expected.pt'}', weights_only=True)\n"
        "with torch.no_grad(): out = m(input_ids=ids).logits\n"
        "assert 'tailored_hf' not in sys.modules, 'tailored_hf was imported'\n"
        "torch.testing.assert_close(out, exp, atol=0, rtol=0)\n"
        "print(type(m).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LlamaForCausalLM" in result.stdout


def test_lora_wrapped_model_pruned_and_trainable(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model("qwen2", tied=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    model.eval()
    ids = input_batch()
    plan = random_plan(model, seed=7)
    with RuntimeMasks(model) as masks:
        masks.set_from_plan(plan)
        masked = logits(model, ids)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    with RuntimeMasks(model) as masks:
        masks.set_from_plan(plan)
        masked = logits(model, ids)
    apply_plan(model, plan, optimizer=optimizer)
    torch.testing.assert_close(logits(model, ids), masked, atol=TOL, rtol=TOL)
    # Still trainable: LoRA params require grad, the optimizer holds the new tensors with matching state.
    lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora_params and all(p.requires_grad for p in lora_params)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in held for p in lora_params)
    for param, state in optimizer.state.items():
        assert state["exp_avg"].shape == param.shape
    model.train()
    before = [p.detach().clone() for p in lora_params]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, lora_params))
    # Merged save reloads with the LoRA model's logits.
    model.eval()
    expected = logits(model, ids)
    save_pruned(model, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=TOL, rtol=TOL)


def test_generate_with_cache(tiny_model):
    apply_plan(tiny_model, random_plan(tiny_model, seed=8, drop_layer=True))
    ids = input_batch(batch=1, length=5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with_cache = tiny_model.generate(ids, use_cache=True, **kwargs)
    without_cache = tiny_model.generate(ids, use_cache=False, **kwargs)
    assert with_cache.shape == (1, 11)
    assert torch.equal(with_cache, without_cache)


def test_pruning_twice_composes(tiny_model):
    ids = input_batch()
    first = random_plan(tiny_model, seed=9, hidden=True)
    reference = make_tiny_model(tiny_model.config.model_type, tied=tiny_model.config.tie_word_embeddings)
    apply_plan(tiny_model, first)
    second = random_plan(tiny_model, seed=10, hidden=True)
    apply_plan(tiny_model, second)
    composed = compose_plans(first, second)
    assert tiny_model.tailored_hf_plan.to_dict() == composed.to_dict()
    apply_plan(reference, composed)
    torch.testing.assert_close(logits(reference, ids), logits(tiny_model, ids), atol=TOL, rtol=TOL)


def test_magnitude_plan_hits_target():
    model = make_tiny_model("llama", num_hidden_layers=4, intermediate_size=96)
    plan = magnitude_plan(model, 0.2)
    assert abs(plan.num_parameters()["sparsity"] - 0.2) < 0.03
    apply_plan(model, plan)
    assert model.num_parameters() == plan.num_parameters()["pruned"]


# ---------------------------------------------------------------------------- bad input
def test_top_indices_keeps_the_highest_and_breaks_ties_by_lower_index():
    scores = torch.tensor([0.0, -0.0, 1.0, float("inf"), 1.0, -float("inf"), 0.5, 1.0])
    assert top_indices(scores, 3) == [2, 3, 4]  # inf, then the first two of three tied 1.0s
    assert top_indices(scores, 6) == [0, 2, 3, 4, 6, 7]  # 0.0 and -0.0 tie: the lower index stays
    assert top_indices(scores, 7) == [0, 1, 2, 3, 4, 6, 7]
    assert top_indices([3.0, 1.0, 2.0], 1) == [0]
    with pytest.raises(PlanError, match="Cannot keep 0"):
        top_indices(scores, 0)
    with pytest.raises(PlanError, match="NaN"):
        top_indices([1.0, float("nan")], 1)


def test_plan_removing_every_head_is_rejected(tiny_model):
    plan = PruningPlan.dense(tiny_model)
    plan.layers[0].heads, plan.layers[0].kv_heads = [], []
    with pytest.raises(PlanError, match="removes every unit of layer 0 heads"):
        apply_plan(tiny_model, plan)


def test_plan_removing_every_ffn_channel_is_rejected(tiny_model):
    plan = PruningPlan.dense(tiny_model)
    plan.layers[2].ffn = []
    with pytest.raises(PlanError, match="layer 2 ffn"):
        apply_plan(tiny_model, plan)


def test_out_of_range_indices_are_rejected(tiny_model):
    plan = PruningPlan.dense(tiny_model)
    plan.layers[1].ffn = [0, 1, 999]
    with pytest.raises(PlanError, match=r"out of range \[0, 40\)"):
        apply_plan(tiny_model, plan)
    plan = PruningPlan.dense(tiny_model)
    plan.hidden = [-1, 2]
    with pytest.raises(PlanError, match="out of range"):
        apply_plan(tiny_model, plan)


def test_uneven_gqa_heads_are_rejected(tiny_model):
    plan = PruningPlan.dense(tiny_model)
    plan.layers[0].heads = [0, 1, 2, 3]  # 3 heads in group 0, 1 in group 1
    with pytest.raises(PlanError, match="same number of query heads"):
        apply_plan(tiny_model, plan)
    plan.layers[0].heads, plan.layers[0].kv_heads = [0, 3], [0]
    with pytest.raises(PlanError, match="KV head is removed"):
        apply_plan(tiny_model, plan)


def test_plan_for_a_different_model_is_rejected():
    plan = PruningPlan.dense(make_tiny_model("llama", hidden_size=60))
    with pytest.raises(PlanError, match="different model"):
        apply_plan(make_tiny_model("llama"), plan)


def test_non_llama_family_model_is_rejected():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(tailored_hf.UnsupportedArchitectureError, match="llama, mistral, qwen2"):
        PruningPlan.dense(gpt2)
    with pytest.raises(tailored_hf.UnsupportedArchitectureError):
        RuntimeMasks(gpt2)


def test_hidden_pruning_breaking_head_divisibility_with_stock_config():
    model = make_tiny_model("llama")
    plan = PruningPlan.dense(model)
    plan.hidden = list(range(45))  # 45 % 6 heads != 0
    with pytest.raises(StockConfigUnavailableError, match="not a multiple of 6 heads"):
        apply_plan(model, plan, config_format="stock")
    apply_plan(make_tiny_model("llama"), plan)  # auto falls back to a tailored config


def test_checkpoint_whose_plan_disagrees_with_weights(tmp_path):
    model = make_tiny_model("llama")
    apply_plan(model, random_plan(model, seed=11))
    save_pruned(model, tmp_path / "out")
    other = random_plan(make_tiny_model("llama"), seed=12)
    other.save(tmp_path / "out" / PLAN_FILENAME)
    with pytest.raises(PlanError, match="disagrees with the weights"):
        tailored_hf.load_model(str(tmp_path / "out"))


def test_failed_save_leaves_previous_output_intact(tmp_path, monkeypatch):
    model = make_tiny_model("llama")
    apply_plan(model, random_plan(model, seed=13))
    save_pruned(model, tmp_path / "out")
    good = (tmp_path / "out" / "model.safetensors").read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", explode)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_requires_a_plan(tmp_path):
    with pytest.raises(PlanError, match="carries no pruning plan"):
        save_pruned(make_tiny_model("llama"), tmp_path / "out")


def test_plan_json_round_trip(tiny_model, tmp_path):
    plan = random_plan(tiny_model, seed=14, drop_layer=True)
    plan.metadata["method"] = "test"
    path = plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    with pytest.raises(PlanError, match="format_version"):
        PruningPlan.from_dict({**plan.to_dict(), "format_version": 99})


def test_save_into_a_trainer_output_dir_keeps_its_checkpoints(tmp_path):
    model = make_tiny_model("llama")
    apply_plan(model, random_plan(model, seed=7))
    out = tmp_path / "run"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00002.safetensors").write_text("stale shard of an earlier save")
    save_pruned(model, out)
    assert (out / "checkpoint-1" / "trainer_state.json").read_text() == "{}"
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "model-00001-of-00002.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = input_batch()
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=0, rtol=0)


@pytest.mark.parametrize("mask_sum", ["above_one", "below_one", "hard"])
def test_masked_rms_norm_analytic_backward_matches_autograd(mask_sum):
    """The soft hidden-mask norm's hand-written backward equals autograd through `masked_rms_norm` (float64
    gradcheck), with the mask total above one, clamped below one, and for hard masks without a gradient."""
    from tailored_hf.structure.masks import _MaskedRMSNorm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = (1.0 + 0.1 * torch.randn(6, generator=generator, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(6, generator=generator, dtype=torch.float64)
    if mask_sum == "below_one":
        mask = mask / (2 * mask.sum())
    elif mask_sum == "hard":
        mask = (mask > 0.5).to(torch.float64)
    mask.requires_grad_(mask_sum != "hard")
    assert torch.autograd.gradcheck(lambda *t: _MaskedRMSNorm.apply(*t, 1e-6), (x, weight, mask))
    out = _MaskedRMSNorm.apply(x, weight, mask, 1e-6)
    torch.testing.assert_close(out, masked_rms_norm(x, weight, mask, 1e-6), atol=0, rtol=0)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    inputs = [t for t in (x, weight, mask) if t.requires_grad]
    ours = torch.autograd.grad(out, inputs, grad)
    reference = torch.autograd.grad(masked_rms_norm(x, weight, mask, 1e-6), inputs, grad)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_masked_rms_norm_analytic_backward_in_bfloat16():
    """A bf16 model with an fp32 soft mask: the same output as `masked_rms_norm` and gradients within bf16 rounding
    of autograd's (computed in fp32 throughout here, autograd rounds its intermediates to bf16)."""
    from tailored_hf.structure.masks import _MaskedRMSNorm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=generator).bfloat16().requires_grad_()
    weight = (1.0 + 0.1 * torch.randn(16, generator=generator)).bfloat16().requires_grad_()
    mask = torch.rand(16, generator=generator).requires_grad_()
    out = _MaskedRMSNorm.apply(x, weight, mask, 1e-6)
    reference = masked_rms_norm(x, weight, mask, 1e-6)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
    grad = torch.randn(out.shape, generator=generator).bfloat16()
    ours = torch.autograd.grad(out, (x, weight, mask), grad)
    theirs = torch.autograd.grad(reference, (x, weight, mask), grad)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def test_hidden_mask_grad_support_keeps_only_those_channels():
    """`set_hidden(..., grad_support=idx)`: outputs and input gradients unchanged, the mask's gradient exact on the
    supported channels and zero elsewhere (float64 gradcheck with full support)."""
    from tailored_hf.structure.masks import _SupportedChannelMask

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(8, generator=generator, dtype=torch.float64, requires_grad=True)
    support = torch.tensor([1, 4, 5])
    grad_out = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64)
    out = _SupportedChannelMask.apply(x, mask, support)
    torch.testing.assert_close(out, x * mask, rtol=0, atol=0)
    gx, gm = torch.autograd.grad(out, (x, mask), grad_out)
    rx, rm = torch.autograd.grad(x * mask, (x, mask), grad_out)
    torch.testing.assert_close(gx, rx, rtol=0, atol=0)
    torch.testing.assert_close(gm[support], rm[support])
    assert torch.count_nonzero(gm) == support.numel()
    none = torch.zeros(0, dtype=torch.long)  # every gate clamped: no mask gradient, input gradient unchanged
    gx, gm = torch.autograd.grad(_SupportedChannelMask.apply(x, mask, none), (x, mask), grad_out)
    torch.testing.assert_close(gx, rx, rtol=0, atol=0)
    assert not gm.any()
    full = torch.arange(8)
    assert torch.autograd.gradcheck(lambda a, m: _SupportedChannelMask.apply(a, m, full), (x, mask))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_masked_rms_norm_writes_into_the_discarded_stock_output(dtype):
    """Given the stock norm's output as a buffer, the masked norm is written into its storage: the same values and
    gradients as without one (no extra `[tokens, hidden]` allocation, the stock allocation order kept)."""
    from tailored_hf.structure.masks import _MaskedRMSNorm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, generator=generator).to(dtype).requires_grad_()
    weight = (1.0 + 0.1 * torch.randn(6, generator=generator)).to(dtype).requires_grad_()
    mask = torch.rand(6, generator=generator, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    mask.requires_grad_()
    stock = torch.empty_like(x, requires_grad=False)
    out = _MaskedRMSNorm.apply(x, weight, mask, 1e-6, stock)
    assert out.untyped_storage().data_ptr() == stock.untyped_storage().data_ptr()
    reference = _MaskedRMSNorm.apply(x, weight, mask, 1e-6)
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
    grad = torch.randn(out.shape, generator=generator).to(dtype)
    ours = torch.autograd.grad(out, (x, weight, mask), grad)
    theirs = torch.autograd.grad(reference, (x, weight, mask), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_mask_products_overwrite_fresh_intermediates_only():
    """`_SupportedChannelMask` and `_GatedProductMask` mask a fresh intermediate in place (exact gradients) and
    leave a leaf input untouched (out of place)."""
    from tailored_hf.structure.masks import _GatedProductMask, _SupportedChannelMask

    generator = torch.Generator().manual_seed(0)
    act = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(8, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64)
    reference = torch.autograd.grad(act * up * mask, (act, up, mask), grad)
    for apply in (
        lambda x: _GatedProductMask.apply(x, mask, act.detach(), up.detach()),
        lambda x: _SupportedChannelMask.apply(x, mask, torch.arange(8)),
    ):
        product = act * up
        storage = product.untyped_storage().data_ptr()
        out = apply(product)
        assert out.untyped_storage().data_ptr() == storage
        for a, b in zip(torch.autograd.grad(out, (act, up, mask), grad), reference):
            torch.testing.assert_close(a, b)
    leaf = (act * up).detach().requires_grad_()
    before = leaf.detach().clone()
    out = _SupportedChannelMask.apply(leaf, mask, torch.arange(8))
    assert out.untyped_storage().data_ptr() != leaf.untyped_storage().data_ptr()
    torch.testing.assert_close(leaf.detach(), before, atol=0, rtol=0)


def test_full_training_optimizer_follows_tensors_sliced_twice():
    """With hidden channels pruned, `q_proj` loses rows (heads) and columns (hidden) in one plan: the optimizer must
    hold every final parameter (not the copy made between the two slices) with state of its final shape."""
    model = make_tiny_model("llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = input_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    plan = PruningPlan.dense(model)
    plan.hidden = plan.hidden[::2]
    plan.layers[0].heads, plan.layers[0].kv_heads = [0, 1, 2], [0]
    plan.layers[1].ffn = plan.layers[1].ffn[::2]
    apply_plan(model, plan, optimizer=optimizer)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}
    for param in model.parameters():
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
