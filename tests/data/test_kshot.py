"""K-shot sampling: determinism, stratification, errors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailored_hf.data import DEFAULT_RECOVERY_K, allocate_stratified, load_task_split, sample_k_shots


@pytest.fixture(scope="module")
def boolq_train(data_dir):
    return load_task_split("boolq", "train", data_dir=data_dir)


def test_default_k():
    assert DEFAULT_RECOVERY_K == 50


def test_deterministic_and_seed_dependent(boolq_train):
    a = sample_k_shots(boolq_train, 50, seed=0, task="boolq")
    b = sample_k_shots(boolq_train, 50, seed=0, task="boolq")
    c = sample_k_shots(boolq_train, 50, seed=1, task="boolq")
    assert len(a) == 50
    assert a["question"] == b["question"]
    assert a["question"] != c["question"]
    assert len(set(a["question"])) == 50  # without replacement


def test_stratified_proportions(boolq_train):
    counts = Counter(boolq_train["answer"])
    sample = sample_k_shots(boolq_train, 50, seed=3, label_column="answer")
    expected = allocate_stratified(dict(counts), 50)
    assert Counter(sample["answer"]) == Counter(expected)
    assert abs(expected[True] - 50 * counts[True] / len(boolq_train)) < 1


def test_largest_remainder():
    assert allocate_stratified({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert allocate_stratified({"x": 70, "y": 20, "z": 10}, 7) == {"x": 5, "y": 1, "z": 1}
    assert sum(allocate_stratified({0: 5, 1: 3, 2: 3}, 4).values()) == 4


def test_k_one_and_four_way(data_dir):
    arc = load_task_split("arc_challenge", "train", data_dir=data_dir)
    one = sample_k_shots(arc, 1, seed=0, task="arc_challenge")
    assert len(one) == 1
    shots = sample_k_shots(arc, 16, seed=0, task="arc_challenge")
    assert sum(Counter(shots["answerKey"]).values()) == 16


def test_k_larger_than_split(data_dir):
    billsum = load_task_split("billsum", "test", data_dir=data_dir)
    with pytest.raises(ValueError, match="larger than the split.*replace=True"):
        sample_k_shots(billsum, 201)
    with_replacement = sample_k_shots(billsum, 250, seed=0, replace=True)
    assert len(with_replacement) == 250
    stratified = sample_k_shots(
        load_task_split("arc_challenge", "validation", data_dir=data_dir), 400, replace=True, task="arc_challenge"
    )
    assert len(stratified) == 400


def test_bad_arguments(boolq_train):
    with pytest.raises(ValueError, match="positive integer"):
        sample_k_shots(boolq_train, 0)
    with pytest.raises(ValueError, match="Label column 'label'"):
        sample_k_shots(boolq_train, 5, label_column="label")
    with pytest.raises(ValueError, match="empty"):
        sample_k_shots(boolq_train.select([]), 1)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=6), data=st.data())
def test_allocation_properties(counts, data):
    total = sum(counts)
    k = data.draw(st.integers(min_value=1, max_value=total))
    allocation = allocate_stratified(dict(enumerate(counts)), k)
    assert sum(allocation.values()) == k
    for label, n in enumerate(counts):
        assert 0 <= allocation[label] <= n
        assert abs(allocation[label] - k * n / total) < 1
