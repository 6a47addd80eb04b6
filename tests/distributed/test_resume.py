"""Kill -9 after a checkpoint, resume with `resume_from_checkpoint`: same plan and weights as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from tailored_hf.callback import STATE_FILENAME, TENSOR_STATE_FILENAME
from tailored_hf.structure import PLAN_FILENAME

from .conftest import launch

SCRIPT = Path(__file__).with_name("resume_script.py")
PRUNE_AT_INIT = ("depgraph", "magnitude")


def run(args: list[str], expect_kill: bool = False) -> None:
    result = launch([sys.executable, str(SCRIPT), *args])
    if expect_kill:
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["depgraph", "magnitude", "l0", "atp"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, method):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run([str(straight), method])
    run([str(killed), method, "--die-at", "3"], expect_kill=True)
    checkpoint = killed / "run" / "checkpoint-2"
    assert (checkpoint / STATE_FILENAME).is_file()
    if method in PRUNE_AT_INIT:  # training-time methods prune at train end: their checkpoints carry tensor state
        assert (checkpoint / PLAN_FILENAME).is_file()
    else:
        assert (checkpoint / TENSOR_STATE_FILENAME).is_file()
    assert not (killed / "model").exists()  # died before any final save
    run([str(killed), method, "--resume"])

    a = json.loads((straight / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert a["plan"] == b["plan"]
    assert a["weights"].keys() == b["weights"].keys()
    for name, value in a["weights"].items():
        assert b["weights"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
