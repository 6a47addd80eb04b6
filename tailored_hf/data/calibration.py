"""Calibration text for pruning (importance estimation) and language-modeling evaluation text."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import torch

from .sources import _read_json_records, resolve_data_dir

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SOURCE = "book"
DEFAULT_CALIBRATION_SAMPLES = 20
"""LLM-Pruner's default number of calibration samples (`--num_examples`)."""
DEFAULT_CALIBRATION_SEQ_LEN = 128
"""LLM-Pruner's default calibration window length (`--max_seq_len`)."""

CALIBRATION_FILES: dict[str, tuple[str, ...]] = {
    "book": ("calibration/book_sample.jsonl",),
    "c4": ("calibration/c4_sample_1.jsonl", "calibration/c4_sample_2.jsonl"),
    "wikitext2": ("lm/wikitext2/wikitext-2-raw-v1.test.rows.json",),
}
LM_TEXT_FILES: dict[str, str] = {
    "wikitext2": "lm/wikitext2/wikitext-2-raw-v1.test.rows.json",
    "ptb": "lm/ptb/ptb.valid.txt",
}
WIKITEXT_ROW_SEPARATOR = "\n\n"
"""Separator LLM-Pruner / Wanda use to join the `text` rows of `wikitext-2-raw-v1`."""
TEXT_COLUMN = "text"


def _texts_from_file(path: Path) -> list[str]:
    name = path.name.lower()
    if name.endswith((".txt", ".tokens")):
        return [path.read_text(encoding="utf-8")]
    if not name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        raise ValueError(f"Unsupported calibration file {path.name!r}; use .txt, .json, .jsonl or .jsonl.gz.")
    if name.endswith(".json"):
        payload = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(payload, list) and all(isinstance(item, str) for item in payload):
            return list(payload)
    records = _read_json_records(path)
    if records and TEXT_COLUMN not in records[0]:
        raise ValueError(f"{path}: calibration records need a {TEXT_COLUMN!r} field, got {sorted(records[0])}.")
    return [record[TEXT_COLUMN] for record in records]


def load_calibration_texts(
    source: str | os.PathLike = DEFAULT_CALIBRATION_SOURCE, data_dir: str | os.PathLike | None = None
) -> list[str]:
    """
    Loads calibration documents.

    Args:
        source (`str` or `os.PathLike`, defaults to `"book"`): `"book"` (two public-domain books, standing in for
            BookCorpus), `"c4"` (2,000 C4 documents), `"wikitext2"` (the WikiText-2 raw test split as one document), or
            a path to a `.txt` file (one document), a JSON list of strings, or a JSON(L) file of `{"text": ...}` rows.
        data_dir (`str` or `os.PathLike`, *optional*): Data directory; defaults to `$TAILORED_HF_DATA_DIR`, then the
            packaged subset (which ships a short excerpt of the book sample and of WikiText-2, no C4).

    Returns:
        `list[str]`: The non-empty documents.
    """
    key = str(source)
    if key in CALIBRATION_FILES:
        directory = resolve_data_dir(data_dir)
        files = [directory / rel for rel in CALIBRATION_FILES[key] if (directory / rel).is_file()]
        if not files:
            raise ValueError(
                f"No {key!r} calibration file under {str(directory)!r} (expected {list(CALIBRATION_FILES[key])}). "
                "Pass `data_dir` (or set $TAILORED_HF_DATA_DIR) to a full data directory, or a file path as `source`."
            )
        texts: list[str] = []
        for file in files:
            loaded = _texts_from_file(file)
            texts.extend([WIKITEXT_ROW_SEPARATOR.join(loaded)] if key == "wikitext2" else loaded)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(
                f"Unknown calibration source {key!r}: use one of {sorted(CALIBRATION_FILES)} or an existing file path."
            )
        texts = _texts_from_file(path)
    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise ValueError(f"Calibration source {key!r} has no non-empty text.")
    return texts


def load_lm_text(name: str = "wikitext2", data_dir: str | os.PathLike | None = None) -> str:
    """
    Returns a language-modeling evaluation text as one string, joined as LLM-Pruner does.

    `"wikitext2"`: `wikitext-2-raw-v1` test rows joined with `"\\n\\n"`; `"ptb"`: PTB validation sentences joined
    with a space (as `" ".join(ptb_text_only["sentence"])`). The packaged subset only has part of WikiText-2.
    """
    if name not in LM_TEXT_FILES:
        raise ValueError(f"Unknown LM text {name!r}; use one of {sorted(LM_TEXT_FILES)}.")
    directory = resolve_data_dir(data_dir)
    path = directory / LM_TEXT_FILES[name]
    if not path.is_file():
        raise ValueError(
            f"{str(path)!r} not found. Pass `data_dir` (or set $TAILORED_HF_DATA_DIR) to a full data directory."
        )
    if name == "wikitext2":
        return WIKITEXT_ROW_SEPARATOR.join(json.loads(path.read_text(encoding="utf-8")))
    return " ".join(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # Windows come from the middle of documents: no BOS/EOS, and no "sequence longer than model max" warning.
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def packed_windows(
    tokenizer: Any,
    source: str | os.PathLike = "c4",
    seq_len: int = DEFAULT_CALIBRATION_SEQ_LEN,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    texts: list[str] | None = None,
    max_windows: int | None = None,
) -> torch.LongTensor:
    """
    Every token of a text source, packed into windows of `seq_len` tokens: the documents in one seeded order, each
    followed by the tokenizer's EOS token (when it has one), cut into consecutive windows; the last partial window is
    dropped. Training text for recovery (e.g. distillation from the dense model), where `calibration_batches` draws
    a few windows to score importance.

    Args:
        tokenizer: A tokenizer callable as `tokenizer(text)["input_ids"]`.
        source (`str` or `os.PathLike`, defaults to `"c4"`): See [`load_calibration_texts`].
        seq_len (`int`, defaults to 128): Tokens per window.
        seed (`int`, defaults to 0): Seed of the document order.
        data_dir (`str` or `os.PathLike`, *optional*): Data directory.
        texts (`list[str]`, *optional*): Documents to use instead of loading `source`.
        max_windows (`int`, *optional*): Stop once this many windows are packed (the first windows of the uncapped
            result), so that a large source is not tokenized whole for a short run (e.g. `max_steps * batch_size`).

    Returns:
        `torch.LongTensor` of shape `[windows, seq_len]`.

    Raises:
        `ValueError`: `seq_len <= 0` or `max_windows <= 0`, or the documents hold fewer than `seq_len` tokens in all.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}.")
    if max_windows is not None and max_windows <= 0:
        raise ValueError(f"max_windows must be positive when given, got {max_windows}.")
    documents = texts if texts is not None else load_calibration_texts(source, data_dir=data_dir)
    separator = [] if getattr(tokenizer, "eos_token_id", None) is None else [tokenizer.eos_token_id]
    stream: list[int] = []
    enough = None if max_windows is None else max_windows * seq_len
    for index in random.Random(seed).sample(range(len(documents)), len(documents)):
        stream += _token_ids(tokenizer, documents[index]) + separator
        if enough is not None and len(stream) >= enough:
            break
    count = len(stream) // seq_len if max_windows is None else min(len(stream) // seq_len, max_windows)
    if count == 0:
        raise ValueError(f"The documents hold {len(stream)} tokens, fewer than one window of {seq_len}.")
    return torch.tensor(stream[: count * seq_len], dtype=torch.long).view(count, seq_len)


def calibration_batches(
    tokenizer: Any,
    source: str | os.PathLike = DEFAULT_CALIBRATION_SOURCE,
    n_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    seq_len: int = DEFAULT_CALIBRATION_SEQ_LEN,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    texts: list[str] | None = None,
) -> torch.LongTensor:
    """
    Draws `n_samples` random windows of exactly `seq_len` tokens from a calibration source (LLM-Pruner style).

    With at least `n_samples` documents (e.g. C4), each sample comes from a different random document long enough
    for a window (as LLM-Pruner / Wanda do). With fewer documents (the 2-document book sample), windows are drawn
    uniformly over all valid window positions of all documents. Tokens are produced without special tokens.

    Args:
        tokenizer: A tokenizer callable as `tokenizer(text)["input_ids"]`; no pad token is needed.
        source (`str` or `os.PathLike`, defaults to `"book"`): See [`load_calibration_texts`].
        n_samples (`int`, defaults to 20): Number of windows.
        seq_len (`int`, defaults to 128): Tokens per window.
        seed (`int`, defaults to 0): Random seed.
        data_dir (`str` or `os.PathLike`, *optional*): Data directory.
        texts (`list[str]`, *optional*): Documents to use instead of loading `source`.

    Returns:
        `torch.LongTensor` of shape `[n_samples, seq_len]`.

    Raises:
        `ValueError`: `n_samples <= 0`, `seq_len <= 0`, or no document has `seq_len` tokens (the message gives the
            longest available length).
    """
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}.")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}.")
    documents = texts if texts is not None else load_calibration_texts(source, data_dir=data_dir)
    if not documents:
        raise ValueError("No calibration documents to sample from.")
    rng = random.Random(seed)
    windows: list[list[int]] = []
    tokenized: dict[int, list[int]] = {}

    if len(documents) >= n_samples:
        for index in rng.sample(range(len(documents)), len(documents)):
            ids = tokenized.setdefault(index, _token_ids(tokenizer, documents[index]))
            if len(ids) >= seq_len:
                start = rng.randint(0, len(ids) - seq_len)
                windows.append(ids[start : start + seq_len])
                if len(windows) == n_samples:
                    break
        if windows and len(windows) < n_samples:
            logger.warning(
                "Only %d of %d documents have %d tokens; drawing the remaining windows from those documents.",
                len(windows),
                n_samples,
                seq_len,
            )

    if len(windows) < n_samples:
        for index, text in enumerate(documents):
            if index not in tokenized:
                tokenized[index] = _token_ids(tokenizer, text)
        eligible = [index for index in range(len(documents)) if len(tokenized[index]) >= seq_len]
        if not eligible:
            longest = max(len(ids) for ids in tokenized.values())
            raise ValueError(
                f"Calibration text is too short for seq_len={seq_len}: the longest document has {longest} tokens. "
                f"Use seq_len <= {longest} or a longer source (e.g. data_dir with the full book sample)."
            )
        weights = [len(tokenized[index]) - seq_len + 1 for index in eligible]
        while len(windows) < n_samples:
            index = rng.choices(eligible, weights=weights)[0]
            ids = tokenized[index]
            start = rng.randint(0, len(ids) - seq_len)
            windows.append(ids[start : start + seq_len])

    return torch.tensor(windows, dtype=torch.long)
