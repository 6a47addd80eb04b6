"""Prompt selection: Tailored-LLaMA's "prompt evaluation strategy".

Each candidate prompt is scored on a held-out dev slice with the (pruned) model; the best one is used for recovery.
The dev slice must be disjoint from the K training shots (see `split_dev_and_pool`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from .mappers import map_for_scoring
from .prompts import CHAT_PROMPT, list_prompts
from .tasks import get_task

logger = logging.getLogger(__name__)

DEFAULT_DEV_SIZE = 100
SELECTION_METRICS = ("acc", "acc_norm")


@dataclass
class PromptSelection:
    """The chosen prompt and the table it was chosen from (one row per candidate, in candidate order)."""

    task: str
    best: str
    metric: str
    table: list[dict[str, float | str | int]] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"| prompt | {self.metric} | n |", "|---|---|---|"]
        for row in self.table:
            mark = " **(selected)**" if row["prompt"] == self.best else ""
            lines.append(f"| {row['prompt']}{mark} | {row[self.metric]:.4f} | {row['n']} |")
        return "\n".join(lines)


def split_dev_and_pool(
    dataset: datasets.Dataset, dev_size: int = DEFAULT_DEV_SIZE, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Seeded split of a train split into (dev slice for selection, pool for K-shot sampling), disjoint."""
    if dev_size <= 0:
        raise ValueError(f"dev_size must be positive, got {dev_size}.")
    if len(dataset) <= dev_size:
        raise ValueError(
            f"The split has {len(dataset)} rows; a dev slice of {dev_size} would leave none for training."
        )
    shuffled = dataset.shuffle(seed=seed)
    return shuffled.select(range(dev_size)), shuffled.select(range(dev_size, len(shuffled)))


def candidate_prompts(task: str, tokenizer: Any) -> list[str]:
    """The prompt variants `select_prompt` tries by default: every registered one, `chat` only when the tokenizer has
    a chat template."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    return [p for p in list_prompts(task) if p != CHAT_PROMPT or has_template]


def select_prompt(
    model,
    tokenizer,
    dev: datasets.Dataset,
    task: str,
    candidates: Sequence[str] | None = None,
    metric: str = "acc",
    batch_size: int = 16,
    packed: bool = False,
) -> PromptSelection:
    """Score every candidate prompt on `dev` and return the best (ties go to the earlier candidate).

    Args:
        model: the (pruned) causal LM, in eval mode.
        tokenizer: its tokenizer.
        dev: held-out rows in the task's schema.
        task: task name.
        candidates: prompt names; default every registered prompt except `chat` when the tokenizer has no template.
        metric: `"acc"` or `"acc_norm"`.
        batch_size: scoring batch size.
        packed: score the choices of an item in one packed sequence (see `score_multiple_choice`).
    """
    from ..eval.multiple_choice import score_multiple_choice

    spec = get_task(task)
    if metric not in SELECTION_METRICS:
        raise ValueError(f"metric must be one of {SELECTION_METRICS}, got {metric!r}.")
    if len(dev) == 0:
        raise ValueError("The dev slice is empty.")
    if candidates is None:
        candidates = candidate_prompts(spec.name, tokenizer)
    if not candidates:
        raise ValueError("No candidate prompts to select from.")
    table = []
    for name in candidates:
        items = map_for_scoring(dev, spec.name, prompt=name, tokenizer=tokenizer)
        result = score_multiple_choice(model, tokenizer, items, batch_size=batch_size, packed=packed)
        table.append({"prompt": name, "acc": result.acc, "acc_norm": result.acc_norm, "n": result.n})
        logger.info("prompt %-10s %s=%.4f (n=%d)", name, metric, table[-1][metric], result.n)
    best = max(range(len(table)), key=lambda i: (table[i][metric], -i))
    return PromptSelection(task=spec.name, best=str(table[best]["prompt"]), metric=metric, table=table)
