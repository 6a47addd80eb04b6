"""The weight-magnitude baseline as a `PruningMethod` (prunes at `on_init_end`, before the optimizer exists)."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ...structure import apply_plan, count_parameters
from ...structure.simple import magnitude_plan
from ..base import PruningMethod, register_method
from .config import MagnitudeConfig


@register_method("magnitude")
class MagnitudePruner(PruningMethod):
    config_class = MagnitudeConfig

    def on_init_end(self, model: nn.Module, **context: Any) -> None:
        start = time.perf_counter()
        dense = count_parameters(model)
        self.plan = magnitude_plan(model, self.config.target_sparsity, prune_heads=self.config.prune_heads)
        apply_plan(model, self.plan)
        pruned = count_parameters(model)
        self.metrics.update(
            {
                "params_dense": dense,
                "params_pruned": pruned,
                "sparsity": 1 - pruned / dense,
                "prune_seconds": time.perf_counter() - start,
            }
        )
