"""Prompt catalogue: built-in variants, registration, chat templates."""

from __future__ import annotations

import pytest

from tailored_hf.data import (
    BUILTIN_PROMPTS,
    TASKS,
    FormattedExample,
    get_prompt,
    list_prompts,
    load_task_split,
    register_prompt,
    to_prompt_completion,
    to_scoring,
)
from tailored_hf.data import prompts as prompts_module


@pytest.fixture(scope="module")
def boolq_row(data_dir):
    return load_task_split("boolq", "validation", data_dir=data_dir)[0]


def test_builtin_variants_everywhere():
    for task in TASKS:
        assert set(BUILTIN_PROMPTS) <= set(list_prompts(task))


def test_tailored_alpaca_reread_on_boolq(boolq_row):
    tailored = to_prompt_completion(boolq_row, "boolq", "tailored")
    assert tailored["prompt"].startswith("Read the passage and answer the question with yes or no.\n\nPassage: ")
    assert tailored["prompt"].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert tailored["completion"] == " no"

    alpaca = to_prompt_completion(boolq_row, "boolq", "alpaca")
    assert alpaca["prompt"].startswith("Below is an instruction that describes a task")
    assert (
        "### Instruction:\nRead the passage and answer the question with yes or no.\n\n### Input:\n"
        in alpaca["prompt"]
    )
    assert alpaca["prompt"].endswith("### Response:\n") and alpaca["completion"] == "no"

    reread = to_prompt_completion(boolq_row, "boolq", "reread")
    question = "does ethanol take more energy make that produces?"
    assert f"Q: {question}\nRead the question again: {question}\nA:" in reread["prompt"]
    assert reread["completion"] == " no"


def test_scoring_and_training_forms_agree(boolq_row):
    for prompt in ("lm_eval", "tailored", "alpaca", "reread"):
        scored = to_scoring(boolq_row, "boolq", prompt)
        pair = to_prompt_completion(boolq_row, "boolq", prompt)
        assert pair["prompt"] == scored["contexts"][scored["gold"]]
        assert pair["completion"] == scored["continuations"][scored["gold"]]


def test_chat_variant(boolq_row, chat_tokenizer):
    pair = to_prompt_completion(boolq_row, "boolq", "chat", tokenizer=chat_tokenizer)
    assert pair["prompt"].startswith("<|user|>\nRead the passage and answer the question with yes or no.")
    assert pair["prompt"].endswith("</s>\n<|assistant|>\n")
    assert pair["completion"] == "no"
    scored = to_scoring(boolq_row, "boolq", "chat", tokenizer=chat_tokenizer)
    assert scored["continuations"] == ["no", "yes"]


def test_chat_variant_needs_template(boolq_row, tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        to_prompt_completion(boolq_row, "boolq", "chat")
    with pytest.raises(ValueError, match="chat template"):
        to_prompt_completion(boolq_row, "boolq", "chat", tokenizer=tokenizer)


def test_register_prompt(boolq_row, monkeypatch):
    monkeypatch.setattr(prompts_module, "_REGISTRY", {k: dict(v) for k, v in prompts_module._REGISTRY.items()})

    def short(example):
        return FormattedExample.shared(f"Q: {example['question']}?\nA:", ["no", "yes"], int(example["answer"]))

    register_prompt("boolq", "short", short)
    assert "short" in list_prompts("boolq")
    assert get_prompt("boolq", "short") is short
    assert to_prompt_completion(boolq_row, "boolq", "short") == {
        "prompt": "Q: does ethanol take more energy make that produces?\nA:",
        "completion": " no",
    }
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_prompt("boolq", "short", short)

    def with_tokenizer(example, tokenizer=None):
        return FormattedExample.shared("Answer:", ["no", "yes"], 1, target_delimiter="")

    register_prompt("boolq", "short", with_tokenizer, overwrite=True)
    assert to_scoring(boolq_row, "boolq", "short") == {
        "contexts": ["Answer:"] * 2,
        "continuations": ["no", "yes"],
        "gold": 1,
    }

    register_prompt("boolq", "broken", lambda example: {"prompt": "x"})
    with pytest.raises(ValueError, match="must return a FormattedExample"):
        to_scoring(boolq_row, "boolq", "broken")
    with pytest.raises(ValueError, match="callable"):
        register_prompt("boolq", "bad", "not a function")
    with pytest.raises(ValueError, match="Unknown task"):
        register_prompt("nope", "x", short)


def test_unknown_prompt_lists_known(boolq_row):
    with pytest.raises(ValueError, match=r"Unknown prompt 'cot'.*Known prompts: \['alpaca', 'chat', 'lm_eval'"):
        to_scoring(boolq_row, "boolq", "cot")


def test_formatted_example_validation():
    with pytest.raises(ValueError, match="one context per choice"):
        FormattedExample(["a"], ["x", "y"], 0)
    with pytest.raises(ValueError, match="out of range"):
        FormattedExample.shared("a", ["x", "y"], 2)
    with pytest.raises(ValueError, match="at least one choice"):
        FormattedExample([], [], 0)
