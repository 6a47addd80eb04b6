"""Multi-process helpers (torch.distributed, as set up by `accelerate launch` / the Trainer); no-ops on one process.

Methods shard their calibration work over ranks and sum-reduce the results, so every rank reaches the same scores, and
`PrunerCallback` checks that every rank holds the same plan before training continues.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """`(rank, world_size)`, `(0, 1)` outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (on the backend's device) and return it."""
    if not is_distributed():
        return tensor
    buffer = tensor.to(_reduce_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    tensor.copy_(buffer.to(tensor.device))
    return tensor


def broadcast_text(text: str, src: int = 0) -> str:
    """`text` of rank `src`, on every rank (sent as UTF-8 bytes in tensors; nothing is pickled)."""
    if not is_distributed():
        return text
    device = _reduce_device()
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=device)
    length = torch.tensor([data.numel()], dtype=torch.long, device=device)
    dist.broadcast(length, src=src)
    if dist.get_rank() != src:
        data = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=src)
    return bytes(data.cpu().tolist()).decode("utf-8")


class RankDivergenceError(RuntimeError):
    """Ranks reached different pruning decisions (a determinism bug; the run stops instead of diverging)."""


def check_same_on_all_ranks(text: str, what: str) -> None:
    """Raise `RankDivergenceError` on every rank unless `text` is identical on all of them."""
    if not is_distributed():
        return
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    reference = broadcast_text(digest)
    mismatch = torch.tensor([int(digest != reference)], dtype=torch.long, device=_reduce_device())
    dist.all_reduce(mismatch, op=dist.ReduceOp.SUM)
    if int(mismatch.item()):
        raise RankDivergenceError(
            f"{int(mismatch.item())} rank(s) computed a different {what} than rank 0; every rank must use the same "
            "model, seed and calibration data."
        )


def all_reduce_mean_grads_(params) -> None:
    """Average `.grad` of method-owned parameters (masks, multipliers, generators) over ranks, in place.

    DDP averages the gradients of the model's parameters only; a method that steps its own optimizer calls this first
    so every rank applies the same update. Parameters without a gradient count as zero.
    """
    if not is_distributed():
        return
    world_size = dist.get_world_size()
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        all_reduce_sum_(param.grad)
        param.grad.div_(world_size)


def sharded_parameter_kind(model: torch.nn.Module) -> str | None:
    """Which sharding wrapper owns the model's parameters: "FSDP2", "FSDP1", "DeepSpeed ZeRO-3", or `None`.

    Methods that prune during training slice parameters in place and hook full-size activations; they need every
    parameter whole on every rank (DDP), so `PrunerCallback` refuses them on sharded models.
    """
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            return "FSDP1"
    for param in model.parameters():
        if type(param).__name__ == "FlatParameter":
            return "FSDP1"
        if type(param).__name__ == "DTensor":  # FSDP2 parameters are DTensors
            return "FSDP2"
        if hasattr(param, "ds_id"):
            return "DeepSpeed ZeRO-3"
    return None
