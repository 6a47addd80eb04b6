"""Pruning steps at the C4 budget: perplexity after the same C4 LoRA, per configuration (SmolLM2-135M-Instruct).

`depgraph_configs.py` compares the dependency-group pass's configurations without any training; at 50% every one of
them is far from dense (WikiText-2 ppl 3,500-22,000), and the order can change once the model trains. This script
gives each configuration the C4 LoRA budget of `tailored_llama.NUTEPRUNE_ARGS` (500 steps x one 128-token window,
LoRA r=8 on q_proj / v_proj, merged: `tailored_llama.c4_lora`), next to NutePrune's L0 masks trained on that same
budget, and measures perplexity only: on held-out C4 (windows from C4 documents the training did not draw from,
`l0_controller.heldout_c4`; the criterion) and on WikiText-2 (40 windows of 128 tokens, the report's protocol). No
task is scored, so picking a configuration here selects nothing on the 7 tasks.

Models are built by `tailored_llama.Bench.pruned` and cached under `outputs/tailored_llama/`, where
`tailored_llama.py` and `peers/paired_comparison.py` find them again.

    .venv/bin/python benchmarks/c4_budget_configs.py                 # 50%, ~4 min per configuration not cached
    .venv/bin/python benchmarks/c4_budget_configs.py --report-only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))

from common import RESULTS_DIR, add_model_arguments, write_markdown  # noqa: E402
from l0_controller import heldout_c4, perplexities, reproduce_lines, resumed  # noqa: E402
from tailored_llama import EXTRA_CONFIGS, Bench, add_recovery_arguments, c4_budget_text, nuteprune_args  # noqa: E402

from tailored_hf.structure import count_parameters  # noqa: E402
from tailored_hf.structure.plan import atomic_write_text  # noqa: E402

RESULTS = RESULTS_DIR / "c4_budget_configs"
#: Configuration -> `Bench.pruned` overrides; every one but "l0" gets the C4 LoRA after pruning (`generic_lora`),
#: "l0" trains its masks with that LoRA. Names of the dependency-group configurations as in `depgraph_configs.py`.
CONFIGS: dict[str, dict[str, Any]] = {
    "paper (heads, KV groups, FFN; uniform)": {},
    "+ hidden channels": {"prune_hidden": True},
    "global ranking, iterative (5 rounds)": {"global_ranking": True, "iterative_steps": 5},
    "+ hidden channels, global ranking, iterative (5 rounds)": {
        "prune_hidden": True,
        "global_ranking": True,
        "iterative_steps": 5,
    },
    "NutePrune L0 masks, no KD (trained with the C4 LoRA)": EXTRA_CONFIGS["l0"],
}
RUN_OPTIONS = ("out", "report_only")

logger = logging.getLogger("c4_budget_configs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of total parameters removed")
    parser.add_argument("--heldout-windows", type=int, default=64, help="held-out C4 windows of 128 tokens")
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows of 128 tokens")
    add_recovery_arguments(parser)  # only --seed matters here; the rest keeps `Bench`'s arguments complete
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the cached rows only")
    return parser.parse_args(argv)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args()
    path = Path(args.out + ".json")
    if args.report_only:
        data = json.loads(path.read_text())
        write_markdown(args.out, render(data))
        return
    settings = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    data = resumed(path, {"settings": settings, "budget": c4_budget_text(), "rows": {}})
    # `Bench` writes nothing unless a cell is measured; point its cache at a file of its own all the same.
    bench = Bench(argparse.Namespace(**(vars(args) | {"out": args.out + "_bench"})))
    heldout = heldout_c4(bench.tokenizer, args, nuteprune_args(args))
    dense = count_parameters(bench.model)
    if "dense" not in data["rows"]:
        data["rows"]["dense"] = perplexities(bench.model, heldout, bench.wikitext, args) | {"removed": 0.0}
    for name, overrides in CONFIGS.items():
        if name in data["rows"]:
            continue
        start = time.perf_counter()
        extra = {} if overrides.get("method") else {"generic_lora": "c4"}
        model, _ = bench.pruned(args.ratio, **overrides, **extra)
        data["rows"][name] = perplexities(model, heldout, bench.wikitext, args) | {
            "removed": 1 - count_parameters(model) / dense,
            "seconds": time.perf_counter() - start,
        }
        logger.info("%s: %s", name, data["rows"][name])
        atomic_write_text(path, json.dumps(data, indent=1))
    atomic_write_text(path, json.dumps(data, indent=1))
    write_markdown(args.out, render(data))


def render(data: dict[str, Any]) -> str:
    s = data["settings"]
    lines = [
        f"# Pruning steps at {s['ratio']:.0%} after the same C4 LoRA: perplexity (SmolLM2-135M-Instruct)",
        "",
        f"Each dependency-group configuration pruned (Taylor, 20 x 128 book tokens), then the C4 LoRA "
        f"({data['budget']}), merged; NutePrune's L0 masks trained with that LoRA. Perplexity on held-out C4 "
        f"({s['heldout_windows']} windows of 128 tokens from documents the training did not draw from; the "
        f"criterion) and WikiText-2 ({s['ppl_windows']} windows of 128 tokens). No task scored.",
        "",
        "| configuration | removed % | held-out C4 ppl | WikiText-2 ppl |",
        "|---|---|---|---|",
    ]
    for name, row in data["rows"].items():
        lines.append(
            f"| {name} | {100 * row['removed']:.1f} | {row['heldout_c4_ppl']:.1f} | {row['wikitext2_ppl']:.1f} |"
        )
    pruned = {name: row for name, row in data["rows"].items() if name != "dense"}
    if pruned:
        best = min(pruned, key=lambda name: pruned[name]["heldout_c4_ppl"])
        lines += ["", f"Lowest held-out C4 perplexity at {s['ratio']:.0%}: {best}."]
    lines += reproduce_lines("c4_budget_configs.py", s["ratio"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
