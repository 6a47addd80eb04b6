"""FSDP2 on CPU: a model pruned before training shards with `fully_shard`, trains, gathers and saves pruned.

The Trainer enables FSDP only on accelerators (accelerate maps `use_cpu` multi-process runs to plain DDP), so this
drives `torch.distributed.fsdp.fully_shard` directly under `torchrun` with gloo: the same sharding the Trainer applies
on GPUs. Methods that prune during training are refused on sharded models with a clear message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import tailored_hf  # noqa: F401  (tailored_llama Auto classes for the per-layer pruned model)
from tailored_hf.structure import PLAN_FILENAME

from .conftest import run_ok

SCRIPT = Path(__file__).with_name("fsdp_script.py")
#: FSDP averages two per-rank mean losses where the single process takes one mean: equal up to summation order. The
#: script trains with plain SGD, so the weights differ by lr x (gradient rounding), far below these; a gradient summed
#: over the ranks instead of averaged, or a rank's shard lost in the gather, moves weights by whole updates.
WEIGHT_RTOL = 1e-4
WEIGHT_ATOL = 1e-6


@pytest.mark.distributed
def test_pruned_model_trains_under_fsdp2_and_saves_gathered(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    fsdp.mkdir()
    single.mkdir()
    run_ok([str(torchrun), "--nproc_per_node", "2", str(SCRIPT), str(fsdp), "fsdp"], tmp_path)
    run_ok([sys.executable, str(SCRIPT), str(single), "single"], tmp_path)

    ranks = [json.loads((fsdp / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = json.loads((single / "rank0.json").read_text())
    assert ranks[0]["plan"] == ranks[1]["plan"] == reference["plan"]  # sharded importance, same plan
    assert all(r["sharding"] == "FSDP2" and r["world_size"] == 2 for r in ranks)
    assert "needs unsharded parameters" in ranks[0]["refusal"] and "depgraph" in ranks[0]["refusal"]
    assert (fsdp / "model" / PLAN_FILENAME).is_file()

    # Training moved the weights by far more than the tolerance, so the comparison below can tell a wrong gradient.
    assert reference["max_update"] > 1000 * WEIGHT_ATOL and ranks[0]["max_update"] > 1000 * WEIGHT_ATOL

    sharded_model = AutoModelForCausalLM.from_pretrained(fsdp / "model")
    single_model = AutoModelForCausalLM.from_pretrained(single / "model")
    sharded_state, single_state = sharded_model.state_dict(), single_model.state_dict()
    assert sharded_state.keys() == single_state.keys()
    for name, tensor in single_state.items():
        torch.testing.assert_close(
            sharded_state[name], tensor, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=lambda m, name=name: f"{name}: {m}"
        )
