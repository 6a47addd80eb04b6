"""Pure per-example functions for `datasets.Dataset.map`: scoring form, training form and tokenization."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import datasets

from .prompts import LM_EVAL_PROMPT, TAILORED_PROMPT, format_example
from .tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value ignored by the cross-entropy loss of transformers models (prompt tokens)."""

SCORING_COLUMNS: tuple[str, ...] = ("contexts", "continuations", "gold")
TRAINING_COLUMNS: tuple[str, ...] = ("prompt", "completion")


def to_scoring(
    example: Mapping[str, Any], task: str | TaskSpec, prompt: str = LM_EVAL_PROMPT, tokenizer: Any = None
) -> dict[str, Any]:
    """
    Maps one row to the log-likelihood scoring form.

    Choice `i` is scored as `log p(continuations[i] | contexts[i])`. Continuations carry the target delimiter (a
    leading space for `lm_eval`, as in lm-evaluation-harness 0.4.13). Every context is the same string except for
    WinoGrande under `lm_eval` (partial scoring: one context per option, shared continuation). Generation tasks return
    one choice: the reference.

    Args:
        example (`Mapping[str, Any]`): One dataset row.
        task (`str` or [`TaskSpec`]): Task name or spec.
        prompt (`str`, defaults to `"lm_eval"`): Prompt variant name.
        tokenizer (*optional*): Needed by the `chat` variant.

    Returns:
        `dict`: `{"contexts": list[str], "continuations": list[str], "gold": int}`.
    """
    formatted = format_example(example, task, prompt, tokenizer=tokenizer)
    return {"contexts": list(formatted.contexts), "continuations": formatted.continuations, "gold": formatted.gold}


def to_prompt_completion(
    example: Mapping[str, Any], task: str | TaskSpec, prompt: str = TAILORED_PROMPT, tokenizer: Any = None
) -> dict[str, str]:
    """
    Maps one row to TRL's prompt-completion format (`{"prompt": str, "completion": str}`).

    The pair is the gold option of the scoring form of the same prompt variant: `prompt = contexts[gold]`,
    `completion = continuations[gold]`.
    """
    formatted = format_example(example, task, prompt, tokenizer=tokenizer)
    return {"prompt": formatted.prompt, "completion": formatted.completion}


def tokenize_prompt_completion(
    example: Mapping[str, Any], tokenizer: Any, max_length: int | None = None, add_eos: bool = True
) -> dict[str, list[int]]:
    """
    Tokenizes a prompt-completion pair for plain `transformers.Trainer` use, with loss on the completion only.

    The prompt is tokenized with the tokenizer's special tokens (e.g. BOS), the completion without, followed by EOS
    when `add_eos` and the tokenizer has one. When `max_length` is exceeded the prompt is truncated from the left (the
    completion is kept); a completion longer than `max_length` is truncated from the right.

    Returns:
        `dict`: `input_ids`, `attention_mask` and `labels` (`-100` on prompt tokens).
    """
    if max_length is not None and max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}.")
    prompt_ids = list(tokenizer(example["prompt"])["input_ids"])
    completion_ids = list(tokenizer(example["completion"], add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        completion_ids.append(eos)
    if max_length is not None and len(prompt_ids) + len(completion_ids) > max_length:
        completion_ids = completion_ids[:max_length]
        keep = max_length - len(completion_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
    input_ids = prompt_ids + completion_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


def map_for_scoring(
    dataset: datasets.Dataset,
    task: str | TaskSpec,
    prompt: str = LM_EVAL_PROMPT,
    tokenizer: Any = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Maps a whole split with [`to_scoring`], keeping only `contexts`, `continuations` and `gold`."""
    spec = get_task(task)
    return dataset.map(
        to_scoring,
        fn_kwargs={"task": spec, "prompt": prompt, "tokenizer": tokenizer},
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Formatting {spec.name} for scoring ({prompt})",
    )


def label_free_texts(
    dataset: datasets.Dataset, task: str | TaskSpec, prompt: str = LM_EVAL_PROMPT, tokenizer: Any = None
) -> list[str]:
    """
    In-domain text without labels: `context + continuation` of every choice of every row, in the scoring form of
    `prompt`. Which choice is right is never used, so a teacher's distribution over these texts (distillation) can
    take every row of a train split, not only the K labelled shots.

    Args:
        dataset (`datasets.Dataset`): Rows of `task` (e.g. its train split).
        task (`str` or [`TaskSpec`]): Task name or spec.
        prompt (`str`, defaults to `"lm_eval"`): Prompt variant name (the format that is scored).
        tokenizer (*optional*): Needed by the `chat` variant.

    Returns:
        `list[str]`: one text per (row, choice), rows in order.
    """
    spec = get_task(task)
    texts = []
    for example in dataset:
        formatted = format_example(example, spec, prompt, tokenizer=tokenizer)
        texts += [context + continuation for context, continuation in zip(formatted.contexts, formatted.continuations)]
    return texts


def map_for_training(
    dataset: datasets.Dataset,
    task: str | TaskSpec,
    prompt: str = TAILORED_PROMPT,
    tokenizer: Any = None,
    tokenize: bool = False,
    max_length: int | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """
    Maps a whole split to TRL prompt-completion columns (`prompt`, `completion`).

    Args:
        dataset (`datasets.Dataset`): Split with the task's schema.
        task (`str` or [`TaskSpec`]): Task name or spec.
        prompt (`str`, defaults to `"tailored"`): Prompt variant name.
        tokenizer (*optional*): Needed by the `chat` variant and by `tokenize=True`.
        tokenize (`bool`, defaults to `False`): Also add `input_ids`/`attention_mask`/`labels` (completion-only loss)
            for a plain `transformers.Trainer`; TRL's `SFTTrainer` tokenizes prompt-completion data itself.
        max_length (`int`, *optional*): Truncation length when `tokenize=True`.
        num_proc (`int`, *optional*): Worker processes for `Dataset.map`.
    """
    spec = get_task(task)
    if tokenize and tokenizer is None:
        raise ValueError("map_for_training(tokenize=True) needs a `tokenizer`.")
    mapped = dataset.map(
        to_prompt_completion,
        fn_kwargs={"task": spec, "prompt": prompt, "tokenizer": tokenizer},
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Formatting {spec.name} for training ({prompt})",
    )
    if tokenize:
        mapped = mapped.map(
            tokenize_prompt_completion,
            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
            num_proc=num_proc,
            desc="Tokenizing",
        )
    return mapped
