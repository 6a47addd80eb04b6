"""`PrunerCallback`: one callback that adds a pruning method to an existing `Trainer` / `SFTTrainer` script.

The callback is thin: it hands Trainer events to the method, merges the method's metrics into the Trainer's
normal logs, writes its JSON state into checkpoints (main process only), makes `trainer.save_model()` write the
pruned model (LoRA merged by default) with its `pruning_plan.json`, and makes `trainer.push_to_hub()` upload the
generated tailored_hf model card and per-layer plot.
"""

from __future__ import annotations

import json
import logging
import os
from functools import wraps
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import arch as A
from .distributed import check_same_on_all_ranks, sharded_parameter_kind
from .hub.trainer_card import find_calling_trainer, install_trainer_card
from .methods.base import MethodConfig, build_method, metric_values
from .structure import PLAN_ATTRIBUTE, PLAN_FILENAME
from .structure.io import save_pruned
from .structure.plan import atomic_write_text

logger = logging.getLogger(__name__)

STATE_FILENAME = "tailored_hf_state.json"
TENSOR_STATE_FILENAME = "tailored_hf_state.safetensors"
LOG_PREFIX = "pruning/"


class PrunerCallback(TrainerCallback):
    """Prune inside a Trainer run with the method that `config` selects.

    Args:
        config (`MethodConfig`): e.g. `DepGraphConfig(target_sparsity=0.2)`.
        calibration (`torch.LongTensor`, *optional*): calibration token ids `[n, L]`; by default the method draws
            them from its configured text source with the Trainer's tokenizer.
        merge_adapters_on_save (`bool`, defaults to `True`): `trainer.save_model()` merges LoRA into the pruned
            weights; with `False` it writes the pruned base model plus the adapter in `adapter/` beside it.
    """

    def __init__(self, config: MethodConfig, calibration: Any = None, merge_adapters_on_save: bool = True) -> None:
        self.method = build_method(config)
        self.calibration = calibration
        self.merge_adapters_on_save = merge_adapters_on_save
        self._pending_logs: dict[str, float | torch.Tensor] = {}
        self._logged: dict[str, float | torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- events
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs["model"]
        self.method.check_model(model)
        self.method.on_init_end(
            model, tokenizer=kwargs.get("processing_class"), args=args, calibration=self.calibration
        )
        self._check_ranks_agree()
        self._after_event(model)
        trainer = find_calling_trainer()
        if trainer is not None:  # `trainer.push_to_hub()` then uploads our card, not the Trainer's generic draft
            install_trainer_card(trainer)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.check_unsharded(kwargs["model"])
        if state.global_step > 0:
            self._restore(args, state)
        self.method.on_train_begin(kwargs["model"], args=args, state=state, optimizer=kwargs.get("optimizer"))
        self._after_event(kwargs["model"])

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.method.on_step_begin(kwargs["model"], args=args, state=state, optimizer=kwargs.get("optimizer"))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.method.on_pre_optimizer_step(kwargs["model"], args=args, state=state, optimizer=kwargs.get("optimizer"))

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.method.on_optimizer_step(kwargs["model"], args=args, state=state, optimizer=kwargs.get("optimizer"))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.method.on_step_end(kwargs["model"], args=args, state=state, optimizer=kwargs.get("optimizer"))
        self._after_event(kwargs["model"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.method.on_train_end(kwargs["model"], args=args, state=state)
        self._check_ranks_agree()
        self._after_event(kwargs["model"])
        if self._pending_logs:  # no log event follows train end: record the final metrics in the history directly
            final = {LOG_PREFIX + key: value for key, value in metric_values(self._pending_logs).items()}
            state.log_history.append({**final, "step": state.global_step})
            self._pending_logs.clear()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if logs is None or not self._pending_logs:
            return
        extra = {LOG_PREFIX + key: value for key, value in metric_values(self._pending_logs).items()}
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)
        self._pending_logs.clear()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not args.should_save:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir():
            atomic_write_text(checkpoint / STATE_FILENAME, json.dumps(self.method.state_dict()))
            tensors = self.method.tensor_state_dict()
            if tensors:
                tmp = checkpoint / (TENSOR_STATE_FILENAME + ".tmp")
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
                os.replace(tmp, checkpoint / TENSOR_STATE_FILENAME)

    # ------------------------------------------------------------------------------------------------ helpers
    def check_unsharded(self, model: nn.Module) -> None:
        """Methods that prune during training need whole parameters on every rank: refuse FSDP / ZeRO-3 clearly.

        Methods that prune at `on_init_end` (depgraph, magnitude) are done before any wrapper shards the model, so
        they train under FSDP / ZeRO-3 like any other model.
        """
        kind = sharded_parameter_kind(model)
        if kind is not None and self.method.plan is None:
            raise ValueError(
                f"{type(self.method).__name__} prunes during training and needs unsharded parameters, but this model "
                f"is sharded by {kind}. Run it under DDP (`accelerate launch --multi_gpu`), or prune with a method "
                "that prunes before training (depgraph, magnitude) and then train under FSDP / ZeRO-3."
            )

    def _after_event(self, model: nn.Module) -> None:
        fresh = {k: v for k, v in self.method.metrics.items() if self._changed(k, v)}
        self._pending_logs.update(fresh)
        self._logged.update(fresh)
        if self.method.plan is not None and not getattr(model, "_tailored_hf_save_installed", False):
            install_pruned_save(model, merge_adapters=self.merge_adapters_on_save)

    def _changed(self, key: str, value: float | torch.Tensor) -> bool:
        """Whether metric `key` differs from its last logged value. A tensor metric is told apart by identity (a step
        that updates it makes a new tensor): comparing values would read the device."""
        logged = self._logged.get(key)
        if torch.is_tensor(value) or torch.is_tensor(logged):
            return value is not logged
        return key not in self._logged or logged != value

    def _check_ranks_agree(self) -> None:
        """Under several processes, stop unless every rank holds the same plan (metadata such as timings aside)."""
        if self.method.plan is not None:
            structure = {k: v for k, v in self.method.plan.to_dict().items() if k != "metadata"}
            check_same_on_all_ranks(json.dumps(structure, sort_keys=True), "pruning plan")

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FILENAME
        if path.is_file():
            self.method.load_state_dict(json.loads(path.read_text()))
            logger.info("Restored pruning state from %s", path)
        tensor_path = path.with_name(TENSOR_STATE_FILENAME)
        if tensor_path.is_file():
            self.method.load_tensor_state_dict(load_file(str(tensor_path)))


def install_pruned_save(model: nn.Module, merge_adapters: bool = True) -> None:
    """Make `model.save_pretrained` (what `Trainer.save_model` calls) write the pruned model with its plan.

    Trainer checkpoints (`checkpoint-*` folders) keep the model's own format (a PEFT model keeps saving its adapter,
    so `resume_from_checkpoint` works) plus `pruning_plan.json`; any other directory receives the final model:
    LoRA merged into the pruned weights, or (with `merge_adapters=False`) the pruned base plus `adapter/`.
    """
    original = model.save_pretrained

    @wraps(original)
    def save_pretrained(save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("is_main_process", True):
            return None
        lm = A.unwrap_model(model)
        plan = getattr(lm, PLAN_ATTRIBUTE, None)
        target = Path(save_directory)
        if target.name.startswith(PREFIX_CHECKPOINT_DIR) or plan is None:
            result = original(save_directory, *args, **kwargs)
            if plan is not None:
                plan.save(target / PLAN_FILENAME)
            return result
        is_peft = lm is not model
        if not is_peft or merge_adapters:
            save_pruned(model, target)
            return None
        base_only = {k: v for k, v in lm.state_dict().items() if "lora_" not in k}
        base_only = {k.replace(".base_layer.", "."): v for k, v in base_only.items()}
        save_pruned_base(lm, target, base_only)
        original(target / "adapter", *args, **{k: v for k, v in kwargs.items() if k != "state_dict"})
        return None

    model.save_pretrained = save_pretrained
    model._tailored_hf_save_installed = True


def save_pruned_base(lm: nn.Module, target: Path, state_dict: dict) -> None:
    """The pruned base model without adapters (for `merge_adapters=False`)."""
    plan = getattr(lm, PLAN_ATTRIBUTE)
    type(lm).save_pretrained(lm, target, state_dict=state_dict)
    plan.save(target / PLAN_FILENAME)
