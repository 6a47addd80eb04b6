"""Task registry."""

from __future__ import annotations

import pytest

from tailored_hf.data import COMMONSENSE_TASKS, TASKS, TaskSpec, get_task, list_tasks

EXPECTED_CHANCE = {
    "boolq": 0.5,
    "piqa": 0.5,
    "hellaswag": 0.25,
    "winogrande": 0.5,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "openbookqa": 0.25,
    "pubmedqa": 1 / 3,
    "mednli": 1 / 3,
    "casehold": 0.2,
}


def test_all_tasks_registered():
    expected = set(COMMONSENSE_TASKS) | {"alpaca", "pubmedqa", "mednli", "hqs", "casehold", "billsum"}
    assert set(list_tasks()) == expected
    assert COMMONSENSE_TASKS == ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


@pytest.mark.parametrize("name,chance", sorted(EXPECTED_CHANCE.items()))
def test_chance_levels(name, chance):
    spec = get_task(name)
    assert spec.chance == pytest.approx(chance)
    assert spec.num_choices == round(1 / chance)
    assert spec.label_column is not None


def test_generation_tasks_have_no_chance():
    for name in ("alpaca", "hqs", "billsum"):
        spec = get_task(name)
        assert spec.kind == "generation"
        assert spec.chance is None and spec.label_column is None and spec.reference_column


def test_aliases_and_specs():
    assert get_task("meqsum") is get_task("hqs")
    assert get_task("alpaca-cleaned") is get_task("alpaca")
    assert get_task("BoolQ").name == "boolq"
    spec = TASKS["winogrande"]
    assert get_task(spec) is spec
    assert spec.hub_id == "allenai/winogrande" and spec.hub_config == "winogrande_xl"
    assert spec.local_files["validation"] == "commonsense/winogrande/validation.jsonl.gz"
    assert all(spec.citation for spec in TASKS.values())


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="Known tasks:.*boolq"):
        get_task("squad")


def test_spec_validation():
    with pytest.raises(ValueError, match="kind"):
        TaskSpec(name="x", kind="ranking", required_columns=("a",), label_column="a", num_choices=2, chance=0.5)
    with pytest.raises(ValueError, match="reference_column"):
        TaskSpec(
            name="x", kind="generation", required_columns=("a",), label_column=None, num_choices=None, chance=None
        )
