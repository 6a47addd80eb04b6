"""Group importance criteria, shaped like Torch-Pruning's importance objects (LLM-Pruner's choices).

A criterion turns each parameter into an element-wise score tensor (`|g*w|`, `(g*w)^2 / 2`, `|w|^p`), which is
reduced per group member (the parameter slice of one unit) and then aggregated across the members of a group:
`I_G = sum_k I_{P_k}` by default (`mean`, `max`, `prod` also available).

Gradient-based criteria use the next-token loss on calibration token ids. Scores are accumulated as gradients
arrive (`register_post_accumulate_grad_hook`) and each `.grad` is freed right away, so full-model gradients are
never held at once; only per-(parameter, dim) score vectors are kept.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ... import arch as A
from ...distributed import all_reduce_sum_, rank_and_world_size
from .dependency import DependencyGraph, GroupFamily

AGGREGATIONS = ("sum", "mean", "max", "prod")
FamilyKey = tuple[str, "int | None"]


class Importance:
    """Base class. Subclasses define `element_scores`; gradient-free criteria set `needs_gradients = False`."""

    name = "base"
    needs_gradients = False
    signed = False  # True: reduce signed scores per slice, take |.| at the end (vector-wise Taylor)

    def __init__(self, aggregation: str = "sum") -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        self.aggregation = aggregation

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """Scores of the shape of `weight`. `grad` is the caller's scratch buffer (freed right after this call):
        criteria may overwrite it in place instead of allocating a parameter-sized result."""
        raise NotImplementedError

    def finalize(self, member_scores: torch.Tensor) -> torch.Tensor:
        return member_scores.abs() if self.signed else member_scores

    def aggregate(self, member_scores: list[torch.Tensor]) -> torch.Tensor:
        """Combine per-member unit scores `[members][units]` into one score per unit."""
        stacked = torch.stack(member_scores).double()
        if self.aggregation == "sum":
            return stacked.sum(0)
        if self.aggregation == "mean":
            return stacked.mean(0)
        if self.aggregation == "max":
            return stacked.amax(0)
        return stacked.prod(0)

    def family_scores(self, family: GroupFamily) -> torch.Tensor | None:
        """Scores that do not come from parameters (random); `None` means: use the parameter pipeline."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(aggregation={self.aggregation!r})"


class TaylorImportance(Importance):
    """First-order Taylor: `|g*w|` per element, summed over the slice (`order="element"`, the paper's choice), or
    `|sum(g*w)|` over the slice (`order="vector"`), with `g` the gradient of the calibration loss."""

    needs_gradients = True

    def __init__(self, order: str = "element", aggregation: str = "sum") -> None:
        super().__init__(aggregation)
        if order not in ("element", "vector"):
            raise ValueError(f"TaylorImportance order must be 'element' or 'vector', got {order!r}.")
        self.order = order
        self.signed = order == "vector"
        self.name = "taylor" if order == "element" else "taylor_vector"

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        product = grad.float().mul_(weight)  # in place in a float32 gradient (`.float()` copies any other dtype)
        return product if self.signed else product.abs_()

    def __repr__(self) -> str:
        return f"TaylorImportance(order={self.order!r}, aggregation={self.aggregation!r})"


class HessianImportance(Importance):
    """Second-order term with the diagonal Fisher approximation of the Hessian: `(g*w)^2 / 2` per element, averaged
    over calibration batches (LLM-Pruner's `param_second`)."""

    name = "hessian"
    needs_gradients = True

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return grad.float().mul_(weight).square_().mul_(0.5)


class MagnitudeImportance(Importance):
    """`sum |w|^p` over the slice (`p=1`: L1, `p=2`: squared L2); needs no data."""

    def __init__(self, p: int = 2, aggregation: str = "sum") -> None:
        super().__init__(aggregation)
        if p not in (1, 2):
            raise ValueError(f"MagnitudeImportance p must be 1 or 2, got {p!r}.")
        self.p = p
        self.name = f"l{p}"

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return weight.float().abs().pow(self.p)

    def __repr__(self) -> str:
        return f"MagnitudeImportance(p={self.p}, aggregation={self.aggregation!r})"


class RandomImportance(Importance):
    """Uniform random scores (a baseline), reproducible from `seed`."""

    name = "random"

    def __init__(self, seed: int = 0, aggregation: str = "sum") -> None:
        super().__init__(aggregation)
        self.seed = seed

    def family_scores(self, family: GroupFamily) -> torch.Tensor:
        key = f"{self.seed}:{family.kind}:{family.layer}".encode()
        generator = torch.Generator().manual_seed(zlib.crc32(key))
        return torch.rand(family.num_units, generator=generator, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"RandomImportance(seed={self.seed})"


def build_importance(name: str, aggregation: str = "sum", seed: int = 0) -> Importance:
    """`taylor` | `taylor_vector` | `hessian` | `l1` | `l2` | `random` -> an importance object."""
    factories = {
        "taylor": lambda: TaylorImportance("element", aggregation),
        "taylor_vector": lambda: TaylorImportance("vector", aggregation),
        "hessian": lambda: HessianImportance(aggregation),
        "l1": lambda: MagnitudeImportance(1, aggregation),
        "l2": lambda: MagnitudeImportance(2, aggregation),
        "random": lambda: RandomImportance(seed, aggregation),
    }
    if name not in factories:
        raise ValueError(f"Unknown importance {name!r}; choose one of {sorted(factories)}.")
    return factories[name]()


# ---------------------------------------------------------------------------------------------------- computation
def check_calibration(calibration: torch.Tensor | None, vocab_size: int | None = None) -> torch.Tensor:
    """Validate calibration token ids: a 2-D integer tensor `[n, L]` with `n >= 1` and `L >= 2`."""
    if calibration is None:
        raise ValueError(
            "This importance criterion needs calibration data: pass `calibration=` (a LongTensor [n, seq_len]) "
            "or a tokenizer so that calibration batches can be drawn."
        )
    if not torch.is_tensor(calibration):
        raise ValueError(f"calibration must be a torch.LongTensor [n, seq_len], got {type(calibration).__name__}.")
    if calibration.dtype.is_floating_point or calibration.dtype == torch.bool:
        raise ValueError(f"calibration must hold integer token ids, got dtype {calibration.dtype}.")
    if calibration.dim() == 1:
        calibration = calibration[None]
    if calibration.dim() != 2 or calibration.shape[0] == 0:
        raise ValueError(f"calibration must have shape [n, seq_len] with n >= 1, got {list(calibration.shape)}.")
    if calibration.shape[1] < 2:
        raise ValueError(
            f"calibration sequences must have at least 2 tokens for a next-token loss, got shape "
            f"{list(calibration.shape)}."
        )
    if vocab_size is not None and (calibration.min() < 0 or calibration.max() >= vocab_size):
        raise ValueError(f"calibration token ids must lie in [0, {vocab_size}); got {int(calibration.max())}.")
    return calibration.long()


def compute_importance(
    model: nn.Module,
    graph: DependencyGraph,
    importance: Importance,
    calibration: torch.Tensor | None = None,
    kinds: Iterable[str] | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[FamilyKey, torch.Tensor]:
    """One score per unit for every family of `kinds` (default: all prunable kinds): `{(kind, layer): scores}`, float64
    tensors on the CPU whatever the model's device.

    Gradient criteria run the next-token loss of `model` (plain or PEFT-wrapped; LoRA branches included) on
    `calibration` in micro-batches of `batch_size` and average the per-batch scores. No parameter holds `.grad`
    afterwards (gradients that existed before are restored); `requires_grad` flags and train/eval mode are restored.

    Raises:
        ValueError: calibration missing or malformed (gradient criteria only).
        FloatingPointError: a non-finite loss, gradient or score (the message names the parameter).
    """
    lm = A.unwrap_model(model)
    wanted = set(kinds) if kinds is not None else {"hidden", "kv_group", "head", "ffn"}
    families = [f for f in graph.families() if f.kind in wanted]
    if families and importance.family_scores(families[0]) is not None:
        return {f.key: importance.family_scores(f) for f in families}

    needed: dict[str, set[int]] = defaultdict(set)
    for family in families:
        for member in family.members:
            if not member.is_lora:
                needed[member.name].add(member.dim)
    params = dict(lm.named_parameters())
    reduced: dict[tuple[str, int], torch.Tensor] = {}

    def accumulate(name: str, scores: torch.Tensor) -> None:
        # Finiteness is checked once, on the accumulated vectors (`_check_finite`): a NaN or inf anywhere in a
        # gradient, a weight or a score makes its sums non-finite. A check per call would cost a parameter-sized
        # `isfinite` (CPU) or a device synchronisation inside the backward pass (GPU) for every parameter and batch.
        for dim in needed[name]:
            other = [d for d in range(scores.dim()) if d != dim]
            vector = scores.sum(dim=other) if other else scores
            key = (name, dim)
            if key in reduced:
                reduced[key].add_(vector)  # float64 accumulator, in place
            else:
                reduced[key] = vector.double()

    if importance.needs_gradients:
        calibration = check_calibration(calibration, getattr(lm.config, "vocab_size", None))
        rank, world_size = rank_and_world_size()
        batches = _run_gradient_pass(
            model, lm, params, needed, importance, calibration, batch_size, progress, accumulate, rank, world_size
        )
        if world_size > 1:  # every rank scored its share of the batches: sum the scores and the batch counts
            for key in sorted(needed_keys(needed)):
                reduced.setdefault(key, torch.zeros(params[key[0]].shape[key[1]], dtype=torch.float64))
                all_reduce_sum_(reduced[key])
            batches = int(all_reduce_sum_(torch.tensor([batches], dtype=torch.float64)).item())
        reduced = {key: value / max(batches, 1) for key, value in reduced.items()}
    else:
        with torch.no_grad():
            for name in needed:
                accumulate(name, importance.element_scores(params[name].detach(), None))
    _check_finite(reduced, importance)

    scores = {}
    for family in families:
        per_member = []
        for member in family.members:
            if member.is_lora:
                continue
            vector = reduced[(member.name, member.dim)]
            per_member.append(importance.finalize(vector.reshape(family.num_units, member.width).sum(1)))
        unit_scores = importance.aggregate(per_member).cpu()  # plans are built on the CPU: no device read per unit
        if not torch.isfinite(unit_scores).all():
            raise FloatingPointError(f"Non-finite {family.kind} scores in layer {family.layer} ({importance!r}).")
        scores[family.key] = unit_scores
    return scores


def _check_finite(reduced: dict[tuple[str, int], torch.Tensor], importance: Importance) -> None:
    """Raises `FloatingPointError` naming the first parameter whose accumulated scores hold NaN / inf (one device
    synchronisation when all are finite)."""
    if not reduced or bool(torch.isfinite(torch.cat([v.reshape(-1) for v in reduced.values()])).all()):
        return
    name = next(name for (name, _), v in reduced.items() if not torch.isfinite(v).all())
    raise FloatingPointError(
        f"Non-finite importance scores for parameter {name!r} (module {name.rsplit('.', 1)[0]!r}, {importance!r}): a "
        "gradient or weight holds NaN/inf; check the calibration data and the model's dtype."
    )


def needed_keys(needed: dict[str, set[int]]) -> list[tuple[str, int]]:
    """Every `(parameter name, dim)` whose scores are reduced, in a rank-independent order."""
    return [(name, dim) for name in sorted(needed) for dim in sorted(needed[name])]


def _run_gradient_pass(
    model, lm, params, needed, importance, calibration, batch_size, progress, accumulate, rank=0, world_size=1
) -> int:
    """Backward over the calibration micro-batches (those with `index % world_size == rank` on this rank)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    all_params = list(lm.named_parameters())
    flags = {name: p.requires_grad for name, p in all_params}
    saved_grads = {name: p.grad for name, p in all_params}
    was_training = model.training
    handles = []

    def make_hook(name: str):
        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is None:
                return
            param.grad = None  # freed on arrival; the criterion may reuse its buffer
            with torch.no_grad():
                accumulate(name, importance.element_scores(param.detach(), grad))

        return hook

    device = next(iter(params.values())).device
    batches = 0
    finite_losses: list[torch.Tensor] = []  # checked after the pass: no device synchronisation per batch
    try:
        for name, p in all_params:
            p.grad = None
            p.requires_grad_(name in needed)
        for name in needed:
            handles.append(params[name].register_post_accumulate_grad_hook(make_hook(name)))
        model.eval()
        starts = list(range(0, calibration.shape[0], batch_size))[rank::world_size]
        share = sum(min(batch_size, calibration.shape[0] - start) for start in starts)
        bar = tqdm(total=share, desc="depgraph importance", unit="sample", disable=not progress or rank > 0)
        with torch.enable_grad():
            for start in starts:
                ids = calibration[start : start + batch_size].to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                finite_losses.append(torch.isfinite(loss.detach()))
                loss.backward()
                batches += 1
                bar.update(len(ids))
        bar.close()
        if finite_losses and not bool(torch.stack(finite_losses).all()):
            first = int(torch.stack(finite_losses).logical_not().nonzero()[0])
            start = starts[first]
            raise FloatingPointError(
                f"Non-finite calibration loss on samples {start}..{min(start + batch_size, len(calibration)) - 1}."
            )
    finally:
        for handle in handles:
            handle.remove()
        for name, p in all_params:
            p.requires_grad_(flags[name])
            p.grad = saved_grads[name]
        model.train(was_training)
    return batches


def normalise(scores: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Scores divided by the mean of `reference` (default: themselves); all-zero references leave scores as they
    are."""
    reference = scores if reference is None else reference
    mean = float(reference.double().mean()) if reference.numel() else 0.0
    return scores.double() / mean if mean > 0 and math.isfinite(mean) else scores.double()
