"""Summary numbers of the papers this library reproduces.

- Tailored-LLaMA (and LLM-Pruner): mean accuracy over the tasks, and the recovery rate `pruned mean / dense mean`.
- ATP: relative performance, the mean over tasks of the per-task ratio `pruned / dense`, where a summarisation task's
  score is first the average of its ROUGE-1/2/L.
- Comparing two models on the same items: the paired difference of their mean accuracies and its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .generation import ATP_ROUGE_TYPES
from .multiple_choice import mean_stderr


def mean_accuracy(scores: Mapping[str, float], tasks: Sequence[str] | None = None) -> float:
    """Mean of `scores` over `tasks` (default: all)."""
    tasks = list(scores) if tasks is None else list(tasks)
    if not tasks:
        raise ValueError("No tasks to average.")
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise ValueError(f"Missing scores for tasks {missing}.")
    return sum(scores[t] for t in tasks) / len(tasks)


def recovery_rate(
    pruned: Mapping[str, float], dense: Mapping[str, float], tasks: Sequence[str] | None = None
) -> float:
    """Tailored-LLaMA's recovery rate: pruned mean accuracy / dense mean accuracy over the same tasks."""
    tasks = list(dense) if tasks is None else list(tasks)
    dense_mean = mean_accuracy(dense, tasks)
    if dense_mean == 0:
        raise ValueError("The dense mean is 0; the recovery rate is undefined.")
    return mean_accuracy(pruned, tasks) / dense_mean


def task_score(metrics: Mapping[str, float] | float, rouge_types: Sequence[str] = ATP_ROUGE_TYPES) -> float:
    """One number per task: a float as is; a ROUGE dict averaged over `rouge_types`; else its single value."""
    if isinstance(metrics, (int, float)):
        return float(metrics)
    if all(key in metrics for key in rouge_types):
        return sum(metrics[key] for key in rouge_types) / len(rouge_types)
    if len(metrics) == 1:
        return float(next(iter(metrics.values())))
    raise ValueError(f"Cannot reduce metrics {sorted(metrics)} to one task score; pass a float per task.")


def relative_performance(
    pruned: Mapping[str, Mapping[str, float] | float],
    dense: Mapping[str, Mapping[str, float] | float],
    tasks: Sequence[str] | None = None,
) -> float:
    """
    ATP's relative performance: mean over tasks of `score(pruned) / score(dense)`.

    Args:
        pruned (`Mapping`): task -> score, or a metric dict (ROUGE dicts are averaged over R1/R2/RL first).
        dense (`Mapping`): Same for the dense model.
        tasks (`Sequence[str]`, *optional*): Tasks to include (default: all dense tasks).
    """
    tasks = list(dense) if tasks is None else list(tasks)
    if not tasks:
        raise ValueError("No tasks to compare.")
    ratios = []
    for task in tasks:
        if task not in pruned or task not in dense:
            raise ValueError(f"Task {task!r} is missing from the pruned or dense scores.")
        base = task_score(dense[task])
        if base == 0:
            raise ValueError(f"The dense score of {task!r} is 0; its ratio is undefined.")
        ratios.append(task_score(pruned[task]) / base)
    return sum(ratios) / len(ratios)


@dataclass(frozen=True)
class PairedDifference:
    """
    Difference of two models' mean accuracy over tasks, scored on the same items.

    Args:
        difference (`float`): Mean over tasks of `mean(a) - mean(b)` per task.
        stderr (`float`): Its standard error: per task lm-eval's stderr of the mean of the per-item differences
            (paired, so the items' shared difficulty cancels), combined over the tasks as independent samples.
        per_task (`dict[str, tuple[float, float]]`): Task -> `(difference, stderr)`.
    """

    difference: float
    stderr: float
    per_task: dict[str, tuple[float, float]]

    def z_score(self) -> float:
        """`difference / stderr` (infinite when the items never disagree and the difference is not 0)."""
        if self.stderr == 0:
            return 0.0 if self.difference == 0 else math.copysign(math.inf, self.difference)
        return self.difference / self.stderr

    def resolved(self, z: float = 2.0) -> bool:
        """Whether the difference is at least `z` standard errors away from 0 (about 95% two-sided at 2)."""
        return abs(self.z_score()) >= z


def paired_mean_difference(
    a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], tasks: Sequence[str] | None = None
) -> PairedDifference:
    """
    Paired comparison of two models' mean accuracy over `tasks` from per-item scores on the same items (e.g.
    `evaluate_tasks(..., keep_item_scores=True)[task]["item_scores"]`), the way to tell two pruned models apart
    with fewer items than two independent standard errors need.

    Args:
        a (`Mapping[str, Sequence[float]]`): Task -> per-item scores of the first model.
        b (`Mapping[str, Sequence[float]]`): Task -> per-item scores of the second, item for item the same items.
        tasks (`Sequence[str]`, *optional*): Tasks to average over (default: all of `a`'s).

    Returns:
        [`PairedDifference`]: `a` minus `b`.
    """
    tasks = list(a) if tasks is None else list(tasks)
    if not tasks:
        raise ValueError("No tasks to compare.")
    per_task: dict[str, tuple[float, float]] = {}
    for task in tasks:
        if task not in a or task not in b:
            raise ValueError(f"Missing item scores for task {task!r}.")
        if len(a[task]) != len(b[task]) or len(a[task]) < 2:
            raise ValueError(
                f"Task {task!r}: a paired comparison needs the same items (at least 2) for both models, got "
                f"{len(a[task])} and {len(b[task])}."
            )
        differences = [x - y for x, y in zip(a[task], b[task])]
        per_task[task] = (sum(differences) / len(differences), mean_stderr(differences))
    difference = sum(d for d, _ in per_task.values()) / len(tasks)
    stderr = math.sqrt(sum(se**2 for _, se in per_task.values())) / len(tasks)
    return PairedDifference(difference=difference, stderr=stderr, per_task=per_task)
