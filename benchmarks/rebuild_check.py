"""Rebuilt-model check: a cached model of `tailored_llama.py` scored again beside the no-tune cell cached for it.

The pruned models that take training (`tailored_llama.MODEL_CACHE`) are not bit-identical when rebuilt on another
host (CPU training ends on other bits). Cells recorded before cells carried fingerprints (`common.model_fingerprint`)
cannot tell which build they scored; this script scores the build cached now (made first if missing) with the same
protocol and items (`tailored_llama.Bench.evaluate`, `tailored_llama.py`'s default settings) and reports it beside
the cached no-tune cell, per task, with the fingerprint of the build it scored. It changes no cell.

    .venv/bin/python benchmarks/rebuild_check.py --config l0 --ratio 0.2     # ~2 min with the model cached
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

from common import add_model_arguments, begin_run, model_fingerprint, results_path, write_markdown  # noqa: E402
from tailored_llama import CHANCE, EXTRA_CONFIGS, NEAR_CHANCE, VOCABULARY_CONFIGS, Bench  # noqa: E402
from tailored_llama import parse_args as bench_arguments  # noqa: E402

from tailored_hf.structure.plan import atomic_write_text  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--config",
        choices=sorted(set(EXTRA_CONFIGS) - set(VOCABULARY_CONFIGS)),  # scored with the dense tokenizer here
        default="l0",
        help="a `tailored_llama` config",
    )
    parser.add_argument("--ratio", type=float, default=0.2, help="fraction of total parameters removed")
    parser.add_argument("--out", help="results path without suffix (default: rebuild_check_<config>_<percent>)")
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the JSON only")
    args = parser.parse_args(argv)
    args.out = args.out or results_path(f"rebuild_check_{args.config}", args.ratio)
    return args


def informative_tasks(data: dict[str, Any]) -> list[str]:
    """The tasks where the dense model scores more than `NEAR_CHANCE` above chance (`run_all.py`'s rule)."""
    dense = data["rows"]["dense"]["tasks"]
    return [t for t in data["tasks"] if dense[t] - CHANCE[t] > NEAR_CHANCE]


def row_means(data: dict[str, Any], row: str) -> tuple[float, float]:
    """Row `row`'s mean over all tasks and over the informative ones."""
    scores, informative = data["rows"][row]["tasks"], informative_tasks(data)
    return sum(scores.values()) / len(scores), sum(scores[t] for t in informative) / len(informative)


def render(data: dict[str, Any]) -> str:
    tasks, rows, informative = data["tasks"], data["rows"], informative_tasks(data)

    def line(label: str, row: str) -> str:
        mean, five = row_means(data, row)
        cells = " | ".join(f"{100 * rows[row]['tasks'][t]:.1f}" for t in tasks)
        return f"| {label} | {cells} | {100 * mean:.1f} | {100 * five:.1f} | {rows[row]['wikitext2_ppl']:.1f} |"

    return "\n".join(
        [
            f"# Rebuilt-model check: `{data['config']}` at {data['ratio']:.0%}",
            "",
            f"The model cached now (fingerprint `{data['fingerprint'][:12]}`) scored with `tailored_llama.py`'s "
            "protocol and items, beside the cell that run cached for this configuration (an earlier build) and the "
            f"dense model. Informative tasks: those where dense scores more than {100 * NEAR_CHANCE:.0f} points "
            f"above chance (all but {', '.join(t for t in tasks if t not in informative)}).",
            "",
            f"| model | {' | '.join(tasks)} | mean | informative mean | WikiText-2 ppl |",
            "|---|" + "---|" * (len(tasks) + 3),
            line("dense (cached cell)", "dense"),
            line("cached cell", "cached"),
            line("build cached now", "rebuilt"),
            "",
            f"Reproduce: `.venv/bin/python benchmarks/rebuild_check.py --config {data['config']} --ratio "
            f"{data['ratio']:g}`.",
            "",
        ]
    )


def scores(result: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": {t: v["score"] for t, v in result["tasks"].items()}, "wikitext2_ppl": result["wikitext2_ppl"]}


def main() -> None:
    args = begin_run(parse_args, render, seed=None)
    if args is None:
        return
    bench = Bench(bench_arguments(["--model", args.model, "--data-dir", args.data_dir]))
    key = f"{args.ratio:.0%}/{args.config}/pruned"
    if key not in bench.data["cells"] or "dense" not in bench.data["cells"]:
        raise SystemExit(f"{bench.path} has no cached {key!r} (or dense) cell to compare with")
    model, _ = bench.pruned(args.ratio, **EXTRA_CONFIGS[args.config])
    tasks = bench.args.tasks
    data = {
        "config": args.config,
        "ratio": args.ratio,
        "tasks": tasks,
        "fingerprint": model_fingerprint(model),
        "rows": {
            "dense": scores(bench.data["cells"]["dense"]["value"]),
            "cached": scores(bench.data["cells"][key]["value"]),
            "rebuilt": scores(bench.evaluate(model, tasks)),
        },
    }
    atomic_write_text(Path(args.out + ".json"), json.dumps(data, indent=2))
    write_markdown(args.out, render(data))


if __name__ == "__main__":
    main()
