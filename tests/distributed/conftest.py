"""Helpers for the multi-process tests: worker processes on one thread each, offline, with the repository
importable."""

from __future__ import annotations

import os
import subprocess

from ..conftest import REPO_ROOT


def launch(cmd: list[str], cwd=None) -> subprocess.CompletedProcess:
    """Run a worker command (a launcher or a plain script) and return its completed process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_ok(cmd: list[str], cwd=None) -> None:
    """`launch`, asserting success with the end of the worker's stderr as the message."""
    result = launch(cmd, cwd)
    assert result.returncode == 0, result.stderr[-4000:]
