"""Run by test_fsdp.py: dependency-group pruning, then FSDP2 (`fully_shard`, gloo on CPU) training and a gathered save.

`python fsdp_script.py OUT single` trains the same pruned model in one process on the whole global batch;
`torchrun --nproc_per_node 2 fsdp_script.py OUT fsdp` shards it over two ranks that each take half of every batch.
Writes OUT/rank{r}.json (plan, sharding kind, the refusal message for a training-time method; rank 0 also the largest
weight change training made) and, from rank 0 only, the pruned model gathered to full tensors and saved with
`save_pruned` in OUT/model.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tailored_hf import PrunerCallback  # noqa: E402
from tailored_hf.distributed import sharded_parameter_kind  # noqa: E402
from tailored_hf.methods import DepGraphConfig, L0Config  # noqa: E402
from tailored_hf.methods.depgraph import prune  # noqa: E402
from tailored_hf.structure import save_pruned  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

STEPS = 2
GLOBAL_BATCH = 8
#: Plain SGD: the update is proportional to the averaged gradient, so a rank-summed (2x) or unaveraged gradient shows
#: as a 2x step (AdamW normalises the gradient's scale away and would hide it).
LEARNING_RATE = 0.5


def main(out: str, mode: str) -> None:
    sharded = mode == "fsdp"
    if sharded:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    torch.manual_seed(0)
    model = make_tiny_model("llama", num_hidden_layers=3, intermediate_size=64)
    calibration = torch.randint(0, 96, (6, 8), generator=torch.Generator().manual_seed(1))
    config = DepGraphConfig(target_sparsity=0.3, num_calibration_samples=6, calibration_seq_len=8)
    _, plan = prune(model, config, calibration=calibration)  # before any wrapper, as PrunerCallback.on_init_end
    unsharded = copy.deepcopy(model)  # receives the gathered weights for the final save
    record: dict = {"plan": {k: v for k, v in plan.to_dict().items() if k != "metadata"}, "world_size": world}
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        record["sharding"] = sharded_parameter_kind(model)
        try:
            PrunerCallback(L0Config(target_sparsity=0.3)).check_unsharded(model)
        except ValueError as err:
            record["refusal"] = str(err)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    data = torch.randint(0, 96, (STEPS, GLOBAL_BATCH, 10), generator=torch.Generator().manual_seed(2))
    per_rank = GLOBAL_BATCH // world
    for step in range(STEPS):
        batch = data[step, rank * per_rank : (rank + 1) * per_rank]
        model(input_ids=batch, labels=batch).loss.backward()  # FSDP averages the ranks' mean-loss gradients
        optimizer.step()
        optimizer.zero_grad()
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = model.state_dict()
    if rank == 0:
        before = unsharded.state_dict()
        record["max_update"] = max(float((full[k].cpu() - before[k]).abs().max()) for k in before)
        unsharded.load_state_dict(full)
        save_pruned(unsharded, Path(out) / "model")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    if sharded:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
