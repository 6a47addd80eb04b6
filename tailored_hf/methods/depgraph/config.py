"""`DepGraphConfig`: the settings of dependency-group pruning (LLM-Pruner / Tailored-LLaMA style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MethodConfig
from .importance import AGGREGATIONS

IMPORTANCES = ("taylor", "taylor_vector", "hessian", "l1", "l2", "random")
MAX_TARGET_SPARSITY = 0.9
# LLM-Pruner prunes layers 4..30 of LLaMA-7B's 32; the default protected range scales with the depth.
DEFAULT_LAYER_RANGE_FRACTIONS = (4 / 32, 30 / 32)


@dataclass
class DepGraphConfig(MethodConfig):
    """
    Configuration of [`DepGraphPruner`]: structural pruning of coupled groups (query heads / KV groups, FFN channels,
    optionally hidden channels) ranked by a group importance computed on calibration data.

    Example:

    ```python
    >>> from tailored_hf.methods.depgraph import DepGraphConfig, prune
    >>> config = DepGraphConfig(target_sparsity=0.2, importance="taylor")
    >>> model, plan = prune(model, config, tokenizer=tokenizer)  # doctest: +SKIP
    ```
    """

    target_sparsity: float = field(
        default=0.2,
        metadata={"help": "Fraction of the model's TOTAL parameters (embeddings included) to remove, in (0, 0.9]."},
    )
    importance: str = field(
        default="taylor",
        metadata={
            "help": "Group importance: 'taylor' (element-wise first-order |g*w|, the paper's choice), "
            "'taylor_vector' (|sum g*w| per slice), 'hessian' (diagonal-Fisher second order), 'l1', 'l2' "
            "(weight magnitude, no data needed) or 'random'."
        },
    )
    aggregation: str = field(
        default="sum",
        metadata={"help": "How member-parameter scores combine into a group score: 'sum', 'mean', 'max', 'prod'."},
    )
    num_calibration_samples: int = field(
        default=20,
        metadata={"help": "Calibration sequences drawn when no calibration tensor is given (LLM-Pruner: 10-20)."},
    )
    calibration_seq_len: int = field(
        default=128, metadata={"help": "Tokens per calibration sequence (at least 2 for a next-token loss)."}
    )
    calibration_source: str = field(
        default="book",
        metadata={"help": "Calibration text source for `tailored_hf.data.calibration_batches` ('book', a path, ...)."},
    )
    calibration_batch_size: int = field(
        default=1,
        metadata={"help": "Calibration sequences per forward/backward; scores are averaged over these batches."},
    )
    prune_heads: bool = field(
        default=True, metadata={"help": "Prune attention heads (query heads inside KV groups, whole KV groups)."}
    )
    prune_ffn: bool = field(default=True, metadata={"help": "Prune FFN (gate/up/down) channels."})
    prune_hidden: bool = field(
        default=False,
        metadata={"help": "Also prune hidden (residual-stream) channels, shared by every layer and the embeddings."},
    )
    global_ranking: bool = field(
        default=False,
        metadata={
            "help": "False: remove the same fraction from every unprotected layer (LLM-Pruner's default). True: "
            "rank normalised group scores across layers and remove the cheapest per parameter."
        },
    )
    layer_range: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "Layers [start, end) that may be pruned; the others are protected. None: "
            "round(n*4/32) .. round(n*30/32), LLM-Pruner's 4..30 of 32 scaled to the model's depth."
        },
    )
    iterative_steps: int = field(
        default=1,
        metadata={
            "help": "Prune in this many rounds (LLM-Pruner's --iterative_steps), scoring the partly pruned model "
            "again before each: round k brings the removed share of the original parameters to k/n of the target."
        },
    )
    round_to: int = field(
        default=1, metadata={"help": "Kept FFN (and hidden) channel counts are multiples of this (e.g. 8 or 64)."}
    )
    head_round_to: int = field(
        default=1, metadata={"help": "Kept query-head counts per layer are multiples of this (or all heads)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for calibration sampling and random importance."})

    def __post_init__(self) -> None:
        if isinstance(self.target_sparsity, bool) or not isinstance(self.target_sparsity, (int, float)):
            raise ValueError(f"target_sparsity must be a number in (0, 0.9], got {self.target_sparsity!r}.")
        if not 0.0 < float(self.target_sparsity) <= MAX_TARGET_SPARSITY:
            raise ValueError(
                f"target_sparsity must be in (0, {MAX_TARGET_SPARSITY}] (a fraction of all parameters), got "
                f"{self.target_sparsity}."
            )
        self.target_sparsity = float(self.target_sparsity)
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}.")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        for name in (
            "num_calibration_samples",
            "calibration_batch_size",
            "iterative_steps",
            "round_to",
            "head_round_to",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if isinstance(self.calibration_seq_len, bool) or not isinstance(self.calibration_seq_len, int):
            raise ValueError(f"calibration_seq_len must be an integer, got {self.calibration_seq_len!r}.")
        if self.calibration_seq_len < 2:
            raise ValueError(
                f"calibration_seq_len must be at least 2 (a next-token loss needs a target), got "
                f"{self.calibration_seq_len}."
            )
        if not (self.prune_heads or self.prune_ffn or self.prune_hidden):
            raise ValueError("Nothing to prune: enable at least one of prune_heads, prune_ffn, prune_hidden.")
        if self.layer_range is not None:
            values = tuple(self.layer_range)
            if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ValueError(f"layer_range must be two integers (start, end), got {self.layer_range!r}.")
            if not 0 <= values[0] < values[1]:
                raise ValueError(f"layer_range must satisfy 0 <= start < end, got {values}.")
            self.layer_range = values

    def resolved_layer_range(self, num_layers: int) -> tuple[int, int]:
        """The prunable layers `[start, end)` for a model with `num_layers` layers."""
        if self.layer_range is None:
            start, end = (round(num_layers * f) for f in DEFAULT_LAYER_RANGE_FRACTIONS)
            start, end = min(start, num_layers - 1), max(end, min(start + 1, num_layers))
            return start, end
        start, end = self.layer_range
        if end > num_layers:
            raise ValueError(f"layer_range {self.layer_range} exceeds the model's {num_layers} layers.")
        return start, end
