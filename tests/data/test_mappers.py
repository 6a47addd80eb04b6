"""Scoring and training mappers on real rows, cross-checked against lm-evaluation-harness 0.4.13's task files."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

from tailored_hf.data import (
    IGNORE_INDEX,
    TASKS,
    hellaswag_preprocess,
    list_prompts,
    load_task_split,
    map_for_scoring,
    map_for_training,
    to_prompt_completion,
    to_scoring,
    tokenize_prompt_completion,
)

CROSS_CHECK_ROWS = 300
SPLITS = {"alpaca": "train", "pubmedqa": "test", "hqs": "test", "casehold": "train", "billsum": "test"}


def _split(task: str) -> str:
    return SPLITS.get(task, "validation")


@pytest.fixture(scope="module")
def first_rows(data_dir):
    return {
        task: load_task_split(task, _split(task), data_dir=data_dir).select(range(20))
        for task in TASKS
        if task != "mednli"
    }


def test_boolq_first_validation_item(data_dir):
    row = load_task_split("boolq", "validation", data_dir=data_dir)[0]
    scored = to_scoring(row, "boolq")
    expected = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    assert scored["contexts"] == [expected, expected]
    assert scored["contexts"][0].startswith("All biomass goes through at least some of these steps")
    assert scored["contexts"][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert scored["continuations"] == [" no", " yes"]
    assert scored["gold"] == 0  # answer: false
    assert to_prompt_completion(row, "boolq", "lm_eval") == {"prompt": expected, "completion": " no"}


def test_exact_strings_other_tasks(data_dir):
    piqa = to_scoring(load_task_split("piqa", "validation", data_dir=data_dir)[0], "piqa")
    assert piqa["contexts"][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa["continuations"][0].startswith(" Provide the guinea pig with a cage full of a few inches of bedding")
    assert piqa["gold"] == 0

    arc = to_scoring(load_task_split("arc_easy", "validation", data_dir=data_dir)[0], "arc_easy")
    assert arc == {
        "contexts": ["Question: Which technology was developed most recently?\nAnswer:"] * 4,
        "continuations": [" cellular telephone", " television", " refrigerator", " airplane"],
        "gold": 0,
    }
    obqa = to_scoring(load_task_split("openbookqa", "validation", data_dir=data_dir)[0], "openbookqa")
    stem = "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as"
    assert obqa == {
        "contexts": [stem] * 4,
        "continuations": [" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals"],
        "gold": 0,
    }
    hella = to_scoring(load_task_split("hellaswag", "validation", data_dir=data_dir)[0], "hellaswag")
    assert hella["contexts"] == ["Roof shingle removal: A man is sitting on a roof. He"] * 4
    assert hella["continuations"][3] == " starts pulling up roofing on a roof."
    assert hella["gold"] == 3


def test_winogrande_partial_scoring(data_dir):
    row = load_task_split("winogrande", "validation", data_dir=data_dir)[0]
    assert to_scoring(row, "winogrande") == {
        "contexts": [
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria",
        ],
        "continuations": [" always got the easier cases.", " always got the easier cases."],
        "gold": 1,
    }
    assert to_prompt_completion(row, "winogrande", "lm_eval") == {
        "prompt": "Sarah was a much better surgeon than Maria so Maria",
        "completion": " always got the easier cases.",
    }


def test_hellaswag_preprocessing_both_schemas(data_dir):
    validation = load_task_split("hellaswag", "validation", data_dir=data_dir)
    wikihow = validation[next(i for i, ctx in enumerate(validation["ctx"]) if "[header]" in ctx)]
    scored = to_scoring(wikihow, "hellaswag")
    assert wikihow["ctx_a"].startswith("[header] How to become a fashion consultant [title] Obtain your high school")
    assert scored["contexts"][0].startswith(
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job"
    )
    assert "[" not in scored["contexts"][0] and "  " not in scored["contexts"][0]
    assert not any("[" in c for c in scored["continuations"])
    assert hellaswag_preprocess(" a [header] b [title] c  d ") == "a b. c d"
    # Train rows are already cleaned (no ctx_a/ctx_b): ctx and endings are used as they are.
    train_row = load_task_split("hellaswag", "train", data_dir=data_dir)[0]
    assert train_row["preprocessed"] is True
    scored = to_scoring(train_row, "hellaswag")
    assert scored["contexts"][0] == f"{train_row['activity_label']}: {train_row['ctx']}"
    assert scored["continuations"] == [" " + ending for ending in train_row["endings"]]
    assert scored["gold"] == int(train_row["label"])


def _lm_eval_dir() -> Path:
    pytest.importorskip("lm_eval")
    yaml = pytest.importorskip("yaml")
    spec = importlib.util.find_spec("lm_eval")
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    if not root.is_dir():
        pytest.skip("lm_eval task files not installed")
    del yaml
    return root


def _load_yaml(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=Loader)


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LM_EVAL_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_easy.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}


@pytest.mark.parametrize("task", sorted(LM_EVAL_YAML))
def test_matches_lm_eval_yaml(data_dir, task):
    root = _lm_eval_dir()
    from lm_eval.utils import apply_template

    config = _load_yaml(root / LM_EVAL_YAML[task])
    dataset = load_task_split(task, "validation", data_dir=data_dir)
    dataset = dataset.select(range(min(CROSS_CHECK_ROWS, len(dataset))))
    for row in dataset:
        doc = dict(row)
        if task == "boolq":  # super_glue schema: int label instead of bool answer
            doc["label"] = int(doc["answer"])
        text = (
            doc[config["doc_to_text"]] if config["doc_to_text"] in doc else apply_template(config["doc_to_text"], doc)
        )
        choice_cfg = config["doc_to_choice"]
        choices = choice_cfg if isinstance(choice_cfg, list) else ast.literal_eval(apply_template(choice_cfg, doc))
        target = config["doc_to_target"]
        gold = doc[target] if target in doc else ast.literal_eval(apply_template(target, doc))
        assert config.get("target_delimiter", " ") == " "
        assert to_scoring(row, task) == {
            "contexts": [text] * len(choices),
            "continuations": [" " + c for c in choices],
            "gold": gold,
        }


def test_matches_lm_eval_hellaswag_and_winogrande(data_dir):
    root = _lm_eval_dir()
    hellaswag = load_task_split("hellaswag", "validation", data_dir=data_dir)
    # First rows (ActivityNet) plus the first WikiHow rows (bracketed markup that `preprocess` removes).
    first_wikihow = next(i for i, ctx in enumerate(hellaswag["ctx"]) if "[header]" in ctx)
    hellaswag = hellaswag.select([*range(CROSS_CHECK_ROWS), *range(first_wikihow, first_wikihow + CROSS_CHECK_ROWS)])
    processed = _module(root / "hellaswag" / "utils.py").process_docs(hellaswag)
    for row, doc in zip(hellaswag, processed):
        assert to_scoring(row, "hellaswag") == {
            "contexts": [doc["query"]] * len(doc["choices"]),
            "continuations": [" " + c for c in doc["choices"]],
            "gold": doc["gold"],
        }
    wino = _module(root / "winogrande" / "preprocess_winogrande.py")
    for row in load_task_split("winogrande", "validation", data_dir=data_dir).select(range(CROSS_CHECK_ROWS)):
        contexts = wino.doc_to_choice(row)
        assert to_scoring(row, "winogrande") == {
            "contexts": contexts,
            "continuations": [" " + wino.doc_to_target(row)] * len(contexts),
            "gold": wino.doc_to_text(row),
        }


def test_matches_lm_eval_pubmedqa(data_dir):
    root = _lm_eval_dir()
    module = _module(root / "pubmedqa" / "preprocess_pubmedqa.py")
    choices = _load_yaml(root / "pubmedqa" / "pubmedqa.yaml")["doc_to_choice"]
    for row in load_task_split("pubmedqa", "test", data_dir=data_dir).select(range(50)):
        assert to_scoring(row, "pubmedqa") == {
            "contexts": [module.doc_to_text(row)] * 3,
            "continuations": [" " + c for c in choices],
            "gold": choices.index(row["final_decision"]),
        }


@pytest.mark.parametrize("task", sorted(t for t in TASKS if t != "mednli"))
def test_every_mapper_on_real_rows(first_rows, task):
    spec = TASKS[task]
    for row in first_rows[task]:
        for prompt in list_prompts(task):
            if prompt == "chat":
                continue
            scored = to_scoring(row, task, prompt)
            n = len(scored["continuations"])
            assert len(scored["contexts"]) == n >= 1
            assert 0 <= scored["gold"] < n
            assert all(isinstance(c, str) and c for c in scored["contexts"] + scored["continuations"])
            if spec.kind == "generation":
                assert n == 1 and scored["continuations"][0].strip() == row[spec.reference_column].strip()
            elif spec.num_choices and task not in ("arc_easy", "arc_challenge"):
                assert n == spec.num_choices
            pair = to_prompt_completion(row, task, prompt)
            assert pair == {
                "prompt": scored["contexts"][scored["gold"]],
                "completion": scored["continuations"][scored["gold"]],
            }
            assert pair["prompt"].strip() and pair["completion"].strip()


PUBMEDQA_TO_NLI = {"yes": "entailment", "maybe": "neutral", "no": "contradiction"}


@pytest.fixture(scope="module")
def mednli_format_file(data_dir, tmp_path_factory):
    """
    MedNLI is not redistributable, so this writes a file in the *official MedNLI jsonl format* from real PubMedQA rows
    (sentence1 = first abstract sentence group, sentence2 = question, gold_label = yes/maybe/no mapped to
    entailment/neutral/contradiction). It exercises loading and formatting only; it is not MedNLI data.
    """
    rows = load_task_split("pubmedqa", "test", data_dir=data_dir).select(range(30))
    path = tmp_path_factory.mktemp("mednli") / "mli_dev_v1.jsonl"
    with open(path, "w") as handle:
        for row in rows:
            record = {
                "sentence1": row["CONTEXTS"][0],
                "sentence2": row["QUESTION"],
                "gold_label": PUBMEDQA_TO_NLI[row["final_decision"]],
            }
            handle.write(json.dumps(record) + "\n")
    return path


def test_mednli_user_supplied_official_format(mednli_format_file):
    by_file = load_task_split("mednli", "validation", source=mednli_format_file)
    by_dir = load_task_split("mednli", "validation", source=mednli_format_file.parent)
    assert len(by_file) == len(by_dir) == 30
    row = by_file[0]
    hypothesis = row["sentence2"].strip()
    hypothesis += "" if hypothesis.endswith(".") else "."
    scored = to_scoring(row, "mednli")
    assert scored["contexts"] == [f"{row['sentence1']}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:"] * 3
    assert scored["continuations"] == [" True", " Neither", " False"]
    assert scored["gold"] == ["entailment", "neutral", "contradiction"].index(row["gold_label"])
    assert to_prompt_completion(row, "mednli")["completion"] == " " + row["gold_label"]
    for prompt in ("tailored", "alpaca", "reread"):
        assert row["sentence1"] in to_prompt_completion(row, "mednli", prompt)["prompt"]
    with pytest.raises(ValueError, match="gold_label"):
        to_scoring({**row, "gold_label": "-"}, "mednli")


def test_generation_tasks_prompt_completion(first_rows):
    hqs = first_rows["hqs"][0]
    pair = to_prompt_completion(hqs, "hqs")
    assert hqs["CHQ"] in pair["prompt"] and pair["prompt"].endswith("Summary:")
    assert pair["completion"] == " " + hqs["Summary"]
    bill = first_rows["billsum"][0]
    assert to_prompt_completion(bill, "billsum", "lm_eval") == {
        "prompt": f"Bill: {bill['source']}\nSummary:",
        "completion": " " + bill["summary"],
    }
    alpaca = first_rows["alpaca"][1]  # has a non-empty input
    pair = to_prompt_completion(alpaca, "alpaca", "alpaca")
    assert pair["prompt"].startswith("Below is an instruction that describes a task, paired with an input")
    assert (
        f"### Instruction:\n{alpaca['instruction']}\n\n### Input:\n{alpaca['input']}\n\n### Response:\n"
        in pair["prompt"]
    )
    assert pair["completion"] == alpaca["output"]


def test_map_helpers(first_rows, tokenizer):
    dataset = first_rows["piqa"]
    scoring = map_for_scoring(dataset, "piqa")
    assert scoring.column_names == ["contexts", "continuations", "gold"]
    assert scoring[0] == to_scoring(dataset[0], "piqa")
    training = map_for_training(dataset, "piqa", "tailored")
    assert training.column_names == ["prompt", "completion"]
    tokenized = map_for_training(dataset, "piqa", "tailored", tokenizer=tokenizer, tokenize=True)
    row = tokenized[0]
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])
    completion_labels = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert completion_labels[-1] == tokenizer.eos_token_id
    assert row["input_ids"][-len(completion_labels) :] == completion_labels
    truncated = map_for_training(dataset, "piqa", "tailored", tokenizer=tokenizer, tokenize=True, max_length=32)
    assert all(len(ids) <= 32 for ids in truncated["input_ids"])
    with pytest.raises(ValueError, match="tokenizer"):
        map_for_training(dataset, "piqa", tokenize=True)


def test_tokenize_prompt_completion_masks_prompt(tokenizer):
    out = tokenize_prompt_completion({"prompt": "Question: why?\nAnswer:", "completion": " because"}, tokenizer)
    n_prompt = len(tokenizer("Question: why?\nAnswer:")["input_ids"])
    assert out["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]


def test_label_free_texts_are_every_choice_without_the_gold(data_dir):
    """Every (context + continuation) of every row in the scoring form; the gold index is never used."""
    from tailored_hf.data import label_free_texts, load_task_split, map_for_scoring

    for task in ("piqa", "winogrande", "hellaswag"):
        rows = load_task_split(task, "train", data_dir=data_dir).select(range(3))
        scoring = map_for_scoring(rows, task)
        expected = [c + x for item in scoring for c, x in zip(item["contexts"], item["continuations"])]
        assert label_free_texts(rows, task) == expected
        assert len(expected) == sum(len(item["continuations"]) for item in scoring)
