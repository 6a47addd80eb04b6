"""The engine on the real SmolLM2-135M: prune ~20% by magnitude, save, reload, WikiText-2 perplexity, logits."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tailored_hf import apply_plan, load_model, save_pruned
from tailored_hf.data import load_lm_text
from tailored_hf.structure import RuntimeMasks, count_parameters
from tailored_hf.structure.simple import magnitude_plan

WINDOWS, SEQ_LEN = 4, 128


def wikitext_windows(tokenizer, data_dir) -> torch.Tensor:
    ids = tokenizer(load_lm_text("wikitext2", data_dir=data_dir), return_tensors="pt").input_ids[0]
    return ids[: WINDOWS * SEQ_LEN].reshape(WINDOWS, SEQ_LEN)


def token_perplexity(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(model(input_ids=windows, labels=windows).loss.item())


@pytest.mark.slow
def test_prune_save_reload_smollm2(tmp_path, shared_data_dir):
    model, tokenizer = load_model("smollm2-135m-instruct")
    model.eval()
    windows = wikitext_windows(tokenizer, shared_data_dir)
    dense_ppl = token_perplexity(model, windows)
    dense_params = count_parameters(model)
    assert dense_params == 134_515_008

    plan = magnitude_plan(model, 0.2)
    # Masked == pruned, checked in float64 (exact there; in fp32 30 layers of different summation order give ~1e-3).
    reference = copy.deepcopy(model).double()
    with RuntimeMasks(reference) as masks:
        masks.set_from_plan(plan)
        with torch.no_grad():
            masked = reference(input_ids=windows[:1]).logits
    apply_plan(reference, plan)
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=windows[:1]).logits, masked, atol=1e-9, rtol=1e-9)
    del reference
    apply_plan(model, plan)
    assert abs(1 - count_parameters(model) / dense_params - 0.2) < 0.01
    with torch.no_grad():
        pruned_logits = model(input_ids=windows[:1]).logits
    pruned_ppl = token_perplexity(model, windows)
    assert math.isfinite(pruned_ppl) and pruned_ppl > dense_ppl

    save_pruned(model, tmp_path / "smol", tokenizer)
    reloaded, _ = load_model(str(tmp_path / "smol"))
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=windows[:1]).logits, pruned_logits, atol=0, rtol=0)
    assert token_perplexity(reloaded, windows) == pytest.approx(pruned_ppl, rel=1e-6)
    # Uniform magnitude plan -> stock llama config, smaller checkpoint.
    assert reloaded.config.model_type == "llama"
    size = sum(p.stat().st_size for p in (tmp_path / "smol").glob("*.safetensors"))
    assert size < 0.85 * dense_params * 4
