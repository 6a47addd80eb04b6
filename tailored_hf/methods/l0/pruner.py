"""`L0Pruner`: NutePrune inside a `Trainer` / `SFTTrainer` run, behind the `PruningMethod` contract.

Where things live and how they reach the optimizer:

* the mask `log_alpha` (`L0Masks`) and the Lagrange multipliers are owned by this method, never registered on the
  model, so the Trainer's optimizer (LoRA, lr 1e-3 in the paper) does not see them; the method steps them with its
  own Adam optimizers (masks lr 0.1, multipliers by gradient *ascent*) in `on_optimizer_step`;
* the masks act through the structure engine's `RuntimeMasks` hooks: a hard-concrete sample per training forward,
  deterministic 0/1 masks in eval mode;
* `peft_wrappers.add_loss_term` adds lambda1 (s_hat - t) + lambda2 (s_hat - t)^2 (or, with
  `sparsity_constraint="at_least"`, lambda (t - s_hat) with lambda >= 0 and dual restarts) and the distillation
  terms to `output.loss` on training forwards (and to the per-token log-probs TRL's fused LM head builds its loss
  from), so the Trainer back-propagates them with its own loss;
* a forward pre-hook on the model runs the teacher first (no grad, decoder stack only): snapshot masks + weights
  swapped into the same model, the student's weights restored bit for bit before the student forward starts; hooks
  capture the student's layer outputs and final hidden states, and the logit KL is computed in token chunks from
  those and the LM head weight (no whole `[tokens, vocab]` logits for the teacher or the distillation);
* when the distillation replaces the task loss (`task_loss_weight` 0, the paper's choice), the model's own LM head
  runs on a detached input: its logits and loss are still computed (the Trainer expects a loss) but keep no graph,
  so the `[tokens, vocab]` log-softmax is not held for backward and the head's backward is not run for a gradient
  that is exactly zero;
* `on_train_end` chooses deterministic masks that hit the target, builds a `PruningPlan` and calls `apply_plan`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ... import arch as A
from ...distillation.losses import chunked_logit_distillation, logit_distillation, token_selection
from ...distributed import all_reduce_mean_grads_
from ...peft_wrappers import add_loss_term, swapped_parameters, token_share, trainable_parameters
from ...structure import ModelGeometry, RuntimeMasks, apply_plan
from ..base import PruningMethod, register_method
from .config import L0Config
from .masks import L0Masks, MaskValues, max_feasible_sparsity
from .selection import select_plan
from .teachers import TeacherBank, layer_distillation

logger = logging.getLogger(__name__)

# Forward arguments passed on to the decoder stack for the teacher forward (everything else, such as labels or
# TRL's `fused_lm_head`, concerns the LM head / loss, which the teacher computes itself on the distilled tokens).
TEACHER_DECODER_KWARGS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "inputs_embeds",
    "cache_position",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "seq_idx",
)
# Adam defaults when no TrainingArguments are at hand.
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-8


class MaskDivergenceError(RuntimeError):
    """The masks or Lagrange multipliers became NaN / inf; training stops before the corrupt step is applied."""


@register_method("l0")
class L0Pruner(PruningMethod):
    """Hard-concrete L0 masks + Lagrangian + progressive numerous-teacher distillation (NutePrune), pruned at the end.

    The model must be PEFT-wrapped (e.g. `SFTTrainer(peft_config=...)` or `get_peft_model`) unless
    `distillation="none"`: teachers differ from the student only in masks and adapter weights.
    """

    config_class = L0Config

    def __init__(self, config: L0Config) -> None:
        super().__init__(config)
        self.config: L0Config = config
        self.masks: L0Masks | None = None
        self.lambdas = nn.Parameter(torch.zeros(2))
        self.mask_optimizer: torch.optim.Optimizer | None = None
        self.lambda_optimizer: torch.optim.Optimizer | None = None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.teachers: TeacherBank | None = None
        self.runtime: RuntimeMasks | None = None
        self.step = 0
        self.max_steps = 0
        self.warmup_steps = 0
        self._handles: list[Any] = []
        self._params: dict[str, nn.Parameter] = {}
        self._swap_buffer: dict[str, torch.Tensor] | None = None
        self._lm: nn.Module | None = None
        self._active = False
        self._restored = False
        self._pending_state: dict[str, Any] | None = None
        self._grad_accumulation = 1
        self._output_dir: str | None = None
        self._teacher_index = 0
        self._teacher_out: dict[str, Any] | None = None
        self._capture: dict[str, Any] | None = None
        self._head_input_pending = False  # the student forward has started and has not reached the LM head yet
        self._sampled: MaskValues | None = None
        self._deterministic: MaskValues | None = None
        # Detached loss terms of the last training forward, read as floats only when metrics refresh (no device
        # synchronisation between a forward and its backward).
        self._loss_parts: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ properties
    @property
    def distills(self) -> bool:
        return self.config.distillation != "none"

    @property
    def wants_hidden_states(self) -> bool:
        return self.distills and self.config.distill_layer_weight > 0.0

    def current_target(self, step: int | None = None) -> float:
        """The warmed-up target t(step) = target * min(1, step / warmup_steps)."""
        step = self.step if step is None else step
        if self.warmup_steps <= 0:
            return self.config.target_sparsity
        return self.config.target_sparsity * min(1.0, step / self.warmup_steps)

    # ------------------------------------------------------------------ events
    def on_init_end(self, model: nn.Module, **context: Any) -> None:
        """Validate, create the masks and their optimizers, attach mask hooks, the loss term and the teacher hook."""
        cfg = self.config
        lm = A.unwrap_model(model)
        geometry = ModelGeometry.from_config(lm.config)
        maximum = max_feasible_sparsity(geometry, cfg)
        if cfg.target_sparsity > maximum + 1e-12:
            enabled = [n for n in ("heads", "ffn", "hidden", "layers") if getattr(cfg, f"prune_{n}")]
            raise ValueError(
                f"target_sparsity={cfg.target_sparsity} is unreachable with the enabled units ({', '.join(enabled)}): "
                f"even keeping a single unit of each leaves {1 - maximum:.4f} of the parameters, so the maximum is "
                f"{maximum:.4f}. Lower target_sparsity or enable more unit types"
                + ("" if cfg.prune_hidden else " (prune_hidden prunes the embeddings too)")
                + "."
            )
        self._params = trainable_parameters(model)
        if self.distills and lm is model:
            raise ValueError(
                f"distillation={cfg.distillation!r} needs a PEFT (LoRA) model: teachers are the frozen base with "
                "snapshot masks and adapter weights. Wrap the model with `peft.get_peft_model`, pass `peft_config=` "
                "to SFTTrainer, or use distillation='none'."
            )
        if self.distills and not self._params:
            raise ValueError("The model has no trainable (adapter) parameters to co-train with the masks.")
        device = _device_of(lm)
        self.masks = L0Masks(geometry, cfg).to(device)
        self.lambdas.data = self.lambdas.data.to(device)
        args = context.get("args")
        betas = (getattr(args, "adam_beta1", DEFAULT_BETAS[0]), getattr(args, "adam_beta2", DEFAULT_BETAS[1]))
        eps = getattr(args, "adam_epsilon", DEFAULT_EPS)
        self.mask_optimizer = torch.optim.Adam(
            self.masks.parameters(), lr=cfg.mask_learning_rate, betas=betas, eps=eps
        )
        self.lambda_optimizer = torch.optim.Adam(
            [self.lambdas], lr=cfg.lambda_learning_rate, betas=betas, eps=eps, maximize=True
        )
        self.teachers = TeacherBank(cfg, self.masks.distribution)
        self._lm = lm
        self.runtime = RuntimeMasks(model, provider=self._provide).attach()
        self._handles = add_loss_term(model, self._loss_term)
        if self.distills:
            self._handles.append(model.register_forward_pre_hook(self._teacher_hook, with_kwargs=True))
            # Layer outputs and the final normed hidden state are captured by hooks (after the mask hooks), so that
            # the distillation works whatever the top-level forward returns (logits, or TRL's fused log-probs).
            for layer in A.decoder_layers(lm):
                self._handles.append(layer.register_forward_hook(self._capture_layer))
            self._handles.append(A.final_norm(lm).register_forward_hook(self._capture_final))
            if cfg.resolved_task_loss_weight == 0.0:
                self._handles.append(A.lm_head(lm).register_forward_pre_hook(self._detach_head_input))
        with torch.no_grad():
            s_hat = float(self.masks.expected_sparsity())
        self.metrics.update(
            {
                "target": cfg.target_sparsity,
                "max_feasible_sparsity": maximum,
                "params_dense": geometry.num_parameters(),
                "s_hat": s_hat,
            }
        )

    def on_train_begin(self, model: nn.Module, **context: Any) -> None:
        if self.plan is not None:
            logger.warning("The model was already pruned to its plan; this run trains it without L0 masks.")
            return
        state, args = context.get("state"), context.get("args")
        self.max_steps = int(getattr(state, "max_steps", 0) or 0)
        self.warmup_steps = self.config.warmup_steps(self.max_steps)
        self.step = int(getattr(state, "global_step", 0) or 0)
        self._grad_accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        self._output_dir = getattr(args, "output_dir", None)
        if self.step > 0 and not self._restored:
            raise ValueError(
                f"Resuming at step {self.step} without the L0 state (tailored_hf_state.json / .safetensors) in the "
                "checkpoint: the masks, multipliers and teachers cannot be restored. Resume from a checkpoint written "
                "by PrunerCallback."
            )
        self._ensure_device(_device_of(A.unwrap_model(model)))
        if self.distills and not self._restored:
            self.teachers.capture_intact(self._params, step=self.step)
        if self.distills:
            self._swap_buffer = {name: torch.empty_like(p) for name, p in self._params.items()}
        self._active = True
        self._refresh_metrics()

    def on_step_begin(self, model: nn.Module, **context: Any) -> None:
        if not self._active:
            return
        state = context.get("state")
        self.step = int(getattr(state, "global_step", self.step))
        if self.distills:  # s_hat as read at the last step's end (or the train begin): the masks have not moved since
            self._teacher_index = self.teachers.choose(self.metrics["s_hat"], self.step, self.max_steps)

    def on_pre_optimizer_step(self, model: nn.Module, **context: Any) -> None:
        if not self._active:
            return
        bad = self.masks.non_finite(extra={"lambdas": self.lambdas})
        if bad:
            raise MaskDivergenceError(
                f"L0 masks diverged at optimizer step {self.step}: non-finite values in {', '.join(bad[:6])}. "
                f"Training stopped before this step was applied; {self._last_checkpoint_hint()} Lower "
                "mask_learning_rate / the Trainer's learning_rate, check the data for NaN losses, or use fp32 / bf16 "
                "instead of fp16."
            )

    def on_optimizer_step(self, model: nn.Module, **context: Any) -> None:
        if not self._active:
            return
        all_reduce_mean_grads_([*self.masks.parameters(), self.lambdas])  # each rank saw its own batch
        self.mask_optimizer.step()
        self.lambda_optimizer.step()
        self.masks.clamp_()
        self.mask_optimizer.zero_grad(set_to_none=True)
        self.lambda_optimizer.zero_grad(set_to_none=True)
        self._deterministic = None

    def on_step_end(self, model: nn.Module, **context: Any) -> None:
        if not self._active:
            return
        state = context.get("state")
        self.step = int(getattr(state, "global_step", self.step + 1))
        self._read_scalars()
        s_hat = self.metrics["s_hat"]
        if not math.isfinite(s_hat):
            raise MaskDivergenceError(
                f"Expected sparsity became {s_hat} at step {self.step}. {self._last_checkpoint_hint()}"
            )
        if self.config.sparsity_constraint == "at_least":
            self._project_multiplier(s_hat, self.metrics["lambda_1"])
        if self.distills:
            named = {k: v.detach() for k, v in self.masks.named_log_alphas().items()}
            self.teachers.maybe_snapshot(s_hat, self.step, named, self._params)
            self.teachers.update_reached(s_hat, self.step, warmup_done=self.step >= self.warmup_steps)
            self._refresh_teacher_metrics()

    def on_train_end(self, model: nn.Module, **context: Any) -> None:
        """Deterministic masks hitting the target -> `PruningPlan` -> physical removal by the structure engine."""
        if self.plan is not None or self.masks is None:
            return
        start = time.perf_counter()
        with torch.no_grad():
            s_hat = float(self.masks.expected_sparsity())
            log_alpha = _to_cpu(self.masks.log_alphas())
            probabilities = _to_cpu(self.masks.probabilities())
        plan = select_plan(self.masks.geometry, log_alpha, probabilities, self.config)
        converged = abs(s_hat - self.config.target_sparsity) <= self.config.target_tolerance
        if not converged:
            logger.warning(
                "L0 masks did not converge: expected sparsity %.4f at the end vs target %.4f (tolerance %.4f). The "
                "final masks were forced to the target by log_alpha ranking; train longer (the paper: 7 epochs with a "
                "1-epoch warm-up). A higher mask_learning_rate or lambda_learning_rate reaches the target sooner "
                "but can overshoot it (sparsity_constraint='at_least' does not); on SmolLM2-135M at 50%% in 500 "
                "steps both cost more perplexity than this shortfall.",
                s_hat,
                self.config.target_sparsity,
                self.config.target_tolerance,
            )
        self.detach()
        params = plan.num_parameters()
        plan.metadata.update(
            {
                "method": "l0",
                "paper": "NutePrune (arXiv 2402.09773)",
                "target_sparsity": self.config.target_sparsity,
                "achieved_sparsity": params["sparsity"],
                "expected_sparsity_at_end": s_hat,
                "masks_converged": converged,
                "distillation": self.config.distillation,
                "steps": self.step,
            }
        )
        apply_plan(model, plan)
        self.plan = plan
        if self.teachers is not None:
            self.teachers.clear()
        self.metrics.update(
            {
                "params_dense": params["dense"],
                "params_pruned": params["pruned"],
                "sparsity": float(params["sparsity"]),
                "s_hat": s_hat,
                "masks_converged": float(converged),
                "prune_seconds": time.perf_counter() - start,
            }
        )

    def detach(self) -> None:
        """Remove every hook this method installed (masks, loss term, teacher) and stop acting on forwards."""
        self._active = False
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.runtime is not None:
            self.runtime.detach()
            self.runtime.clear()
        self._teacher_out = None
        self._capture = None
        self._head_input_pending = False

    # ------------------------------------------------------------------ forwards
    def _provide(self, runtime: RuntimeMasks) -> None:
        """Mask values for the model forward about to run: a fresh sample (training) or deterministic masks (the
        teacher forward installs its own masks and calls the decoder stack directly)."""
        if self._active and runtime.lm.training and torch.is_grad_enabled():
            self._sampled = self.masks.sample(self.generator)
            self._sampled.install(runtime)
        elif self.masks is not None:
            if self._deterministic is None:
                self._deterministic = self.masks.deterministic()
            self._deterministic.install(runtime)

    def teacher_forward(self, index: int, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """No-grad forward of teacher `index` on the student's inputs.

        Returns `{"selection", "layer_selection", "final", "layers"}`: the positions whose logits are distilled
        (`token_selection`: the trained next-token positions), the positions whose layer outputs are distilled (every
        non-padding position, as NutePrune compares whole hidden states), both as flat row indices into
        `[batch * seq]` or None for all positions (`_selected_rows`), the teacher's final (normed) hidden states
        at `selection` (`[tokens, hidden]`; its logits are `lm_head(final)`, computed in chunks by the loss) and its
        decoder-layer outputs at `layer_selection` (one `[tokens, hidden]` per layer; None without layer
        distillation). The student's weights, masks and module train/eval flags are exactly as before
        afterwards.
        """
        lm = self._lm
        decoder_kwargs = {k: v for k, v in kwargs.items() if k in TEACHER_DECODER_KWARGS}
        if args:
            decoder_kwargs["input_ids"] = args[0]
        reference = decoder_kwargs.get("input_ids", decoder_kwargs.get("inputs_embeds"))
        selection = _selected_rows(token_selection(kwargs, reference.shape[:2], reference.device))
        layer_selection = _selected_rows(
            token_selection({"attention_mask": kwargs.get("attention_mask")}, reference.shape[:2], reference.device)
        )
        flags = [(m, m.training) for m in lm.modules()]
        values = self.teachers.teacher_masks(index, _device_of(lm)) or MaskValues()
        capture: dict[str, Any] = {
            "selection": selection,
            "layer_selection": layer_selection,
            "layers": [],
            "final": None,
        }
        try:
            lm.eval()
            self._capture = capture
            teacher_params = self.teachers.teacher_params(index, _device_of(lm))
            with torch.no_grad(), swapped_parameters(self._params, teacher_params, self._swap_buffer):
                values.install(self.runtime)
                A.decoder(lm)(**decoder_kwargs, use_cache=False)
        finally:
            self._capture = None
            self.runtime.clear()
            for module, flag in flags:
                module.training = flag
        layers = None
        if self.wants_hidden_states:
            # One contiguous block instead of a per-layer tensor each: the student's forward then runs in a heap
            # not fragmented by teacher tensors scattered between freed teacher temporaries.
            layers = tuple(torch.stack(capture["layers"]).unbind(0)) if capture["layers"] else ()
            capture["layers"].clear()
        return {
            "selection": selection,
            "layer_selection": layer_selection,
            "final": capture["final"],
            "layers": layers,
        }

    def _teacher_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not (self._active and module.training and torch.is_grad_enabled()):
            return None
        self._teacher_out = self.teacher_forward(self._teacher_index, args, kwargs)
        # Capture the student's layer outputs / final hidden state on the same positions during its forward.
        self._capture = {
            "selection": self._teacher_out["selection"],
            "layer_selection": self._teacher_out["layer_selection"],
            "layers": [],
            "final": None,
        }
        self._head_input_pending = True
        return None

    def _detach_head_input(self, module: nn.Module, args: tuple) -> tuple | None:
        """The student forward's call of the LM head: on the detached final hidden state (the task loss has weight 0).
        Only that call: the logit distillation may call a wrapped head again, with gradients."""
        if not self._head_input_pending:
            return None
        self._head_input_pending = False
        return (args[0].detach(), *args[1:])

    def _capture_layer(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._capture is not None and self.wants_hidden_states:
            hidden = output[0] if isinstance(output, tuple) else output
            self._capture["layers"].append(_select(hidden, self._capture["layer_selection"]))

    def _capture_final(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._capture is not None:
            self._capture["final"] = _select(output, self._capture["selection"])

    def _loss_term(self, module: nn.Module, kwargs: dict, output: Any) -> torch.Tensor | None:
        self._head_input_pending = False
        if not self._active:
            return None
        cfg = self.config
        gap = self.masks.expected_sparsity() - self.current_target()
        if cfg.sparsity_constraint == "at_least":  # lambda >= 0 on the violation t - s_hat
            lagrangian = (self.lambdas[0] * -gap).to(output.loss.dtype)
        else:
            lambda1, lambda2 = self.lambdas[0], self.lambdas[1]
            lagrangian = (lambda1 * gap + lambda2 * gap * gap).to(output.loss.dtype)
        extra = lagrangian
        parts = {"lagrangian_loss": lagrangian.detach()}
        teacher, self._teacher_out = self._teacher_out, None
        student, self._capture = self._capture, None
        if teacher is not None and student is not None and student["final"] is not None:
            kd = self._logit_kd(student["final"], teacher["final"])
            extra = extra + cfg.distill_logit_weight * kd
            parts["kd_logit_loss"] = kd.detach()
            if teacher["layers"] is not None:
                gates = self._sampled.layers if self._sampled is not None else None
                layer = layer_distillation(
                    tuple(student["layers"]), teacher["layers"], gates, cfg.distill_layer_normalization
                )
                extra = extra + cfg.distill_layer_weight * layer
                parts["kd_layer_loss"] = layer.detach()
        weight = cfg.resolved_task_loss_weight
        if weight != 1.0:
            parts["task_loss"] = output.loss.detach()
            # `add_loss_term` weights the returned term by this micro-batch's token share; the task-loss part is
            # already normalised the Trainer's way, so undo that weighting for it.
            extra = extra + (weight - 1.0) * output.loss / token_share(kwargs)
        self._loss_parts = parts
        return extra

    def _logit_kd(self, student_final: torch.Tensor, teacher_final: torch.Tensor) -> torch.Tensor:
        head, temperature = A.lm_head(self._lm), self.config.distill_temperature
        if isinstance(head, nn.Linear) and head.bias is None:
            return chunked_logit_distillation(
                student_final, teacher_final, head.weight, temperature, self.config.distill_chunk_tokens
            )
        return logit_distillation(head(student_final), head(teacher_final), temperature)  # e.g. a LoRA-wrapped head

    # ------------------------------------------------------------------ helpers
    def _project_multiplier(self, s_hat: float, lambda_1: float) -> None:
        """`sparsity_constraint="at_least"`: restart lambda (value and Adam state) at 0 once the constraint s_hat >= t
        holds, so that no multiplier built up while s_hat lagged carries it past the target, and whenever the ascent
        step took it to 0 or below (the projection onto lambda >= 0: the momentum it kept would point the wrong way
        once the constraint is violated again, e.g. when the warm-up raises t)."""
        if s_hat >= self.current_target() or lambda_1 <= 0.0:
            with torch.no_grad():
                self.lambdas.zero_()
            self.lambda_optimizer.state.clear()  # Adam starts its moments (and bias correction) afresh
            self.metrics.update(lambda_1=0.0, lambda_2=0.0)

    def _refresh_metrics(self) -> None:
        self._read_scalars()
        self._refresh_teacher_metrics()

    def _read_scalars(self) -> None:
        """s_hat, the multipliers and the last step's loss parts into `metrics`, copied from the device at once: one
        synchronisation per optimizer step (`on_step_begin` and the at_least projection reuse these values)."""
        with torch.no_grad():
            s_hat = self.masks.expected_sparsity()
            scalars = [s_hat, *self.lambdas.detach(), *self._loss_parts.values()]  # float64: exact for fp32 / bf16
            values = torch.stack([v.reshape(()).to(s_hat.device, torch.float64) for v in scalars]).tolist()
        s_hat, lambda_1, lambda_2, *parts = values
        self.metrics.update(s_hat=s_hat, target_t=self.current_target(), lambda_1=lambda_1, lambda_2=lambda_2)
        self.metrics.update(zip(self._loss_parts, parts))

    def _refresh_teacher_metrics(self) -> None:
        if self.distills and self.teachers.snapshots:
            self.metrics.update(
                {
                    "teacher_sparsity": self.teachers.snapshots[self._teacher_index].sparsity,
                    "snapshots": len(self.teachers.snapshots) - 1,
                    "snapshot_mb": self.teachers.nbytes() / 2**20,
                    "target_reached_step": -1 if self.teachers.reached_step is None else self.teachers.reached_step,
                }
            )

    def _ensure_device(self, device: torch.device) -> None:
        if self.masks is None or next(self.masks.parameters()).device == device:
            return
        self.masks.to(device)
        self.lambdas.data = self.lambdas.data.to(device)
        for optimizer in (self.mask_optimizer, self.lambda_optimizer):
            for state in optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)
        self._deterministic = None

    def _last_checkpoint_hint(self) -> str:
        if not self._output_dir:
            return "no checkpoint directory is known."
        checkpoints = sorted(
            Path(self._output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"),
            key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1,
        )
        if not checkpoints:
            return f"no checkpoint was written to {self._output_dir} yet."
        return f"the last good checkpoint is kept at {checkpoints[-1]} (resume with resume_from_checkpoint=True)."

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["l0"] = {
            "step": self.step,
            "teachers": self.teachers.state_dict() if self.teachers is not None else None,
            "mask_groups": list(self.masks.named_log_alphas()) if self.masks is not None else [],
            "optimizer_state_keys": {
                "mask": _optimizer_state_keys(self.mask_optimizer),
                "lambda": _optimizer_state_keys(self.lambda_optimizer),
            },
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending_state = state.get("l0")

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        if self.masks is None:
            return {}
        tensors = {f"mask.{name}": p.detach() for name, p in self.masks.named_log_alphas().items()}
        tensors["lambdas"] = self.lambdas.detach()
        tensors["generator"] = self.generator.get_state()
        tensors.update(_optimizer_tensors(self.mask_optimizer, "opt.mask."))
        tensors.update(_optimizer_tensors(self.lambda_optimizer, "opt.lambda."))
        if self.teachers is not None:
            tensors.update(self.teachers.tensor_state_dict())
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.masks is None:
            raise RuntimeError("load_tensor_state_dict needs the masks: call on_init_end (build the Trainer) first.")
        pending = self._pending_state or {}
        with torch.no_grad():
            for name, param in self.masks.named_log_alphas().items():
                param.copy_(tensors[f"mask.{name}"])
            self.lambdas.copy_(tensors["lambdas"])
        self.generator.set_state(tensors["generator"].to(torch.uint8))
        keys = pending.get("optimizer_state_keys", {})
        _load_optimizer_tensors(self.mask_optimizer, tensors, "opt.mask.", keys.get("mask", {}))
        _load_optimizer_tensors(self.lambda_optimizer, tensors, "opt.lambda.", keys.get("lambda", {}))
        if pending.get("teachers") is not None:
            self.teachers.load_state(pending["teachers"], tensors)
        self.step = int(pending.get("step", self.step))
        self._deterministic = None
        self._restored = True


def _selected_rows(selection: torch.Tensor) -> torch.Tensor | None:
    """The flat row indices of a boolean `[batch, seq]` selection, or None when every position is selected: resolved
    once per step (a device synchronisation), then used for every layer without one."""
    if bool(selection.all()):
        return None
    return selection.reshape(-1).nonzero().squeeze(1)


def _select(hidden: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """`hidden[selection]` as `[tokens, hidden]` for `rows = _selected_rows(selection)`; a view (no copy) when
    every position is selected."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat if rows is None else flat.index_select(0, rows)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _to_cpu(values: MaskValues) -> MaskValues:
    return MaskValues(
        heads={i: t.detach().double().cpu() for i, t in values.heads.items()},
        ffn={i: t.detach().double().cpu() for i, t in values.ffn.items()},
        hidden=None if values.hidden is None else values.hidden.detach().double().cpu(),
        layers=None if values.layers is None else values.layers.detach().double().cpu(),
    )


def _optimizer_state_keys(optimizer: torch.optim.Optimizer | None) -> dict[str, list[str]]:
    if optimizer is None:
        return {}
    return {str(i): sorted(s) for i, s in optimizer.state_dict()["state"].items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer | None, prefix: str) -> dict[str, torch.Tensor]:
    if optimizer is None:
        return {}
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}{index}.{key}"] = torch.as_tensor(value).detach().clone()
    return tensors


def _load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, keys: dict[str, list[str]]
) -> None:
    state_dict = optimizer.state_dict()
    state_dict["state"] = {
        int(index): {key: tensors[f"{prefix}{index}.{key}"].clone() for key in names} for index, names in keys.items()
    }
    optimizer.load_state_dict(state_dict)
