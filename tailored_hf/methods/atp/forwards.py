"""ATP's LoRA-aware forwards, the LoRA group lasso and the parameter budget R(d).

With decisions `D` (0/1 per group) and a LoRA layer `X (W + W_a W_b)`:

* `f_G(X) = X (W + W_a W_b) D` (generator step): the whole layer's output is masked, LoRA included, so the
  generator sees the model that removal would produce;
* `f_L(X) = X (W D + W_a W_b)` (LoRA step): only the frozen base weight is masked; the LoRA branch stays dense and
  the group lasso drives its pruned rows / columns to zero, so removing the groups at the end changes little.

Output-side decisions act on q/k (`D_QK`, rotate-half pairs shared by every query and key head), v (`D_V`) and
gate/up (`D_GU`); input-side ones on o_proj (`D_V`, per head) and down_proj (`D_GU`). Under `f_G` the input side
needs no mask of its own (the masked outputs feeding it are already zero); under `f_L` the base o/down weights
see `D_prev`-masked inputs, i.e. `X (D_prev W + W_a W_b)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ... import arch as A
from ...structure import ModelGeometry
from .generator import LayerDecision

MODES = ("G", "L")
GROUP_LASSO_REDUCTIONS = ("sum", "mean")


def _pair_mask(qk: torch.Tensor) -> torch.Tensor:
    """Per-pair decisions -> per-dim mask of one head (`[p..., p + half...]` share pair `p`)."""
    return torch.cat([qk, qk])


def expanded_masks(decision: LayerDecision, num_heads: int, num_kv_heads: int) -> dict[str, torch.Tensor]:
    """Flat masks over projection rows (q/k/v/gate/up outputs) and columns (o/down inputs) of one layer."""
    masks: dict[str, torch.Tensor] = {}
    if decision.qk is not None:
        per_head = _pair_mask(decision.qk)
        masks["q_out"] = per_head.repeat(num_heads)
        masks["k_out"] = per_head.repeat(num_kv_heads)
    if decision.v is not None:
        masks["v_out"] = decision.v.repeat(num_kv_heads)
        masks["o_in"] = decision.v.repeat(num_heads)
    if decision.ffn is not None:
        masks["ffn"] = decision.ffn
    return masks


class ATPForwards:
    """Installs `f_G` / `f_L` on a (PEFT-wrapped or plain) LLaMA-family model through forward hooks.

    Args:
        model: the model the Trainer trains.

    Set `mode` to `"G"` or `"L"` and `decisions` to one `LayerDecision` per layer; `mode = None` disables the
    masking. Without LoRA on a projection, `f_L` masks that projection's own output/input (it equals `f_G`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.lm = A.unwrap_model(model)
        self.arch = A.get_arch(self.lm)
        self.geometry = ModelGeometry.from_config(self.lm.config)
        self.mode: str | None = None
        self.decisions: list[LayerDecision] | None = None
        self._handles: list[Any] = []
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ state
    def set(self, mode: str | None, decisions: list[LayerDecision] | None) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} or None, got {mode!r}.")
        if decisions is not None and len(decisions) != self.geometry.num_layers:
            raise ValueError(f"Expected {self.geometry.num_layers} layer decisions, got {len(decisions)}.")
        self.mode, self.decisions = mode, decisions
        self._cache.clear()

    def _masks(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._cache:
            geo = self.geometry.layers[index]
            self._cache[index] = expanded_masks(self.decisions[index], geo.num_heads, geo.num_kv_heads)
        return self._cache[index]

    # ------------------------------------------------------------------ hooks
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> ATPForwards:
        if self.attached:
            return self
        arch = self.arch
        for index, layer in enumerate(A.decoder_layers(self.lm)):
            attn, mlp = A.attention(layer, arch), A.mlp(layer, arch)
            outputs = [
                (getattr(attn, arch.q_proj), "q_out"),
                (getattr(attn, arch.k_proj), "k_out"),
                (getattr(attn, arch.v_proj), "v_out"),
                (getattr(mlp, arch.gate_proj), "ffn"),
                (getattr(mlp, arch.up_proj), "ffn"),
            ]
            inputs = [(getattr(attn, arch.o_proj), "o_in"), (getattr(mlp, arch.down_proj), "ffn")]
            for module, key in outputs:
                base = getattr(module, "base_layer", None)
                self._handles.append(module.register_forward_hook(self._output_hook(index, key, "G")))
                target = base if base is not None else module
                self._handles.append(target.register_forward_hook(self._output_hook(index, key, "L")))
            for module, key in inputs:
                base = getattr(module, "base_layer", None)
                target = base if base is not None else module
                self._handles.append(target.register_forward_pre_hook(self._input_hook(index, key, "L")))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ATPForwards:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _output_hook(self, index: int, key: str, *modes: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.mode not in modes or self.decisions is None:
                return None
            mask = self._masks(index).get(key)
            if mask is None:
                return None
            return output * mask.to(device=output.device, dtype=output.dtype)

        return hook

    def _input_hook(self, index: int, key: str, *modes: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if self.mode not in modes or self.decisions is None:
                return None
            mask = self._masks(index).get(key)
            if mask is None:
                return None
            x = args[0]
            return (x * mask.to(device=x.device, dtype=x.dtype), *args[1:])

        return hook


# ---------------------------------------------------------------------------------------------- group lasso
def lora_pairs(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(lora_A.weight [r, in], lora_B.weight [out, r])` of every active adapter of a PEFT LoRA layer."""
    if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
        return []
    active = getattr(module, "active_adapters", None) or list(module.lora_A.keys())
    return [(module.lora_A[name].weight, module.lora_B[name].weight) for name in active if name in module.lora_A]


def group_lasso(model: nn.Module, decisions: list[LayerDecision], reduction: str = "sum") -> torch.Tensor | None:
    """`sum ||(I - D_prev) W_a||_rows + ||W_b (I - D)||_cols` over every LoRA layer, with hard decisions `D`.

    Groups are the LoRA slices feeding pruned outputs (rows of `lora_B.weight` of q/k/v/gate/up) and the LoRA
    slices reading pruned inputs (columns of `lora_A.weight` of o/down). Kept groups get no gradient at all.
    `reduction="mean"` divides by the number of groups (pruned or not), so the term does not grow with the model.
    Returns `None` when the model has no LoRA layers.
    """
    if reduction not in GROUP_LASSO_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GROUP_LASSO_REDUCTIONS}, got {reduction!r}.")
    lm = A.unwrap_model(model)
    arch = A.get_arch(lm)
    geometry = ModelGeometry.from_config(lm.config)
    total: torch.Tensor | None = None
    groups = 0
    for index, layer in enumerate(A.decoder_layers(lm)):
        geo = geometry.layers[index]
        masks = expanded_masks(decisions[index], geo.num_heads, geo.num_kv_heads)
        attn, mlp = A.attention(layer, arch), A.mlp(layer, arch)
        sides = [
            (getattr(attn, arch.q_proj), "q_out", "out"),
            (getattr(attn, arch.k_proj), "k_out", "out"),
            (getattr(attn, arch.v_proj), "v_out", "out"),
            (getattr(mlp, arch.gate_proj), "ffn", "out"),
            (getattr(mlp, arch.up_proj), "ffn", "out"),
            (getattr(attn, arch.o_proj), "o_in", "in"),
            (getattr(mlp, arch.down_proj), "ffn", "in"),
        ]
        for module, key, side in sides:
            mask = masks.get(key)
            if mask is None:
                continue
            for lora_a, lora_b in lora_pairs(module):
                weight = lora_b if side == "out" else lora_a.T  # groups as rows
                pruned = (1.0 - mask.detach()).to(device=weight.device, dtype=weight.dtype)
                term = (torch.linalg.vector_norm(weight, dim=1) * pruned).sum()
                total = term if total is None else total + term
                groups += pruned.numel()
    if total is not None and reduction == "mean":
        total = total / groups
    return total


# ---------------------------------------------------------------------------------------------- R(d)
class ParameterBudget:
    """R(d): the parameters left by decisions `d`, linear in the number of kept groups (exact for 0/1 `d`).

    Args:
        geometry: the (source) model's sizes.
        scope: `"decoder"` (P = decoder-layer parameters, the paper's) or `"total"` (every parameter).
    """

    def __init__(self, geometry: ModelGeometry, scope: str) -> None:
        self.geometry = geometry
        self.scope = scope
        hidden = geometry.hidden_size
        decoder = sum(geometry.layer_params(i) for i in range(geometry.num_layers))
        self.total = float(decoder if scope == "decoder" else geometry.num_parameters())
        qkv_bias = 1 if geometry.qkv_bias else 0
        self.per_group: list[dict[str, float]] = []
        for geo in geometry.layers:
            self.per_group.append(
                {
                    # one rotate-half pair = 2 dims in every q and k head (rows + biases)
                    "qk": 2.0 * (geo.num_heads + geo.num_kv_heads) * (hidden + qkv_bias),
                    # one value dim = a row in every v head and a column of o_proj in every q head
                    "v": geo.num_kv_heads * (hidden + qkv_bias) + geo.num_heads * hidden,
                    "ffn": 3.0 * hidden + (2 if geometry.mlp_bias else 0),
                }
            )

    def removed(self, decisions: list[LayerDecision]) -> torch.Tensor:
        """Parameters removed by `decisions` (differentiable in them)."""
        total = None
        for costs, decision in zip(self.per_group, decisions):
            for kind in ("qk", "v", "ffn"):
                d = decision.get(kind)
                if d is None:
                    continue
                term = (d.numel() - d.sum()) * costs[kind]
                total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def remaining_ratio(self, decisions: list[LayerDecision]) -> torch.Tensor:
        """R(d) / P."""
        return 1.0 - self.removed(decisions) / self.total

    def minimum_ratio(self, minimums: dict[str, int], lengths: list[dict[str, int]]) -> float:
        """The smallest R / P reachable with every decision at its configured minimum."""
        removed = 0.0
        for costs, row in zip(self.per_group, lengths):
            for kind, length in row.items():
                removed += (length - min(minimums[kind], length)) * costs[kind]
        return 1.0 - removed / self.total


def sparsity_loss(ratio: torch.Tensor, target: float) -> torch.Tensor:
    """`L_s = log(max(R/P, r) / min(R/P, r))`: zero exactly at the target remaining ratio `r`."""
    target_t = torch.as_tensor(target, dtype=ratio.dtype, device=ratio.device)
    return torch.log(torch.maximum(ratio, target_t) / torch.minimum(ratio, target_t))
