"""Task-vocabulary coverage at one ratio, chosen on held-out train items: how much of the vocabulary to trim before the
L0 masks remove the rest of the parameters.

`tailored_llama.py`'s "vocab_l0" model keeps the tokens of 99% of the 7 tasks' train text, a coverage fixed before any
score. On the 1000-item sets at 20% (`paired_comparison_20.md`) that trim alone costs 1.5 points on the five
informative tasks for 10.7% of the parameters, while the L0 masks that remove the other 9.3% cost about 6 more. So
another coverage may keep more of the dense model. This script chooses the coverage without reading validation text:

- Selection set: held-out train items per task (`task_lora_lr.selection_rows`: a seeded draw without the K shots,
  `--selection-limit` per task, BoolQ `--selection-boolq-limit`).
- Per coverage of `--coverages`: the vocabulary is counted on the 7 tasks' train text *without* the selection rows.
  With it, the dense model is trimmed alone, and the "vocab_l0" model is built (the task vocabulary, then NutePrune's
  L0 masks and their C4 LoRA remove the rest of `--ratio`; cached under its own name). Both are scored untuned on the
  selection items, with the trimmed tokenizer.
- Choice: the coverage whose "vocab_l0" model has the highest mean over the tasks where the dense model beats chance
  by more than `NEAR_CHANCE` on the selection items (ties: the larger coverage, the smaller trim).
- The dense and the "vocab_l0" models are also scored on `tailored_llama.py`'s validation items (first 200 per task,
  BoolQ 100), reported beside the choice, which never reads them.

    .venv/bin/python benchmarks/vocabulary_coverage.py --ratio 0.2       # ~10 min per coverage on 2 quiet cores
    .venv/bin/python benchmarks/vocabulary_coverage.py --ratio 0.2 --report-only
    .venv/bin/python benchmarks/vocabulary_coverage.py --tasks piqa arc_easy --coverages 0.99 --limit 8 \\
        --boolq-limit 8 --selection-limit 8 --out /tmp/vocabulary_coverage_smoke               # smoke (builds a model)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

from common import add_model_arguments, begin_run, results_path, write_markdown  # noqa: E402
from tailored_llama import CHANCE, EXTRA_CONFIGS, NEAR_CHANCE, Bench, add_recovery_arguments  # noqa: E402
from task_lora_lr import add_item_arguments, selection_items, selection_rows, selection_score  # noqa: E402

from tailored_hf.data import load_task_split  # noqa: E402
from tailored_hf.eval import COMMONSENSE_TASKS  # noqa: E402
from tailored_hf.structure import count_parameters  # noqa: E402

#: `tailored_llama.py`'s fixed coverage in the middle: one step less and one step more of the vocabulary kept.
COVERAGES = (0.98, 0.99, 0.995)
MODEL = "vocab_l0"
RESULTS_STEM = "vocabulary_coverage"
RUN_OPTIONS = ("out", "report_only", "coverages")

logger = logging.getLogger("vocabulary_coverage")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--ratio", type=float, default=0.2, help="fraction of total parameters removed")
    parser.add_argument("--coverages", type=float, nargs="+", default=list(COVERAGES), help="coverages compared")
    add_item_arguments(parser)
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows (dense model only)")
    add_recovery_arguments(parser)
    parser.add_argument("--out", help=f"results path without suffix (default: {RESULTS_STEM}_<percent>)")
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the cached cells only")
    args = parser.parse_args(argv)
    args.out = args.out or results_path(RESULTS_STEM, args.ratio)
    return args


class CoverageBench(Bench):
    """`tailored_llama.Bench` whose task vocabulary is counted without the selection rows."""

    run_options = RUN_OPTIONS

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.held_out = {task: selection_rows(task, args) for task in COMMONSENSE_TASKS}
        self.selection = {task: selection_items(task, args) for task in args.tasks}
        # The held-out rows shape the vocabulary, so they name the cached models (a smoke run's differ).
        self.vocabulary_tag = f"-without_selection{args.selection_limit}_{args.selection_boolq_limit}_seed{args.seed}"

    def vocabulary_rows(self, task: str):
        train = load_task_split(task, "train", data_dir=self.args.data_dir)
        held_out = set(self.held_out[task])
        return train.select([row for row in range(len(train)) if row not in held_out])

    def scored_cell(self, key: str, model, validation: bool = True) -> None:
        """`model` untuned on the selection items and (`validation`) the validation items, with the current
        tokenizer."""

        def run() -> dict[str, Any]:
            tasks = self.args.tasks
            selection = {t: selection_score(model, self.tokenizer, self.selection[t], t) for t in tasks}
            return {**(self.evaluate(model, tasks) if validation else {"tasks": {}}), "selection": selection}

        self.cell(key, run, model=model)


def main() -> None:
    args = begin_run(parse_args, render)
    if args is None:
        return
    bench = CoverageBench(args)
    dense_params = count_parameters(bench.model)
    bench.scored_cell("dense", bench.model)
    for coverage in sorted(args.coverages, key=lambda c: c != 0.99):  # the fixed coverage first
        alone, tokenizer, tokens = bench.trimmed_model(coverage)
        bench.data.setdefault("params", {})[str(coverage)] = {
            "tokens": len(tokens),
            "source_tokens": len(bench.dense_tokenizer),
            "trimmed": 1 - count_parameters(alone) / dense_params,
        }
        with bench.scoring_with(tokenizer):
            bench.scored_cell(f"{coverage}/alone", alone, validation=False)  # the choice's context only
            del alone
            model, _ = bench.pruned(args.ratio, **(EXTRA_CONFIGS[MODEL] | {"vocabulary_coverage": coverage}))
            bench.data["params"][str(coverage)]["removed"] = 1 - count_parameters(model) / dense_params
            bench.scored_cell(f"{coverage}/{MODEL}", model)
            del model
    bench.save()
    write_markdown(args.out, render(bench.data))


# ---------------------------------------------------------------------------------------------------- report
def mean_over(cell: dict[str, Any] | None, which: str, tasks: list[str]) -> float | None:
    """Mean primary metric of a cell over `tasks`, on the `selection` or the validation (`tasks`) items."""
    if cell is None:
        return None
    scores = cell["selection"] if which == "selection" else cell["tasks"]
    return sum(scores[t]["score"] for t in tasks) / len(tasks) if all(t in scores for t in tasks) else None


def informative(dense: dict[str, Any], which: str, tasks: list[str]) -> list[str]:
    """Tasks where the dense model beats chance by more than `NEAR_CHANCE` on those items."""
    scores = dense["selection"] if which == "selection" else dense["tasks"]
    return [t for t in tasks if scores[t]["score"] - CHANCE[t] > NEAR_CHANCE]


def coverages_in(data: dict[str, Any]) -> list[float]:
    """The coverages a run has started (their vocabulary is recorded in `params`)."""
    return sorted(float(coverage) for coverage in data.get("params", {}))


def chosen_coverage(data: dict[str, Any]) -> float | None:
    """The coverage whose `MODEL` has the highest selection mean on the informative selection tasks (ties: the larger
    coverage); None until every coverage started is scored."""
    cells = {k: v["value"] for k, v in data["cells"].items()}
    tasks = data["settings"]["tasks"]
    if "dense" not in cells:
        return None
    subset = informative(cells["dense"], "selection", tasks)
    means = {c: mean_over(cells.get(f"{c}/{MODEL}"), "selection", subset) for c in coverages_in(data)}
    if any(value is None for value in means.values()):
        return None
    return max(sorted(means, reverse=True), key=lambda c: means[c])


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def render(data: dict[str, Any]) -> str:
    s = data["settings"]
    tasks = s["tasks"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    dense = cells.get("dense")
    lines = [
        f"# Task-vocabulary coverage at {s['ratio']:.0%}, chosen on held-out train items (SmolLM2-135M-Instruct)",
        "",
        f"Selection: {s['selection_limit']} held-out train items per task (BoolQ {s['selection_boolq_limit']}; none "
        f"of them a task shot, none counted in the vocabulary). Validation: the first {s['limit']} items per task "
        f"(BoolQ {s['boolq_limit']}), `tailored_llama.md`'s, reported only. Models untuned: the trim alone, and "
        f"`{MODEL}` (the task vocabulary, then NutePrune's L0 masks + their C4 LoRA for the rest of {s['ratio']:.0%} "
        "of the dense parameters). The coverage is chosen on the selection mean of the tasks where the dense model "
        f"beats chance by more than {100 * NEAR_CHANCE:.0f} points there.",
        "",
    ]
    if dense is None:
        return "\n".join([*lines, "Not measured yet.", ""])
    picked = informative(dense, "selection", tasks)
    shown = informative(dense, "validation", tasks)
    chosen = chosen_coverage(data)
    lines += [
        f"Informative tasks: selection {', '.join(picked)}; validation {', '.join(shown)}.",
        "",
        f"| model | coverage | tokens kept | parameters removed | selection: {len(tasks)} tasks | selection: "
        f"informative | validation: {len(tasks)} tasks | validation: informative | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| dense | — | — | — | {pct(mean_over(dense, 'selection', tasks))} | "
        f"{pct(mean_over(dense, 'selection', picked))} | {pct(mean_over(dense, 'validation', tasks))} | "
        f"{pct(mean_over(dense, 'validation', shown))} | |",
    ]
    for coverage in coverages_in(data):
        params = data.get("params", {}).get(str(coverage), {})
        for name, label, removed in (("alone", "trim alone", "trimmed"), (MODEL, MODEL, "removed")):
            cell = cells.get(f"{coverage}/{name}")
            if cell is None:
                continue
            share = params.get(removed)
            lines.append(
                f"| {label} | {coverage:g} | {params.get('tokens', 0):,} | "
                f"{'—' if share is None else f'{share:.1%}'} | {pct(mean_over(cell, 'selection', tasks))} | "
                f"{pct(mean_over(cell, 'selection', picked))} | {pct(mean_over(cell, 'validation', tasks))} | "
                f"{pct(mean_over(cell, 'validation', shown))} | "
                + ("yes" if name == MODEL and coverage == chosen else "")
                + " |"
            )
    lines += [
        "",
        "Chosen coverage: " + ("not yet (a coverage is not scored)" if chosen is None else f"{chosen:g}") + ".",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/vocabulary_coverage.py --ratio {s['ratio']}`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
