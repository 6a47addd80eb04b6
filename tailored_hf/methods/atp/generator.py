"""The pruning-decision generator G of ATP (Sec. 3.2, Appendix A.1 of arXiv 2412.14426).

A frozen, orthogonally initialised input of shape (layers, hidden) goes through Transformer encoder blocks, a
LayerNorm and one linear projection per decoder layer to that layer's decision length; a Gumbel-sigmoid with an
offset and straight-through rounding turns the logits into 0/1 decisions whose gradients are the sigmoid's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...structure import ModelGeometry
from .config import ATPConfig

KINDS = ("qk", "v", "ffn")


@dataclass
class LayerDecision:
    """0/1 decisions of one decoder layer (1 = keep); `None` for a kind that is not pruned.

    `qk` has one entry per rotate-half query/key pair (`qk_dim // 2`), shared by every query and key head;
    `v` one per value dim, shared by every value head; `ffn` one per FFN channel.
    """

    qk: torch.Tensor | None
    v: torch.Tensor | None
    ffn: torch.Tensor | None

    def get(self, kind: str) -> torch.Tensor | None:
        return getattr(self, kind)

    def detach(self) -> LayerDecision:
        return LayerDecision(*(None if t is None else t.detach() for t in (self.qk, self.v, self.ffn)))


@dataclass
class Clamp:
    """A decision raised to the configured minimum (reported, never a broken model)."""

    layer: int
    kind: str
    kept: int
    minimum: int


def decision_lengths(geometry: ModelGeometry, config: ATPConfig) -> list[dict[str, int]]:
    """Per layer, the decision length of every pruned kind."""
    lengths = []
    for geo in geometry.layers:
        row = {}
        if config.prune_qk:
            row["qk"] = geo.num_rotary_pairs
        if config.prune_v:
            row["v"] = geo.v_dim
        if config.prune_ffn:
            row["ffn"] = geo.intermediate_size
        lengths.append(row)
    return lengths


def gumbel_sigmoid(
    logits: torch.Tensor, temperature: float, offset: float, generator: torch.Generator | None, sample: bool
) -> torch.Tensor:
    """`sigmoid((logits + offset + g) / temperature)` with logistic noise `g = log u - log(1 - u)` when sampling."""
    shifted = logits + offset
    if sample:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float32).to(logits.device, logits.dtype)
        u = u.clamp(torch.finfo(u.dtype).tiny, 1.0 - torch.finfo(u.dtype).eps)
        shifted = shifted + torch.log(u) - torch.log1p(-u)
    return torch.sigmoid(shifted / temperature)


def straight_through(soft: torch.Tensor, minimum: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 rounding (`soft >= 0.5`) in the forward pass, the identity's gradient in the backward pass.

    At least `minimum` entries stay 1 (the highest `soft` values). Returns the decisions and how many entries the
    rounding alone kept (before clamping), as a 0-dim int64 tensor: nothing here waits for the device.
    """
    rounded = soft >= 0.5
    hard = rounded.to(soft.dtype)
    if minimum > 0:  # the `minimum` highest are 1 already whenever the rounding kept at least that many
        top = torch.topk(soft.detach(), min(minimum, soft.numel())).indices
        hard = hard.index_fill(0, top, 1.0)
    return hard + (soft - soft.detach()), rounded.sum()  # exactly 0/1 forward (the bracket is exactly 0)


class DecisionGenerator(nn.Module):
    """G: produces every layer's decisions from a frozen orthogonal input.

    Args:
        lengths: per decoder layer, `{kind: decision length}` for the pruned kinds (see `decision_lengths`).
        config: the ATP settings (sizes, Gumbel temperature and offset, minimums, seed).
    """

    def __init__(self, lengths: list[dict[str, int]], config: ATPConfig) -> None:
        super().__init__()
        self.lengths = [dict(row) for row in lengths]
        self.temperature = config.gumbel_temperature
        self.offset = config.gumbel_offset
        self.minimums = {"qk": config.min_qk_pairs, "v": config.min_v_dims, "ffn": config.min_ffn_channels}
        init = torch.Generator().manual_seed(config.seed)
        inputs = torch.empty(len(lengths), config.generator_hidden_size)
        nn.init.orthogonal_(inputs, generator=init)
        self.register_buffer("inputs", inputs)  # frozen: a buffer, never optimised
        block = nn.TransformerEncoderLayer(
            d_model=config.generator_hidden_size,
            nhead=config.generator_num_heads,
            dim_feedforward=config.generator_ffn_size,
            dropout=0.0,
            activation="relu",
            batch_first=True,
        )
        state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        try:
            self.encoder = nn.TransformerEncoder(block, config.generator_num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(config.generator_hidden_size)
            self.projections = nn.ModuleList(
                nn.Linear(config.generator_hidden_size, sum(row.values())) for row in lengths
            )
        finally:
            torch.random.set_rng_state(state)

    def logits(self) -> list[torch.Tensor]:
        """Per-layer logits (before offset, noise and temperature)."""
        hidden = self.norm(self.encoder(self.inputs.unsqueeze(0))).squeeze(0)
        return [projection(hidden[index]) for index, projection in enumerate(self.projections)]

    def forward(
        self, sample: bool = True, noise: torch.Generator | None = None
    ) -> tuple[list[LayerDecision], list[LayerDecision], list[Clamp]]:
        """Decisions for every layer.

        Args:
            sample: add Gumbel (logistic) noise, as during generator training; `False` gives the deterministic
                decisions used by the LoRA steps and for the final plan.
            noise: the `torch.Generator` drawing the noise (the method keeps one for reproducible resumes).

        Returns:
            `(hard, soft, clamps)`: straight-through 0/1 decisions (gradients flow into G), the Gumbel-sigmoid
            probabilities, and the layers/kinds whose decisions were raised to the configured minimum.
        """
        hard_layers, soft_layers, counted = [], [], []
        for index, (logits, row) in enumerate(zip(self.logits(), self.lengths)):
            soft_all = gumbel_sigmoid(logits, self.temperature, self.offset, noise, sample)
            hard, soft, start = {}, {}, 0
            for kind in KINDS:
                if kind not in row:
                    continue
                piece = soft_all[start : start + row[kind]]
                start += row[kind]
                decided, kept = straight_through(piece, self.minimums[kind])
                if self.minimums[kind] > 0:
                    counted.append((index, kind, kept))
                hard[kind], soft[kind] = decided, piece
            hard_layers.append(LayerDecision(hard.get("qk"), hard.get("v"), hard.get("ffn")))
            soft_layers.append(LayerDecision(soft.get("qk"), soft.get("v"), soft.get("ffn")))
        kept_counts = torch.stack([kept for *_, kept in counted]).tolist() if counted else []  # one device read
        clamps = [
            Clamp(index, kind, kept, self.minimums[kind])
            for (index, kind, _), kept in zip(counted, kept_counts)
            if kept < self.minimums[kind]
        ]
        return hard_layers, soft_layers, clamps


def ones_decisions(lengths: list[dict[str, int]], device: torch.device | None = None) -> list[LayerDecision]:
    """The initial decisions: keep everything."""
    return [
        LayerDecision(*(torch.ones(row[k], device=device) if k in row else None for k in KINDS)) for row in lengths
    ]
