"""`ATPMethod`: ATP's alternating generator / LoRA steps inside a Trainer run, then physical removal.

Per optimizer step `t` (driven by `PrunerCallback`, Algorithms 1-2 of arXiv 2412.14426):

1. `t < T_end` (`on_step_begin`): one generator update on a calibration batch (cycled loader) with the forward
   `f_G` and the loss `L_LM + alpha * L_s`, then the deterministic decisions `D` of the updated generator;
2. the Trainer's own step on its batch with `f_L` and `D`, plus `beta * L_gl` (group lasso on the LoRA weights
   of the pruned groups) added to its loss; after `T_end` the generator is frozen, `D` fixed and beta raised
   `beta_final_factor`-fold;
3. `on_train_end`: the decided groups are removed by the structure engine (`apply_plan`), and the loss change
   this removal causes on fixed calibration batches is measured and reported.

The generator, its AdamW and the calibration stream live here (never in the model's parameters); their state is
saved in every checkpoint (JSON + safetensors) and restored on resume.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ... import arch as A
from ...distributed import all_reduce_mean_grads_
from ...peft_wrappers import add_loss_term
from ...structure import ModelGeometry, PruningPlan, apply_plan
from ..base import PruningMethod, register_method
from .calibration import CalibrationStream
from .config import ATPConfig
from .forwards import ATPForwards, ParameterBudget, group_lasso, lora_pairs, sparsity_loss
from .generator import KINDS, Clamp, DecisionGenerator, LayerDecision, decision_lengths, ones_decisions

logger = logging.getLogger(__name__)

FEASIBILITY_TOLERANCE = 1e-9


@register_method("atp")
class ATPMethod(PruningMethod):
    """All-in-One Tuning and Structural Pruning behind the `PruningMethod` contract.

    `on_init_end` accepts `calibration=` (see `CalibrationStream` for the accepted forms) or a `tokenizer=` to draw
    `num_calibration_samples` windows from `calibration_source`. Use it with a LoRA-wrapped model (a PEFT model or
    `SFTTrainer(peft_config=...)`); on a model without LoRA, `f_L` equals `f_G` and there is no group lasso.
    """

    config_class = ATPConfig

    def __init__(self, config: ATPConfig) -> None:
        super().__init__(config)
        self.config: ATPConfig = config
        self.geometry: ModelGeometry | None = None
        self.lengths: list[dict[str, int]] = []
        self.budget: ParameterBudget | None = None
        self.generator: DecisionGenerator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stream: CalibrationStream | None = None
        self.forwards: ATPForwards | None = None
        self.decisions: list[LayerDecision] | None = None
        self.clamps: list[Clamp] = []
        self.noise = torch.Generator().manual_seed(config.seed)
        self.generator_frozen = False
        self.generator_steps = 0
        self.max_steps: int | None = None
        self.end_step: int | None = None
        self._loss_handles: list[Any] = []
        self._in_generator_step = False
        self._pending_position: int | None = None

    # ------------------------------------------------------------------------------------------ set-up
    def on_init_end(self, model: nn.Module, **context: Any) -> None:
        lm = A.unwrap_model(model)
        if self.plan is not None:  # a finished run restored from state: re-apply to a dense model
            if ModelGeometry.from_config(lm.config) == self.plan.source:
                apply_plan(model, self.plan)
            return
        cfg = self.config
        self.geometry = ModelGeometry.from_config(lm.config)
        self.lengths = decision_lengths(self.geometry, cfg)
        self.budget = ParameterBudget(self.geometry, cfg.sparsity_scope)
        self.check_target()
        self.stream = self._build_stream(context)
        device = _device_of(lm)
        self.generator = DecisionGenerator(self.lengths, cfg).to(device)
        self.optimizer = torch.optim.AdamW(
            self.generator.parameters(), lr=cfg.generator_lr, weight_decay=cfg.generator_weight_decay
        )
        self.decisions = ones_decisions(self.lengths, device)
        if not any(lora_pairs(m) for m in lm.modules()):
            logger.warning(
                "ATP: the model has no LoRA layers; f_L then equals f_G and there is no group lasso. ATP is designed "
                "for LoRA tuning (wrap the model with PEFT or pass `peft_config=` to SFTTrainer)."
            )
        args = context.get("args")
        if cfg.full_sequence_loss and getattr(args, "completion_only_loss", False) is not False:
            logger.warning(
                "ATP computes its LM loss over the whole sequence (instruction + response); the SFTTrainer's LoRA "
                "steps use completion_only_loss=%s. Set `completion_only_loss=False` in SFTConfig to match ATP.",
                getattr(args, "completion_only_loss", None),
            )
        self.metrics.update({"target_sparsity": cfg.target_sparsity, "max_feasible_sparsity": self.max_sparsity()})

    def check_target(self) -> None:
        """Raise `ValueError` when the target cannot be reached with every decision at its minimum."""
        cfg = self.config
        best = self.max_sparsity()
        if cfg.target_sparsity > best + FEASIBILITY_TOLERANCE:
            kinds = [k for k, on in (("qk", cfg.prune_qk), ("v", cfg.prune_v), ("ffn", cfg.prune_ffn)) if on]
            raise ValueError(
                f"ATP target_sparsity={cfg.target_sparsity} is unreachable: removing every prunable group ({kinds}) "
                f"down to the minimums (qk pairs {cfg.min_qk_pairs}, v dims {cfg.min_v_dims}, FFN channels "
                f"{cfg.min_ffn_channels} per layer) removes at most {best:.4f} of the {cfg.sparsity_scope} "
                "parameters. Lower target_sparsity, enable more of prune_qk / prune_v / prune_ffn"
                + (" or use sparsity_scope='decoder'" if cfg.sparsity_scope == "total" else "")
                + "."
            )

    def max_sparsity(self) -> float:
        minimums = {"qk": self.config.min_qk_pairs, "v": self.config.min_v_dims, "ffn": self.config.min_ffn_channels}
        return 1.0 - self.budget.minimum_ratio(minimums, self.lengths)

    def _build_stream(self, context: dict[str, Any]) -> CalibrationStream:
        cfg = self.config
        data = context.get("calibration")
        if data is None:
            tokenizer = context.get("tokenizer") or context.get("processing_class")
            if tokenizer is None:
                raise ValueError(
                    "ATP needs calibration data for its generator steps: pass `PrunerCallback(..., calibration=...)` "
                    "(token ids [n, L], tokenized rows or a DataLoader) or give the Trainer a tokenizer "
                    f"(`processing_class=`) to draw windows from calibration_source={cfg.calibration_source!r}."
                )
            from ...data import calibration_batches

            data = calibration_batches(
                tokenizer,
                source=cfg.calibration_source,
                n_samples=cfg.num_calibration_samples,
                seq_len=cfg.calibration_seq_len,
                seed=cfg.seed,
            )
        return CalibrationStream(data, cfg.calibration_batch_size, cfg.seed, cfg.full_sequence_loss)

    # ------------------------------------------------------------------------------------------ training
    def on_train_begin(self, model: nn.Module, **context: Any) -> None:
        if self.plan is not None:
            return
        if self.generator is None:
            raise RuntimeError("ATP was not set up: PrunerCallback.on_init_end did not run for this model.")
        state = context.get("state")
        if self.max_steps is None:
            self.max_steps = int(getattr(state, "max_steps", 0) or 0)
            self.end_step = self.config.end_step(self.max_steps) if self.max_steps else None
            if self.end_step is None:
                raise ValueError("ATP needs the run's length: set `max_steps` or `num_train_epochs` in the arguments.")
        if self._pending_position is not None:
            self.stream.seek(self._pending_position)
            self._pending_position = None
        if self.forwards is None:
            self.forwards = ATPForwards(model).attach()
            self._loss_handles = add_loss_term(model, self._loss_term)
        self.forwards.set("L", self.decisions)
        self._update_decision_metrics()

    def on_step_begin(self, model: nn.Module, **context: Any) -> None:
        if self.plan is not None or self.forwards is None:
            return
        step = int(getattr(context.get("state"), "global_step", 0))
        if not self.generator_frozen and step < self.end_step:
            self._generator_step(model)
        elif not self.generator_frozen:
            self._freeze()
        self.forwards.set("L", self.decisions)

    def _generator_step(self, model: nn.Module) -> None:
        cfg = self.config
        lm = A.unwrap_model(model)
        device = _device_of(lm)
        batch = {k: v.to(device) for k, v in self.stream.next_batch().items()}
        was_training = model.training
        model.eval()  # as the authors' code: the LLM is frozen and evaluated during the generator step
        self.generator.train()
        self._in_generator_step = True
        try:
            hard, _, _ = self.generator(sample=True, noise=self.noise)
            self.forwards.set("G", hard)
            output = model(**batch, use_cache=False)
            ratio = self.budget.remaining_ratio(hard)
            ls = sparsity_loss(ratio, cfg.target_remaining)
            loss = output.loss + cfg.alpha * ls
            params = [p for p in self.generator.parameters() if p.requires_grad]
            # Gradients for G only: the model's own .grad (LoRA, accumulated by the Trainer) is never touched.
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for param, grad in zip(params, grads):
                param.grad = torch.zeros_like(param) if grad is None else grad
            all_reduce_mean_grads_(params)  # every rank applies the same generator update
            if cfg.generator_max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.generator_max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            self._in_generator_step = False
            model.train(was_training)
        self.generator_steps += 1
        self.decisions = self._deterministic()
        self.metrics.update(  # tensors: read from the device when logged
            {
                "generator_loss": loss.detach(),
                "generator_lm_loss": output.loss.detach(),
                "sparsity_loss": ls.detach(),
                "sampled_remaining_ratio": ratio.detach(),
            }
        )
        self._update_decision_metrics()

    def _deterministic(self) -> list[LayerDecision]:
        self.generator.eval()
        with torch.no_grad():
            hard, _, clamps = self.generator(sample=False)
        new = {(c.layer, c.kind) for c in clamps} - {(c.layer, c.kind) for c in self.clamps}
        for clamp in clamps:
            if (clamp.layer, clamp.kind) in new:
                logger.warning(
                    "ATP: layer %d's %s decisions keep %d groups; clamped to the minimum %d.",
                    clamp.layer,
                    clamp.kind,
                    clamp.kept,
                    clamp.minimum,
                )
        self.clamps = clamps
        return [d.detach() for d in hard]

    def _freeze(self) -> None:
        self.decisions = self._deterministic()
        self.generator_frozen = True
        self.generator.requires_grad_(False)
        self._update_decision_metrics()
        logger.info("ATP: generator frozen at step %s; group-lasso weight raised to %g.", self.end_step, self.beta)

    @property
    def beta(self) -> float:
        return self.config.beta * (self.config.beta_final_factor if self.generator_frozen else 1.0)

    def _loss_term(self, module: nn.Module, kwargs: dict, output: Any) -> torch.Tensor | None:
        if self._in_generator_step or self.forwards is None or self.forwards.mode != "L" or self.config.beta == 0:
            return None
        value = group_lasso(module, self.decisions, self.config.group_lasso_reduction)
        if value is None:
            return None
        self.metrics.update({"group_lasso": value.detach(), "beta": self.beta})  # read when logged
        return self.beta * value.to(output.loss.dtype)

    def _update_decision_metrics(self) -> None:
        ratio = float(self.budget.remaining_ratio(self.decisions))
        self.metrics.update(
            {
                "remaining_ratio": ratio,
                "decided_sparsity": 1.0 - ratio,
                "clamped_groups": float(len(self.clamps)),
                "generator_frozen": float(self.generator_frozen),
            }
        )

    # ------------------------------------------------------------------------------------------ removal
    def on_train_end(self, model: nn.Module, **context: Any) -> None:
        if self.plan is not None or self.forwards is None:
            return
        start = time.perf_counter()
        if not self.generator_frozen:
            self._freeze()
        batches = self.stream.fixed_batches(self.config.removal_eval_batches)
        self.forwards.set("L", self.decisions)
        before = self._mean_loss(model, batches)
        self.forwards.detach()
        for handle in self._loss_handles:
            handle.remove()
        self._loss_handles = []
        plan = self.plan_from_decisions(self.decisions)
        apply_plan(model, plan)
        after = self._mean_loss(model, batches)
        params = plan.num_parameters()
        self.plan = plan
        self.metrics.update(
            {
                "params_dense": params["dense"],
                "params_pruned": params["pruned"],
                "sparsity": float(params["sparsity"]),
                "removal_loss_before": before,
                "removal_loss_after": after,
                "removal_loss_delta": after - before,
                "prune_seconds": time.perf_counter() - start,
            }
        )
        plan.metadata["removal_loss"] = {"before": before, "after": after, "delta": after - before}
        if self.clamps:
            logger.warning("ATP: %d layer decisions were clamped to their minimums: %s", len(self.clamps), self.clamps)
        logger.info(
            "ATP: removed %d parameters; loss change caused by the removal %.3g.", params["removed"], after - before
        )

    def plan_from_decisions(self, decisions: list[LayerDecision]) -> PruningPlan:
        """The `PruningPlan` that removes every group whose decision is 0 (RoPE pairs, value dims, FFN channels)."""
        cfg = self.config
        plan = PruningPlan.dense(self.geometry)
        for index, decision in enumerate(decisions):
            layer = plan.layers[index]
            if decision.qk is not None and bool((decision.qk < 0.5).any()):
                layer.qk_pairs = _kept(decision.qk)
            if decision.v is not None and bool((decision.v < 0.5).any()):
                layer.v_dims = _kept(decision.v)
            if decision.ffn is not None and bool((decision.ffn < 0.5).any()):
                layer.ffn = _kept(decision.ffn)
        decided = 1.0 - float(self.budget.remaining_ratio(decisions))
        plan.metadata.update(
            {
                "method": "atp",
                "paper": "arXiv 2412.14426",
                "target_sparsity": cfg.target_sparsity,
                "sparsity_scope": cfg.sparsity_scope,
                "decided_sparsity": decided,
                "config": cfg.to_dict(),
                "generator_steps": self.generator_steps,
                "end_step": self.end_step,
                "layer_pruning_ratios": layer_pruning_ratios(decisions),
                "clamped": [asdict(c) for c in self.clamps],
                "parameters": plan.num_parameters(),
            }
        )
        return plan

    @torch.no_grad()
    def _mean_loss(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
        if not batches:
            return math.nan
        device = _device_of(A.unwrap_model(model))
        was_training = model.training
        model.eval()
        try:
            losses = [float(model(**{k: v.to(device) for k, v in b.items()}, use_cache=False).loss) for b in batches]
        finally:
            model.train(was_training)
        return sum(losses) / len(losses)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                "max_steps": self.max_steps,
                "end_step": self.end_step,
                "generator_frozen": self.generator_frozen,
                "generator_steps": self.generator_steps,
                "batches_drawn": self.stream.batches_drawn if self.stream is not None else 0,
                "clamps": [asdict(c) for c in self.clamps],
            }
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.max_steps = state.get("max_steps")
        self.end_step = state.get("end_step")
        self.generator_frozen = bool(state.get("generator_frozen", False))
        self.generator_steps = int(state.get("generator_steps", 0))
        self.clamps = [Clamp(**c) for c in state.get("clamps", [])]
        self._pending_position = int(state.get("batches_drawn", 0))
        if self.stream is not None:
            self.stream.seek(self._pending_position)
            self._pending_position = None
        if self.generator is not None:
            self.generator.requires_grad_(not self.generator_frozen)

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        if self.generator is None:
            return {}
        tensors = {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        params = list(self.generator.parameters())
        for i, param in enumerate(params):
            for key, value in self.optimizer.state.get(param, {}).items():
                tensors[f"optimizer.{i}.{key}"] = torch.as_tensor(value)
        for i, decision in enumerate(self.decisions or []):
            for kind in KINDS:
                if decision.get(kind) is not None:
                    tensors[f"decisions.{i}.{kind}"] = decision.get(kind)
        tensors["noise_rng_state"] = self.noise.get_state()
        return tensors

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.generator is None or not tensors:
            return
        device = next(self.generator.parameters()).device
        self.generator.load_state_dict(
            {k[len("generator.") :]: v for k, v in tensors.items() if k.startswith("generator.")}
        )
        params = list(self.generator.parameters())
        for i, param in enumerate(params):
            state = {
                k.split(".", 2)[2]: v.to(device) if k.split(".", 2)[2] != "step" else v.cpu()
                for k, v in tensors.items()
                if k.startswith(f"optimizer.{i}.")
            }
            if state:
                self.optimizer.state[param] = state
        decisions = []
        for i in range(len(self.lengths)):
            values = {k: tensors.get(f"decisions.{i}.{k}") for k in KINDS}
            decisions.append(LayerDecision(*(None if v is None else v.to(device) for v in values.values())))
        self.decisions = decisions
        if "noise_rng_state" in tensors:
            self.noise.set_state(tensors["noise_rng_state"].to(torch.uint8).cpu())


def layer_pruning_ratios(decisions: list[LayerDecision]) -> list[dict[str, float]]:
    """Per layer, the pruned fraction of D_QK / D_V / D_GU (the paper's Fig. 4)."""
    rows = []
    for index, decision in enumerate(decisions):
        row: dict[str, float] = {"layer": index}
        for kind in KINDS:
            d = decision.get(kind)
            if d is not None:
                row[kind] = float((d < 0.5).float().mean())
        rows.append(row)
    return rows


def _kept(decision: torch.Tensor) -> list[int]:
    return torch.nonzero(decision.detach() >= 0.5).flatten().tolist()


def _device_of(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")
