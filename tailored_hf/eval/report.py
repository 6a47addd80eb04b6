"""`EvalReport`: evaluation rows (model label -> task -> metric) written as JSON and a Markdown table in which every
pruned number sits next to the dense baseline, and tasks whose dense score is near chance are flagged."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aggregate import mean_accuracy, recovery_rate

#: A task is flagged when its dense score is within this many points (percent) of chance.
NEAR_CHANCE_POINTS = 2.0
NEAR_CHANCE_FLAG = "†"
PERCENT = 100.0


def _chance_from_registry(task: str) -> float | None:
    try:
        from tailored_hf.data import get_task

        return get_task(task).chance
    except (ImportError, KeyError, ValueError):
        return None


@dataclass
class EvalReport:
    """
    Evaluation results of a dense baseline and its pruned variants.

    Args:
        dense_label (`str`): Row label of the dense baseline.
        rows (`dict[str, dict[str, float]]`): model label -> task -> score in [0, 1].
        chance (`dict[str, float]`, *optional*): task -> chance accuracy; tasks not listed are looked up in the
            `tailored_hf.data` task registry.
        metric_names (`dict[str, str]`): task -> metric name shown in the header (e.g. `"acc_norm"`).
        notes (`list[str]`): Free text appended below the table.
    """

    dense_label: str = "dense"
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    chance: dict[str, float] | None = None
    metric_names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, scores: Mapping[str, float]) -> None:
        """Add or extend the row `label`."""
        self.rows.setdefault(label, {}).update({task: float(v) for task, v in scores.items()})

    @property
    def tasks(self) -> list[str]:
        seen: dict[str, None] = {}
        for scores in self.rows.values():
            seen.update(dict.fromkeys(scores))
        return list(seen)

    def chance_level(self, task: str) -> float | None:
        if self.chance is not None and task in self.chance:
            return self.chance[task]
        return _chance_from_registry(task)

    def near_chance(self, task: str) -> bool:
        """Whether the dense score of `task` is within `NEAR_CHANCE_POINTS` points of chance."""
        chance = self.chance_level(task)
        dense = self.rows.get(self.dense_label, {}).get(task)
        if chance is None or dense is None:
            return False
        return abs(dense - chance) * PERCENT <= NEAR_CHANCE_POINTS

    def summary(self, tasks: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Per row: mean over `tasks` and, for pruned rows, the recovery rate against the dense row."""
        tasks = self.tasks if tasks is None else list(tasks)
        dense = self.rows.get(self.dense_label)
        out = {}
        for label, scores in self.rows.items():
            entry = {"mean": mean_accuracy(scores, tasks)}
            if dense is not None and label != self.dense_label:
                entry["recovery"] = recovery_rate(scores, dense, tasks)
            out[label] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dense_label": self.dense_label,
            "rows": self.rows,
            "chance": {task: self.chance_level(task) for task in self.tasks},
            "near_chance": [task for task in self.tasks if self.near_chance(task)],
            "metric_names": self.metric_names,
            "summary": self.summary() if self.rows else {},
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        """A table with one column per task; pruned cells read `pruned (dense)`; near-chance tasks carry `†`."""
        tasks = self.tasks
        dense = self.rows.get(self.dense_label, {})
        header = []
        for task in tasks:
            name = task + (f" ({self.metric_names[task]})" if task in self.metric_names else "")
            header.append(name + (f" {NEAR_CHANCE_FLAG}" if self.near_chance(task) else ""))
        lines = [
            "| model | " + " | ".join(header) + " | mean | recovery |",
            "|---|" + "---|" * (len(tasks) + 2),
        ]
        summary = self.summary() if self.rows else {}
        for label, scores in self.rows.items():
            cells = []
            for task in tasks:
                value = scores.get(task)
                if value is None:
                    cells.append("–")
                elif label == self.dense_label or task not in dense:
                    cells.append(f"{PERCENT * value:.2f}")
                else:
                    cells.append(f"{PERCENT * value:.2f} ({PERCENT * dense[task]:.2f})")
            mean = summary.get(label, {}).get("mean")
            recovery = summary.get(label, {}).get("recovery")
            mean_cell = f"{PERCENT * mean:.2f}" if mean is not None else "–"
            if label != self.dense_label and dense and mean is not None:
                mean_cell += f" ({PERCENT * summary[self.dense_label]['mean']:.2f})"
            recovery_cell = f"{PERCENT * recovery:.1f}%" if recovery is not None else "–"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean_cell} | {recovery_cell} |")
        footer = [
            "",
            f"Pruned cells show `pruned (dense)`. {NEAR_CHANCE_FLAG}: dense score within {NEAR_CHANCE_POINTS:g} "
            "points of chance.",
        ]
        return "\n".join(lines + footer + [f"\n{note}" for note in self.notes]) + "\n"

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write `<path>.json` and `<path>.md`; returns both paths."""
        base = Path(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path
