"""Simple weight-magnitude plans: a baseline and a smoke test for the engine (no data needed)."""

from __future__ import annotations

import torch
from torch import nn

from .. import arch as A
from .geometry import ModelGeometry, require_uniform_head_dims
from .plan import PlanError, PruningPlan

MAX_BISECTION_STEPS = 40


def magnitude_plan(model: nn.Module, target_sparsity: float, prune_heads: bool = True) -> PruningPlan:
    """Keep the FFN channels (and query heads inside each KV group) with the largest L2 weight norms.

    The same fraction is removed from every layer; it is found by bisection so that the fraction of the model's
    *total* parameters removed is as close as possible to `target_sparsity`.
    """
    if not 0.0 < target_sparsity < 1.0:
        raise PlanError(f"target_sparsity must be in (0, 1), got {target_sparsity}.")
    lm = A.unwrap_model(model)
    arch = A.get_arch(lm)
    geometry = ModelGeometry.from_config(lm.config)
    require_uniform_head_dims(geometry, "The magnitude plan")
    ffn_scores, head_scores = {}, {}
    with torch.no_grad():
        for index, layer in enumerate(A.decoder_layers(lm)):
            mlp, attn = A.mlp(layer, arch), A.attention(layer, arch)
            gate = _weight(getattr(mlp, arch.gate_proj)).norm(dim=1)
            up = _weight(getattr(mlp, arch.up_proj)).norm(dim=1)
            down = _weight(getattr(mlp, arch.down_proj)).norm(dim=0)
            ffn_scores[index] = gate * up * down
            head_dim = geometry.layers[index].head_dim
            q = _weight(getattr(attn, arch.q_proj)).reshape(
                -1, head_dim * _weight(getattr(attn, arch.q_proj)).shape[1]
            )
            o = _weight(getattr(attn, arch.o_proj)).T.reshape(
                -1, head_dim * _weight(getattr(attn, arch.o_proj)).shape[0]
            )
            head_scores[index] = q.norm(dim=1) * o.norm(dim=1)

    def build(fraction: float) -> PruningPlan:
        ffn, heads = {}, {}
        for index, geo in enumerate(geometry.layers):
            ffn[index] = (ffn_scores[index], max(1, round(geo.intermediate_size * (1 - fraction))))
            if prune_heads:
                heads[index] = (head_scores[index], max(1, round(geo.heads_per_group * (1 - fraction))))
        return PruningPlan.from_scores(geometry, ffn=ffn, heads_per_group=heads)

    low, high = 0.0, 1.0
    best = build(0.0)
    for _ in range(MAX_BISECTION_STEPS):
        mid = (low + high) / 2
        plan = build(mid)
        if plan.num_parameters()["sparsity"] < target_sparsity:
            low = mid
        else:
            high = mid
        if abs(plan.num_parameters()["sparsity"] - target_sparsity) < abs(
            best.num_parameters()["sparsity"] - target_sparsity
        ):
            best = plan
    best.metadata.update({"method": "magnitude", "target_sparsity": target_sparsity})
    return best


def _weight(module: nn.Module) -> torch.Tensor:
    return getattr(module, "base_layer", module).weight.float()
