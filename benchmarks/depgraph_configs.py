"""Configurations of the dependency-group pass on SmolLM2-135M-Instruct: WikiText-2 perplexity without tuning.

The ways `DepGraphConfig` can spread a ratio over the model, at each ratio: the paper's (query heads, KV groups and
FFN channels, the same fraction in every unprotected layer), hidden (residual-stream) channels pruned too, global
ranking across layers, and both; the paper's, global ranking and both-with-hidden also in 5 rounds that score the
partly pruned model again (`iterative_steps`, LLM-Pruner's iterative pruning). Same calibration (20 x 128 tokens
of the book sample, seed 0) and the same perplexity protocol as `tailored_llama.py` (40 windows of 128 tokens), dense
baseline alongside. This is the sweep behind the extra configurations `tailored_llama.py` evaluates end to end; it
measures only perplexity (minutes, not hours), so it selects nothing on the 7 tasks.

    .venv/bin/python benchmarks/depgraph_configs.py        # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, add_model_arguments

from tailored_hf.data import load_lm_text
from tailored_hf.eval import token_perplexity
from tailored_hf.loading import load_model
from tailored_hf.methods.depgraph import DepGraphConfig, calibration_for, prune
from tailored_hf.structure import count_parameters
from tailored_hf.structure.plan import atomic_write_text

RESULTS = RESULTS_DIR / "depgraph_configs"
#: Rounds of the iterative configurations (LLM-Pruner's --iterative_steps; not tuned on this sweep's metric).
ITERATIVE_STEPS = 5
CONFIGS: dict[str, dict[str, Any]] = {
    "paper (heads, KV groups, FFN; uniform)": {},
    "+ hidden channels": {"prune_hidden": True},
    "global ranking": {"global_ranking": True},
    "+ hidden channels, global ranking": {"prune_hidden": True, "global_ranking": True},
    "iterative (5 rounds)": {"iterative_steps": ITERATIVE_STEPS},
    "global ranking, iterative (5 rounds)": {"global_ranking": True, "iterative_steps": ITERATIVE_STEPS},
    "+ hidden channels, global ranking, iterative (5 rounds)": {
        "prune_hidden": True,
        "global_ranking": True,
        "iterative_steps": ITERATIVE_STEPS,
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows of 128 tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    model.eval()
    wikitext = tokenizer(load_lm_text("wikitext2", data_dir=args.data_dir), return_tensors="pt").input_ids[0]
    calibration = calibration_for(DepGraphConfig(seed=args.seed), tokenizer, data_dir=args.data_dir)
    dense = count_parameters(model)
    rows = [
        {
            "ratio": 0.0,
            "config": "dense",
            "removed": 0.0,
            "ppl": token_perplexity(model, wikitext, max_windows=args.ppl_windows).perplexity,
        }
    ]
    for ratio in args.ratios:
        for name, overrides in CONFIGS.items():
            pruned = copy.deepcopy(model)
            start = time.perf_counter()
            prune(pruned, DepGraphConfig(target_sparsity=ratio, seed=args.seed, **overrides), calibration=calibration)
            seconds = time.perf_counter() - start
            ppl = token_perplexity(pruned, wikitext, max_windows=args.ppl_windows).perplexity
            removed = 1 - count_parameters(pruned) / dense
            row = {"ratio": ratio, "config": name, "overrides": overrides, "removed": removed, "ppl": ppl}
            rows.append(row | {"prune_seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
            del pruned
    report = {
        "settings": vars(args),
        "rows": rows,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), render(report))
    print(render(report))


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Dependency-group pass configurations: WikiText-2 perplexity without tuning (SmolLM2-135M-Instruct)",
        "",
        f"Taylor importance on 20 x 128 calibration tokens (book sample, seed {s['seed']}); token perplexity over "
        f"{s['ppl_windows']} WikiText-2 windows of 128 tokens (the `tailored_llama.py` protocol). First and last "
        "layers protected in every configuration.",
        "",
        "| ratio | configuration | removed % | WikiText-2 ppl |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        tag = "—" if row["ratio"] == 0 else f"{row['ratio']:.0%}"
        lines.append(f"| {tag} | {row['config']} | {100 * row['removed']:.1f} | {row['ppl']:.1f} |")
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/depgraph_configs.py`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
