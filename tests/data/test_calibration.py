"""Calibration text and windows."""

from __future__ import annotations

import pytest
import torch

from tailored_hf.data import DATA_DIR_ENV_VAR, calibration_batches, load_calibration_texts, load_lm_text


def test_sources(data_dir):
    book = load_calibration_texts("book", data_dir=data_dir)
    assert len(book) == 2 and sum(map(len, book)) > 1_500_000
    assert len(load_calibration_texts("c4", data_dir=data_dir)) == 2000
    wiki = load_lm_text("wikitext2", data_dir=data_dir)
    assert wiki.startswith("\n\n = Robert Boulter = \n")
    assert len(load_lm_text("ptb", data_dir=data_dir)) > 300_000
    with pytest.raises(ValueError, match="Unknown calibration source"):
        load_calibration_texts("bookcorpus", data_dir=data_dir)


def test_book_windows_shape(data_dir, tokenizer):
    batch = calibration_batches(tokenizer, "book", data_dir=data_dir)
    assert batch.shape == (20, 128) and batch.dtype == torch.long
    assert tokenizer.pad_token is None  # fixed-length windows need no padding


def test_windows_deterministic(data_dir, tokenizer):
    # Two real documents (the first 20,000 characters of each book) keep this fast; same sampling path as "book".
    texts = [text[:20_000] for text in load_calibration_texts("book", data_dir=data_dir)]
    a = calibration_batches(tokenizer, texts=texts, n_samples=8, seq_len=64, seed=0)
    b = calibration_batches(tokenizer, texts=texts, n_samples=8, seq_len=64, seed=0)
    c = calibration_batches(tokenizer, texts=texts, n_samples=8, seq_len=64, seed=1)
    assert a.shape == (8, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    decoded = tokenizer.decode(a[0])
    assert decoded in texts[0] or decoded in texts[1]


def test_c4_windows_come_from_distinct_documents(data_dir, tokenizer):
    batch = calibration_batches(tokenizer, "c4", n_samples=20, seq_len=128, seed=0, data_dir=data_dir)
    assert batch.shape == (20, 128)
    assert len({tuple(row.tolist()) for row in batch}) == 20


def test_path_source_and_short_text(data_dir, tokenizer, tmp_path):
    path = tmp_path / "first_line.txt"
    path.write_text(load_calibration_texts("book", data_dir=data_dir)[0][:2000])
    n_tokens = len(tokenizer(path.read_text(), add_special_tokens=False)["input_ids"])
    batch = calibration_batches(tokenizer, path, n_samples=3, seq_len=n_tokens)
    assert batch.shape == (3, n_tokens)
    with pytest.raises(ValueError, match=f"longest document has {n_tokens} tokens"):
        calibration_batches(tokenizer, path, n_samples=3, seq_len=n_tokens + 1)


def test_bad_n_samples(tokenizer, data_dir):
    with pytest.raises(ValueError, match="n_samples must be positive"):
        calibration_batches(tokenizer, n_samples=0, data_dir=data_dir)


def test_packaged_calibration(tokenizer, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV_VAR, raising=False)
    assert len(load_calibration_texts("book")) == 2
    assert calibration_batches(tokenizer, "wikitext2", n_samples=60, seq_len=128).shape == (60, 128)
    assert calibration_batches(tokenizer, "book", n_samples=20, seq_len=128).shape == (20, 128)
    with pytest.raises(ValueError, match="No 'c4' calibration file"):
        load_calibration_texts("c4")


def test_packed_windows_keep_every_token_in_seeded_document_order(tokenizer):
    """All documents' tokens, each document followed by EOS, cut into full windows; the order follows the seed."""
    import random

    from tailored_hf.data import packed_windows

    texts = [f"document {i} " + "word " * (5 + 3 * i) for i in range(6)]
    windows = packed_windows(tokenizer, texts=texts, seq_len=8, seed=3)
    stream: list[int] = []
    for index in random.Random(3).sample(range(len(texts)), len(texts)):
        stream += tokenizer(texts[index], add_special_tokens=False)["input_ids"]
        stream += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    assert windows.dtype == torch.long and windows.shape == (len(stream) // 8, 8)
    assert windows.flatten().tolist() == stream[: windows.numel()]
    assert not torch.equal(windows, packed_windows(tokenizer, texts=texts, seq_len=8, seed=4))
    # A cap keeps the first windows of the same stream, and never pads past what the documents hold.
    assert torch.equal(packed_windows(tokenizer, texts=texts, seq_len=8, seed=3, max_windows=2), windows[:2])
    assert torch.equal(packed_windows(tokenizer, texts=texts, seq_len=8, seed=3, max_windows=10**6), windows)
    with pytest.raises(ValueError, match="fewer than one window"):
        packed_windows(tokenizer, texts=["word"], seq_len=64)
    with pytest.raises(ValueError, match="seq_len must be positive"):
        packed_windows(tokenizer, texts=texts, seq_len=0)
    with pytest.raises(ValueError, match="max_windows must be positive"):
        packed_windows(tokenizer, texts=texts, seq_len=8, max_windows=0)
