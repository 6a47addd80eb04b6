"""`DepGraphMethod`: the dependency-group method behind the `PruningMethod` contract (prunes once, at init end)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ... import arch as A
from ...structure import ModelGeometry, apply_plan
from ..base import PruningMethod, register_method
from .config import DepGraphConfig


@register_method("depgraph")
class DepGraphMethod(PruningMethod):
    """Prunes in `on_init_end` (before the optimizer exists), as Tailored-LLaMA does before LoRA recovery.

    `on_init_end` accepts `calibration=` (token ids) or a `tokenizer=` / `processing_class=` to draw calibration
    text. A plan restored with `load_state_dict` is re-applied to a model that is still dense.
    """

    config_class = DepGraphConfig

    def on_init_end(self, model: nn.Module, **context: Any) -> None:
        lm = A.unwrap_model(model)
        if self.plan is not None:
            if ModelGeometry.from_config(lm.config) == self.plan.source:
                apply_plan(model, self.plan)
            return
        from . import prune

        start = time.perf_counter()
        calibration: torch.Tensor | None = context.get("calibration")
        tokenizer = context.get("tokenizer") or context.get("processing_class")
        progress = bool(context.get("progress", True))
        _, self.plan = prune(model, self.config, calibration=calibration, tokenizer=tokenizer, progress=progress)
        params = self.plan.num_parameters()
        self.metrics.update(
            {
                "params_dense": params["dense"],
                "params_pruned": params["pruned"],
                "sparsity": float(params["sparsity"]),
                "target_sparsity": self.config.target_sparsity,
                "prune_seconds": time.perf_counter() - start,
            }
        )
