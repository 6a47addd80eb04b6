"""Saving pruned models (safetensors + `pruning_plan.json`, written atomically) and checking them on load."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .. import __version__
from .. import arch as A
from .geometry import ModelGeometry
from .plan import PLAN_FILENAME, PlanError, PruningPlan
from .prune import PLAN_ATTRIBUTE

logger = logging.getLogger(__name__)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the unwrapped model with every active LoRA adapter merged in (nothing is modified)."""
    lm = A.unwrap_model(model)
    merged: dict[str, torch.Tensor] = {}
    lora_modules = {}
    for name, module in lm.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            lora_modules[name] = module
    for key, value in lm.state_dict().items():
        if "lora_" in key:
            continue
        merged[key.replace(".base_layer.", ".")] = value
    for name, module in lora_modules.items():
        if getattr(module, "merged", False):
            continue
        weight_key = f"{name}.weight"
        delta = torch.zeros_like(merged[weight_key])
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                delta = delta + module.get_delta_weight(adapter).to(delta.dtype)
        merged[weight_key] = merged[weight_key] + delta
    return merged


def save_pruned(
    model: nn.Module,
    output_dir: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    plan: PruningPlan | None = None,
    merge_adapters: bool = True,
    extra_metadata: dict | None = None,
) -> Path:
    """Save a pruned model as safetensors with its config and `pruning_plan.json`.

    The directory is written next to its destination and renamed into place, so an interrupted save leaves the
    previous good output intact and never a half-written directory.

    Args:
        model: the pruned model (plain or PEFT-wrapped; LoRA adapters are merged when `merge_adapters`).
        output_dir: destination directory (replaced if it exists).
        tokenizer: saved alongside when given.
        plan: defaults to the plan recorded on the model by `apply_plan`.
        merge_adapters: merge LoRA into the weights (default); otherwise refuse PEFT-wrapped models here and use
            the PEFT model's own `save_pretrained` for the adapter.
        extra_metadata: merged into the plan's metadata (method, target, ...).
    """
    lm = A.unwrap_model(model)
    plan = plan or getattr(lm, PLAN_ATTRIBUTE, None)
    if plan is None:
        raise PlanError(
            "This model carries no pruning plan: prune it with `tailored_hf.apply_plan` (or a method) before "
            "`save_pruned`, or pass `plan=`."
        )
    if ModelGeometry.from_config(lm.config) != plan.pruned_geometry():
        raise PlanError("The plan does not describe this model's current sizes; pass the plan that produced it.")
    has_lora = any("lora_" in name for name, _ in lm.named_parameters())
    if has_lora and not merge_adapters:
        raise ValueError("merge_adapters=False: save the adapter with the PEFT model's `save_pretrained` instead.")
    counts = plan.num_parameters()
    plan.metadata.update(
        {
            "library": "tailored_hf",
            "library_version": __version__,
            "params_dense": counts["dense"],
            "params_pruned": counts["pruned"],
            "achieved_sparsity": counts["sparsity"],
            **(extra_metadata or {}),
        }
    )
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        state_dict = merged_state_dict(lm) if has_lora else None
        # The class method, not an instance override (PrunerCallback routes `save_pretrained` here).
        type(lm).save_pretrained(lm, staging, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        plan.save(staging / PLAN_FILENAME)
        _replace_dir(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved pruned model (%d -> %d params) to %s", counts["dense"], counts["pruned"], output_dir)
    return output_dir


#: Files a model save writes; a destination holding anything else (e.g. a Trainer's `checkpoint-*` folders) is merged
#: into file by file instead of being swapped as a whole.
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    PLAN_FILENAME,
)


def _is_model_file(path: Path) -> bool:
    return path.is_file() and any(path.match(pattern) for pattern in MODEL_FILE_PATTERNS)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the staged save into `target`.

    An empty or model-only `target` is swapped whole (two renames). A `target` that also holds other entries (a
    Trainer output directory with checkpoints, logs, a user's files) keeps them: each staged file replaces its
    namesake atomically, stale model files of the previous save are removed, and the plan is moved last.
    """
    if target.exists() and not all(_is_model_file(entry) for entry in target.iterdir()):
        staged = sorted(staging.iterdir(), key=lambda p: p.name == PLAN_FILENAME)
        for stale in target.iterdir():
            if _is_model_file(stale) and not (staging / stale.name).exists():
                stale.unlink()
        for entry in staged:
            destination = target / entry.name
            if entry.is_dir():
                if destination.exists():
                    shutil.rmtree(destination)
                os.replace(entry, destination)
            else:
                os.replace(entry, destination)
        shutil.rmtree(staging, ignore_errors=True)
        return
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def check_saved_plan(model: nn.Module, directory: str | os.PathLike) -> PruningPlan | None:
    """Verify that a checkpoint's `pruning_plan.json` agrees with the loaded weights; return the plan."""
    path = Path(directory) / PLAN_FILENAME
    if not path.is_file():
        return None
    plan = PruningPlan.load(path)
    lm = A.unwrap_model(model)
    expected = plan.pruned_geometry()
    actual = ModelGeometry.from_config(lm.config)
    if expected != actual:
        raise PlanError(
            f"{path} disagrees with the weights in {directory}: the plan gives hidden={expected.hidden_size}, "
            f"{expected.num_layers} layers, but the checkpoint has hidden={actual.hidden_size}, "
            f"{actual.num_layers} layers (or different per-layer sizes). Re-save the model with `save_pruned`."
        )
    setattr(lm, PLAN_ATTRIBUTE, plan)
    return plan
