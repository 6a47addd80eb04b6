"""Fixtures for the data-layer tests: the real shared data directory and a small offline tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TOKENIZER_TRAINING_CHARS = 200_000
TOKENIZER_VOCAB_SIZE = 600
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data directory (`../shared/data` from the repository root); skips if it is missing."""
    if not (SHARED_DATA_DIR / "README.md").is_file():
        pytest.skip(f"shared data directory not found at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


@pytest.fixture(scope="session")
def tokenizer(data_dir: Path):
    """A byte-level BPE tokenizer trained offline on the first characters of the real book calibration sample."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    with open(data_dir / "calibration" / "book_sample.jsonl", encoding="utf-8") as handle:
        text = json.loads(handle.readline())["text"][:TOKENIZER_TRAINING_CHARS]
    model = tokenizers.Tokenizer(tokenizers.models.BPE())
    model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=["</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    model.train_from_iterator(text.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model, eos_token="</s>")


@pytest.fixture
def chat_tokenizer(tokenizer):
    """The test tokenizer with a minimal chat template."""
    tokenizer.chat_template = CHAT_TEMPLATE
    yield tokenizer
    tokenizer.chat_template = None
