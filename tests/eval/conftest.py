"""Fixtures for the evaluation tests: a tiny random LLaMA with an offline-trained byte-level BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CORPUS = [
    "Question: How do you open a jar?\nAnswer: Twist the lid counter-clockwise.",
    "The quick brown fox jumps over the lazy dog. Café naïve résumé — ünïcödé text.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Is the sky blue? yes no maybe. The river flows to the sea.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ..conftest import train_bpe_tokenizer

    return train_bpe_tokenizer(
        CORPUS * 10, vocab_size=400, special_tokens={"bos_token": "<bos>", "eos_token": "<eos>"}
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from ..conftest import make_tiny_model

    return make_tiny_model(
        "llama",
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )


@pytest.fixture(scope="session")
def real_model():
    if not DATA_DIR.is_dir():
        pytest.skip("shared data directory not found")
    try:
        from tailored_hf.loading import load_model

        return load_model("smollm2-135m-instruct")
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"SmolLM2-135M not available: {err}")
