"""Prompt selection on real dev rows: every candidate scored, best = argmax (ties -> earlier), deterministic, disjoint
from the K-shot pool; bad input errors."""

from __future__ import annotations

import pytest

from tailored_hf.data import load_task_split, map_for_scoring
from tailored_hf.data.selection import PromptSelection, select_prompt, split_dev_and_pool
from tailored_hf.eval.multiple_choice import score_multiple_choice
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=1024)


@pytest.fixture(scope="module")
def dev(data_dir):
    train = load_task_split("piqa", "train", data_dir=data_dir)
    dev, _ = split_dev_and_pool(train, dev_size=12, seed=0)
    return dev


def test_every_candidate_scored_and_best_is_argmax(model, tokenizer, dev):
    candidates = ["lm_eval", "tailored", "alpaca", "reread"]
    selection = select_prompt(model, tokenizer, dev, "piqa", candidates=candidates)
    assert [row["prompt"] for row in selection.table] == candidates
    assert all(row["n"] == len(dev) for row in selection.table)
    scores = [row["acc"] for row in selection.table]
    assert selection.best == candidates[scores.index(max(scores))]  # first maximum wins ties
    # Each row is exactly what scoring that prompt on the dev slice gives.
    items = map_for_scoring(dev, "piqa", prompt="reread", tokenizer=tokenizer)
    assert selection.table[3]["acc"] == score_multiple_choice(model, tokenizer, items).acc
    assert "**(selected)**" in selection.to_markdown()


def test_deterministic_and_packed_agrees(model, tokenizer, dev):
    first = select_prompt(model, tokenizer, dev, "piqa", candidates=["lm_eval", "tailored"], metric="acc_norm")
    second = select_prompt(model, tokenizer, dev, "piqa", candidates=["lm_eval", "tailored"], metric="acc_norm")
    packed = select_prompt(
        model, tokenizer, dev, "piqa", candidates=["lm_eval", "tailored"], metric="acc_norm", packed=True
    )
    assert first == second
    assert [r["acc_norm"] for r in packed.table] == [r["acc_norm"] for r in first.table]


def test_ties_go_to_the_earlier_candidate(model, tokenizer, dev, monkeypatch):
    from types import SimpleNamespace

    import tailored_hf.eval.multiple_choice as mc

    monkeypatch.setattr(mc, "score_multiple_choice", lambda *a, **k: SimpleNamespace(acc=0.5, acc_norm=0.5, n=12))
    assert select_prompt(model, tokenizer, dev, "piqa", candidates=["tailored", "lm_eval"]).best == "tailored"
    assert select_prompt(model, tokenizer, dev, "piqa", candidates=["reread", "tailored"]).best == "reread"


def test_dev_and_pool_are_disjoint_and_seeded(data_dir):
    train = load_task_split("boolq", "train", data_dir=data_dir)
    dev, pool = split_dev_and_pool(train, dev_size=50, seed=3)
    again, _ = split_dev_and_pool(train, dev_size=50, seed=3)
    assert dev["question"] == again["question"]
    assert len(dev) + len(pool) == len(train)
    key = lambda row: (row["question"], row["passage"][:80])  # noqa: E731
    assert not {key(r) for r in dev} & {key(r) for r in pool.select(range(min(2000, len(pool))))}


def test_bad_input(model, tokenizer, dev, data_dir):
    with pytest.raises(ValueError, match="metric"):
        select_prompt(model, tokenizer, dev, "piqa", metric="f1")
    with pytest.raises(ValueError, match="empty"):
        select_prompt(model, tokenizer, dev.select([]), "piqa")
    with pytest.raises(ValueError, match="No candidate"):
        select_prompt(model, tokenizer, dev, "piqa", candidates=[])
    with pytest.raises(ValueError, match="lm_eval"):  # unknown prompt names list the known ones
        select_prompt(model, tokenizer, dev, "piqa", candidates=["nope"])
    with pytest.raises(ValueError, match="leave none"):
        split_dev_and_pool(dev, dev_size=len(dev))
    with pytest.raises(ValueError, match="positive"):
        split_dev_and_pool(dev, dev_size=0)
    assert isinstance(PromptSelection(task="piqa", best="lm_eval", metric="acc"), PromptSelection)
