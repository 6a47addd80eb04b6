"""The two perplexity protocols on the real WikiText-2 / PTB files, with a tiny model (fast).

LLM-Pruner token perplexity: windows, PTB text. lm-eval `wikitext`: the 62 rebuilt documents, and word / byte
perplexity and bits-per-byte that are the same total log-likelihood normalised three ways (as lm-eval defines them).
"""

from __future__ import annotations

import json
import math
import re

import pytest

from tailored_hf.eval.lm_eval_bridge import wikitext_documents
from tailored_hf.eval.perplexity import llm_pruner_perplexity, lm_eval_wikitext_perplexity, load_ppl_text

from .conftest import DATA_DIR

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="shared data directory not found")
WIKITEXT_TEST_DOCUMENTS = 62  # EleutherAI/wikitext_document_level, wikitext-2-raw-v1, test split


def wikitext_rows() -> list[str]:
    return json.loads((DATA_DIR / "lm" / "wikitext2" / "wikitext-2-raw-v1.test.rows.json").read_text())


def test_wikitext_documents_rebuilt():
    docs = wikitext_documents(wikitext_rows())
    assert len(docs) == WIKITEXT_TEST_DOCUMENTS
    assert all(re.match(r"^ = [^=]", doc) for doc in docs)  # every document starts at a top-level title
    assert sum(len(d) for d in docs) > 1_000_000


def test_ptb_and_wikitext_token_perplexity(tiny_model, tiny_tokenizer):
    ptb = load_ppl_text("ptb", DATA_DIR)
    assert ptb.count("\n\n") > 3000 and "<unk>" in ptb  # ptb.valid.txt lines joined with a blank line
    results = llm_pruner_perplexity(tiny_model, tiny_tokenizer, DATA_DIR, seq_len=32, max_windows=3, batch_size=2)
    for name in ("wikitext2", "ptb"):
        res = results[name]
        assert res.n_windows == 3 and res.n_tokens == 3 * 31 and res.seq_len == 32
        assert math.isfinite(res.perplexity) and res.perplexity > 1
        assert math.isclose(math.log(res.perplexity), res.nll, rel_tol=1e-9)


def test_lm_eval_wikitext_word_perplexity(tiny_model, tiny_tokenizer):
    out = lm_eval_wikitext_perplexity(tiny_model, tiny_tokenizer, DATA_DIR, limit=1, batch_size=4, max_length=256)
    doc = wikitext_documents(wikitext_rows())[0]
    words, n_bytes = len(re.split(r"\s+", doc)), len(doc.encode("utf-8"))
    assert out["n"] == 1
    total_nll = math.log(out["word_perplexity"]) * words
    assert math.isclose(math.log(out["byte_perplexity"]) * n_bytes, total_nll, rel_tol=1e-6)
    assert math.isclose(out["bits_per_byte"] * n_bytes * math.log(2), total_nll, rel_tol=1e-6)
    assert out["word_perplexity"] > out["byte_perplexity"] > 1
