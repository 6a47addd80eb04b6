"""Run-time structural masks applied with forward hooks (no forked modeling code).

Masks may be hard 0/1 tensors or soft, differentiable ones (L0 / ATP train through them). With hard masks the
masked model's logits equal those of the physically pruned model (`apply_plan`), which the tests check.

Where each mask acts:

* query heads of layer *i*: the input of `o_proj` (the concatenated head outputs), one value per head;
* FFN channels: the input of `down_proj`; a differentiable mask keeps `act_fn(gate_proj(x))` and `up_proj(x)` for
  its gradient (saved by the stock product anyway), not the product itself (`_GatedProductMask`);
* hidden channels: the residual stream (embedding output, `o_proj` / `down_proj` outputs) and every RMSNorm,
  which then normalises over the *kept* channels only, exactly as the sliced norm would;
* whole layers: the decoder layer's output becomes `x + z * (layer(x) - x)`;
* query/key rotate-half pairs of layer *i* (`set_qk_pairs`, one value per pair, shared by every query and key
  head): the outputs of `q_proj` and `k_proj`, both dims `(p, p + qk_dim // 2)` of pair `p` in every head, so the
  rotated query/key are zero there too and RoPE stays exact;
* value dims of layer *i* (`set_v_dims`, one value per dim, shared by every value head): the output of `v_proj`,
  hence the matching per-head input columns of `o_proj`.

Install masks *after* wrapping a model with PEFT so that LoRA branches are masked too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import arch as A
from .geometry import ModelGeometry
from .plan import PruningPlan

MaskProvider = Callable[["RuntimeMasks"], None]


class RuntimeMasks:
    """Holds mask tensors per unit type and applies them through hooks while attached.

    Args:
        model: a LLaMA-family causal LM, plain or PEFT-wrapped.
        provider: optional callback run before every model forward; it may refresh the masks (for instance
            draw a new hard-concrete sample). Gradients flow into whatever tensors it sets.
    """

    def __init__(self, model: nn.Module, provider: MaskProvider | None = None) -> None:
        self.model = model
        self.lm = A.unwrap_model(model)
        self.arch = A.get_arch(self.lm)
        self.geometry = ModelGeometry.from_config(self.lm.config)
        self.provider = provider
        self.heads: dict[int, torch.Tensor] = {}
        self.ffn: dict[int, torch.Tensor] = {}
        self.hidden: torch.Tensor | None = None
        self.hidden_grad_support: torch.Tensor | None = None
        self.layers: torch.Tensor | None = None
        self.qk_pairs: dict[int, torch.Tensor] = {}
        self.v_dims: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        # Per layer, this forward's `act_fn(gate_proj(x))` and `up_proj(x)`, held only while a soft FFN mask trains.
        self._ffn_factors: dict[int, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ values
    def set_heads(self, layer: int, mask: torch.Tensor | None) -> None:
        self._set(self.heads, layer, mask, self.geometry.layers[layer].num_heads, "heads")

    def set_ffn(self, layer: int, mask: torch.Tensor | None) -> None:
        self._set(self.ffn, layer, mask, self.geometry.layers[layer].intermediate_size, "ffn")

    def set_qk_pairs(self, layer: int, mask: torch.Tensor | None) -> None:
        """Mask rotate-half query/key pairs of `layer` (`qk_dim // 2` entries, shared by all its heads)."""
        self._set(self.qk_pairs, layer, mask, self.geometry.layers[layer].num_rotary_pairs, "qk_pairs")

    def set_v_dims(self, layer: int, mask: torch.Tensor | None) -> None:
        """Mask value dims of `layer` (`v_dim` entries, shared by all its value heads)."""
        self._set(self.v_dims, layer, mask, self.geometry.layers[layer].v_dim, "v_dims")

    def set_hidden(self, mask: torch.Tensor | None, grad_support: torch.Tensor | None = None) -> None:
        """Mask hidden channels. `grad_support`: the indices of the channels where `mask`'s gradient can be non-zero
        (for a hard-concrete sample, the gates strictly between 0 and 1: the clamp passes no gradient elsewhere);
        the residual-stream hooks then keep only those channels of each masked output for backward instead of the
        whole output. None: every channel."""
        _check_size(mask, self.geometry.hidden_size, "hidden")
        self.hidden = mask
        self.hidden_grad_support = None if mask is None else grad_support

    def set_layers(self, mask: torch.Tensor | None) -> None:
        _check_size(mask, self.geometry.num_layers, "layers")
        self.layers = mask

    def clear(self) -> None:
        self.heads.clear()
        self.ffn.clear()
        self.qk_pairs.clear()
        self.v_dims.clear()
        self.hidden = None
        self.hidden_grad_support = None
        self.layers = None

    def set_from_plan(self, plan: PruningPlan) -> None:
        """Hard 0/1 masks equivalent to `plan` (removed KV groups are expressed through their query heads)."""
        plan.validate(self.lm)
        self.clear()
        for index, layer_plan in enumerate(plan.layers):
            geo = self.geometry.layers[index]
            if len(layer_plan.heads) != geo.num_heads:
                self.set_heads(index, _indicator(layer_plan.heads, geo.num_heads))
            if len(layer_plan.ffn) != geo.intermediate_size:
                self.set_ffn(index, _indicator(layer_plan.ffn, geo.intermediate_size))
            if layer_plan.qk_pairs is not None and len(layer_plan.qk_pairs) != geo.num_rotary_pairs:
                self.set_qk_pairs(index, _indicator(layer_plan.qk_pairs, geo.num_rotary_pairs))
            if layer_plan.v_dims is not None and len(layer_plan.v_dims) != geo.v_dim:
                self.set_v_dims(index, _indicator(layer_plan.v_dims, geo.v_dim))
        if len(plan.hidden) != self.geometry.hidden_size:
            self.set_hidden(_indicator(plan.hidden, self.geometry.hidden_size))
        if plan.removed_layers:
            keep = [i for i in range(self.geometry.num_layers) if i not in set(plan.removed_layers)]
            self.set_layers(_indicator(keep, self.geometry.num_layers))

    @staticmethod
    def _set(store: dict[int, torch.Tensor], layer: int, mask: torch.Tensor | None, size: int, name: str) -> None:
        if mask is None:
            store.pop(layer, None)
            return
        _check_size(mask, size, f"{name}[{layer}]")
        store[layer] = mask

    # ------------------------------------------------------------------ hooks
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> RuntimeMasks:
        """Register the hooks (idempotent)."""
        if self.attached:
            return self
        arch, register = self.arch, self._handles.append
        register(self.lm.register_forward_pre_hook(self._run_provider))
        register(A.embedding(self.lm).register_forward_hook(self._mask_hidden_output))
        for index, layer in enumerate(A.decoder_layers(self.lm)):
            attn, mlp = A.attention(layer, arch), A.mlp(layer, arch)
            o_proj, down_proj = getattr(attn, arch.o_proj), getattr(mlp, arch.down_proj)
            geo = self.geometry.layers[index]
            register(o_proj.register_forward_pre_hook(self._head_hook(index, geo.v_dim)))
            for name in (arch.q_proj, arch.k_proj):
                register(
                    getattr(attn, name).register_forward_hook(self._dim_hook(self.qk_pairs, index, geo.qk_dim, True))
                )
            register(
                getattr(attn, arch.v_proj).register_forward_hook(self._dim_hook(self.v_dims, index, geo.v_dim, False))
            )
            register(o_proj.register_forward_hook(self._mask_hidden_output))
            register(down_proj.register_forward_pre_hook(self._ffn_hook(index)))
            for name in ("act", "up"):
                factor = getattr(mlp, arch.act_fn if name == "act" else arch.up_proj, None)
                if isinstance(factor, nn.Module):
                    register(factor.register_forward_hook(self._ffn_factor_hook(index, name)))
            register(down_proj.register_forward_hook(self._mask_hidden_output))
            for norm in A.layer_norms(layer, arch):
                register(norm.register_forward_hook(self._norm_hook))
            register(layer.register_forward_hook(self._layer_hook(index), with_kwargs=True))
        register(A.final_norm(self.lm).register_forward_hook(self._norm_hook))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ffn_factors.clear()

    def __enter__(self) -> RuntimeMasks:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _run_provider(self, module: nn.Module, args: Any) -> None:
        self._ffn_factors.clear()  # nothing from an interrupted earlier forward survives into this one
        if self.provider is not None:
            self.provider(self)

    def _head_hook(self, index: int, head_dim: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            mask = self.heads.get(index)
            if mask is None:
                return None
            x = args[0]
            scale = mask.to(device=x.device, dtype=x.dtype).repeat_interleave(head_dim)
            return (x * scale, *args[1:])

        return hook

    @staticmethod
    def _dim_hook(store: dict[int, torch.Tensor], index: int, width: int, pairs: bool) -> Callable:
        """Scale every head's dims of a q/k/v projection output by the layer's per-dim mask."""

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            mask = store.get(index)
            if mask is None:
                return None
            mask = mask.to(device=output.device, dtype=output.dtype)
            if pairs:  # rotate-half pairs -> both dims (p, p + width // 2) of each pair
                mask = torch.cat([mask, mask])
            return output * mask.repeat(output.shape[-1] // width)

        return hook

    def _ffn_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            mask, factors = self.ffn.get(index), self._ffn_factors.pop(index, None)
            if mask is None:
                return None
            x = args[0]
            mask = mask.to(device=x.device, dtype=x.dtype)
            if factors is not None and len(factors) == 2 and _is_product_of(x, factors["act"], factors["up"]):
                return (_GatedProductMask.apply(x, mask, factors["act"].detach(), factors["up"].detach()), *args[1:])
            return (x * mask, *args[1:])

        return hook

    def _ffn_factor_hook(self, index: int, name: str) -> Callable:
        """Remember `act_fn` / `up_proj` outputs of layer `index` while its FFN mask is being trained."""

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            mask = self.ffn.get(index)
            if mask is not None and mask.requires_grad and torch.is_grad_enabled() and torch.is_tensor(output):
                self._ffn_factors.setdefault(index, {})[name] = output

        return hook

    def _mask_hidden_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self.hidden is None:
            return None
        mask, support = self.hidden.to(device=output.device, dtype=output.dtype), self.hidden_grad_support
        if support is not None and torch.is_grad_enabled() and mask.requires_grad:
            return _SupportedChannelMask.apply(output, mask, support.to(output.device))
        return output * mask

    def _norm_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Recompute RMSNorm over the kept channels (the sliced norm's statistics), then mask.

        When gradients flow, `_MaskedRMSNorm` keeps only the norm's input and one variance per token (as the stock
        norm does) and differentiates analytically: this hook runs at every RMSNorm of the model on every training
        step of a soft hidden-dim mask, so neither stored intermediates nor a recomputation are affordable. The
        result is written into the storage of the stock output (discarded otherwise), so the masked forward makes the
        stock forward's large allocations in the stock order: an extra live buffer per norm fragments glibc's heap."""
        if self.hidden is None:
            return None
        x, mask, eps = args[0], self.hidden.to(device=args[0].device), _norm_eps(module)
        tensors = (x, module.weight, mask)
        buffer = output.detach() if _is_fresh_like(output, x) else None
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _MaskedRMSNorm.apply(*tensors, eps, buffer)
        return _masked_rms_norm(*tensors, eps, buffer)[0]

    def _layer_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if self.layers is None:
                return None
            x = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            gate = self.layers[index].to(device=out.device, dtype=out.dtype)
            mixed = x + gate * (out - x)
            return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

        return hook


class _GatedProductMask(torch.autograd.Function):
    """`x * mask` where `x = act * up` (the FFN's gated product): the backward needs `x` for the mask's gradient, so
    the plain product would keep a `[tokens, intermediate]` tensor more; this keeps `act` and `up` instead, which
    the stock `act * up` saves for its own backward (same storages, no extra bytes), and recomputes `x` there."""

    @staticmethod
    def forward(ctx, x, mask, act, up):  # noqa: D102
        ctx.save_for_backward(mask, act, up)
        return _scaled_in_place(ctx, x, mask)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        mask, act, up = ctx.saved_tensors
        grad_x = grad * mask if ctx.needs_input_grad[0] else None
        grad_mask = (grad * (act * up)).sum_to_size(mask.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_mask, None, None


class _SupportedChannelMask(torch.autograd.Function):
    """`x * mask` over the last dim whose mask gradient is formed on the channels `support` only: it keeps
    `x[..., support]` for backward instead of `x` (the gradient is zero on the other channels)."""

    @staticmethod
    def forward(ctx, x, mask, support):  # noqa: D102
        kept = x.index_select(-1, support) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(kept, mask, support)
        return _scaled_in_place(ctx, x, mask)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        kept, mask, support = ctx.saved_tensors
        grad_x = grad * mask if ctx.needs_input_grad[0] else None
        grad_mask = None
        if ctx.needs_input_grad[1]:
            per_channel = (grad.index_select(-1, support) * kept).sum(dim=tuple(range(grad.dim() - 1)))
            grad_mask = torch.zeros_like(mask).index_copy_(0, support, per_channel.to(mask.dtype))
        return grad_x, grad_mask, None


def _scaled_in_place(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x * mask`, written over `x` when `x` is a fresh intermediate (neither a leaf that requires grad nor a view):
    the masked module output then takes the storage of the unmasked one. Besides saving a `[tokens, width]` buffer,
    this keeps the allocation order of the stock forward, which is what keeps glibc's heap from fragmenting (an extra
    live temporary per layer leaves a hole below every activation allocated after it). Backward never needs the
    unmasked `x` here; a module that saved its own output would make autograd raise, not compute a wrong gradient."""
    if x._base is not None or (x.requires_grad and x.grad_fn is None) or not x.is_floating_point():
        return x * mask
    ctx.mark_dirty(x)
    return x.mul_(mask)


def _is_product_of(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether autograd recorded `x` as the elementwise product of `a` and `b` (so `x` can be recomputed from them)."""
    node = x.grad_fn
    if node is None or node.name() != "MulBackward0" or not (x.shape == a.shape == b.shape):
        return False
    parents = [fn for fn, _ in node.next_functions]  # held, so that `a.grad_fn` returns these very node objects
    return a.grad_fn is not None and b.grad_fn is not None and {id(a.grad_fn), id(b.grad_fn)} == set(map(id, parents))


def masked_rms_norm(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of `x` over the channels kept by (a possibly soft) `mask`, scaled by `weight` and masked: what the
    norm sliced to the kept channels computes, zero elsewhere."""
    return _masked_rms_norm(x, weight, mask, eps)[0]


def _masked_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_rms_norm` and the per-token variance it normalised with (in fp32, or fp64 for fp64 inputs); written
    into `out` (a buffer shaped and typed like `x`, not recorded by autograd) when given."""
    compute = torch.promote_types(x.dtype, torch.float32)
    maskf = mask.to(compute)
    xf = x.to(compute)
    variance = (xf.square() @ maskf).unsqueeze(-1) / maskf.sum().clamp_min(1.0)
    rstd, scale = torch.rsqrt(variance + eps), weight * mask.to(x.dtype)
    if out is not None:
        return torch.mul(xf, rstd, out=out).mul_(scale), variance
    normed = (xf * rstd).to(x.dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, mask)):
        return normed * scale, variance
    return normed.mul_(scale), variance  # in place: one [tokens, hidden] temporary fewer


def _is_fresh_like(output: Any, x: torch.Tensor) -> bool:
    """Whether `output` is a standalone tensor shaped and typed like `x` that does not share `x`'s storage."""
    return (
        torch.is_tensor(output)
        and output._base is None
        and output.is_contiguous()
        and output.shape == x.shape
        and output.dtype == x.dtype
        and output.device == x.device
        and output.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    )


class _MaskedRMSNorm(torch.autograd.Function):
    """`masked_rms_norm` with an analytic backward that saves the input and one fp32 variance per token.

    With n = x r, r = (v + eps)^-1/2, v = sum_c x_c^2 m_c / S, S = max(sum_c m_c, 1) and y = w n m:
    dL/dw = sum_tokens g n m; dL/dx = g w m r + (dL/dv) 2 x m / S with dL/dv = -r^3 / 2 sum_c g_c w_c m_c x_c;
    dL/dm_c = sum_tokens (g_c w_c n_c + dL/dv x_c^2 / S) - [S > 1] sum_tokens dL/dv v / S.
    """

    @staticmethod
    def forward(ctx, x, weight, mask, eps, out=None):  # noqa: D102
        if out is not None:
            ctx.mark_dirty(out)
        out, variance = _masked_rms_norm(x, weight, mask, eps, out)
        ctx.save_for_backward(x, weight, mask, variance)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight, mask, variance = ctx.saved_tensors
        need_x, need_weight, need_mask = ctx.needs_input_grad[:3]
        compute = variance.dtype
        maskf, xf, g = mask.to(compute), x.to(compute), grad.to(compute)
        raw_sum = maskf.sum()
        total = raw_sum.clamp_min(1.0)
        rstd = torch.rsqrt(variance + ctx.eps)
        normed = (xf * rstd).to(x.dtype).to(compute)  # the forward's rounding in low precision
        width = x.shape[-1]
        grad_x = grad_weight = grad_mask = None
        if need_weight:
            grad_weight = (g * normed * maskf).reshape(-1, width).sum(0).to(weight.dtype)
        if need_x or need_mask:
            g_normed = g * (weight.to(compute) * maskf)
            grad_variance = (g_normed * xf).sum(-1, keepdim=True) * (-0.5 * rstd.pow(3))
        if need_x:
            grad_x = (g_normed * rstd + grad_variance * (2.0 / total) * xf * maskf).to(x.dtype)
        if need_mask:
            per_channel = (g * normed).reshape(-1, width).sum(0) * weight.to(compute)
            per_channel = per_channel + (grad_variance * xf.pow(2)).reshape(-1, width).sum(0) / total
            through_sum = -(grad_variance * variance).sum() / total * (raw_sum >= 1.0).to(compute)
            grad_mask = (per_channel + through_sum).to(mask.dtype)
        return grad_x, grad_weight, grad_mask, None, None


def _norm_eps(module: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if hasattr(module, name):
            return float(getattr(module, name))
    raise A.UnsupportedArchitectureError(f"Cannot find the epsilon of norm {type(module).__name__}.")


def _indicator(kept: list[int], size: int) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[kept] = 1.0
    return mask


def _check_size(mask: torch.Tensor | None, size: int, name: str) -> None:
    if mask is not None and mask.numel() != size:
        raise ValueError(f"Mask {name} has {mask.numel()} entries; expected {size}.")
