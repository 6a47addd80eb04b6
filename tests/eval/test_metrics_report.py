import json
import math

import pytest
import torch

from tailored_hf.eval import (
    EvalReport,
    GenerationSettings,
    accuracy,
    evaluate_tasks,
    extract_label,
    generate_predictions,
    macro_f1,
    mean_accuracy,
    paired_mean_difference,
    recovery_rate,
    relative_performance,
    rouge_scores,
    token_perplexity,
)

from .conftest import DATA_DIR


def test_constant_model_perplexity_is_vocab_size(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    torch.nn.init.zeros_(model.lm_head.weight)  # uniform next-token distribution
    ids = torch.randint(0, model.config.vocab_size, (100,))
    result = token_perplexity(model, ids, seq_len=16, batch_size=4)
    assert result.n_windows == 6 and result.n_tokens == 6 * 15
    assert result.perplexity == pytest.approx(model.config.vocab_size, rel=1e-4)
    assert token_perplexity(model, ids, seq_len=16, max_windows=2).n_windows == 2


def test_rouge_known_strings():
    scores = rouge_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert all(v == pytest.approx(1.0) for v in scores.values())
    scores = rouge_scores(["the cat was found under the bed"], ["the cat was under the bed"])
    # 6 reference unigrams, 7 predicted, 6 overlap -> F = 2*6/13
    assert scores["rouge1"] == pytest.approx(12 / 13)
    # bigrams: ref 5, pred 6, overlap (the cat, cat was, under the, the bed) = 4 -> F = 8/11
    assert scores["rouge2"] == pytest.approx(8 / 11)


def test_classification_metrics():
    assert extract_label("Answer: Maybe, it depends") == "maybe"
    assert extract_label("unclear") is None
    assert macro_f1(["yes", "no", None], ["yes", "no", "maybe"], ["yes", "no", "maybe"]) == pytest.approx(2 / 3)
    assert accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx(2 / 3)


def test_aggregates():
    dense = {"a": 0.8, "b": 0.6}
    pruned = {"a": 0.6, "b": 0.6}
    assert mean_accuracy(pruned) == pytest.approx(0.6)
    assert recovery_rate(pruned, dense) == pytest.approx(0.6 / 0.7)
    rouge_dense = {"rouge1": 0.4, "rouge2": 0.2, "rougeL": 0.3}
    rouge_pruned = {"rouge1": 0.2, "rouge2": 0.1, "rougeL": 0.15}
    rel = relative_performance({"a": 0.6, "sum": rouge_pruned}, {"a": 0.8, "sum": rouge_dense})
    assert rel == pytest.approx((0.75 + 0.5) / 2)


def test_report_markdown_and_json(tmp_path):
    report = EvalReport(chance={"piqa": 0.5, "arc_c": 0.25}, metric_names={"arc_c": "acc_norm"})
    report.add("dense", {"piqa": 0.66, "arc_c": 0.26})
    report.add("pruned-20%", {"piqa": 0.60, "arc_c": 0.25})
    md = report.to_markdown()
    assert "60.00 (66.00)" in md and "25.00 (26.00)" in md
    assert "arc_c (acc_norm) †" in md and "piqa †" not in md
    assert f"{100 * 0.425 / 0.46:.1f}%" in md
    json_path, md_path = report.save(tmp_path / "report")
    data = json.loads(json_path.read_text())
    assert data["near_chance"] == ["arc_c"] and md_path.read_text() == md
    assert math.isclose(data["summary"]["pruned-20%"]["recovery"], 0.425 / 0.46)


def test_generate_predictions_greedy_and_sampling(tiny_model, tiny_tokenizer):
    prompts = ["The river", "Is the sky blue? The quick brown fox"]
    greedy = generate_predictions(tiny_model, tiny_tokenizer, prompts, GenerationSettings.greedy(max_new_tokens=4))
    assert len(greedy) == 1 and len(greedy[0]) == 2
    single = generate_predictions(tiny_model, tiny_tokenizer, prompts[1:], GenerationSettings.greedy(max_new_tokens=4))
    assert single[0][0] == greedy[0][1]  # left padding does not change the greedy continuation
    sampled = generate_predictions(
        tiny_model, tiny_tokenizer, prompts, GenerationSettings(max_new_tokens=4, num_runs=2)
    )
    assert len(sampled) == 2
    with pytest.raises(ValueError):
        GenerationSettings(num_runs=0)


def test_paired_mean_difference_against_a_hand_computed_reference():
    a = {"x": [1, 1, 0, 1], "y": [1, 0, 1, 0, 1]}
    b = {"x": [0, 1, 0, 0], "y": [1, 0, 0, 0, 0]}
    result = paired_mean_difference(a, b)
    # x: differences 1,0,0,1 -> mean 0.5, sample sd sqrt(1/3), stderr sqrt(1/3)/2; y: 0,0,1,0,1 -> 0.4, sd sqrt(0.3)
    se_x, se_y = math.sqrt(1 / 3) / 2, math.sqrt(0.3) / math.sqrt(5)
    assert result.per_task["x"] == pytest.approx((0.5, se_x))
    assert result.per_task["y"] == pytest.approx((0.4, se_y))
    assert result.difference == pytest.approx(0.45)
    assert result.stderr == pytest.approx(math.hypot(se_x, se_y) / 2)
    assert result.z_score() == pytest.approx(0.45 / result.stderr)
    reverse = paired_mean_difference(b, a, tasks=["x"])
    assert reverse.difference == pytest.approx(-0.5) and reverse.stderr == pytest.approx(se_x)


def test_paired_difference_cancels_shared_item_difficulty():
    # Two models that agree on every item but 8 of 200: the unpaired stderrs would not resolve a 4-point gap.
    b = {"t": [1.0] * 100 + [0.0] * 100}
    a = {"t": [1.0] * 108 + [0.0] * 92}
    result = paired_mean_difference(a, b)
    unpaired = math.hypot(*(math.sqrt(p * (1 - p) / 200) for p in (0.54, 0.5)))
    assert result.difference == pytest.approx(0.04)
    assert result.stderr < unpaired / 3
    assert not (result.difference >= 2 * unpaired) and result.resolved()
    same = paired_mean_difference(a, a)
    assert same.difference == 0 and same.stderr == 0 and same.z_score() == 0 and not same.resolved()
    assert paired_mean_difference({"t": [1, 1]}, {"t": [0, 0]}).z_score() == math.inf


def test_paired_difference_validation():
    with pytest.raises(ValueError, match="same items"):
        paired_mean_difference({"t": [1, 0, 1]}, {"t": [1, 0]})
    with pytest.raises(ValueError, match="Missing item scores"):
        paired_mean_difference({"t": [1, 0]}, {"u": [1, 0]})
    with pytest.raises(ValueError, match="No tasks"):
        paired_mean_difference({}, {})


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="shared data directory not found")
def test_evaluate_tasks_keeps_the_primary_metric_per_item(tiny_model, tiny_tokenizer):
    results = evaluate_tasks(
        tiny_model, tiny_tokenizer, ["piqa", "hellaswag"], data_dir=DATA_DIR, limit=6, keep_item_scores=True
    )
    for task, metric in (("piqa", "acc"), ("hellaswag", "acc_norm")):
        entry = results[task]
        assert entry["primary_metric"] == metric and len(entry["item_scores"]) == entry["n"] == 6
        assert set(entry["item_scores"]) <= {0.0, 1.0}
        assert sum(entry["item_scores"]) / 6 == pytest.approx(entry["primary"])
    assert (
        "item_scores" not in evaluate_tasks(tiny_model, tiny_tokenizer, ["piqa"], data_dir=DATA_DIR, limit=2)["piqa"]
    )
