"""Progressive numerous teachers (NutePrune Sec. 3.2) without a second model in memory, and the layer loss.

A teacher is a *snapshot*: the mask `log_alpha` and the trainable (LoRA) weights at some moment of training, kept on
the CPU. For the teacher forward the snapshot's weights are copied into the one loaded model and its deterministic
masks installed; afterwards the student's weights are restored bit for bit (`peft_wrappers.swapped_parameters`).
Snapshot 0 is the intact model (no masks, the adapters as they were before training).

Schedule:

* a snapshot is taken each time the expected sparsity s_hat passes the next multiple of `snapshot_interval` below
  the target;
* before the target is reached, the teacher of a student at sparsity s is the sparsest snapshot at or below
  s - `teacher_gap` (the intact model while s < gap);
* once it is reached (at step r, with R steps left), the R steps are cut into K + 1 equal phases for the K sparse
  snapshots: the teachers go from the sparsest (weakest) to the densest, and the last phase uses the intact model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .config import LAYER_LOSS_NORMALIZATIONS, L0Config
from .hard_concrete import HardConcrete
from .masks import MaskValues


@dataclass
class Snapshot:
    """One teacher: expected sparsity when taken, the step, mask log_alpha (None: intact) and trainable weights."""

    sparsity: float
    step: int
    log_alpha: dict[str, torch.Tensor] | None
    params: dict[str, torch.Tensor]

    @property
    def intact(self) -> bool:
        return self.log_alpha is None

    def nbytes(self) -> int:
        tensors = [*self.params.values(), *(self.log_alpha or {}).values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def values_from_named(named: dict[str, torch.Tensor]) -> MaskValues:
    """`{"heads.3": t, "ffn.0": t, "hidden": t, "layers": t}` -> `MaskValues`."""
    values = MaskValues()
    for name, tensor in named.items():
        kind, _, index = name.partition(".")
        if kind == "heads":
            values.heads[int(index)] = tensor
        elif kind == "ffn":
            values.ffn[int(index)] = tensor
        elif kind == "hidden":
            values.hidden = tensor
        elif kind == "layers":
            values.layers = tensor
        else:
            raise KeyError(f"Unknown mask group {name!r}.")
    return values


class TeacherBank:
    """Snapshots on the CPU plus the progressive schedule that picks one per training step.

    Args:
        config (`L0Config`): `distillation`, `snapshot_interval`, `teacher_gap`, `target_sparsity`, tolerance.
        distribution (`HardConcrete`): turns a snapshot's log_alpha into deterministic 0/1 teacher masks.
    """

    def __init__(self, config: L0Config, distribution: HardConcrete) -> None:
        self.config = config
        self.distribution = distribution
        self.snapshots: list[Snapshot] = []
        self.next_level = config.snapshot_interval
        self.reached_step: int | None = None
        self._mask_cache: dict[int, MaskValues] = {}
        # The adapter weights of the last teacher used, on the model's device (one teacher's adapters at most):
        # copying them from the CPU snapshot on every step would cost a host-to-device transfer per tensor.
        self._params_cache: tuple[int, dict[str, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ recording
    def capture_intact(self, params: dict[str, torch.Tensor], step: int = 0) -> None:
        """Record the intact teacher: no masks and the trainable weights as they are now (before training)."""
        self.snapshots = [Snapshot(0.0, step, None, _cpu_copy(params))]
        self._clear_caches()

    def maybe_snapshot(
        self, sparsity: float, step: int, log_alpha: dict[str, torch.Tensor], params: dict[str, torch.Tensor]
    ) -> bool:
        """Take a snapshot when `sparsity` passed the next level below the target; returns whether one was taken."""
        cfg = self.config
        if cfg.distillation != "progressive" or self.reached_step is not None:
            return False
        if sparsity < self.next_level - 1e-12 or sparsity >= cfg.target_sparsity - cfg.target_tolerance:
            return False
        self.snapshots.append(Snapshot(float(sparsity), int(step), _cpu_copy(log_alpha), _cpu_copy(params)))
        # The next level strictly above the sparsity just recorded (several levels may be passed at once).
        levels_passed = int((sparsity + 1e-12) // cfg.snapshot_interval)
        self.next_level = (levels_passed + 1) * cfg.snapshot_interval
        return True

    def update_reached(self, sparsity: float, step: int, warmup_done: bool) -> bool:
        """Mark the step at which the target is reached (once, after the warm-up); returns whether it is reached."""
        cfg = self.config
        if self.reached_step is None and warmup_done and sparsity >= cfg.target_sparsity - cfg.target_tolerance:
            self.reached_step = int(step)
        return self.reached_step is not None

    # ------------------------------------------------------------------ schedule
    def choose(self, student_sparsity: float, step: int, max_steps: int) -> int:
        """Index into `snapshots` of the teacher for a student at `student_sparsity` at optimizer step `step`."""
        if not self.snapshots:
            raise RuntimeError("No teacher snapshot recorded: the intact model must be captured before training.")
        if self.config.distillation == "kd":
            return 0
        sparse = sorted(range(1, len(self.snapshots)), key=lambda i: (self.snapshots[i].sparsity, i))
        if self.reached_step is None:
            limit = student_sparsity - self.config.teacher_gap
            eligible = [i for i in sparse if self.snapshots[i].sparsity <= limit + 1e-12]
            return eligible[-1] if eligible else 0
        remaining = max(1, max_steps - self.reached_step)
        phases = len(sparse) + 1
        phase = min(phases - 1, (step - self.reached_step) * phases // remaining)
        weak_to_strong = list(reversed(sparse))
        return weak_to_strong[phase] if phase < len(sparse) else 0

    def teacher_masks(self, index: int, device: torch.device) -> MaskValues | None:
        """Deterministic 0/1 masks of snapshot `index` on `device` (None for the intact model)."""
        snapshot = self.snapshots[index]
        if snapshot.intact:
            return None
        if index not in self._mask_cache:
            named = {k: self.distribution.deterministic(v.float()).to(device) for k, v in snapshot.log_alpha.items()}
            self._mask_cache[index] = values_from_named(named)
        return self._mask_cache[index]

    def teacher_params(self, index: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The trainable weights of snapshot `index` on `device` (the snapshot's own tensors on the CPU)."""
        if self._params_cache is None or self._params_cache[0] != index:
            params = self.snapshots[index].params
            self._params_cache = (index, {name: t.to(device) for name, t in params.items()})
        return self._params_cache[1]

    def _clear_caches(self) -> None:
        self._mask_cache.clear()
        self._params_cache = None

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.snapshots)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "next_level": self.next_level,
            "reached_step": self.reached_step,
            "snapshots": [
                {"sparsity": s.sparsity, "step": s.step, "intact": s.intact, "params": list(s.params)}
                for s in self.snapshots
            ],
        }

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, snap in enumerate(self.snapshots):
            for name, value in snap.params.items():
                tensors[f"snapshot.{i}.param.{name}"] = value
            for name, value in (snap.log_alpha or {}).items():
                tensors[f"snapshot.{i}.log_alpha.{name}"] = value
        return tensors

    def load_state(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.next_level = float(state["next_level"])
        self.reached_step = state["reached_step"]
        self.snapshots = []
        for i, meta in enumerate(state["snapshots"]):
            params = {name: tensors[f"snapshot.{i}.param.{name}"].clone() for name in meta["params"]}
            prefix = f"snapshot.{i}.log_alpha."
            log_alpha = (
                None
                if meta["intact"]
                else {k[len(prefix) :]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}
            )
            self.snapshots.append(Snapshot(float(meta["sparsity"]), int(meta["step"]), log_alpha, params))
        self._clear_caches()

    def clear(self) -> None:
        """Drop every snapshot (after training) to free CPU memory."""
        self.snapshots = []
        self._clear_caches()


def _cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


# ------------------------------------------------ layer losses (the logit ones: `tailored_hf.distillation`)
def layer_distillation(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    layer_gates: torch.Tensor | None = None,
    normalization: str = "token",
) -> torch.Tensor:
    """Sum over decoder layers of the squared error between student and teacher layer outputs (`[tokens, hidden]`
    each), taken where the student's output is non-zero (pruned hidden dims are skipped) and only for layers the
    student keeps (NutePrune's `layer_distill_version=2`).

    `normalization="none"` is the paper's MSE (mean over the kept entries). `"token"` divides each token's squared
    error by the teacher's squared norm of that token (over the same entries) and averages over tokens: the relative
    error of every token counts alike. LLaMA-family residual streams carry massive activations (SmolLM2-135M: a first
    token with mean square ~1e6 from layer 12 on, against ~10-900 for the others, growing ~200x with depth), so the
    plain MSE is that one token in the last layers and, summed over layers, dwarfs the logit KL and the Lagrangian."""
    if normalization not in LAYER_LOSS_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {LAYER_LOSS_NORMALIZATIONS}, got {normalization!r}.")
    error = _masked_mse if normalization == "none" else _token_relative_squared_error
    total = student[0].new_zeros((), dtype=torch.float32)
    for index, (s, t) in enumerate(zip(student, teacher)):
        if layer_gates is not None and index < layer_gates.numel() and float(layer_gates[index]) == 0.0:
            continue
        if torch.is_grad_enabled() and s.requires_grad:  # keep only the inputs for backward, not 2 temporaries
            total = total + checkpoint(error, s, t, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + error(s, t)
    return total


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the entries where `student` is non-zero (0 when there are none)."""
    s, t = student.float(), teacher.float()
    keep = (s != 0).float()
    return ((s - t).pow(2) * keep).sum() / keep.sum().clamp_min(1.0)


def _token_relative_squared_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of |s - t|^2 / |t|^2, both norms over the entries where `student` is non-zero (tokens with
    none count 0; a teacher norm below float32's resolution is clamped)."""
    s, t = student.float(), teacher.float()
    keep = (s != 0).float()
    error = ((s - t).pow(2) * keep).sum(-1)
    scale = (t.pow(2) * keep).sum(-1).clamp_min(torch.finfo(torch.float32).eps)
    return (error / scale).mean()
