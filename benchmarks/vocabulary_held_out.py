"""How well each task's own vocabulary carries over to text it was not counted on (no model run, tokenizer only).

Per task: the train split is split as the pipeline splits it (`split_dev_and_pool`, `--held-out` rows, seed 0); the
vocabulary is counted on the rest at each coverage (label-free text, scored format, every choice), and its share of the
held-out rows' tokens (`held_out_share`, what `tailored_hf.pipeline` reports) and of the validation split's tokens
(reported only) are written to `benchmarks/results/vocabulary_held_out.{json,md}`, with the share of each task's
validation tokens that the 7 tasks' vocabulary (counted on every train row) keeps. A split too small for a task
vocabulary shows as a held-out share well below the coverage (the pipeline warns below coverage minus
`VOCABULARY_HELD_OUT_MARGIN`).

    .venv/bin/python benchmarks/vocabulary_held_out.py   # about 1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, add_model_arguments, begin_run, write_markdown  # noqa: E402

from tailored_hf.data import label_free_texts, load_task_split  # noqa: E402
from tailored_hf.data.selection import split_dev_and_pool  # noqa: E402
from tailored_hf.eval import COMMONSENSE_TASKS  # noqa: E402
from tailored_hf.loading import load_model  # noqa: E402
from tailored_hf.pipeline import VOCABULARY_HELD_OUT_MARGIN  # noqa: E402
from tailored_hf.structure.vocabulary import kept_share, select_tokens, token_counts  # noqa: E402

RESULTS = RESULTS_DIR / "vocabulary_held_out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--tasks", nargs="+", default=list(COMMONSENSE_TASKS))
    parser.add_argument("--coverages", type=float, nargs="+", default=[0.99, 0.995, 1.0])
    parser.add_argument("--held-out", type=int, default=200, help="train rows held out per task")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the cached JSON only")
    return parser.parse_args(argv)


def main() -> None:
    args = begin_run(parse_args, render, seed=None)
    if args is None:
        return
    _, tokenizer = load_model(args.model)
    rows: dict[str, Any] = {}
    validations: dict[str, Counter[int]] = {}
    every_train: Counter[int] = Counter()  # the 7 tasks' vocabulary (`benchmarks/tailored_llama.py`'s): all train rows
    for task in args.tasks:
        train = load_task_split(task, "train", data_dir=args.data_dir)
        held, rest = split_dev_and_pool(train, dev_size=args.held_out, seed=0)
        counts = token_counts(tokenizer, label_free_texts(rest, task))
        held_counts = token_counts(tokenizer, label_free_texts(held, task))
        every_train += counts + held_counts
        validation_rows = load_task_split(task, "validation", data_dir=args.data_dir)
        validation = validations[task] = token_counts(tokenizer, label_free_texts(validation_rows, task))
        shares = {}
        for c in args.coverages:  # `held_out_share`: one vocabulary per coverage, the share of each text it keeps
            tokens = select_tokens(tokenizer, counts=counts, coverage=c)
            shares[str(c)] = {
                "held_out": kept_share(held_counts, tokens),
                "validation": kept_share(validation, tokens),
            }
        rows[task] = {"train_rows": len(train), "shares": shares}
    validations["all"] = sum(validations.values(), Counter())
    shared = {}
    for c in args.coverages:
        tokens = select_tokens(tokenizer, counts=every_train, coverage=c)
        shared[str(c)] = {"validation": {task: kept_share(v, tokens) for task, v in validations.items()}}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "report_only")}
    data = {"settings": settings, "tasks": rows, "shared": shared}
    Path(args.out + ".json").write_text(json.dumps(data, indent=2))
    write_markdown(args.out, render(data))


def render(data: dict[str, Any]) -> str:
    s = data["settings"]
    lines = [
        "# Task vocabulary: the share of unseen text's tokens it keeps, per task",
        "",
        f"Vocabulary counted on each task's train split without {s['held_out']} held-out rows (the pipeline's "
        "`split_dev_and_pool`, seed 0); share of the held-out rows' tokens it keeps / of the validation split's "
        f"(reported only). The pipeline warns below the coverage minus {VOCABULARY_HELD_OUT_MARGIN:g}.",
        "",
        "| task | train rows | " + " | ".join(f"coverage {c:g}" for c in s["coverages"]) + " |",
        "|---|---|" + "---|" * len(s["coverages"]),
    ]
    for task, row in data["tasks"].items():
        cells = [row["shares"][str(c)] for c in s["coverages"]]
        lines.append(
            f"| {task} | {row['train_rows']:,} | "
            + " | ".join(f"{100 * c['held_out']:.1f}% / {100 * c['validation']:.1f}%" for c in cells)
            + " |"
        )
    shared = data.get("shared")
    if shared:
        tasks = list(data["tasks"])
        lines += [
            "",
            f"The vocabulary of the {len(tasks)} tasks' train text together (every train row; the one "
            "`benchmarks/tailored_llama.py` trims to for all tasks): the share of each task's validation tokens it "
            "keeps, and of all of them.",
            "",
            "| coverage | " + " | ".join(tasks) + " | all |",
            "|---|" + "---|" * (len(tasks) + 1),
        ]
        for c in s["coverages"]:
            shares = shared[str(c)]["validation"]
            lines.append(f"| {c:g} | " + " | ".join(f"{100 * shares[t]:.1f}%" for t in [*tasks, "all"]) + " |")
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/vocabulary_held_out.py`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
