"""Property-based tests of the structure engine (hypothesis).

Random tiny LLaMA-family configs x random valid plans always give a physically pruned model whose logits equal the
masked model's and that reloads with identical logits. Random invalid plans always raise `PlanError` (a
`ValueError`) with a message, never an `IndexError` or a silently wrong shape.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

import tailored_hf  # noqa: F401  (registers the tailored_* Auto classes for the reload)
from tailored_hf.structure import PlanError, PruningPlan, RuntimeMasks, apply_plan, count_parameters, save_pruned

from ..conftest import make_tiny_model

TOL = 1e-5
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("TAILORED_HF_PROPERTY_EXAMPLES", "30")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def tiny_configs(draw) -> dict:
    """Kind, tying and sizes of a tiny model: GQA with 1-3 KV heads of 1-3 query heads, 1-3 layers."""
    kv_heads = draw(st.integers(1, 3))
    per_group = draw(st.integers(1, 3))
    heads = kv_heads * per_group
    return {
        "kind": draw(st.sampled_from(["llama", "mistral", "qwen2"])),
        "tied": draw(st.booleans()),
        "num_hidden_layers": draw(st.integers(1, 3)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": draw(st.sampled_from([2, 4, 8])),
        "hidden_size": heads * draw(st.integers(2, 6)),
        "intermediate_size": draw(st.integers(2, 24)),
        "vocab_size": 40,
    }


def build(config: dict) -> torch.nn.Module:
    sizes = {k: v for k, v in config.items() if k not in ("kind", "tied")}
    return make_tiny_model(config["kind"], tied=config["tied"], **sizes)


def subset(draw, n: int, min_size: int = 1) -> list[int]:
    return sorted(draw(st.sets(st.integers(0, n - 1), min_size=min_size, max_size=n)))


@st.composite
def model_and_plan(draw):
    config = draw(tiny_configs())
    model = build(config)
    plan = PruningPlan.dense(model)
    for index, geo in enumerate(plan.source.layers):
        kv = subset(draw, geo.num_kv_heads)
        inside = subset(draw, geo.heads_per_group)  # GQA: the same query heads inside every kept group
        plan.layers[index].kv_heads = kv
        plan.layers[index].heads = sorted(k * geo.heads_per_group + j for k in kv for j in inside)
        plan.layers[index].ffn = subset(draw, geo.intermediate_size)
    if draw(st.booleans()):
        plan.hidden = subset(draw, plan.source.hidden_size)
    if plan.source.num_layers > 1 and draw(st.booleans()):
        plan.removed_layers = [draw(st.integers(0, plan.source.num_layers - 1))]
    return model, plan


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@PROPERTY_SETTINGS
@given(model_and_plan(), st.integers(0, 2**16))
def test_random_valid_plan_prunes_exactly_and_reloads(case, seed):
    model, plan = case
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(seed))
    with RuntimeMasks(model) as masks:
        masks.set_from_plan(plan)
        masked = logits(model, ids)
    apply_plan(model, plan)
    assert count_parameters(model) == plan.num_parameters()["pruned"]
    pruned = logits(model, ids)
    torch.testing.assert_close(pruned, masked, atol=TOL, rtol=TOL)
    with tempfile.TemporaryDirectory() as tmp:
        save_pruned(model, tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        torch.testing.assert_close(logits(reloaded, ids), pruned, atol=0, rtol=0)


@st.composite
def model_and_broken_plan(draw):
    """A valid plan with one random corruption that the engine must reject."""
    config = draw(tiny_configs())
    model = build(config)
    plan = PruningPlan.dense(model)
    index = draw(st.integers(0, plan.source.num_layers - 1))
    geo = plan.source.layers[index]
    corruption = draw(
        st.sampled_from(
            [
                "empty_heads",
                "empty_ffn",
                "empty_hidden",
                "ffn_out_of_range",
                "head_out_of_range",
                "hidden_negative",
                "all_layers",
                "layer_out_of_range",
                "orphan_head",
                "other_model",
            ]
        )
    )
    layer = plan.layers[index]
    if corruption == "empty_heads":
        layer.heads, layer.kv_heads = [], []
    elif corruption == "empty_ffn":
        layer.ffn = []
    elif corruption == "empty_hidden":
        plan.hidden = []
    elif corruption == "ffn_out_of_range":
        layer.ffn = [*layer.ffn, geo.intermediate_size + draw(st.integers(0, 5))]
    elif corruption == "head_out_of_range":
        layer.heads = [*layer.heads, geo.num_heads + draw(st.integers(0, 5))]
    elif corruption == "hidden_negative":
        plan.hidden = [-1 - draw(st.integers(0, 3)), *plan.hidden[1:]]
    elif corruption == "all_layers":
        plan.removed_layers = list(range(plan.source.num_layers))
    elif corruption == "layer_out_of_range":
        plan.removed_layers = [plan.source.num_layers + draw(st.integers(0, 3))]
    elif corruption == "orphan_head":  # a query head kept while its KV head is removed
        if geo.num_kv_heads < 2:
            layer.kv_heads = [*layer.kv_heads, geo.num_kv_heads]
        else:
            layer.kv_heads = layer.kv_heads[1:]
    elif corruption == "other_model":
        other = dict(config, hidden_size=config["hidden_size"] + config["num_attention_heads"])
        model = build(other)
    return model, plan, corruption


@PROPERTY_SETTINGS
@given(model_and_broken_plan())
def test_random_invalid_plan_raises_plan_error(case):
    model, plan, corruption = case
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    with pytest.raises(PlanError) as error:
        apply_plan(model, plan)
    assert isinstance(error.value, ValueError) and len(str(error.value)) > 10, corruption
    assert {name: tuple(p.shape) for name, p in model.named_parameters()} == shapes  # nothing half-sliced


@PROPERTY_SETTINGS
@given(model_and_broken_plan())
def test_invalid_plan_json_round_trip_still_rejected(case):
    model, plan, corruption = case
    with pytest.raises(PlanError):
        apply_plan(model, PruningPlan.from_dict(json.loads(plan.to_json())))
