"""PNG chart of the kept attention heads and FFN channels per layer (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOT_FILENAME = "per_layer_sizes.png"


def plot_per_layer(per_layer: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw kept query heads and FFN channels per layer (bars) against the dense sizes (outline) and save a PNG.

    Args:
        per_layer: rows of `PruningPlan.per_layer_sizes()` (`layer`, `heads`, `source_heads`, `ffn`, `source_ffn`).
        path: destination `.png`.
        title: figure title.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # the object API: no pyplot state, safe in threads and tests

    if not per_layer:
        raise ValueError("per_layer is empty: pass `PruningPlan.per_layer_sizes()` of a model with layers.")
    layers = [row["layer"] for row in per_layer]
    fig = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2.0), 5.0), dpi=100)
    panels = (
        ("heads", "source_heads", "kept query heads", "#4C72B0"),
        ("ffn", "source_ffn", "kept FFN channels", "#DD8452"),
    )
    axes = fig.subplots(2, 1, sharex=True)
    for ax, (kept_key, source_key, label, color) in zip(axes, panels):
        ax.bar(layers, [row[source_key] for row in per_layer], color="none", edgecolor="#999999", label="dense")
        ax.bar(layers, [row[kept_key] for row in per_layer], color=color, label="kept")
        ax.set_ylabel(label)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("layer")
    fig.suptitle(title or "Kept structure per layer")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
