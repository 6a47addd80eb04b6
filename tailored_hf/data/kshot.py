"""Seeded, label-stratified K-shot sampling."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import datasets
import numpy as np

from .tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

DEFAULT_RECOVERY_K = 50
"""Default number of task examples used to recover a pruned model (K-shot recovery)."""


def allocate_stratified(counts: dict[Any, int], k: int) -> dict[Any, int]:
    """
    Splits `k` draws across classes in proportion to `counts` (largest-remainder / Hamilton method).

    Ties in the remainder go to the larger class, then to the label that sorts first (as a string), so the result is
    deterministic.
    """
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("Cannot allocate draws over empty classes.")
    quotas = {label: k * n / total for label, n in counts.items()}
    allocation = {label: math.floor(q) for label, q in quotas.items()}
    remaining = k - sum(allocation.values())
    order = sorted(counts, key=lambda lab: (-(quotas[lab] - allocation[lab]), -counts[lab], str(lab)))
    for label in order[:remaining]:
        allocation[label] += 1
    return allocation


def sample_k_shots(
    dataset: datasets.Dataset,
    k: int = DEFAULT_RECOVERY_K,
    seed: int = 0,
    label_column: str | None = None,
    replace: bool = False,
    *,
    task: str | TaskSpec | None = None,
) -> datasets.Dataset:
    """
    Draws `k` examples, deterministically for a given `seed`.

    With a label column (given, or taken from `task`), sampling is stratified: each label gets a share of `k`
    proportional to its frequency (largest-remainder rounding), then examples are drawn uniformly within each label.
    The selected rows are returned in a seeded random order.

    Args:
        dataset (`datasets.Dataset`): Split to sample from.
        k (`int`, defaults to `DEFAULT_RECOVERY_K`): Number of examples, at least 1.
        seed (`int`, defaults to 0): Random seed.
        label_column (`str`, *optional*): Column to stratify on; `None` uses `task.label_column` or samples uniformly.
        replace (`bool`, defaults to `False`): Sample with replacement (allows `k > len(dataset)`).
        task (`str` or [`TaskSpec`], *optional*): Task whose label column to use when `label_column` is `None`.

    Raises:
        `ValueError`: `k < 1`, `k > len(dataset)` without `replace=True`, empty dataset, or unknown label column.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    n = len(dataset)
    if n == 0:
        raise ValueError("Cannot sample K shots from an empty dataset.")
    if k > n and not replace:
        raise ValueError(
            f"k={k} is larger than the split ({n} examples). Use k <= {n}, a larger split, or replace=True to sample "
            "with replacement."
        )
    if label_column is None and task is not None:
        label_column = get_task(task).label_column
    rng = np.random.default_rng(seed)
    if label_column is None:
        indices = rng.choice(n, size=k, replace=replace)
        return dataset.select(indices.tolist())
    if label_column not in dataset.column_names:
        raise ValueError(
            f"Label column {label_column!r} not in dataset columns {dataset.column_names}. Pass the right "
            "`label_column`, or label_column=None with no task for uniform sampling."
        )
    by_label: dict[Any, list[int]] = defaultdict(list)
    for index, label in enumerate(dataset[label_column]):
        by_label[label].append(index)
    # Iterate labels in a fixed order so the draw does not depend on the dataset's first-seen order.
    labels = sorted(by_label, key=str)
    allocation = allocate_stratified({label: len(by_label[label]) for label in labels}, k)
    chosen: list[int] = []
    for label in labels:
        quota = allocation[label]
        if quota:
            pool = np.asarray(by_label[label])
            chosen.extend(rng.choice(pool, size=quota, replace=replace).tolist())
    order = rng.permutation(len(chosen))
    logger.debug("K-shot allocation per label: %s", allocation)
    return dataset.select([chosen[i] for i in order])
