"""Summary numbers of the papers this library reproduces.

- Tailored-LLaMA (and LLM-Pruner): mean accuracy over the tasks, and the recovery rate `pruned mean / dense mean`.
- ATP: relative performance, the mean over tasks of the per-task ratio `pruned / dense`, where a summarisation task's
  score is first the average of its ROUGE-1/2/L.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .generation import ATP_ROUGE_TYPES


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
