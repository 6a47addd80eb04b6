"""`DepGraphPruner`: score dependency groups, rank them (per layer or globally) and produce a `PruningPlan`.

Ranking follows LLM-Pruner: by default the same fraction of units is removed from every unprotected layer, the
fraction found by bisection so that the fraction of the model's *total* parameters removed hits the target. With
`global_ranking=True` the per-kind normalised group scores are compared across layers and the groups with the lowest
score per removed parameter go first. Heads stay GQA-consistent: every kept KV group keeps the same number of query
heads, and whole KV groups go when fewer heads than groups remain.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ... import arch as A
from ...structure import LayerGeometry, ModelGeometry, PruningPlan
from ...structure.geometry import require_uniform_head_dims
from .config import DepGraphConfig
from .dependency import DependencyGraph
from .importance import build_importance, check_calibration, compute_importance, normalise

logger = logging.getLogger(__name__)

MAX_BISECTION_STEPS = 50
TOLERANCE = 0.01


@dataclass
class _LayerSizes:
    heads: int
    kv_heads: int
    ffn: int


class DepGraphPruner:
    """Computes a `PruningPlan` from dependency-group importance.

    Args:
        config: the method settings.
        progress: show a progress bar over calibration samples.

    After `compute_plan`, `graph` holds the traced `DependencyGraph` and `scores` the per-family unit scores.
    """

    def __init__(self, config: DepGraphConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.importance = build_importance(config.importance, config.aggregation, config.seed)
        self.graph: DependencyGraph | None = None
        self.scores: dict[tuple[str, int | None], torch.Tensor] = {}

    @property
    def needs_calibration(self) -> bool:
        return self.importance.needs_gradients

    # ------------------------------------------------------------------ public
    def compute_plan(
        self, model: nn.Module, calibration: torch.Tensor | None = None, calibration_source: str | None = None
    ) -> PruningPlan:
        """Score the groups of `model` on `calibration` token ids (`[n, seq_len]`) and return the plan.

        Raises:
            ValueError: calibration missing / shorter than 2 tokens (gradient criteria), a protected range outside
                the model, or a target that cannot be reached without emptying a layer (the message gives the
                maximum feasible ratio).
        """
        cfg = self.config
        lm = A.unwrap_model(model)
        geometry = ModelGeometry.from_config(lm.config)
        require_uniform_head_dims(geometry, "The dependency-group pass")
        if self.needs_calibration:
            calibration = check_calibration(calibration, geometry.vocab_size)
        start, end = cfg.resolved_layer_range(geometry.num_layers)
        prunable = list(range(start, end))
        max_ratio = self.check_feasible(geometry)
        trace_input = calibration[:1] if calibration is not None else None
        self.graph = DependencyGraph.build(model, trace_input)
        kinds = [
            k
            for k, on in (
                ("kv_group", cfg.prune_heads),
                ("head", cfg.prune_heads),
                ("ffn", cfg.prune_ffn),
                ("hidden", cfg.prune_hidden),
            )
            if on
        ]
        self.scores = compute_importance(
            model, self.graph, self.importance, calibration, kinds, cfg.calibration_batch_size, self.progress
        )
        if cfg.global_ranking:
            sizes, hidden = self._global(geometry, prunable)
        else:
            sizes, hidden = self._uniform(geometry, prunable)
        plan = self._plan(geometry, sizes, hidden)
        achieved = plan.num_parameters()["sparsity"]
        if abs(achieved - cfg.target_sparsity) > TOLERANCE:
            logger.warning(
                "depgraph: achieved sparsity %.4f is more than %.0f points from the target %.4f (units too coarse?).",
                achieved,
                100 * TOLERANCE,
                cfg.target_sparsity,
            )
        plan.metadata.update(
            {
                "method": "depgraph",
                "target_sparsity": cfg.target_sparsity,
                "achieved_sparsity": achieved,
                "importance": cfg.importance,
                "aggregation": cfg.aggregation,
                "global_ranking": cfg.global_ranking,
                "layer_range": [start, end],
                "protected_layers": [i for i in range(geometry.num_layers) if i not in prunable],
                "prune_heads": cfg.prune_heads,
                "prune_ffn": cfg.prune_ffn,
                "prune_hidden": cfg.prune_hidden,
                "round_to": cfg.round_to,
                "head_round_to": cfg.head_round_to,
                "max_feasible_sparsity": max_ratio,
                "calibration_samples": int(calibration.shape[0]) if calibration is not None else 0,
                "calibration_seq_len": int(calibration.shape[1]) if calibration is not None else 0,
                "calibration_source": calibration_source or ("tensor" if calibration is not None else None),
                "seed": cfg.seed,
                "parameters": plan.num_parameters(),
            }
        )
        return plan

    def check_feasible(self, geometry: ModelGeometry) -> float:
        """The maximum feasible ratio of `geometry`; raises a `ValueError` naming it when the config's target is
        above it."""
        cfg = self.config
        max_ratio = self.max_feasible_sparsity(geometry)
        if cfg.target_sparsity > max_ratio + 1e-12:
            start, end = cfg.resolved_layer_range(geometry.num_layers)
            raise ValueError(
                f"target_sparsity={cfg.target_sparsity} cannot be reached without emptying a layer: removing every "
                f"prunable unit of layers {start}..{end - 1} except one per unit type ({self._units_pruned()}) "
                f"removes {max_ratio:.4f} of the parameters, so the maximum feasible ratio is {max_ratio:.4f}. "
                "Lower target_sparsity, widen layer_range"
                + ("" if cfg.prune_hidden else " or enable prune_hidden")
                + "."
            )
        return max_ratio

    def max_feasible_sparsity(self, geometry: ModelGeometry) -> float:
        """Sparsity with every prunable unit of the unprotected layers removed except the minimum per unit type."""
        start, end = self.config.resolved_layer_range(geometry.num_layers)
        sizes = self._dense_sizes(geometry)
        for index in range(start, end):
            geo = geometry.layers[index]
            if self.config.prune_ffn:
                sizes[index].ffn = _round_keep(0, geo.intermediate_size, self.config.round_to)
            if self.config.prune_heads:
                options, _ = self._head_options(geometry, index)
                _, (k, m) = min(options)
                sizes[index].heads, sizes[index].kv_heads = k * m, k
        hidden = geometry.hidden_size
        if self.config.prune_hidden:
            hidden = _round_keep(0, geometry.hidden_size, self.config.round_to)
        return 1.0 - _count(geometry, sizes, hidden) / geometry.num_parameters()

    # ------------------------------------------------------------------ sizes
    def _units_pruned(self) -> str:
        parts = [
            ("query heads / KV groups", self.config.prune_heads),
            ("FFN channels", self.config.prune_ffn),
            ("hidden channels", self.config.prune_hidden),
        ]
        return ", ".join(name for name, on in parts if on)

    @staticmethod
    def _dense_sizes(geometry: ModelGeometry) -> list[_LayerSizes]:
        return [_LayerSizes(g.num_heads, g.num_kv_heads, g.intermediate_size) for g in geometry.layers]

    def _head_states(self, geometry: ModelGeometry, index: int) -> list[tuple[int, int]]:
        """GQA-consistent (kept KV groups, query heads per kept group) pairs allowed by `head_round_to`."""
        geo = geometry.layers[index]
        full = (geo.num_kv_heads, geo.heads_per_group)
        states = [
            (k, m)
            for k in range(1, geo.num_kv_heads + 1)
            for m in range(1, geo.heads_per_group + 1)
            if (k * m) % self.config.head_round_to == 0 or (k, m) == full
        ]
        return states

    def _uniform(self, geometry: ModelGeometry, prunable: list[int]) -> tuple[list[_LayerSizes], int]:
        cfg = self.config
        dense = geometry.num_parameters()
        head_options = {i: self._head_options(geometry, i) for i in prunable} if cfg.prune_heads else {}

        def sizes_for(fraction: float, head_fraction: float | None = None) -> tuple[list[_LayerSizes], int]:
            """Every unprotected layer loses `fraction` of its channels and `head_fraction` (default: the same) of
            its attention parameters, as the nearest GQA-consistent head count."""
            head_fraction = fraction if head_fraction is None else head_fraction
            sizes = self._dense_sizes(geometry)
            for index in prunable:
                geo = geometry.layers[index]
                if cfg.prune_ffn:
                    sizes[index].ffn = _round_keep(
                        geo.intermediate_size * (1 - fraction), geo.intermediate_size, cfg.round_to
                    )
                if cfg.prune_heads:
                    options, full = head_options[index]
                    goal = (1 - head_fraction) * full
                    _, (k, m) = min(options, key=lambda o: (abs(o[0] - goal), -o[0], -o[1][0]))
                    sizes[index].heads, sizes[index].kv_heads = k * m, k
            hidden = geometry.hidden_size
            if cfg.prune_hidden:
                hidden = _round_keep(geometry.hidden_size * (1 - fraction), geometry.hidden_size, cfg.round_to)
            return sizes, hidden

        best, gap = _bisect(lambda f: 1.0 - _count(geometry, *sizes_for(f)) / dense, cfg.target_sparsity)
        if gap > TOLERANCE and cfg.prune_heads and (cfg.prune_ffn or cfg.prune_hidden):
            # A head is a large unit: one head fewer in every layer moves a small model by 1-2 points. Keep the head
            # counts of the common fraction and let the channel fraction alone absorb that step.
            channels, channel_gap = _bisect(
                lambda f: 1.0 - _count(geometry, *sizes_for(f, best)) / dense, cfg.target_sparsity
            )
            if channel_gap < gap:
                return sizes_for(channels, best)
        return sizes_for(best)

    def _head_options(self, geometry: ModelGeometry, index: int) -> tuple[list[tuple[int, tuple[int, int]]], int]:
        """`([(attention params kept, (k, m)), ...], full attention params)` for layer `index`."""
        geo = geometry.layers[index]
        options = [
            (_attention_params(geometry, index, k * m, k), (k, m)) for k, m in self._head_states(geometry, index)
        ]
        return options, _attention_params(geometry, index, geo.num_heads, geo.num_kv_heads)

    def _global(self, geometry: ModelGeometry, prunable: list[int]) -> tuple[list[_LayerSizes], int]:
        """Greedy global ranking over layers.

        Scores are normalised per kind (divided by the kind's mean over the unprotected layers), so that an FFN
        channel, a query head, a KV group and a hidden channel of average importance all score 1. A *move* removes
        the next unit(s) of one layer (the lowest remaining FFN channels, one query head in every kept KV group, or
        a whole KV group; or hidden channels); the move with the lowest mean normalised score goes first and its
        cost (parameters removed) counts towards the target, until the next move would overshoot more than stop.
        """
        cfg = self.config
        sizes = self._dense_sizes(geometry)
        hidden = geometry.hidden_size
        dense = geometry.num_parameters()
        goal = cfg.target_sparsity * dense
        norm = {}
        for kind in ("ffn", "head", "kv_group"):
            keys = [(kind, i) for i in prunable if (kind, i) in self.scores]
            if keys:
                reference = torch.cat([self.scores[k] for k in keys])
                norm.update({k: normalise(self.scores[k], reference) for k in keys})
        if ("hidden", None) in self.scores:
            norm[("hidden", None)] = normalise(self.scores[("hidden", None)])
        ranked_ffn = {i: torch.sort(norm[("ffn", i)]).values for i in prunable if ("ffn", i) in norm}
        group_order, head_ranked = {}, {}
        for i in prunable:
            if ("kv_group", i) not in norm:
                continue
            geo = geometry.layers[i]
            group_order[i] = torch.argsort(-norm[("kv_group", i)], stable=True)
            per_group = norm[("head", i)].reshape(geo.num_kv_heads, geo.heads_per_group)
            head_ranked[i] = torch.sort(per_group, dim=1, descending=True).values
        hidden_ranked = torch.sort(norm[("hidden", None)]).values if ("hidden", None) in norm else None
        head_states = {i: set(self._head_states(geometry, i)) for i in group_order}
        version = {i: 0 for i in range(geometry.num_layers)}
        version["hidden"] = 0
        heap: list = []
        counter = 0

        def push(priority: float, key, payload) -> None:
            nonlocal counter
            counter += 1
            heapq.heappush(heap, (priority, counter, key, version[key], payload))

        def layer_cost(i: int, new: _LayerSizes) -> int:
            return _layer_count(geometry, i, sizes[i], hidden) - _layer_count(geometry, i, new, hidden)

        def push_layer(i: int) -> None:
            s = sizes[i]
            if i in ranked_ffn:
                new_ffn = _next_lower(s.ffn, geometry.layers[i].intermediate_size, cfg.round_to)
                if new_ffn is not None:
                    score = float(ranked_ffn[i][-s.ffn :][: s.ffn - new_ffn].mean())
                    push(score, i, _LayerSizes(s.heads, s.kv_heads, new_ffn))
            if i in group_order:
                k, m = s.kv_heads, s.heads // s.kv_heads
                kept_groups = group_order[i][:k]
                for m2 in range(m - 1, 0, -1):  # fewer heads in every kept group
                    if (k, m2) in head_states[i]:
                        score = float(head_ranked[i][kept_groups, m2:m].mean())
                        push(score, i, _LayerSizes(k * m2, k, s.ffn))
                        break
                for k2 in range(k - 1, 0, -1):  # whole KV groups
                    if (k2, m) in head_states[i]:
                        score = float(norm[("kv_group", i)][group_order[i][k2:k]].mean())
                        push(score, i, _LayerSizes(k2 * m, k2, s.ffn))
                        break

        def push_hidden() -> None:
            if hidden_ranked is None:
                return
            new_hidden = _next_lower(hidden, geometry.hidden_size, cfg.round_to)
            if new_hidden is not None:
                push(float(hidden_ranked[-hidden:][: hidden - new_hidden].mean()), "hidden", new_hidden)

        for i in prunable:
            push_layer(i)
        push_hidden()
        removed = 0
        while heap:
            _, _, key, seen_version, payload = heapq.heappop(heap)
            if seen_version != version[key]:
                continue
            if key == "hidden":
                delta = _count(geometry, sizes, hidden) - _count(geometry, sizes, payload)
            else:
                delta = layer_cost(key, payload)
            if abs(removed + delta - goal) >= abs(removed - goal):
                break
            removed += delta
            if key == "hidden":
                hidden = payload
                version["hidden"] += 1
                push_hidden()
            else:
                sizes[key] = payload
                version[key] += 1
                push_layer(key)
        return sizes, hidden

    # ------------------------------------------------------------------ plan
    def _plan(self, geometry: ModelGeometry, sizes: list[_LayerSizes], hidden: int) -> PruningPlan:
        ffn, kv_groups, heads = {}, {}, {}
        for index, (size, geo) in enumerate(zip(sizes, geometry.layers)):
            if size.ffn != geo.intermediate_size:
                ffn[index] = (self.scores[("ffn", index)], size.ffn)
            if (size.heads, size.kv_heads) != (geo.num_heads, geo.num_kv_heads):
                kv_groups[index] = (self.scores[("kv_group", index)], size.kv_heads)
                heads[index] = (self.scores[("head", index)], size.heads // size.kv_heads)
        hidden_scores = None
        if hidden != geometry.hidden_size:
            hidden_scores = (self.scores[("hidden", None)], hidden)
        return PruningPlan.from_scores(
            geometry, ffn=ffn, kv_groups=kv_groups, heads_per_group=heads, hidden=hidden_scores
        )


# ---------------------------------------------------------------------------------------------------- counting
def _round_keep(value: float, total: int, multiple: int) -> int:
    """A kept count near `value`: a multiple of `multiple`, at least `multiple` (or 1), at most `total`."""
    if value >= total or multiple >= total:
        return total
    kept = int(math.floor(value / multiple + 0.5)) * multiple
    return min(max(kept, multiple), total)


def _next_lower(current: int, total: int, multiple: int) -> int | None:
    """The next smaller allowed kept count below `current` (None when at the minimum)."""
    if multiple >= total:
        return None
    lower = current - (current % multiple or multiple)
    return lower if lower >= multiple else None


def _geometry_with(geometry: ModelGeometry, sizes: list[_LayerSizes], hidden: int) -> ModelGeometry:
    layers = tuple(LayerGeometry(s.heads, s.kv_heads, g.head_dim, s.ffn) for s, g in zip(sizes, geometry.layers))
    return replace(geometry, hidden_size=hidden, layers=layers)


def _count(geometry: ModelGeometry, sizes: list[_LayerSizes], hidden: int) -> int:
    return _geometry_with(geometry, sizes, hidden).num_parameters()


def _layer_count(geometry: ModelGeometry, index: int, size: _LayerSizes, hidden: int) -> int:
    geo = geometry.layers[index]
    single = replace(geometry, layers=(LayerGeometry(size.heads, size.kv_heads, geo.head_dim, size.ffn),))
    return single.layer_params(0, hidden)


def _attention_params(geometry: ModelGeometry, index: int, heads: int, kv_heads: int) -> int:
    geo = geometry.layers[index]
    with_attention = _layer_count(geometry, index, _LayerSizes(heads, kv_heads, geo.intermediate_size), None)
    without = _layer_count(geometry, index, _LayerSizes(0, 0, geo.intermediate_size), None)
    return with_attention - without


def _bisect(sparsity: Callable[[float], float], target: float) -> tuple[float, float]:
    """The fraction in [0, 1] whose (non-decreasing, stepwise) `sparsity` is closest to `target`, and its gap."""
    low, high = 0.0, 1.0
    best, best_gap = 0.0, abs(sparsity(0.0) - target)
    for _ in range(MAX_BISECTION_STEPS):
        mid = (low + high) / 2
        value = sparsity(mid)
        if abs(value - target) < best_gap:
            best, best_gap = mid, abs(value - target)
        if value < target:
            low = mid
        else:
            high = mid
    for candidate in (high, 1.0):
        if abs(sparsity(candidate) - target) < best_gap:
            best, best_gap = candidate, abs(sparsity(candidate) - target)
    return best, best_gap
