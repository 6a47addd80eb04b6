"""The hard-concrete distribution (Louizos, Welling & Kingma, 2018, "Learning Sparse Neural Networks through L0
Regularization"), as used by CoFi / Compresso / NutePrune.

A gate z is drawn by stretching a binary-concrete sample s to (l, r) and clipping to [0, 1]:

    u ~ U(eps, 1 - eps),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  z = min(1, max(0, s (r - l) + l))

so z is exactly 0 or 1 with positive probability and differentiable in log_alpha in between. Closed forms:

    P(z != 0) = sigmoid(log_alpha - beta log(-l / r))         (the expected L0 norm is the sum over gates)
    P(z == 1) = sigmoid(log_alpha - beta log((1 - l) / (r - 1)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Uniform noise is drawn from [eps, 1 - eps] so that its logit stays finite (NutePrune's `epsilon`).
NOISE_EPSILON = 1e-6


@dataclass(frozen=True)
class HardConcrete:
    """Parameters shared by every gate: temperature `beta` and stretch limits `(l, r)`."""

    beta: float
    low: float
    high: float

    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z != 0) = 1 - Q(0 | log_alpha), differentiable in `log_alpha`."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.low / self.high))

    def prob_one(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z == 1)."""
        return torch.sigmoid(log_alpha - self.beta * math.log((1.0 - self.low) / (self.high - 1.0)))

    def expected_l0(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Expected number of non-zero gates."""
        return self.prob_nonzero(log_alpha).sum()

    def sample(self, log_alpha: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """A reparameterised sample for `uniform` noise in (0, 1) of the same shape (see `noise`)."""
        u = uniform.to(device=log_alpha.device, dtype=log_alpha.dtype)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    @staticmethod
    def noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Uniform noise on the CPU from `generator` (device independent, so runs and resumes reproduce exactly)."""
        return torch.rand(shape, generator=generator, dtype=torch.float32) * (1 - 2 * NOISE_EPSILON) + NOISE_EPSILON

    def deterministic(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Hard 0/1 gates for evaluation: as many zeros as the expected number of zeros (rounded), taken where
        log_alpha is lowest (CoFi / NutePrune's `_deterministic_z`, with kept gates set to exactly 1)."""
        flat = log_alpha.detach().flatten()
        zeros = int(round(flat.numel() - float(self.expected_l0(flat))))
        mask = torch.ones_like(flat)
        if zeros > 0:
            order = torch.sort(flat, stable=True).indices  # ties: lower index first
            mask[order[:zeros]] = 0.0
        return mask.reshape(log_alpha.shape)

    @staticmethod
    def init_log_alpha(droprate: float) -> float:
        """log_alpha whose gate is dropped with probability `droprate` before stretching: log((1 - d) / d)."""
        return math.log(1.0 - droprate) - math.log(droprate)
