"""`L0Config`: the settings of NutePrune-style L0 mask learning (hard-concrete masks, Lagrangian, progressive KD).

Defaults follow the NutePrune paper (arXiv 2402.09773) and its public code (a Compresso / CoFi fork): temperature
2/3 with stretch limits (-0.1, 1.1), masks initialised with a 1% drop rate and clamped to |log_alpha| <= log(100),
mask and Lagrangian learning rate 0.1, heads + FFN channels + hidden dims pruned, one teacher snapshot per 1% of
sparsity with a 10% gap, distillation loss 0.1 * logit KD + 0.9 * layer-wise MSE at temperature 2/3. One departure:
the layer-wise term is normalised per token by default (`distill_layer_normalization`), see its help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..base import MethodConfig

DISTILLATION_MODES = ("progressive", "kd", "none")
#: How the expected sparsity is tied to its target (`L0Config.sparsity_constraint`).
SPARSITY_CONSTRAINTS = ("equality", "at_least")
#: How the layer-wise distillation term is normalised (`L0Config.distill_layer_normalization`).
LAYER_LOSS_NORMALIZATIONS = ("token", "none")
MAX_TARGET_SPARSITY = 0.9
# Stretch limits and temperature of the hard-concrete distribution (Louizos et al., 2018; NutePrune's code).
DEFAULT_STRETCH = (-0.1, 1.1)
DEFAULT_TEMPERATURE = 2.0 / 3.0
# NutePrune's `constrain_parameters`: log_alpha is clamped to [log(1e-2), log(1e2)] after every mask step.
DEFAULT_LOG_ALPHA_BOUND = math.log(100.0)
# `--lagrangian_warmup_epochs 1` of `--num_train_epochs 7` in NutePrune's scripts/cotrain.sh.
DEFAULT_WARMUP_RATIO = 1.0 / 7.0


@dataclass
class L0Config(MethodConfig):
    """
    Configuration of [`L0Pruner`] (NutePrune): hard-concrete L0 masks over attention heads, FFN channels, hidden
    dimensions and optionally whole layers, learned together with LoRA under a Lagrangian sparsity constraint,
    distilled from progressively chosen teachers that are snapshots of the same loaded model, and removed physically
    at the end of training.

    Example:

    ```python
    >>> from tailored_hf import PrunerCallback
    >>> from tailored_hf.methods.l0 import L0Config
    >>> callback = PrunerCallback(L0Config(target_sparsity=0.2))  # add to Trainer / SFTTrainer(peft_config=...)
    ```
    """

    target_sparsity: float = field(
        default=0.2,
        metadata={
            "help": "Fraction of the model's TOTAL parameters (embeddings included) removed at the end, in (0, 0.9]."
        },
    )
    prune_heads: bool = field(
        default=True, metadata={"help": "Learn one mask per query head (KV heads go when all their query heads go)."}
    )
    prune_ffn: bool = field(default=True, metadata={"help": "Learn one mask per FFN intermediate channel."})
    prune_hidden: bool = field(
        default=True, metadata={"help": "Learn one mask per hidden (residual-stream) dimension, shared by all layers."}
    )
    prune_layers: bool = field(default=False, metadata={"help": "Also learn one gate per whole decoder layer."})
    temperature: float = field(
        default=DEFAULT_TEMPERATURE, metadata={"help": "Hard-concrete temperature beta (Louizos et al.: 2/3)."}
    )
    stretch_limits: tuple[float, float] = field(
        default=DEFAULT_STRETCH,
        metadata={"help": "Stretch interval (l, r) of the hard-concrete distribution, l < 0 < 1 < r."},
    )
    droprate_init: float = field(
        default=0.01,
        metadata={
            "help": "Initial drop rate d of every mask: log_alpha starts at log((1 - d) / d) (NutePrune: 0.01)."
        },
    )
    init_noise_std: float = field(
        default=0.01, metadata={"help": "Standard deviation of the Gaussian noise added to the initial log_alpha."}
    )
    log_alpha_bound: float = field(
        default=DEFAULT_LOG_ALPHA_BOUND,
        metadata={"help": "log_alpha is clamped to [-bound, bound] after every mask step (NutePrune: log(100))."},
    )
    mask_learning_rate: float = field(
        default=0.1, metadata={"help": "Adam learning rate of the mask log_alpha (the paper: 0.1; LoRA: 1e-3)."}
    )
    lambda_learning_rate: float = field(
        default=0.1, metadata={"help": "Adam learning rate of the Lagrange multipliers (gradient ascent)."}
    )
    sparsity_constraint: str = field(
        default="equality",
        metadata={
            "help": "'equality' (NutePrune / CoFi): lambda1 (s_hat - t) + lambda2 (s_hat - t)^2 with free-sign "
            "multipliers; they keep growing while s_hat lags the target and carry s_hat past it afterwards "
            "(wind-up). 'at_least': the constraint s_hat >= t with one multiplier lambda >= 0 on (t - s_hat) and "
            "dual restarts (Gallego-Posada et al., NeurIPS 2022): lambda and its optimizer state are reset to 0 "
            "whenever s_hat reaches t, so nothing winds up and the LM loss alone holds s_hat at the target."
        },
    )
    sparsity_warmup_ratio: float = field(
        default=DEFAULT_WARMUP_RATIO,
        metadata={
            "help": "Fraction of the training steps over which the target sparsity grows linearly from 0 "
            "(NutePrune: 1 of 7 epochs)."
        },
    )
    sparsity_warmup_steps: int | None = field(
        default=None, metadata={"help": "Warm-up length in optimizer steps; overrides `sparsity_warmup_ratio`."}
    )
    target_tolerance: float = field(
        default=0.005,
        metadata={
            "help": "The target counts as reached once the expected sparsity is within this of it "
            "(NutePrune's sparsity_epsilon)."
        },
    )
    distillation: str = field(
        default="progressive",
        metadata={
            "help": "'progressive' (numerous teachers: snapshots of the masks and LoRA weights), 'kd' (the intact "
            "model is the only teacher) or 'none' (no distillation; for ablations)."
        },
    )
    snapshot_interval: float = field(
        default=0.01,
        metadata={"help": "Snapshot masks + LoRA weights to CPU each time the expected sparsity grows by this much."},
    )
    teacher_gap: float = field(
        default=0.1,
        metadata={
            "help": "Before the target is reached, the teacher is the sparsest snapshot at least this much less "
            "sparse than the student (the intact model while the student is below it)."
        },
    )
    distill_logit_weight: float = field(
        default=0.1, metadata={"help": "Weight of the logit KL(teacher || student) term (NutePrune: 0.1)."}
    )
    distill_layer_weight: float = field(
        default=0.9,
        metadata={"help": "Weight alpha1 of the layer-wise hidden-state MSE term (NutePrune: 0.9; 0 disables it)."},
    )
    distill_layer_normalization: str = field(
        default="token",
        metadata={
            "help": "'token': each token's squared error divided by the teacher's squared norm of that token "
            "(relative error, every token alike); 'none': the paper's plain MSE, which on LLaMA-family models is "
            "dominated by the massive activations of a few tokens and channels in the last layers (on "
            "SmolLM2-135M it is 1e3-1e5, dwarfing the KL and the Lagrangian, and the masks do not move)."
        },
    )
    distill_temperature: float = field(
        default=2.0 / 3.0, metadata={"help": "Softmax temperature of the logit distillation (NutePrune: 2/3)."}
    )
    distill_chunk_tokens: int = field(
        default=256,
        metadata={
            "help": "Tokens per chunk of the logit distillation: student and teacher logits are computed (and "
            "their gradient formed) this many tokens at a time, never as whole [tokens, vocab] tensors; about three "
            "[chunk, vocab] float32 buffers are live at once."
        },
    )
    task_loss_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the model's own (task / LM) loss. None: the paper's choice, 0 with distillation "
            "(the distillation loss replaces it) and 1 without."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the mask initialisation and of the hard-concrete noise."})

    def __post_init__(self) -> None:
        if isinstance(self.target_sparsity, bool) or not isinstance(self.target_sparsity, (int, float)):
            raise ValueError(
                f"target_sparsity must be a number in (0, {MAX_TARGET_SPARSITY}], got {self.target_sparsity!r}."
            )
        self.target_sparsity = float(self.target_sparsity)
        if not 0.0 < self.target_sparsity <= MAX_TARGET_SPARSITY:
            raise ValueError(
                f"target_sparsity must be in (0, {MAX_TARGET_SPARSITY}] (a fraction of all parameters), got "
                f"{self.target_sparsity}."
            )
        if not (self.prune_heads or self.prune_ffn or self.prune_hidden or self.prune_layers):
            raise ValueError(
                "Nothing to prune: enable at least one of prune_heads, prune_ffn, prune_hidden, prune_layers."
            )
        _positive(self, "temperature")
        limits = tuple(float(v) for v in self.stretch_limits)
        if len(limits) != 2 or not (limits[0] < 0.0 and limits[1] > 1.0):
            raise ValueError(f"stretch_limits must be (l, r) with l < 0 and r > 1, got {self.stretch_limits!r}.")
        self.stretch_limits = limits
        if not 0.0 < self.droprate_init < 1.0:
            raise ValueError(f"droprate_init must be in (0, 1), got {self.droprate_init}.")
        if self.init_noise_std < 0.0:
            raise ValueError(f"init_noise_std must be >= 0, got {self.init_noise_std}.")
        for name in ("log_alpha_bound", "mask_learning_rate", "lambda_learning_rate", "distill_temperature"):
            _positive(self, name)
        if not 0.0 <= self.sparsity_warmup_ratio < 1.0:
            raise ValueError(
                f"sparsity_warmup_ratio must be in [0, 1) so that training continues after the target is reached, got "
                f"{self.sparsity_warmup_ratio}."
            )
        if self.sparsity_warmup_steps is not None and (
            isinstance(self.sparsity_warmup_steps, bool)
            or not isinstance(self.sparsity_warmup_steps, int)
            or self.sparsity_warmup_steps < 0
        ):
            raise ValueError(
                f"sparsity_warmup_steps must be a non-negative integer or None, got {self.sparsity_warmup_steps!r}."
            )
        if not 0.0 <= self.target_tolerance < self.target_sparsity:
            raise ValueError(f"target_tolerance must be in [0, target_sparsity), got {self.target_tolerance}.")
        if self.sparsity_constraint not in SPARSITY_CONSTRAINTS:
            raise ValueError(
                f"sparsity_constraint must be one of {SPARSITY_CONSTRAINTS}, got {self.sparsity_constraint!r}."
            )
        if self.distillation not in DISTILLATION_MODES:
            raise ValueError(f"distillation must be one of {DISTILLATION_MODES}, got {self.distillation!r}.")
        if not 0.0 < self.snapshot_interval < 1.0:
            raise ValueError(f"snapshot_interval must be in (0, 1), got {self.snapshot_interval}.")
        if self.distillation == "progressive" and self.snapshot_interval >= self.target_sparsity:
            raise ValueError(
                f"snapshot_interval={self.snapshot_interval} is not smaller than "
                f"target_sparsity={self.target_sparsity}: no teacher snapshot would ever be taken below the target. "
                "Use a smaller snapshot_interval (the paper: 0.01) or distillation='kd'."
            )
        if not 0.0 <= self.teacher_gap < 1.0:
            raise ValueError(f"teacher_gap must be in [0, 1), got {self.teacher_gap}.")
        for name in ("distill_logit_weight", "distill_layer_weight"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.distill_layer_normalization not in LAYER_LOSS_NORMALIZATIONS:
            raise ValueError(
                f"distill_layer_normalization must be one of {LAYER_LOSS_NORMALIZATIONS}, got "
                f"{self.distill_layer_normalization!r}."
            )
        if self.distillation != "none" and self.distill_logit_weight == 0.0 and self.distill_layer_weight == 0.0:
            raise ValueError("Both distillation weights are 0; set distillation='none' instead.")
        if (
            isinstance(self.distill_chunk_tokens, bool)
            or not isinstance(self.distill_chunk_tokens, int)
            or self.distill_chunk_tokens < 1
        ):
            raise ValueError(f"distill_chunk_tokens must be a positive integer, got {self.distill_chunk_tokens!r}.")
        if self.task_loss_weight is not None and self.task_loss_weight < 0.0:
            raise ValueError(f"task_loss_weight must be >= 0 or None, got {self.task_loss_weight}.")

    @property
    def resolved_task_loss_weight(self) -> float:
        """The weight of the model's own loss: `task_loss_weight`, or the paper's choice when it is None."""
        if self.task_loss_weight is not None:
            return float(self.task_loss_weight)
        return 0.0 if self.distillation != "none" else 1.0

    def warmup_steps(self, max_steps: int) -> int:
        """Optimizer steps of the linear target-sparsity warm-up for a run of `max_steps` steps."""
        if self.sparsity_warmup_steps is not None:
            return self.sparsity_warmup_steps
        return int(round(self.sparsity_warmup_ratio * max_steps))


def _positive(config: L0Config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0.0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


NutePruneConfig = L0Config
