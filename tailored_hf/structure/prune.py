"""`apply_plan`: physically slice a LLaMA-family model (and its LoRA adapters) to a `PruningPlan`.

Supported moments to prune during training:

* before the optimizer exists (e.g. `TrainerCallback.on_init_end`, as the dependency-group method does): nothing
  else holds the old parameters;
* after training (`on_train_end`, as the L0 and ATP methods do) when no further optimizer step happens;
* anywhere else only by passing the live `optimizer=`: its parameter groups and per-parameter state (Adam's
  moments, ...) are sliced with the same indices, so it never keeps stale or wrongly shaped tensors. Parameters
  that did not change keep their state untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import arch as A
from .geometry import LayerGeometry, ModelGeometry
from .plan import LayerPlan, PlanError, PruningPlan
from .vocabulary import new_token_id, remap_special_token_ids

logger = logging.getLogger(__name__)

PLAN_ATTRIBUTE = "tailored_hf_plan"


@dataclass
class _Replacement:
    old: nn.Parameter
    new: nn.Parameter
    slices: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    intermediates: list[nn.Parameter] = field(default_factory=list)


class _Slicer:
    """Replaces parameters by index-selected copies and remembers how, for the optimizer."""

    def __init__(self) -> None:
        self.replacements: dict[int, _Replacement] = {}

    def param(self, owner: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
        old = getattr(owner, name)
        if old is None:
            return
        if old.shape[dim] == index.numel() and torch.equal(index, torch.arange(index.numel())):
            return
        base = self.replacements.get(id(old))
        new = nn.Parameter(old.data.index_select(dim, index.to(old.device)).clone(), requires_grad=old.requires_grad)
        setattr(owner, name, new)
        if base is None:
            base = self.replacements[id(old)] = _Replacement(old, new, [(dim, index)])
        else:  # sliced again (rows then columns; hidden then vocabulary): one replacement of the original
            base.new, base.slices = new, [*base.slices, (dim, index)]
            base.intermediates.append(old)  # alive, so that its id is not reused while it is a key here
        self.replacements[id(new)] = base

    def linear(self, module: nn.Module, out_index: torch.Tensor | None, in_index: torch.Tensor | None) -> None:
        """Slice an `nn.Linear` or a PEFT LoRA layer wrapping one (base weight, bias, lora_A / lora_B)."""
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(module, "lora_A"):
            self.linear(base, out_index, in_index)
            if getattr(module, "lora_magnitude_vector", None):
                raise NotImplementedError("Pruning DoRA adapters is not supported; use plain LoRA (use_dora=False).")
            for lora_a in module.lora_A.values():
                self.linear(lora_a, None, in_index)
            for lora_b in module.lora_B.values():
                self.linear(lora_b, out_index, None)
            module.in_features, module.out_features = base.in_features, base.out_features
            return
        if not isinstance(module, nn.Linear):
            raise A.UnsupportedArchitectureError(f"Cannot slice a {type(module).__name__}; expected nn.Linear/LoRA.")
        if out_index is not None:
            self.param(module, "weight", 0, out_index)
            self.param(module, "bias", 0, out_index)
            module.out_features = out_index.numel()
        if in_index is not None:
            self.param(module, "weight", 1, in_index)
            module.in_features = in_index.numel()

    def embedding(self, module: nn.Module, hidden_index: torch.Tensor) -> None:
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(module, "lora_embedding_B"):
            self.embedding(base, hidden_index)
            for name, weight in list(module.lora_embedding_B.items()):
                module.lora_embedding_B[name] = self._sliced_standalone(weight, 0, hidden_index)
            return
        self.param(module, "weight", 1, hidden_index)
        module.embedding_dim = hidden_index.numel()

    def _sliced_standalone(self, old: nn.Parameter, dim: int, index: torch.Tensor) -> nn.Parameter:
        new = nn.Parameter(old.data.index_select(dim, index).clone(), requires_grad=old.requires_grad)
        self.replacements[id(old)] = _Replacement(old, new, [(dim, index)])
        return new

    def norm(self, module: nn.Module, hidden_index: torch.Tensor) -> None:
        self.param(module, "weight", 0, hidden_index)
        if getattr(module, "bias", None) is not None:
            self.param(module, "bias", 0, hidden_index)


def _expand(units: Sequence[int], width: int, dims: Sequence[int] | None = None) -> torch.Tensor:
    """Head indices -> row indices (`width` rows per head; only the kept `dims` of each head when given)."""
    units_t = torch.as_tensor(list(units), dtype=torch.long)
    inside = torch.arange(width) if dims is None else torch.as_tensor(list(dims), dtype=torch.long)
    return (units_t[:, None] * width + inside[None, :]).flatten()


def rotary_pair_dims(pairs: Sequence[int] | None, qk_dim: int) -> list[int] | None:
    """Kept rotate-half pairs -> kept query/key dims inside a head, in RoPE order `[pairs..., pairs + half...]`."""
    if pairs is None:
        return None
    half = qk_dim // 2
    return [int(i) for i in pairs] + [int(i) + half for i in pairs]


def _index(values: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long)


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    optimizer: torch.optim.Optimizer | None = None,
    config_format: str = "auto",
) -> nn.Module:
    """Physically prune `model` in place to `plan` and return it.

    Args:
        model: a LLaMA-family causal LM, plain or PEFT-wrapped (LoRA A/B are sliced and stay trainable).
        plan: the units to keep, validated against `model` first (`PlanError` on any mismatch).
        optimizer: pass the live optimizer when pruning mid-training; its state is sliced consistently.
        config_format: `"auto"` (stock config when every layer has the same size), `"stock"` or `"tailored"`.

    Returns:
        The same object, now smaller; its config describes the new sizes and `model.tailored_hf_plan` records the
        plan relative to the original model (plans compose when pruning twice).
    """
    from ..modeling import FAMILIES, pruned_config

    lm = A.unwrap_model(model)
    arch = A.get_arch(lm)
    plan.validate(lm)
    slicer = _Slicer()
    hidden = _index(plan.hidden)
    prune_hidden = len(plan.hidden) != plan.source.hidden_size

    layers = A.decoder_layers(lm)
    for index, layer in enumerate(layers):
        if index in set(plan.removed_layers):
            continue
        _prune_layer(slicer, layer, arch, plan.layers[index], plan.source.layers[index], hidden, prune_hidden)

    if prune_hidden:
        slicer.embedding(A.embedding(lm), hidden)
        slicer.norm(A.final_norm(lm), hidden)
        head = A.lm_head(lm)
        if A.is_tied(lm):
            _retie(lm)
        else:
            slicer.linear(head, None, hidden)
        for module in (A.decoder(lm), *layers):
            if hasattr(module, "hidden_size"):
                module.hidden_size = len(plan.hidden)

    if plan.removed_layers:
        _drop_layers(lm, arch, plan.kept_layers)

    if plan.prunes_vocabulary:
        _prune_vocabulary(slicer, lm, _index(plan.tokens))

    if optimizer is not None:
        _remap_optimizer(optimizer, slicer.replacements.values())

    new_geometry = plan.pruned_geometry()
    stock = {"auto": None, "stock": True, "tailored": False}.get(config_format)
    if config_format not in ("auto", "stock", "tailored"):
        raise ValueError(f"config_format must be 'auto', 'stock' or 'tailored', got {config_format!r}.")
    new_config = pruned_config(lm.config, new_geometry, plan.kept_layers, stock=stock)
    if plan.prunes_vocabulary:
        remap_special_token_ids(new_config, plan.tokens)
        if getattr(lm, "generation_config", None) is not None:
            remap_special_token_ids(lm.generation_config, plan.tokens)
    new_config._attn_implementation = lm.config._attn_implementation
    _swap_config(lm, new_config)
    _set_family_classes(lm, FAMILIES[arch.model_type], tailored=type(new_config) is FAMILIES[arch.model_type].config)
    _set_attention_head_dims(lm, arch, new_geometry)

    previous = getattr(lm, PLAN_ATTRIBUTE, None)
    setattr(lm, PLAN_ATTRIBUTE, compose_plans(previous, plan) if previous is not None else plan)
    if ModelGeometry.from_config(lm.config) != new_geometry:
        raise RuntimeError("Internal error: the pruned config does not match the plan's geometry.")
    return model


def _prune_layer(
    slicer: _Slicer,
    layer: nn.Module,
    arch: A.ArchSpec,
    layer_plan: LayerPlan,
    geo: LayerGeometry,
    hidden: torch.Tensor,
    prune_hidden: bool,
) -> None:
    attn, mlp = A.attention(layer, arch), A.mlp(layer, arch)
    in_hidden = hidden if prune_hidden else None
    qk_dims = rotary_pair_dims(layer_plan.qk_pairs, geo.qk_dim)
    q_rows = _expand(layer_plan.heads, geo.qk_dim, qk_dims)
    k_rows = _expand(layer_plan.kv_heads, geo.qk_dim, qk_dims)
    v_rows = _expand(layer_plan.kv_heads, geo.v_dim, layer_plan.v_dims)
    o_cols = _expand(layer_plan.heads, geo.v_dim, layer_plan.v_dims)
    slicer.linear(getattr(attn, arch.q_proj), q_rows, in_hidden)
    slicer.linear(getattr(attn, arch.k_proj), k_rows, in_hidden)
    slicer.linear(getattr(attn, arch.v_proj), v_rows, in_hidden)
    slicer.linear(getattr(attn, arch.o_proj), in_hidden, o_cols)
    if hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = len(layer_plan.heads) // len(layer_plan.kv_heads)
    for name in ("num_heads", "num_attention_heads"):
        if hasattr(attn, name):
            setattr(attn, name, len(layer_plan.heads))
    for name in ("num_key_value_heads",):
        if hasattr(attn, name):
            setattr(attn, name, len(layer_plan.kv_heads))
    ffn = _index(layer_plan.ffn)
    slicer.linear(getattr(mlp, arch.gate_proj), ffn, in_hidden)
    slicer.linear(getattr(mlp, arch.up_proj), ffn, in_hidden)
    slicer.linear(getattr(mlp, arch.down_proj), in_hidden, ffn)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(layer_plan.ffn)
    if prune_hidden:
        if hasattr(mlp, "hidden_size"):
            mlp.hidden_size = hidden.numel()
        for norm in A.layer_norms(layer, arch):
            slicer.norm(norm, hidden)


def _set_attention_head_dims(lm: nn.Module, arch: A.ArchSpec, geometry: ModelGeometry) -> None:
    """Give attention modules of layers with pruned head dims their per-layer widths and rotary frequencies."""
    from ..modeling.tailored import set_attention_head_dims

    for layer, geo in zip(A.decoder_layers(lm), geometry.layers):
        attn = A.attention(layer, arch)
        if geo.has_pruned_head_dims or getattr(attn, "tailored_head_dims", False):
            set_attention_head_dims(attn, arch.model_type, geo)


def _prune_vocabulary(slicer: _Slicer, lm: nn.Module, tokens: torch.Tensor) -> None:
    """Keep the rows of `tokens` in the input embedding and the LM head (re-tied when tied)."""
    embed = A.embedding(lm)
    base = getattr(embed, "base_layer", embed)
    if not isinstance(base, nn.Embedding):
        raise A.UnsupportedArchitectureError(f"Cannot prune the vocabulary of a {type(base).__name__} embedding.")
    slicer.param(base, "weight", 0, tokens)
    base.num_embeddings = tokens.numel()
    if base.padding_idx is not None:
        base.padding_idx = new_token_id(tokens.tolist(), base.padding_idx)
    for name, lora_a in list(getattr(embed, "lora_embedding_A", {}).items()):
        embed.lora_embedding_A[name] = slicer._sliced_standalone(lora_a, 1, tokens)
    head = A.lm_head(lm)
    if not A.is_tied(lm):
        slicer.linear(head, tokens, None)
        return
    _retie(lm)
    getattr(head, "base_layer", head).out_features = tokens.numel()
    for lora_b in getattr(head, "lora_B", {}).values():  # a LoRA on the tied head: its B rows are vocabulary rows
        slicer.linear(lora_b, tokens, None)
    if hasattr(head, "lora_B"):
        head.out_features = tokens.numel()


def _retie(lm: nn.Module) -> None:
    head, embed = A.lm_head(lm), A.embedding(lm)
    head_base = getattr(head, "base_layer", head)
    embed_base = getattr(embed, "base_layer", embed)
    head_base.weight = embed_base.weight
    head_base.in_features = embed_base.weight.shape[1]


def _drop_layers(lm: nn.Module, arch: A.ArchSpec, kept: list[int]) -> None:
    decoder = A.decoder(lm)
    old = getattr(decoder, arch.layers_attr)
    new = nn.ModuleList([old[i] for i in kept])
    for new_index, layer in enumerate(new):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    setattr(decoder, arch.layers_attr, new)


def _set_family_classes(lm: nn.Module, family, tailored: bool) -> None:
    """Stock classes for stock configs, tailored ones (same modules, per-layer sizes) otherwise.

    Only the family's own classes are swapped; a user subclass is left as it is.
    """
    decoder = A.decoder(lm)
    if type(lm) in (family.stock_causal_lm, family.causal_lm):
        lm.__class__ = family.causal_lm if tailored else family.stock_causal_lm
        _register_output_capture(lm)
    if type(decoder) in (family.stock_model, family.model):
        decoder.__class__ = family.model if tailored else family.stock_model
        _register_output_capture(decoder)


def _register_output_capture(module: nn.Module) -> None:
    """Registers `module`'s (new) class for transformers' output capture, as `PreTrainedModel.__init__` does for a
    built model: without it, a model whose class was swapped here returns `hidden_states=None` for
    `output_hidden_states=True` (and no attentions) until a model of that class is built in the process."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # a transformers without the registry records outputs without it
        return
    if not _CAN_RECORD_REGISTRY.get(module):
        _CAN_RECORD_REGISTRY[module] = getattr(module, "_can_record_outputs", None)


def _swap_config(lm: nn.Module, new_config) -> None:
    old_config = lm.config
    for module in lm.modules():
        if getattr(module, "config", None) is old_config:
            module.config = new_config
    lm.config = new_config


def _remap_optimizer(optimizer: torch.optim.Optimizer, replacements) -> None:
    by_old = {id(r.old): r for r in replacements}  # a parameter sliced twice is listed under both of its ids
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            replacement = by_old.get(id(param))
            if replacement is None:
                continue
            group["params"][i] = replacement.new
            state = optimizer.state.pop(param, None)
            if state is None:
                continue
            new_state = {}
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    for dim, index in replacement.slices:
                        value = value.index_select(dim, index.to(value.device))
                    value = value.clone()
                new_state[key] = value
            optimizer.state[replacement.new] = new_state


def compose_plans(first: PruningPlan, second: PruningPlan) -> PruningPlan:
    """The plan equivalent to applying `first` then `second` (whose indices refer to `first`'s result)."""
    if second.source != first.pruned_geometry():
        raise PlanError("Cannot compose plans: the second plan was not made for the first plan's result.")
    kept_first = first.kept_layers
    removed = set(first.removed_layers) | {kept_first[i] for i in second.removed_layers}
    layers = [LayerPlan.from_dict(lp.to_dict()) for lp in first.layers]
    for new_index, source_index in enumerate(kept_first):
        a, b = first.layers[source_index], second.layers[new_index]
        layers[source_index] = LayerPlan(
            heads=[a.heads[j] for j in b.heads],
            kv_heads=[a.kv_heads[j] for j in b.kv_heads],
            ffn=[a.ffn[j] for j in b.ffn],
            qk_pairs=_compose_optional(a.qk_pairs, b.qk_pairs),
            v_dims=_compose_optional(a.v_dims, b.v_dims),
        )
    metadata = {**first.metadata, **second.metadata}
    return PruningPlan(
        source=first.source,
        layers=layers,
        hidden=[first.hidden[j] for j in second.hidden],
        removed_layers=sorted(removed),
        metadata=metadata,
        tokens=_compose_optional(first.tokens, second.tokens),
    )


def _compose_optional(first: list[int] | None, second: list[int] | None) -> list[int] | None:
    """Compose kept-index lists where `None` means "all kept"."""
    if second is None:
        return None if first is None else list(first)
    return list(second) if first is None else [first[j] for j in second]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters of the (unwrapped) model; tied weights count once. LoRA weights excluded."""
    lm = A.unwrap_model(model)
    seen: set[int] = set()
    total = 0
    for name, param in lm.named_parameters(remove_duplicate=False):
        if id(param) in seen or "lora_" in name:
            continue
        if trainable_only and not param.requires_grad:
            continue
        seen.add(id(param))
        total += param.numel()
    return total
