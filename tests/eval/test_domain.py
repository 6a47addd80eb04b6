"""Domain-task evaluation on the real PubMedQA / HQS / BillSum / CaseHOLD files with a tiny model."""

from __future__ import annotations

import pytest

from tailored_hf.data import load_task_split
from tailored_hf.eval import GenerationSettings, evaluate_domain_task, rouge_scores

from .conftest import DATA_DIR

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="shared data directory not found")
GREEDY = GenerationSettings.greedy(max_new_tokens=3, batch_size=2)


def test_pubmedqa_macro_f1_and_accuracy(tiny_model, tiny_tokenizer):
    rows = load_task_split("pubmedqa", "test", data_dir=DATA_DIR)
    out = evaluate_domain_task(tiny_model, tiny_tokenizer, rows, "pubmedqa", settings=GREEDY, limit=4)
    assert out["n"] == 4
    assert 0.0 <= out["macro_f1"] <= 1.0 and 0.0 <= out["accuracy"] <= 1.0 and 0.0 <= out["unparsed"] <= 1.0
    again = evaluate_domain_task(tiny_model, tiny_tokenizer, rows, "pubmedqa", settings=GREEDY, limit=4)
    assert again == out  # greedy decoding is deterministic


@pytest.mark.parametrize("task,split", [("hqs", "test"), ("billsum", "test")])
def test_summarisation_rouge(tiny_model, tiny_tokenizer, task, split):
    rows = load_task_split(task, split, data_dir=DATA_DIR)
    sampled = GenerationSettings(max_new_tokens=3, num_runs=2, batch_size=2)
    out = evaluate_domain_task(tiny_model, tiny_tokenizer, rows, task, settings=sampled, limit=2)
    assert out["n"] == 2 and set(out) >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(0.0 <= out[k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL"))


def test_rouge_of_the_reference_itself_is_one():
    rows = load_task_split("hqs", "test", data_dir=DATA_DIR).select(range(5))
    scores = rouge_scores(rows["Summary"], rows["Summary"])
    assert all(abs(v - 1.0) < 1e-12 for v in scores.values())


def test_casehold_is_scored_as_multiple_choice(tiny_tokenizer):
    from ..conftest import make_tiny_model

    long_context = make_tiny_model("llama", vocab_size=len(tiny_tokenizer), max_position_embeddings=4096)
    rows = load_task_split("casehold", "train", data_dir=DATA_DIR)
    out = evaluate_domain_task(long_context, tiny_tokenizer, rows, "casehold", prompt="lm_eval", limit=3)
    assert out["n"] == 3 and set(out) == {"acc", "acc_norm", "n"}


def test_empty_rows_rejected(tiny_model, tiny_tokenizer):
    rows = load_task_split("hqs", "test", data_dir=DATA_DIR).select([])
    with pytest.raises(ValueError, match="No rows"):
        evaluate_domain_task(tiny_model, tiny_tokenizer, rows, "hqs", settings=GREEDY)
