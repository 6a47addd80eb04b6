"""The learnable L0 masks of one model and the expected parameter count s_hat they imply.

`L0Masks` owns one `log_alpha` vector per unit group (query heads and FFN channels of every layer, hidden dimensions,
whole layers). It is an `nn.Module` of its own: its parameters are never registered on the model, so the Trainer's
optimizer does not see them; `L0Pruner` steps them with its own optimizer.

`expected_parameters` is NutePrune's Eq. 3 made exact for this architecture family: with keep-probabilities p it
returns E[#parameters] of the physically pruned model (gates independent), and with 0/1 values exactly the parameter
count `apply_plan` produces (embeddings, norms, biases, tied / untied heads and GQA included):

    H'          = sum_j p_hidden[j]
    q_l         = sum_h p_head[l, h],   kv_l = sum_g (1 - prod_{h in g} (1 - p_head[l, h]))   (a KV head goes with
                                                                                             all its query heads)
    f_l         = sum_c p_ffn[l, c]
    layer_l     = g_l * ( H' (d_qk (q_l + kv_l) + d_v (kv_l + q_l)) + [qkv bias] (d_qk (q_l + kv_l) + d_v kv_l)
                          + [o bias] H' + 3 H' f_l + [mlp bias] (2 f_l + H') + 2 H' )
    s_hat       = 1 - (n_embed H' + H' + sum_l layer_l) / N_dense

with d_qk / d_v the query-key / value widths per head (both `head_dim` unless head dims were pruned), g_l the layer
gate's keep-probability, n_embed = 1 (tied) or 2 (untied) and N_dense the dense model's parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...structure import LayerGeometry, ModelGeometry, PruningPlan, RuntimeMasks
from .config import L0Config
from .hard_concrete import HardConcrete


@dataclass
class MaskValues:
    """Gate values (samples, probabilities or 0/1 masks) per unit group; `None` means "not pruned" (all ones)."""

    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    hidden: torch.Tensor | None = None
    layers: torch.Tensor | None = None
    #: For a differentiable hard-concrete sample: the hidden gates strictly between 0 and 1, the only ones whose
    #: gradient reaches log_alpha through the clamp (`RuntimeMasks.set_hidden`'s `grad_support`).
    hidden_grad_support: torch.Tensor | None = None

    def install(self, runtime: RuntimeMasks) -> None:
        """Put these values into `runtime` (the structure engine's hook-based masks)."""
        runtime.clear()
        for index, mask in self.heads.items():
            runtime.set_heads(index, mask)
        for index, mask in self.ffn.items():
            runtime.set_ffn(index, mask)
        runtime.set_hidden(self.hidden, grad_support=self.hidden_grad_support)
        runtime.set_layers(self.layers)

    def detach(self) -> MaskValues:
        return MaskValues(
            heads={i: m.detach() for i, m in self.heads.items()},
            ffn={i: m.detach() for i, m in self.ffn.items()},
            hidden=None if self.hidden is None else self.hidden.detach(),
            layers=None if self.layers is None else self.layers.detach(),
        )


def expected_parameters(geometry: ModelGeometry, values: MaskValues) -> torch.Tensor:
    """E[#parameters] of the pruned model for keep-probabilities `values` (exact for 0/1 values); see module doc.

    Layers of one shape with every layer's groups given (the usual case) are computed stacked: a few dozen tensor
    operations instead of a few per layer, which matters on a GPU, where each is a kernel launch, and this runs
    (with its backward) on every training step."""
    reference = next(
        (t for t in (values.hidden, values.layers, *values.heads.values(), *values.ffn.values()) if t is not None),
        None,
    )
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = torch.float64
    hidden = (
        values.hidden.to(dtype).sum()
        if values.hidden is not None
        else torch.tensor(float(geometry.hidden_size), dtype=dtype, device=device)
    )
    total = (1 if geometry.tied_embeddings else 2) * geometry.vocab_size * hidden + hidden
    one_shape = all(layer == geometry.layers[0] for layer in geometry.layers)
    every_layer = {len(values.heads), len(values.ffn)} <= {0, geometry.num_layers}
    if one_shape and every_layer:
        return total + _stacked_layer_parameters(geometry, values, hidden).sum()
    return total + _per_layer_parameters(geometry, values, hidden)


def _per_layer_parameters(geometry: ModelGeometry, values: MaskValues, hidden: torch.Tensor) -> torch.Tensor:
    """E[#parameters] of all decoder layers, one layer at a time (any geometry; heads / FFN given for any layers)."""
    dtype, device = hidden.dtype, hidden.device
    total = torch.zeros((), dtype=dtype, device=device)
    for index, layer in enumerate(geometry.layers):
        dqk, dv = head_dims(layer)
        if index in values.heads:
            p = values.heads[index].to(dtype)
            q = p.sum()
            kv = (1.0 - torch.prod(1.0 - p.reshape(layer.num_kv_heads, layer.heads_per_group), dim=1)).sum()
        else:
            q = torch.tensor(float(layer.num_heads), dtype=dtype, device=device)
            kv = torch.tensor(float(layer.num_kv_heads), dtype=dtype, device=device)
        f = (
            values.ffn[index].to(dtype).sum()
            if index in values.ffn
            else torch.tensor(float(layer.intermediate_size), dtype=dtype, device=device)
        )
        params = _layer_formula(geometry, hidden, q, kv, f, dqk, dv)
        if values.layers is not None:
            params = params * values.layers[index].to(dtype)
        total = total + params
    return total


def _layer_formula(geometry: ModelGeometry, hidden, q, kv, f, dqk: int, dv: int) -> torch.Tensor:
    """One decoder layer's parameters from (expected) hidden width, query heads, KV heads and FFN channels: the module
    doc's formula, elementwise, so scalars give one layer and `[num_layers]` vectors every layer at once."""
    params = hidden * (dqk * (q + kv) + dv * (kv + q)) + 3 * hidden * f + 2 * hidden
    if geometry.qkv_bias:
        params = params + dqk * (q + kv) + dv * kv
    if geometry.o_bias:
        params = params + hidden
    if geometry.mlp_bias:
        params = params + 2 * f + hidden
    return params


def _stacked_layer_parameters(geometry: ModelGeometry, values: MaskValues, hidden: torch.Tensor) -> torch.Tensor:
    """E[#parameters] of every layer at once (all layers of one shape; heads / FFN given for all layers or none)."""
    layer, n, dtype = geometry.layers[0], geometry.num_layers, hidden.dtype
    dqk, dv = head_dims(layer)
    if values.heads:
        p = torch.stack([values.heads[i] for i in range(n)]).to(dtype)
        q = p.sum(-1)
        kv = (1.0 - torch.prod(1.0 - p.reshape(n, layer.num_kv_heads, layer.heads_per_group), dim=-1)).sum(-1)
    else:
        q = torch.full((n,), float(layer.num_heads), dtype=dtype, device=hidden.device)
        kv = torch.full((n,), float(layer.num_kv_heads), dtype=dtype, device=hidden.device)
    if values.ffn:
        f = torch.stack([values.ffn[i] for i in range(n)]).to(dtype).sum(-1)
    else:
        f = torch.full((n,), float(layer.intermediate_size), dtype=dtype, device=hidden.device)
    params = _layer_formula(geometry, hidden, q, kv, f, dqk, dv)
    if values.layers is not None:
        params = params * values.layers.to(dtype)
    return params


def head_dims(layer: LayerGeometry) -> tuple[int, int]:
    """(query/key, value) width per head; both `head_dim` unless the structure engine pruned head dims."""
    return getattr(layer, "qk_dim", layer.head_dim), getattr(layer, "v_dim", layer.head_dim)


class L0Masks(nn.Module):
    """The `log_alpha` of every gate of one model (kept outside the model's parameters).

    Args:
        geometry (`ModelGeometry`): sizes of the model being pruned.
        config (`L0Config`): which unit groups get gates, initialisation and clamping.
    """

    def __init__(self, geometry: ModelGeometry, config: L0Config) -> None:
        super().__init__()
        self.geometry = geometry
        self.config = config
        self.distribution = HardConcrete(config.temperature, *config.stretch_limits)
        generator = torch.Generator().manual_seed(config.seed)
        mean = HardConcrete.init_log_alpha(config.droprate_init)

        def init(size: int) -> nn.Parameter:
            noise = torch.randn(size, generator=generator) * config.init_noise_std
            return nn.Parameter((mean + noise).clamp(-config.log_alpha_bound, config.log_alpha_bound))

        n = geometry.num_layers
        self.heads = nn.ParameterList([init(g.num_heads) for g in geometry.layers]) if config.prune_heads else None
        self.ffn = nn.ParameterList([init(g.intermediate_size) for g in geometry.layers]) if config.prune_ffn else None
        self.hidden = init(geometry.hidden_size) if config.prune_hidden else None
        self.layers = init(n) if config.prune_layers else None

    # ------------------------------------------------------------------ views
    def _map(self, fn) -> MaskValues:
        return MaskValues(
            heads={i: fn(p) for i, p in enumerate(self.heads)} if self.heads is not None else {},
            ffn={i: fn(p) for i, p in enumerate(self.ffn)} if self.ffn is not None else {},
            hidden=fn(self.hidden) if self.hidden is not None else None,
            layers=fn(self.layers) if self.layers is not None else None,
        )

    def _map_flat(self, fn) -> MaskValues:
        """`_map` of an elementwise `fn` applied once to all gates concatenated (one kernel per operation, not one
        per group: this runs on every training step); `fn` receives the flat `log_alpha`."""
        params: list[nn.Parameter] = []
        self._map(params.append)  # heads, ffn, hidden, layers: the order `_map` visits them in
        flat = fn(torch.cat([p.reshape(-1) for p in params]))
        pieces = iter(flat.split([p.numel() for p in params]))
        return self._map(lambda p: next(pieces).view(p.shape))

    def probabilities(self) -> MaskValues:
        """Keep-probabilities P(z != 0), differentiable."""
        return self._map_flat(self.distribution.prob_nonzero)

    def sample(self, generator: torch.Generator) -> MaskValues:
        """One reparameterised hard-concrete sample of every gate (noise from the CPU `generator`, drawn in the order
        of `_map`, so the same stream as one draw per group)."""
        values = self._map_flat(
            lambda flat: self.distribution.sample(flat, self.distribution.noise(flat.shape, generator))
        )
        if values.hidden is not None and values.hidden.requires_grad:
            # Where the sample is clamped to exactly 0 or 1 its gradient is zero: the hidden-output hooks then keep
            # only the other channels of each masked output for backward (one device sync per sample).
            hidden = values.hidden.detach()
            values.hidden_grad_support = ((hidden > 0) & (hidden < 1)).nonzero().squeeze(1)
        return values

    def deterministic(self) -> MaskValues:
        """Hard 0/1 evaluation masks (expected number of zeros per group, lowest log_alpha first)."""
        return self._map(self.distribution.deterministic)

    def log_alphas(self) -> MaskValues:
        """The raw `log_alpha` tensors (detached)."""
        return self._map(lambda p: p.detach())

    def named_log_alphas(self) -> dict[str, nn.Parameter]:
        """Stable names -> parameters (`heads.3`, `ffn.0`, `hidden`, `layers`)."""
        return dict(self.named_parameters())

    # ------------------------------------------------------------------ quantities
    @property
    def dense_parameters(self) -> int:
        return self.geometry.num_parameters()

    def expected_sparsity(self) -> torch.Tensor:
        """s_hat: 1 - E[#parameters] / #dense parameters, differentiable in every log_alpha."""
        return 1.0 - expected_parameters(self.geometry, self.probabilities()) / self.dense_parameters

    def sparsity_of(self, values: MaskValues) -> float:
        """1 - #parameters / #dense for 0/1 `values` (exact when they are GQA-consistent)."""
        return float(1.0 - expected_parameters(self.geometry, values) / self.dense_parameters)

    @torch.no_grad()
    def clamp_(self) -> None:
        """NutePrune's `constrain_parameters`: keep every log_alpha within [-bound, bound]."""
        for param in self.parameters():
            param.clamp_(-self.config.log_alpha_bound, self.config.log_alpha_bound)

    def non_finite(self, extra: dict[str, torch.Tensor] | None = None) -> list[str]:
        """Names of log_alpha tensors and of the `extra` named tensors (or of their gradients) holding NaN / inf (one
        device synchronisation when all are finite, the common case)."""
        params = dict(self.named_parameters()) | (extra or {})
        tensors = [*params.values(), *(p.grad for p in params.values() if p.grad is not None)]
        if bool(torch.isfinite(torch.cat([t.detach().flatten() for t in tensors])).all()):
            return []
        bad = [name for name, param in params.items() if not torch.isfinite(param).all()]
        bad += [
            f"{name}.grad"
            for name, param in params.items()
            if name not in bad and param.grad is not None and not torch.isfinite(param.grad).all()
        ]
        return bad


def minimal_plan(geometry: ModelGeometry, config: L0Config) -> PruningPlan:
    """The smallest model the enabled unit groups can reach: one head (in one KV group), one FFN channel and one
    hidden dimension per layer where pruned, and a single kept layer when layer gates are on."""
    plan = PruningPlan.dense(geometry)
    for layer in plan.layers:
        if config.prune_heads:
            layer.heads, layer.kv_heads = [0], [0]
        if config.prune_ffn:
            layer.ffn = [0]
    if config.prune_hidden:
        plan.hidden = [0]
    if config.prune_layers and geometry.num_layers > 1:
        sizes = plan.pruned_geometry()
        cheapest = min(range(geometry.num_layers), key=lambda i: sizes.layer_params(i))
        plan.removed_layers = [i for i in range(geometry.num_layers) if i != cheapest]
    return plan


def max_feasible_sparsity(geometry: ModelGeometry, config: L0Config) -> float:
    """The largest sparsity the enabled unit groups can reach (see `minimal_plan`)."""
    return float(minimal_plan(geometry, config).num_parameters()["sparsity"])
