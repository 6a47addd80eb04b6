"""`PrunerCallback` under `accelerate launch --multi_gpu --num_processes 2` with `use_cpu=True` (gloo DDP on CPU).

(`accelerate launch --cpu --num_processes 2` needs `mpirun`; `--multi_gpu` starts the processes with torchrun and the
script's `TrainingArguments(use_cpu=True, ddp_backend="gloo")` keeps them on the CPU.)

Every rank reaches the same plan (depgraph shards the calibration over ranks and sum-reduces the scores), only the
main process writes the model, and the result equals a single-process run over the same global batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tailored_hf.structure import PLAN_FILENAME, PruningPlan

from .conftest import run_ok

SCRIPT = Path(__file__).with_name("train_script.py")
#: DDP averages two per-rank mean losses where the single process takes one mean: equal up to float summation order.
WEIGHT_RTOL = 1e-4


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["depgraph", "magnitude", "l0", "atp"])
def test_two_processes_agree_and_match_single_process(tmp_path, method):
    accelerate = Path(sys.executable).with_name("accelerate")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run_ok(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(SCRIPT),
            str(ddp),
            method,
            "2",
        ],
        tmp_path,
    )
    run_ok([sys.executable, str(SCRIPT), str(single), method, "4"], tmp_path)

    rank0, rank1 = (json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1))
    alone = json.loads((single / "rank0.json").read_text())
    assert rank0["world_size"] == 2 and alone["world_size"] == 1
    assert rank0["plan"] == rank1["plan"] == alone["plan"]
    for name, value in alone["weights"].items():
        assert rank0["weights"][name] == rank1["weights"][name], name  # DDP keeps replicas identical
        assert rank0["weights"][name] == pytest.approx(value, rel=WEIGHT_RTOL, abs=1e-6), name
    # One model, written once by the main process.
    assert (ddp / "model" / PLAN_FILENAME).is_file() and (ddp / "model" / "model.safetensors").is_file()
    assert not list((ddp / "model").glob("*.tmp*"))
    saved = PruningPlan.load(ddp / "model").to_dict()
    assert {k: v for k, v in saved.items() if k != "metadata"} == rank0["plan"]
