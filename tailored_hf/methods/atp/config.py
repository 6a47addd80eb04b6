"""`ATPConfig`: the settings of All-in-One Tuning and Structural Pruning (ATP, arXiv 2412.14426)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MethodConfig

SPARSITY_SCOPES = ("decoder", "total")
MAX_TARGET_SPARSITY = 0.95


@dataclass
class ATPConfig(MethodConfig):
    """
    Configuration of [`ATPMethod`]: a trainable pruning-decision generator alternating with LoRA steps inside a
    `Trainer` / `SFTTrainer` run, followed by physical removal of the decided groups.

    Defaults are the paper's (Sec. 3, Appendix A.1): generator with a frozen orthogonal (layers x 64) input, two
    Transformer encoder blocks (4 heads, FFN 256, ReLU), LayerNorm and per-layer projections; Gumbel-sigmoid with
    temperature 0.4 and offset 3 and straight-through rounding; AdamW lr 5e-4; alpha 5 on the parameter-matching
    loss; beta 0.3 on the group lasso, raised 100x once the generator is frozen at T/2.

    Example:

    ```python
    >>> from tailored_hf import PrunerCallback
    >>> from tailored_hf.methods.atp import ATPConfig
    >>> callback = PrunerCallback(ATPConfig(target_sparsity=0.4))  # doctest: +SKIP
    ```
    """

    target_sparsity: float = field(
        default=0.4,
        metadata={
            "help": "Fraction of parameters to remove, in (0, 0.95): of the decoder layers' parameters with "
            "sparsity_scope='decoder' (the paper's R / P), of all parameters (embeddings included) with 'total'."
        },
    )
    sparsity_scope: str = field(
        default="decoder",
        metadata={"help": "'decoder' (decoder-layer parameters, as the paper) or 'total' (every parameter)."},
    )
    alpha: float = field(default=5.0, metadata={"help": "Weight of the parameter-matching loss L_s (generator)."})
    beta: float = field(default=0.3, metadata={"help": "Weight of the LoRA group lasso while the generator trains."})
    beta_final_factor: float = field(
        default=100.0, metadata={"help": "The group-lasso weight becomes beta * beta_final_factor after T_end."}
    )
    group_lasso_reduction: str = field(
        default="sum",
        metadata={
            "help": "'sum' over the pruned LoRA rows/columns (the paper's L_gl) or 'mean' over all groups (a "
            "size-independent scale; the sum grows with the model and, times 100 beta, can dominate L_LM)."
        },
    )
    generator_end_fraction: float = field(
        default=0.5,
        metadata={"help": "T_end as a fraction of the run's optimizer steps (the generator trains for t < T_end)."},
    )
    generator_end_step: int | None = field(
        default=None, metadata={"help": "T_end as an absolute step count (overrides generator_end_fraction)."}
    )
    generator_lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate of the generator."})
    generator_weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay of the generator (torch's AdamW default)."}
    )
    generator_max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient clipping of the generator (as the authors' code); 0 disables it."}
    )
    generator_hidden_size: int = field(default=64, metadata={"help": "Width of the generator's input/encoder."})
    generator_num_layers: int = field(default=2, metadata={"help": "Transformer encoder blocks in the generator."})
    generator_num_heads: int = field(default=4, metadata={"help": "Attention heads per generator block."})
    generator_ffn_size: int = field(default=256, metadata={"help": "FFN width of the generator blocks (ReLU)."})
    gumbel_temperature: float = field(default=0.4, metadata={"help": "Temperature of the Gumbel-sigmoid."})
    gumbel_offset: float = field(
        default=3.0, metadata={"help": "Offset added to the logits, so the initial decisions keep every group."}
    )
    prune_qk: bool = field(
        default=True, metadata={"help": "Decide D_QK: rotate-half query/key pairs shared by every q and k head."}
    )
    prune_v: bool = field(
        default=True, metadata={"help": "Decide D_V: value dims shared by every value head (and o_proj inputs)."}
    )
    prune_ffn: bool = field(default=True, metadata={"help": "Decide D_GU: FFN channels (gate/up rows, down cols)."})
    min_qk_pairs: int = field(
        default=1, metadata={"help": "Decisions keeping fewer query/key pairs in a layer are clamped to this."}
    )
    min_v_dims: int = field(default=1, metadata={"help": "Decisions keeping fewer value dims are clamped to this."})
    min_ffn_channels: int = field(
        default=1, metadata={"help": "Decisions keeping fewer FFN channels in a layer are clamped to this."}
    )
    calibration_source: str = field(
        default="c4",
        metadata={"help": "Text source for the generator's batches when the callback gets no `calibration=`."},
    )
    num_calibration_samples: int = field(
        default=128, metadata={"help": "Windows drawn from calibration_source when no calibration is given."}
    )
    calibration_seq_len: int = field(default=256, metadata={"help": "Tokens per drawn calibration window."})
    calibration_batch_size: int = field(default=4, metadata={"help": "Sequences per generator step."})
    full_sequence_loss: bool = field(
        default=True,
        metadata={
            "help": "Generator LM loss over the whole sequence (instruction + response), as ATP does; False uses "
            "the calibration batches' own `labels` when they have them."
        },
    )
    removal_eval_batches: int = field(
        default=4,
        metadata={"help": "Calibration batches on which the loss change caused by physical removal is measured."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the generator's init, Gumbel noise and data order."})

    def __post_init__(self) -> None:
        self.target_sparsity = _number(self.target_sparsity, "target_sparsity")
        if not 0.0 < self.target_sparsity < MAX_TARGET_SPARSITY:
            raise ValueError(f"target_sparsity must be in (0, {MAX_TARGET_SPARSITY}), got {self.target_sparsity}.")
        if self.group_lasso_reduction not in ("sum", "mean"):
            raise ValueError(f"group_lasso_reduction must be 'sum' or 'mean', got {self.group_lasso_reduction!r}.")
        if self.sparsity_scope not in SPARSITY_SCOPES:
            raise ValueError(f"sparsity_scope must be one of {SPARSITY_SCOPES}, got {self.sparsity_scope!r}.")
        for name in ("alpha", "beta", "generator_weight_decay", "generator_max_grad_norm"):
            value = _number(getattr(self, name), name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
            setattr(self, name, value)
        for name in ("beta_final_factor", "generator_lr", "gumbel_temperature"):
            value = _number(getattr(self, name), name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
            setattr(self, name, value)
        self.gumbel_offset = _number(self.gumbel_offset, "gumbel_offset")
        self.generator_end_fraction = _number(self.generator_end_fraction, "generator_end_fraction")
        if not 0.0 < self.generator_end_fraction <= 1.0:
            raise ValueError(f"generator_end_fraction must be in (0, 1], got {self.generator_end_fraction}.")
        if self.generator_end_step is not None:
            _positive_int(self.generator_end_step, "generator_end_step")
        for name in (
            "generator_hidden_size",
            "generator_num_layers",
            "generator_num_heads",
            "generator_ffn_size",
            "min_qk_pairs",
            "min_v_dims",
            "min_ffn_channels",
            "num_calibration_samples",
            "calibration_batch_size",
            "removal_eval_batches",
        ):
            _positive_int(getattr(self, name), name)
        if self.generator_hidden_size % self.generator_num_heads:
            raise ValueError(
                f"generator_hidden_size ({self.generator_hidden_size}) must be a multiple of generator_num_heads "
                f"({self.generator_num_heads})."
            )
        _positive_int(self.calibration_seq_len, "calibration_seq_len")
        if self.calibration_seq_len < 2:
            raise ValueError(
                f"calibration_seq_len must be at least 2 (next-token loss), got {self.calibration_seq_len}."
            )
        if not (self.prune_qk or self.prune_v or self.prune_ffn):
            raise ValueError("Nothing to prune: enable at least one of prune_qk, prune_v, prune_ffn.")

    @property
    def target_remaining(self) -> float:
        """r in the paper's L_s: the fraction of the scope's parameters to keep."""
        return 1.0 - self.target_sparsity

    def end_step(self, max_steps: int) -> int:
        """T_end for a run of `max_steps` optimizer steps (at least 1)."""
        if self.generator_end_step is not None:
            return self.generator_end_step
        return max(1, round(self.generator_end_fraction * max_steps))


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
