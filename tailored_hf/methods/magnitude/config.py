"""Config of the weight-magnitude baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MethodConfig


@dataclass
class MagnitudeConfig(MethodConfig):
    """Data-free baseline: keep FFN channels / query heads with the largest weight norms, uniformly per layer."""

    target_sparsity: float = field(default=0.2, metadata={"help": "Fraction of the model's total parameters removed."})
    prune_heads: bool = field(default=True, metadata={"help": "Also prune query heads (evenly in every KV group)."})

    def __post_init__(self) -> None:
        if not 0.0 < self.target_sparsity <= 0.9:
            raise ValueError(f"target_sparsity must be in (0, 0.9], got {self.target_sparsity}.")
