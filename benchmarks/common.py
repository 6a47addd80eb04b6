"""What the benchmark scripts share: where the results and the real data are, and the options that name the model.

The data directory defaults to `$TAILORED_HF_DATA_DIR` (the library's own variable), else `shared/data` beside the
project, where `../shared/data/README.md` describes the real data; `--data-dir` overrides both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tailored_hf.data.sources import DATA_DIR_ENV_VAR
from tailored_hf.loading import DEFAULT_MODEL
from tailored_hf.methods.l0 import L0Config
from tailored_hf.structure.plan import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
#: Issue 9's moonshot: share of the dense 7-task mean kept after task-specific recovery, per fraction removed.
MOONSHOT_TARGETS: dict[float, float] = {0.2: 0.95, 0.5: 0.85}
#: NutePrune's sparsity constraint, `L0Config`'s default: the benchmarks name another only where they choose one.
L0_DEFAULT_CONSTRAINT: str = L0Config.sparsity_constraint
DEFAULT_DATA_DIR = Path(os.environ.get(DATA_DIR_ENV_VAR) or ROOT.parent / "shared" / "data")


def add_model_arguments(parser: argparse.ArgumentParser, data_dir: bool = True) -> None:
    """`--model` and (unless `data_dir=False`) `--data-dir`, with the defaults above."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="an offline alias of `tailored_hf.loading` (default: SmolLM2-135M-Instruct) or a checkpoint folder",
    )
    if data_dir:
        parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the real data (tasks, text corpora)")


def results_path(stem: str, ratio: float, unsuffixed: float | None = None) -> str:
    """`RESULTS_DIR / <stem>_<percent>` (no suffix at `unsuffixed`, for a script whose first results had none): the
    results path, without extension, of a script run at one pruning ratio."""
    return str(RESULTS_DIR / stem) + ("" if ratio == unsuffixed else f"_{round(100 * ratio)}")


def read_results(out: str) -> dict[str, Any]:
    """The cached results `<out>.json` of a benchmark run (what `--report-only` renders)."""
    return json.loads(Path(out + ".json").read_text())


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of `model`'s weights (every `state_dict` entry's name, dtype, shape and bytes, in order): equal for
    bit-identical models, such as one reloaded from its saved files, and different for a rebuilt model whose training
    on another host ended on other bits. About 0.6 s for SmolLM2-135M on this CPU."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_markdown(out: str, text: str) -> None:
    """Writes the rendered report to `<out>.md` (atomically) and prints it."""
    atomic_write_text(Path(out + ".md"), text)
    print(text)


def begin_run(
    parse_args: Callable[[], argparse.Namespace], render: Callable[[dict[str, Any]], str], seed: int | None = 0
) -> argparse.Namespace | None:
    """How a benchmark's `main` starts: INFO logging, `torch.manual_seed(seed)` (unless None) and its arguments; with
    `--report-only`, the Markdown rendered from the cached `<out>.json` instead, and None returned."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if seed is not None:
        torch.manual_seed(seed)
    args = parse_args()
    if args.report_only:
        write_markdown(args.out, render(read_results(args.out)))
        return None
    return args
