"""`PruningPlan`: the serializable record of which structural units survive.

Every method ends by producing one; the structure engine (`apply_plan`) is the only thing that acts on it.
Indices always refer to the *source* (unpruned) model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from .geometry import LayerGeometry, ModelGeometry

PLAN_FILENAME = "pruning_plan.json"
PLAN_FORMAT_VERSION = 1
UNIT_TYPES = ("heads", "kv_heads", "ffn", "hidden", "layers")


class PlanError(ValueError):
    """A plan that cannot be applied to a model (every message names what is wrong and how to fix it)."""


@dataclass
class LayerPlan:
    """Kept units of one decoder layer, as sorted indices into the source layer.

    `qk_pairs` and `v_dims` prune inside every attention head (the same dims in every query, key and value head
    of the layer, so GQA stays consistent); `None` keeps them all. Query/key dims go in rotate-half pairs: pair
    `i` is dims `(i, i + qk_dim // 2)` of each head, so RoPE stays exact after slicing. `v_dims` are value dims,
    which also index the per-head columns of `o_proj`.
    """

    heads: list[int]
    kv_heads: list[int]
    ffn: list[int]
    qk_pairs: list[int] | None = None
    v_dims: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"heads": self.heads, "kv_heads": self.kv_heads, "ffn": self.ffn}
        if self.qk_pairs is not None:
            data["qk_pairs"] = self.qk_pairs
        if self.v_dims is not None:
            data["v_dims"] = self.v_dims
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPlan:
        qk, v = data.get("qk_pairs"), data.get("v_dims")
        return cls(
            list(data["heads"]),
            list(data["kv_heads"]),
            list(data["ffn"]),
            qk_pairs=None if qk is None else list(qk),
            v_dims=None if v is None else list(v),
        )


@dataclass
class PruningPlan:
    """Which query heads, KV heads, FFN channels, hidden channels and decoder layers to keep.

    Args:
        source (`ModelGeometry`): sizes of the model the plan was made for.
        layers (`list[LayerPlan]`): one entry per source layer.
        hidden (`list[int]`): kept hidden (residual-stream) channels, shared by every layer.
        removed_layers (`list[int]`): whole decoder layers to drop.
        metadata (`dict`): free-form record (method, target, achieved sparsity, library version, ...).
        tokens (`list[int]`, *optional*): kept vocabulary rows (token ids of the source model, sorted): rows of the
            embedding and the LM head, for a model tailored to a task's text (see
            `tailored_hf.structure.vocabulary`); the tokenizer is trimmed to match with `trim_tokenizer`. `None`
            keeps the whole vocabulary.
    """

    source: ModelGeometry
    layers: list[LayerPlan]
    hidden: list[int]
    removed_layers: list[int] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: list[int] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def dense(cls, model_or_config: Any) -> PruningPlan:
        """The identity plan (keeps everything)."""
        geometry = _geometry(model_or_config)
        layers = [
            LayerPlan(list(range(g.num_heads)), list(range(g.num_kv_heads)), list(range(g.intermediate_size)))
            for g in geometry.layers
        ]
        return cls(source=geometry, layers=layers, hidden=list(range(geometry.hidden_size)))

    @classmethod
    def from_masks(
        cls,
        model_or_config: Any,
        heads: Mapping[int, torch.Tensor] | None = None,
        ffn: Mapping[int, torch.Tensor] | None = None,
        hidden: torch.Tensor | None = None,
        layers: torch.Tensor | None = None,
        threshold: float = 0.5,
        qk_pairs: Mapping[int, torch.Tensor] | None = None,
        v_dims: Mapping[int, torch.Tensor] | None = None,
    ) -> PruningPlan:
        """Build a plan from 0/1 (or probability) masks: a unit is kept where its mask is above `threshold`.

        Query-head masks decide the KV heads too: a KV head is kept when any of its query heads is. `qk_pairs`
        masks have one entry per rotate-half pair (`qk_dim // 2`), `v_dims` masks one per value dim (`v_dim`);
        both apply to every head of the layer.
        """
        plan = cls.dense(model_or_config)
        for index, mask in (heads or {}).items():
            geo = plan.source.layers[index]
            kept = _kept(mask, geo.num_heads, f"heads[{index}]", threshold)
            plan.layers[index].heads = kept
            plan.layers[index].kv_heads = sorted({h // geo.heads_per_group for h in kept})
        for index, mask in (ffn or {}).items():
            plan.layers[index].ffn = _kept(
                mask, plan.source.layers[index].intermediate_size, f"ffn[{index}]", threshold
            )
        for index, mask in (qk_pairs or {}).items():
            kept = _kept(mask, plan.source.layers[index].num_rotary_pairs, f"qk_pairs[{index}]", threshold)
            plan.layers[index].qk_pairs = kept
        for index, mask in (v_dims or {}).items():
            plan.layers[index].v_dims = _kept(mask, plan.source.layers[index].v_dim, f"v_dims[{index}]", threshold)
        if hidden is not None:
            plan.hidden = _kept(hidden, plan.source.hidden_size, "hidden", threshold)
        if layers is not None:
            keep = set(_kept(layers, plan.source.num_layers, "layers", threshold))
            plan.removed_layers = [i for i in range(plan.source.num_layers) if i not in keep]
        return plan

    @classmethod
    def from_scores(
        cls,
        model_or_config: Any,
        ffn: Mapping[int, tuple[torch.Tensor, int]] | None = None,
        kv_groups: Mapping[int, tuple[torch.Tensor, int]] | None = None,
        heads_per_group: Mapping[int, tuple[torch.Tensor, int]] | None = None,
        hidden: tuple[torch.Tensor, int] | None = None,
    ) -> PruningPlan:
        """Build a plan by keeping the highest-scoring units.

        Each argument maps a layer index to `(scores, number_to_keep)`:
        `ffn` scores channels, `kv_groups` scores whole KV groups (a group = one KV head and its query heads),
        `heads_per_group` scores query heads and keeps `number_to_keep` of them *inside every kept group* (GQA needs
        the same count per group). `hidden` is `(scores, number_to_keep)` for the residual stream.
        """
        plan = cls.dense(model_or_config)
        for index, (scores, keep) in (ffn or {}).items():
            plan.layers[index].ffn = top_indices(scores, keep)
        for index, (scores, keep) in (kv_groups or {}).items():
            geo = plan.source.layers[index]
            groups = top_indices(scores, keep)
            plan.layers[index].kv_heads = groups
            plan.layers[index].heads = [
                g * geo.heads_per_group + j for g in groups for j in range(geo.heads_per_group)
            ]
        for index, (scores, keep) in (heads_per_group or {}).items():
            geo = plan.source.layers[index]
            per_group = scores.reshape(geo.num_kv_heads, geo.heads_per_group)
            heads = []
            for group in plan.layers[index].kv_heads:
                heads.extend(group * geo.heads_per_group + j for j in top_indices(per_group[group], keep))
            plan.layers[index].heads = sorted(heads)
        if hidden is not None:
            plan.hidden = top_indices(hidden[0], hidden[1])
        return plan

    # ------------------------------------------------------------------ queries
    @property
    def kept_layers(self) -> list[int]:
        removed = set(self.removed_layers)
        return [i for i in range(self.source.num_layers) if i not in removed]

    def pruned_geometry(self) -> ModelGeometry:
        """Sizes of the model after the plan is applied."""
        layers = []
        for index in self.kept_layers:
            layer, geo = self.layers[index], self.source.layers[index]
            rotary = geo.rotary_indices
            if layer.qk_pairs is not None:
                source_rotary = geo.rotary_index_list
                rotary = tuple(source_rotary[j] for j in layer.qk_pairs)
            v_dim = geo.v_head_dim if layer.v_dims is None else len(layer.v_dims)
            layers.append(
                LayerGeometry(
                    len(layer.heads),
                    len(layer.kv_heads),
                    geo.head_dim,
                    len(layer.ffn),
                    v_head_dim=v_dim,
                    rotary_indices=rotary,
                )
            )
        vocab = self.source.vocab_size if self.tokens is None else len(self.tokens)
        return replace(self.source, hidden_size=len(self.hidden), vocab_size=vocab, layers=tuple(layers))

    @property
    def prunes_vocabulary(self) -> bool:
        """Whether the plan drops vocabulary rows."""
        return self.tokens is not None and len(self.tokens) != self.source.vocab_size

    def num_parameters(self) -> dict[str, int | float]:
        """`{"dense", "pruned", "removed", "sparsity"}` counted from the geometry (exact for the sliced model)."""
        dense = self.source.num_parameters()
        pruned = self.pruned_geometry().num_parameters()
        return {"dense": dense, "pruned": pruned, "removed": dense - pruned, "sparsity": 1.0 - pruned / dense}

    @property
    def is_identity(self) -> bool:
        return self.pruned_geometry() == self.source

    def per_layer_sizes(self) -> list[dict[str, int]]:
        """One row per source layer: kept heads, KV heads, FFN channels (0 for removed layers)."""
        removed = set(self.removed_layers)
        rows = [
            {
                "layer": i,
                "heads": 0 if i in removed else len(lp.heads),
                "kv_heads": 0 if i in removed else len(lp.kv_heads),
                "ffn": 0 if i in removed else len(lp.ffn),
                "source_heads": self.source.layers[i].num_heads,
                "source_kv_heads": self.source.layers[i].num_kv_heads,
                "source_ffn": self.source.layers[i].intermediate_size,
            }
            for i, lp in enumerate(self.layers)
        ]
        if self.prunes_head_dims or any(g.has_pruned_head_dims for g in self.source.layers):
            for row, lp, geo in zip(rows, self.layers, self.source.layers):
                gone = row["layer"] in removed
                row["qk_head_dim"] = 0 if gone else (geo.qk_dim if lp.qk_pairs is None else 2 * len(lp.qk_pairs))
                row["v_head_dim"] = 0 if gone else (geo.v_dim if lp.v_dims is None else len(lp.v_dims))
                row["source_qk_head_dim"], row["source_v_head_dim"] = geo.qk_dim, geo.v_dim
        return rows

    @property
    def prunes_head_dims(self) -> bool:
        """Whether any layer prunes query/key pairs or value dims inside its heads."""
        return any(lp.qk_pairs is not None or lp.v_dims is not None for lp in self.layers)

    # ------------------------------------------------------------------ validation
    def validate(self, model_or_config: Any | None = None) -> None:
        """Raise `PlanError` unless the plan is applicable (to `model_or_config`, when given)."""
        src = self.source
        if model_or_config is not None:
            target = _geometry(model_or_config)
            if target != src:
                raise PlanError(
                    "This plan was made for a different model: plan source "
                    f"(type={src.model_type}, hidden={src.hidden_size}, layers={src.num_layers}) vs model "
                    f"(type={target.model_type}, hidden={target.hidden_size}, layers={target.num_layers}"
                    + (
                        ""
                        if target.layers == src.layers or target.num_layers != src.num_layers
                        else ", layer sizes differ"
                    )
                    + "). Build the plan from this model (e.g. `PruningPlan.dense(model)`)."
                )
        if len(self.layers) != src.num_layers:
            raise PlanError(f"The plan lists {len(self.layers)} layers but the model has {src.num_layers}.")
        _check_indices(self.hidden, src.hidden_size, "hidden")
        if self.tokens is not None:
            _check_indices(self.tokens, src.vocab_size, "tokens")
        _check_indices(self.removed_layers, src.num_layers, "removed_layers", allow_empty=True)
        if len(self.removed_layers) >= src.num_layers:
            raise PlanError("The plan removes every decoder layer; keep at least one.")
        removed = set(self.removed_layers)
        for i, (layer, geo) in enumerate(zip(self.layers, src.layers)):
            if i in removed:
                continue
            _check_indices(layer.heads, geo.num_heads, f"layer {i} heads")
            _check_indices(layer.kv_heads, geo.num_kv_heads, f"layer {i} kv_heads")
            _check_indices(layer.ffn, geo.intermediate_size, f"layer {i} ffn")
            if layer.qk_pairs is not None:
                _check_indices(layer.qk_pairs, geo.num_rotary_pairs, f"layer {i} qk_pairs (rotate-half pairs)")
            if layer.v_dims is not None:
                _check_indices(layer.v_dims, geo.v_dim, f"layer {i} v_dims")
            _check_gqa(layer, geo, i)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "source": self.source.to_dict(),
            "hidden": list(self.hidden),
            "removed_layers": list(self.removed_layers),
            "layers": [lp.to_dict() for lp in self.layers],
            **({} if self.tokens is None else {"tokens": list(self.tokens)}),
            "summary": {"parameters": self.num_parameters(), "per_layer": self.per_layer_sizes()},
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            raise PlanError(f"Unsupported pruning plan format_version {version!r}; expected {PLAN_FORMAT_VERSION}.")
        src = dict(data["source"])
        src["layers"] = tuple(LayerGeometry(**layer) for layer in src["layers"])
        return cls(
            source=ModelGeometry(**src),
            layers=[LayerPlan.from_dict(lp) for lp in data["layers"]],
            hidden=list(data["hidden"]),
            removed_layers=list(data.get("removed_layers", [])),
            metadata=dict(data.get("metadata", {})),
            tokens=None if data.get("tokens") is None else list(data["tokens"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan atomically; `path` may be a directory (then `pruning_plan.json` inside it)."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        return cls.from_dict(json.loads(path.read_text()))


def top_indices(scores: torch.Tensor | Sequence[float], keep: int) -> list[int]:
    """Sorted indices of the `keep` highest scores (ties broken by lower index, deterministically)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if not 0 < keep <= scores.numel():
        raise PlanError(f"Cannot keep {keep} of {scores.numel()} units: keep at least 1 and at most all of them.")
    if torch.isnan(scores).any():
        raise PlanError("Importance scores contain NaN; refusing to build a plan from them.")
    order = torch.sort(scores, descending=True, stable=True).indices  # a stable sort keeps ties in index order
    return sorted(order[:keep].tolist())


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _geometry(model_or_config: Any) -> ModelGeometry:
    if isinstance(model_or_config, ModelGeometry):
        return model_or_config
    if isinstance(model_or_config, PretrainedConfig):
        return ModelGeometry.from_config(model_or_config)
    from ..arch import unwrap_model

    return ModelGeometry.from_config(unwrap_model(model_or_config).config)


def _kept(mask: torch.Tensor, size: int, name: str, threshold: float) -> list[int]:
    mask = torch.as_tensor(mask).detach().flatten().float()
    if mask.numel() != size:
        raise PlanError(f"Mask {name} has {mask.numel()} entries; expected {size}.")
    return torch.nonzero(mask > threshold).flatten().tolist()


def _check_indices(indices: Sequence[int], size: int, name: str, allow_empty: bool = False) -> None:
    if not indices and not allow_empty:
        raise PlanError(
            f"The plan removes every unit of {name} (0 of {size} kept). Keep at least one, lower the pruning ratio, "
            "or remove the whole layer via `removed_layers`."
        )
    if any(not isinstance(i, int) or isinstance(i, bool) for i in indices):
        raise PlanError(f"{name}: indices must be integers.")
    bad = [i for i in indices if i < 0 or i >= size]
    if bad:
        raise PlanError(f"{name}: indices {bad[:5]} are out of range [0, {size}).")
    if len(set(indices)) != len(indices):
        raise PlanError(f"{name}: duplicate indices.")
    if list(indices) != sorted(indices):
        raise PlanError(f"{name}: indices must be sorted ascending.")


def _check_gqa(layer: LayerPlan, geo: LayerGeometry, index: int) -> None:
    per_group = geo.heads_per_group
    counts: dict[int, int] = {}
    for head in layer.heads:
        counts[head // per_group] = counts.get(head // per_group, 0) + 1
    orphaned = sorted(set(counts) - set(layer.kv_heads))
    if orphaned:
        raise PlanError(
            f"layer {index}: query heads are kept in KV groups {orphaned} whose KV head is removed; keep the KV head "
            "or remove all of its query heads."
        )
    empty = sorted(set(layer.kv_heads) - set(counts))
    if empty:
        raise PlanError(f"layer {index}: KV heads {empty} are kept but none of their query heads are.")
    if len(set(counts.values())) > 1:
        raise PlanError(
            f"layer {index}: GQA needs the same number of query heads in every kept KV group, got {counts}. "
            "Prune query heads evenly across groups (see `PruningPlan.from_scores(heads_per_group=...)`)."
        )
