"""Deterministic final masks: turn learned `log_alpha` into a GQA-consistent `PruningPlan` that hits the target.

Rules (all ties broken by lower index, so the result is a pure function of the log_alpha values):

1. Layers (when gated): a layer goes when its keep-probability is below 1/2 (at least one layer stays).
2. Hidden dimensions (when masked): keep round(E[L0]) of them, the highest log_alpha first (CoFi / NutePrune), moved
   only as far as needed for the target to stay reachable without over-shooting it.
3. Heads and FFN channels: rank them all by log_alpha and remove the lowest first until the parameter count reaches
   the target. After every head removal the layer's heads are re-fitted to GQA: G kept KV groups with m query heads
   each, G * m the largest such product not above the surviving count (the best groups / heads by log_alpha). Last,
   FFN channels removed past the target are put back (highest log_alpha first) while the target still holds, so
   the achieved sparsity is the target plus at most one unit's share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...structure import LayerPlan, ModelGeometry, PruningPlan
from .config import L0Config
from .masks import MaskValues, head_dims

# Units are ranked by log_alpha; at equal log_alpha heads go before FFN channels (a fixed, documented order).
KIND_ORDER = {"head": 0, "ffn": 1}


@dataclass
class _HeadFit:
    heads: list[int]
    kv_heads: list[int]


def fit_gqa(alive: list[bool], scores: torch.Tensor, num_kv: int) -> _HeadFit:
    """Largest GQA-valid head set (G groups x m heads) with at most `sum(alive)` heads, best log_alpha first."""
    per_group = len(alive) // num_kv
    n = max(1, sum(alive))
    grouped = scores.reshape(num_kv, per_group)
    best: tuple[int, float, int, int] | None = None
    for m in range(1, per_group + 1):
        g = min(num_kv, n // m)
        if g == 0:
            continue
        top = torch.sort(grouped, dim=1, descending=True, stable=True).values[:, :m].sum(dim=1)
        score = float(torch.sort(top, descending=True, stable=True).values[:g].sum())
        key = (g * m, score, -m, g)
        if best is None or key[:3] > best[:3]:
            best = (g * m, score, -m, g)
    _, _, neg_m, g = best  # type: ignore[misc]
    m = -neg_m
    group_scores = torch.sort(grouped, dim=1, descending=True, stable=True).values[:, :m].sum(dim=1)
    groups = sorted(torch.sort(group_scores, descending=True, stable=True).indices[:g].tolist())
    heads = []
    for group in groups:
        order = torch.sort(grouped[group], descending=True, stable=True).indices[:m].tolist()
        heads.extend(group * per_group + j for j in sorted(order))
    return _HeadFit(heads=heads, kv_heads=groups)


class _Counter:
    """Exact parameter count of a candidate plan, updated per layer in O(1)."""

    def __init__(self, geometry: ModelGeometry, hidden: int, kept_layers: list[int]) -> None:
        self.geometry, self.hidden = geometry, hidden
        embed = (1 if geometry.tied_embeddings else 2) * geometry.vocab_size * hidden + hidden
        self.layer_params = {i: 0 for i in kept_layers}
        self.total = embed

    def layer_cost(self, index: int, heads: int, kv: int, ffn: int) -> int:
        g, h = self.geometry, self.hidden
        dqk, dv = head_dims(g.layers[index])
        params = h * (dqk * (heads + kv) + dv * (kv + heads)) + 3 * h * ffn + 2 * h
        params += dqk * (heads + kv) + dv * kv if g.qkv_bias else 0
        params += h if g.o_bias else 0
        params += 2 * ffn + h if g.mlp_bias else 0
        return params

    def set_layer(self, index: int, heads: int, kv: int, ffn: int) -> None:
        new = self.layer_cost(index, heads, kv, ffn)
        self.total += new - self.layer_params[index]
        self.layer_params[index] = new


def _kept_layers(geometry: ModelGeometry, probabilities: MaskValues) -> list[int]:
    if probabilities.layers is None:
        return list(range(geometry.num_layers))
    probs = probabilities.layers
    kept = [i for i in range(geometry.num_layers) if float(probs[i]) >= 0.5]
    if not kept:
        kept = [int(torch.argmax(probs))]
    return kept


def select_plan(
    geometry: ModelGeometry, log_alpha: MaskValues, probabilities: MaskValues, config: L0Config
) -> PruningPlan:
    """The final plan: deterministic masks from `log_alpha` (ranking) and `probabilities` (counts), see module doc.

    Raises:
        ValueError: the target cannot be reached with the enabled unit groups.
    """
    dense = geometry.num_parameters()
    target = config.target_sparsity
    kept_layers = _kept_layers(geometry, probabilities)
    hidden_size = geometry.hidden_size

    def sweep(n_hidden: int) -> tuple[float, PruningPlan]:
        return _sweep(geometry, log_alpha, kept_layers, n_hidden, dense, target)

    if log_alpha.hidden is not None:
        n0 = min(hidden_size, max(1, int(round(float(probabilities.hidden.detach().sum())))))
        start = lambda n: _sparsity_with(geometry, kept_layers, n, dense, None)  # noqa: E731
        floor = lambda n: _sparsity_with(geometry, kept_layers, n, dense, log_alpha)  # noqa: E731
        # Largest n whose fully pruned model still reaches the target; smallest n that does not over-shoot at start.
        n_hi = _last_true(lambda n: floor(n) >= target, 1, hidden_size)
        n_lo = _first_true(lambda n: start(n) <= target, 1, hidden_size)
        if n_hi is None:
            raise ValueError(f"target_sparsity={target} is unreachable with these units (maximum {floor(1):.4f}).")
        n_hidden = n_hi if n_lo is None or n_lo > n_hi else min(max(n0, n_lo), n_hi)
    else:
        n_hidden = hidden_size
    achieved, plan = sweep(n_hidden)
    if achieved < target - 1e-12:
        raise ValueError(f"target_sparsity={target} is unreachable with these units (maximum {achieved:.4f}).")
    hidden_order = (
        torch.sort(log_alpha.hidden, descending=True, stable=True).indices[:n_hidden].tolist()
        if log_alpha.hidden is not None
        else list(range(hidden_size))
    )
    plan.hidden = sorted(hidden_order)
    plan.removed_layers = [i for i in range(geometry.num_layers) if i not in set(kept_layers)]
    plan.validate(geometry)
    return plan


def _sparsity_with(
    geometry: ModelGeometry, kept_layers: list[int], n_hidden: int, dense: int, minimal: MaskValues | None
) -> float:
    """Sparsity with `n_hidden` hidden dims and every head / FFN group full (`minimal=None`) or at its minimum (one
    head in one KV group, one channel) where `minimal` has gates for it."""
    counter = _Counter(geometry, n_hidden, kept_layers)
    for i in kept_layers:
        g = geometry.layers[i]
        heads_min = minimal is not None and i in minimal.heads
        ffn_min = minimal is not None and i in minimal.ffn
        counter.set_layer(
            i,
            1 if heads_min else g.num_heads,
            1 if heads_min else g.num_kv_heads,
            1 if ffn_min else g.intermediate_size,
        )
    return 1.0 - counter.total / dense


def _sweep(
    geometry: ModelGeometry,
    log_alpha: MaskValues,
    kept_layers: list[int],
    n_hidden: int,
    dense: int,
    target: float,
) -> tuple[float, PruningPlan]:
    counter = _Counter(geometry, n_hidden, kept_layers)
    alive_heads = {i: [True] * geometry.layers[i].num_heads for i in kept_layers}
    fits = {i: _HeadFit(list(range(g.num_heads)), list(range(g.num_kv_heads))) for i, g in enumerate(geometry.layers)}
    ffn_alive = {i: [True] * geometry.layers[i].intermediate_size for i in kept_layers}
    ffn_count = {i: geometry.layers[i].intermediate_size for i in kept_layers}
    for i in kept_layers:
        g = geometry.layers[i]
        counter.set_layer(i, g.num_heads, g.num_kv_heads, g.intermediate_size)

    units: list[tuple[float, int, int, int]] = []
    for i in kept_layers:
        if i in log_alpha.heads:
            units += [(float(v), KIND_ORDER["head"], i, j) for j, v in enumerate(log_alpha.heads[i].tolist())]
        if i in log_alpha.ffn:
            units += [(float(v), KIND_ORDER["ffn"], i, j) for j, v in enumerate(log_alpha.ffn[i].tolist())]
    units.sort()

    removed_ffn: list[tuple[float, int, int]] = []

    def sparsity() -> float:
        return 1.0 - counter.total / dense

    for value, kind, layer, unit in units:
        if sparsity() >= target:
            break
        if kind == KIND_ORDER["ffn"]:
            if ffn_count[layer] <= 1:
                continue
            ffn_alive[layer][unit] = False
            ffn_count[layer] -= 1
            removed_ffn.append((value, layer, unit))
        else:
            if sum(alive_heads[layer]) <= 1:
                continue
            alive_heads[layer][unit] = False
            g = geometry.layers[layer]
            fits[layer] = fit_gqa(alive_heads[layer], log_alpha.heads[layer].detach().cpu(), g.num_kv_heads)
        fit = fits[layer]
        counter.set_layer(layer, len(fit.heads), len(fit.kv_heads), ffn_count[layer])

    # Put back FFN channels removed past the target (best first) while the target still holds.
    for _, layer, unit in sorted(removed_ffn, reverse=True):
        fit = fits[layer]
        counter.set_layer(layer, len(fit.heads), len(fit.kv_heads), ffn_count[layer] + 1)
        if sparsity() < target:
            counter.set_layer(layer, len(fit.heads), len(fit.kv_heads), ffn_count[layer])
            continue
        ffn_alive[layer][unit] = True
        ffn_count[layer] += 1

    layers = []
    for i, g in enumerate(geometry.layers):
        if i in ffn_alive:
            ffn = [c for c, alive in enumerate(ffn_alive[i]) if alive]
        else:
            ffn = list(range(g.intermediate_size))
        layers.append(LayerPlan(heads=list(fits[i].heads), kv_heads=list(fits[i].kv_heads), ffn=ffn))
    plan = PruningPlan(source=geometry, layers=layers, hidden=list(range(n_hidden)))
    return sparsity(), plan


def _first_true(predicate, low: int, high: int) -> int | None:
    """Smallest n in [low, high] with predicate(n) (predicate monotone False..True), or None."""
    if not predicate(high):
        return None
    while low < high:
        mid = (low + high) // 2
        if predicate(mid):
            high = mid
        else:
            low = mid + 1
    return low


def _last_true(predicate, low: int, high: int) -> int | None:
    """Largest n in [low, high] with predicate(n) (predicate monotone True..False), or None."""
    if not predicate(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if predicate(mid):
            low = mid
        else:
            high = mid - 1
    return low
