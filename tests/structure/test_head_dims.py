"""Per-layer head dims in the engine: rotate-half query/key pairs, value dims, kept rotary frequencies.

Masked (RuntimeMasks) == physically pruned (apply_plan) logits, save/reload through the Auto classes, KV-cache
generation, plan JSON round trips (and plans without head-dim fields keep their old JSON), composition, bad input.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import tailored_hf  # noqa: F401  (registers the tailored Auto classes)
from tailored_hf.modeling import StockConfigUnavailableError
from tailored_hf.structure import (
    PlanError,
    PruningPlan,
    RuntimeMasks,
    apply_plan,
    compose_plans,
    count_parameters,
    save_pruned,
)

from ..conftest import input_batch, make_tiny_model

TOL = 1e-5
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def head_dim_plan(model, seed: int, with_units: bool = True) -> PruningPlan:
    """Random rotate-half pairs and value dims per layer (one layer left untouched), plus heads/FFN/hidden."""
    g = torch.Generator().manual_seed(seed)
    plan = PruningPlan.dense(model)

    def pick(n: int) -> list[int]:
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        return sorted(torch.randperm(n, generator=g)[:k].tolist())

    for index, geo in enumerate(plan.source.layers):
        if index == 1:
            continue
        plan.layers[index].qk_pairs = pick(geo.num_rotary_pairs)
        plan.layers[index].v_dims = pick(geo.v_dim)
        if with_units:
            plan.layers[index].ffn = pick(geo.intermediate_size)
    if with_units:
        geo = plan.source.layers[2]
        plan.layers[2].kv_heads = [1]
        plan.layers[2].heads = [g2 for g2 in range(geo.num_heads) if g2 // geo.heads_per_group == 1][:2]
        plan.hidden = sorted(torch.randperm(plan.source.hidden_size, generator=g)[:-5].tolist())
    return plan


def masked_and_pruned(model, plan, ids):
    with torch.no_grad():
        with RuntimeMasks(model) as masks:
            masks.set_from_plan(plan)
            masked = model(input_ids=ids).logits
        apply_plan(model, plan)
        pruned = model(input_ids=ids).logits
    return masked, pruned


@pytest.mark.parametrize("seed", [0, 1])
def test_rope_pair_pruning_is_exact(tiny_model, seed):
    plan = head_dim_plan(tiny_model, seed)
    ids = input_batch()
    masked, pruned = masked_and_pruned(tiny_model, plan, ids)
    torch.testing.assert_close(pruned, masked, atol=TOL, rtol=TOL)
    # The physically pruned model carries the per-layer dims and the kept rotary frequencies.
    config = tiny_model.config
    assert config.model_type.startswith("tailored_")
    for index, lp in enumerate(plan.layers):
        assert config.layer_qk_head_dims[index] == (2 * len(lp.qk_pairs) if lp.qk_pairs else 8)
        assert config.layer_v_head_dims[index] == (len(lp.v_dims) if lp.v_dims else 8)
        assert config.layer_rotary_indices[index] == (lp.qk_pairs if lp.qk_pairs else [0, 1, 2, 3])
    assert count_parameters(tiny_model) == plan.num_parameters()["pruned"]


def test_single_dims_instead_of_pairs_would_not_be_exact():
    """Why pairs: zeroing dim i alone leaves its rotate-half partner i+d/2 leaking into the rotated query."""
    model = make_tiny_model("llama")
    ids = input_batch()
    plan = PruningPlan.dense(model)
    plan.layers[0].qk_pairs = [0, 1, 3]  # drops dims 2 and 6 of every head
    masked, pruned = masked_and_pruned(model, plan, ids)
    torch.testing.assert_close(pruned, masked, atol=TOL, rtol=TOL)
    fresh = make_tiny_model("llama")
    attn = fresh.model.layers[0].self_attn
    with torch.no_grad():
        rows = torch.arange(6)[:, None] * 8 + 2
        attn.q_proj.weight[rows.flatten()] = 0.0  # dim 2 only, partner 6 kept
        attn.k_proj.weight[(torch.arange(2)[:, None] * 8 + 2).flatten()] = 0.0
        half = fresh(input_ids=ids).logits
    assert (half - pruned).abs().max() > 1e-3


def test_pruned_with_lora_matches_masked_and_keeps_training():
    model = get_peft_model(make_tiny_model("qwen2", tied=True), LoraConfig(r=4, target_modules=LORA_TARGETS))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    model.eval()
    plan = head_dim_plan(model, 3)
    ids = input_batch()
    masked, pruned = masked_and_pruned(model, plan, ids)
    torch.testing.assert_close(pruned, masked, atol=TOL, rtol=TOL)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_A" in n and p.grad is not None]
    assert lora and all(torch.isfinite(p.grad).all() for p in lora)


@pytest.mark.parametrize("kind,tied", [("llama", True), ("mistral", False), ("qwen2", True)])
def test_save_reload_and_generate_with_cache(tmp_path, kind, tied):
    model = make_tiny_model(kind, tied=tied)
    plan = head_dim_plan(model, 5)
    ids = input_batch()
    _, pruned = masked_and_pruned(model, plan, ids)
    save_pruned(model, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == f"tailored_{kind}" and len(saved["layer_rotary_indices"]) == 3
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, pruned, atol=TOL, rtol=TOL)
    prompt = ids[:1, :5]
    cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    PruningPlan.load(tmp_path / "out").validate()


def test_plan_json_round_trip_and_backward_compatible_format():
    model = make_tiny_model("llama")
    plan = head_dim_plan(model, 7)
    restored = PruningPlan.from_dict(json.loads(plan.to_json()))
    assert restored.to_dict() == plan.to_dict()
    assert restored.pruned_geometry() == plan.pruned_geometry()
    # A plan without head-dim pruning writes exactly the keys it always did, and old JSON loads unchanged.
    dense_like = PruningPlan.dense(model)
    dense_like.layers[0].ffn = dense_like.layers[0].ffn[:10]
    data = dense_like.to_dict()
    assert set(data["layers"][0]) == {"heads", "kv_heads", "ffn"}
    assert set(data["source"]["layers"][0]) == {"num_heads", "num_kv_heads", "head_dim", "intermediate_size"}
    assert "qk_head_dim" not in data["summary"]["per_layer"][0]
    assert PruningPlan.from_dict(data).pruned_geometry() == dense_like.pruned_geometry()


def test_compose_head_dim_plans():
    ids = input_batch()
    twice = make_tiny_model("llama", seed=3)
    first = head_dim_plan(twice, 1, with_units=False)
    apply_plan(twice, first)
    second = PruningPlan.dense(twice)
    for index, geo in enumerate(second.source.layers):
        second.layers[index].qk_pairs = list(range(geo.num_rotary_pairs))[-1:]
        second.layers[index].v_dims = list(range(geo.v_dim))[:1]
    apply_plan(twice, second)
    once = make_tiny_model("llama", seed=3)
    composed = compose_plans(first, second)
    apply_plan(once, composed)
    assert twice.tailored_hf_plan.to_dict()["layers"] == composed.to_dict()["layers"]
    with torch.no_grad():
        torch.testing.assert_close(twice(input_ids=ids).logits, once(input_ids=ids).logits, atol=TOL, rtol=TOL)


def test_soft_pair_masks_are_differentiable():
    model = make_tiny_model("llama")
    mask = torch.full((4,), 0.7, requires_grad=True)
    with RuntimeMasks(model) as masks:
        masks.set_qk_pairs(0, mask)
        masks.set_v_dims(1, torch.full((8,), 0.5))
        model(input_ids=input_batch()).logits.square().mean().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_bad_head_dim_plans_are_rejected():
    model = make_tiny_model("llama")
    plan = PruningPlan.dense(model)
    plan.layers[0].qk_pairs = [0, 4]  # only 4 pairs for head_dim 8
    with pytest.raises(PlanError, match="qk_pairs"):
        plan.validate(model)
    plan.layers[0].qk_pairs = []
    with pytest.raises(PlanError, match="removes every unit"):
        plan.validate(model)
    plan.layers[0].qk_pairs = None
    plan.layers[1].v_dims = [3, 1]
    with pytest.raises(PlanError, match="sorted"):
        plan.validate(model)
    with pytest.raises(ValueError, match="expected 4"):
        RuntimeMasks(model).set_qk_pairs(0, torch.ones(8))
    plan.layers[1].v_dims = [1, 3]
    with pytest.raises(StockConfigUnavailableError, match="head dims"):
        apply_plan(model, plan, config_format="stock")


def test_single_head_dim_methods_refuse_head_dim_pruned_models():
    from tailored_hf.methods.depgraph import DepGraphConfig, prune
    from tailored_hf.structure.simple import magnitude_plan

    model = make_tiny_model("llama")
    apply_plan(model, head_dim_plan(model, seed=0))
    with pytest.raises(ValueError, match="pruned q/k or v head dims"):
        magnitude_plan(model, 0.2)
    with pytest.raises(ValueError, match="pruned q/k or v head dims"):
        prune(model, DepGraphConfig(target_sparsity=0.2), calibration=input_batch(length=8))
