"""Dependency-group structural pruning (Tailored-LLaMA, arXiv 2410.19185, after LLM-Pruner / DepGraph).

```python
from tailored_hf.methods.depgraph import DepGraphConfig, prune

model, plan = prune(model, DepGraphConfig(target_sparsity=0.2), tokenizer=tokenizer)
```

Pieces: `DependencyGraph` (the traced coupling), importance criteria (`TaylorImportance`, ...), `DepGraphPruner`
(scores -> `PruningPlan`) and `DepGraphMethod` (the Trainer-facing method, registered as `"depgraph"`).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import nn

from ... import arch as A
from ...structure import ModelGeometry, PruningPlan, apply_plan, compose_plans
from .config import DepGraphConfig
from .dependency import DependencyGraph, Group, GroupFamily, GroupMember, MemberSpec
from .importance import (
    HessianImportance,
    Importance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    build_importance,
    compute_importance,
)
from .pruner import DepGraphPruner


def calibration_for(config: DepGraphConfig, tokenizer, data_dir: str | os.PathLike | None = None) -> torch.LongTensor:
    """Draw `config.num_calibration_samples` x `config.calibration_seq_len` token ids from the configured source
    (`data_dir`: where the named sources live, see `tailored_hf.data.calibration_batches`)."""
    from ...data import calibration_batches

    return calibration_batches(
        tokenizer,
        source=config.calibration_source,
        n_samples=config.num_calibration_samples,
        seq_len=config.calibration_seq_len,
        seed=config.seed,
        data_dir=data_dir,
    )


def prune(
    model: nn.Module,
    config: DepGraphConfig,
    calibration: torch.Tensor | None = None,
    tokenizer=None,
    progress: bool = True,
) -> tuple[nn.Module, PruningPlan]:
    """Score dependency groups, build the plan and apply it (in place) with the structure engine.

    Args:
        model: a LLaMA-family causal LM, plain or PEFT-wrapped.
        config: the method settings.
        calibration: token ids `[n, seq_len]`; when omitted, drawn from `config.calibration_source` with
            `tokenizer` (gradient-based importance only; `l1` / `l2` / `random` need no data).
        tokenizer: used to draw calibration batches when `calibration` is None.
        progress: show a progress bar over calibration samples.

    Returns:
        `(model, plan)`: the same model object, now smaller, and the applied `PruningPlan`.
    """
    pruner = DepGraphPruner(config, progress=progress)
    source = None
    if calibration is None and pruner.needs_calibration:
        if tokenizer is None:
            raise ValueError(
                f"importance={config.importance!r} needs calibration data: pass `calibration=` (a LongTensor "
                "[n, seq_len]) or `tokenizer=` to draw it from config.calibration_source."
            )
        calibration = calibration_for(config, tokenizer)
        source = str(config.calibration_source)
    if config.iterative_steps == 1:
        plan = pruner.compute_plan(model, calibration, calibration_source=source)
        apply_plan(model, plan)
        return model, plan
    return model, _prune_iteratively(model, pruner, calibration, source)


def _prune_iteratively(
    model: nn.Module, pruner: DepGraphPruner, calibration: torch.Tensor | None, source: str | None
) -> PruningPlan:
    """`pruner.config.iterative_steps` rounds of score -> plan -> apply on the shrinking model; the composed plan
    (relative to the model as given) is returned, with the whole run's target and achieved sparsity in its metadata."""
    config, progress = pruner.config, pruner.progress
    lm = A.unwrap_model(model)
    geometry = ModelGeometry.from_config(lm.config)
    # The whole run's target against the model as given (a round's own target would name a ratio the user never set).
    pruner.check_feasible(geometry)
    dense = geometry.num_parameters()
    steps, plan = config.iterative_steps, None
    for step in range(1, steps + 1):
        current = ModelGeometry.from_config(lm.config).num_parameters()
        remaining = dense * (1.0 - config.target_sparsity * step / steps)
        step_sparsity = 1.0 - remaining / current
        if step_sparsity <= 0.0:  # an earlier round overshot (coarse units): nothing to remove this round
            continue
        step_plan = DepGraphPruner(
            replace(config, target_sparsity=step_sparsity, iterative_steps=1), progress
        ).compute_plan(model, calibration, calibration_source=source)
        apply_plan(model, step_plan)
        plan = step_plan if plan is None else compose_plans(plan, step_plan)
    parameters = plan.num_parameters()
    plan.metadata.update(
        {
            "target_sparsity": config.target_sparsity,
            "achieved_sparsity": parameters["sparsity"],
            "parameters": parameters,
            "iterative_steps": steps,
        }
    )
    return plan


from .method import DepGraphMethod  # noqa: E402  (registers "depgraph")

__all__ = [
    "DepGraphConfig",
    "DepGraphMethod",
    "DepGraphPruner",
    "DependencyGraph",
    "Group",
    "GroupFamily",
    "GroupMember",
    "HessianImportance",
    "Importance",
    "MagnitudeImportance",
    "MemberSpec",
    "RandomImportance",
    "TaylorImportance",
    "build_importance",
    "calibration_for",
    "compute_importance",
    "prune",
]
