"""Fixtures for the Hub tests: a local Hub-compatible server and tiny pruned models saved with `save_pruned`.

`HF_ENDPOINT` is never set in this process: in-process pushes pass `endpoint=` explicitly, and subprocesses that
need the client's default endpoint (`from_pretrained(repo_id)`, `trainer.push_to_hub()`) get it in their own env.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tailored_hf.structure import PruningPlan, apply_plan, save_pruned
from tailored_hf.structure.simple import magnitude_plan

from ..conftest import REPO_ROOT, make_tiny_model
from .hub_server import LocalHub

SECRET_TOKEN = "hf_localTestTokenDoNotLeak123"


@pytest.fixture
def local_hub(monkeypatch):
    """A fresh server that requires `SECRET_TOKEN` for writes; the client's offline switch is lifted for the test."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = LocalHub(token=SECRET_TOKEN)
    yield hub
    hub.stop()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(90)} | {"[UNK]": 90, "[PAD]": 91, "[EOS]": 92}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def pruned_tiny(uniform: bool = True):
    """A tiny llama pruned by magnitude (uniform layers) or with per-layer sizes (heterogeneous)."""
    model = make_tiny_model("llama", num_hidden_layers=3, intermediate_size=40)
    if uniform:
        plan = magnitude_plan(model, 0.3)
    else:
        plan = PruningPlan.from_masks(
            model,
            heads={0: torch.tensor([1, 1, 0, 1, 1, 0]), 1: torch.tensor([1, 0, 0, 1, 0, 0])},
            ffn={0: (torch.arange(40) < 30).float(), 2: (torch.arange(40) % 2 == 0).float()},
        )
    apply_plan(model, plan)
    return model, plan


@pytest.fixture
def pruned_dir(tmp_path) -> Path:
    model, _ = pruned_tiny(uniform=True)
    return save_pruned(model, tmp_path / "out" / "model", tiny_tokenizer(), extra_metadata={"method": "magnitude"})


def run_python(code: str, endpoint: str, hf_home: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose Hub endpoint is `endpoint` (online, one thread, own HF cache)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def save_tiny_base(path: Path, tokenizer=None, **overrides) -> Path:
    """A tiny random llama + a tokenizer (word-level by default) saved as a local base model (recipes accept local
    paths); the model's vocabulary, EOS and pad ids follow a given `tokenizer`."""
    sizes = dict(num_hidden_layers=4, intermediate_size=64, max_position_embeddings=256)
    if tokenizer is not None:
        sizes.update(
            vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
    sizes.update(overrides)
    model = make_tiny_model("llama", **sizes)
    model.save_pretrained(path)
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    return path


#: `--set` overrides that make a recipe run in seconds on the tiny model.
TINY_OVERRIDES = [
    "eval_limit=6",
    "dev_size=6",
    "k_shots=8",
    "ppl_windows=2",
    "num_calibration_samples=2",
    "calibration_seq_len=32",
    "max_steps=2",
    "save_steps=1",
    "max_length=64",
    "per_device_train_batch_size=4",
]


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A real pipeline run (boolq-20 recipe, tiny base model): OUTPUT with model/, report.json, report.md."""
    from tailored_hf.pipeline import run
    from tailored_hf.recipes import load_recipe

    root = tmp_path_factory.mktemp("tiny_run")
    base = save_tiny_base(root / "base")
    out = root / "out"
    cfg = load_recipe(
        REPO_ROOT / "recipes" / "tailored-llama" / "boolq-20.yaml",
        [f"model={base}", "save_strategy=no", *TINY_OVERRIDES],
        output_dir=str(out),
    )
    run(cfg)
    return out
