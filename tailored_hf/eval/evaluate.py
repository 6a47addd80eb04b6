"""One-call zero-shot evaluation of a model on registered multiple-choice tasks."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from .multiple_choice import DEFAULT_MAX_BATCH_TOKENS, score_multiple_choice

logger = logging.getLogger(__name__)

#: Metric reported per task, following LLM-Pruner (and Tailored-LLaMA, which copies its table): `acc_norm` for
#: HellaSwag, ARC-Challenge and OpenBookQA, `acc` for BoolQ, PIQA, WinoGrande and ARC-Easy. Source: the maintainers'
#: comparison of the paper's numbers with lm-eval's `acc`/`acc_norm` in horseee/LLM-Pruner issue #25 (the paper's
#: BoolQ/PIQA/WinoGrande/ARC-e match `acc`, HellaSwag/ARC-c/OBQA match `acc_norm`).
PRIMARY_METRIC: dict[str, str] = {
    "boolq": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}
DEFAULT_PRIMARY_METRIC = "acc"
#: Per-item attribute of [`MultipleChoiceItemResult`] that each primary metric averages.
ITEM_CORRECTNESS = {"acc": "correct", "acc_norm": "correct_norm"}


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    split: str = "validation",
    limit: int | None = None,
    prompt: str = "lm_eval",
    batch_size: int = 32,
    packed: bool = True,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    keep_item_scores: bool = False,
) -> dict[str, dict[str, Any]]:
    """
    Zero-shot multiple-choice evaluation through `tailored_hf.data` (loader + scoring mapper) and
    [`score_multiple_choice`].

    Args:
        model (`PreTrainedModel`): Causal LM (put in eval mode here).
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        tasks (`Sequence[str]`): Registered multiple-choice task names.
        data_dir (`str` or `os.PathLike`, *optional*): Local data directory (default: the data module's resolution).
        split (`str`): Split to evaluate (the commonsense papers use validation).
        limit (`int`, *optional*): First N items per task.
        prompt (`str`): Prompt variant of `tailored_hf.data.map_for_scoring` (`"lm_eval"` = lm-eval's templates).
        batch_size (`int`): Sequences per forward pass.
        packed (`bool`): Share each item's context across its choices (faster; equal up to float noise).
        max_batch_tokens (`int`, *optional*): With `packed`, cap on padded tokens per forward (`None`: no cap).
        keep_item_scores (`bool`): Also return `"item_scores"`, the primary metric of every item (1.0 or 0.0, in
            dataset order), for paired comparisons of two models on the same items ([`paired_mean_difference`]).

    Returns:
        `dict[str, dict]`: task -> `{"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "primary", "primary_metric",
        "n", "seconds"}` (+ `"item_scores"` with `keep_item_scores`).
    """
    from tailored_hf.data import load_task_split, map_for_scoring

    if not tasks:
        raise ValueError("`tasks` must name at least one task.")
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be positive, got {limit}.")
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        start = time.perf_counter()
        dataset = load_task_split(task, split, data_dir=data_dir)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        items = map_for_scoring(dataset, task, prompt=prompt)
        scored = score_multiple_choice(
            model, tokenizer, items, batch_size=batch_size, packed=packed, max_batch_tokens=max_batch_tokens
        )
        metric = PRIMARY_METRIC.get(task, DEFAULT_PRIMARY_METRIC)
        entry: dict[str, Any] = scored.to_dict()
        entry.update(primary=entry[metric], primary_metric=metric, seconds=time.perf_counter() - start)
        if keep_item_scores:
            entry["item_scores"] = [float(getattr(item, ITEM_CORRECTNESS[metric])) for item in scored.items]
        results[task] = entry
        logger.info("%s: %s=%.4f (n=%d, %.1fs)", task, metric, entry["primary"], entry["n"], entry["seconds"])
    return results
