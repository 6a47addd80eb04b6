"""Task-LoRA learning rate at this scale: does the paper's 1e-4 (set for a 7B model) under-train SmolLM2-135M?

The moonshot rows of `tailored_llama.py` tune with the paper's recovery settings: K=50 shots, LoRA r=8, lr 1e-4,
3 epochs (21 steps at batch 8). There the dense model + the task LoRA scores within 0.1 point of the dense model, and
the adapters' training losses stay high, so the recovery hardly moves any model. This script asks whether a larger
learning rate, with everything else the paper's, keeps more of the dense model at a ratio, with a choice that the
reported (validation) scores cannot bias:

- Models: NutePrune's L0 masks + their C4 LoRA at `--ratio` (`tailored_llama`'s "l0" configuration, the best moonshot
  row; the same cached model), and the dense model as the "dense + same tune" control.
- Per model, learning rate and task: the task LoRA (`tailored_llama.Bench.tune`, the paper's settings but the rate) on
  the same K shots, scored (lm-eval protocol, primary metric) on two item sets: a selection set of held-out *train*
  items (`--selection-limit` per task, BoolQ `--selection-boolq-limit`; a seeded draw that excludes the K shots) and
  the first validation items of `tailored_llama.py` (200, BoolQ 100: the moonshot table's items).
- The rate of each model is the one with the highest 7-task selection mean (ties: the smaller rate). Validation scores
  are reported for every rate but play no part in the choice.

The pruned model runs first at every rate, then the dense model at the pruned model's chosen rate (the control),
then at the other rates (`--dense-rates all`, the default; `chosen`: the control only); dense cells that another
ratio's run measured with the same settings are taken over. Cells are cached in the JSON (an interrupted run
resumes); at the paper's rate the validation cells must reproduce `tailored_llama.json`'s (checked in the report).

    .venv/bin/python benchmarks/task_lora_lr.py                       # 50% (~2.5 h on 2 quiet cores; resumes)
    .venv/bin/python benchmarks/task_lora_lr.py --ratio 0.2           # 20%
    .venv/bin/python benchmarks/task_lora_lr.py --report-only         # Markdown from the cached cells
    .venv/bin/python benchmarks/task_lora_lr.py --tasks piqa --limit 8 --boolq-limit 8 --selection-limit 8 \\
        --learning-rates 1e-4 1e-3 --ppl-windows 2 --out /tmp/task_lora_lr_smoke   # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))

from common import MOONSHOT_TARGETS, add_model_arguments, begin_run, results_path, write_markdown  # noqa: E402
from tailored_llama import (  # noqa: E402
    CHANCE,
    EXTRA_CONFIGS,
    NEAR_CHANCE,
    RESULTS,
    Bench,
    add_recovery_arguments,
    config_at,
)

from tailored_hf.data import load_task_split, map_for_scoring, sample_k_shots  # noqa: E402
from tailored_hf.eval import COMMONSENSE_TASKS, PRIMARY_METRIC, score_multiple_choice  # noqa: E402
from tailored_hf.structure import count_parameters  # noqa: E402

#: The paper's recovery rate first, then this sweep's: the grid grew by one rate each time its top rate was chosen
#: (at 50%: 1e-3 topped the first grid, then 3e-3; at 20%: 1e-2).
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: Offset of the selection draw's seed from the shots' seed (another stream over the same train split).
SELECTION_SEED_OFFSET = 1
PRUNED = "l0"
RESULTS_STEM = "task_lora_lr"
#: Options that do not change any cell (the rest must match the cache's settings to reuse it).
RUN_OPTIONS = ("out", "report_only", "learning_rates", "dense_rates")

logger = logging.getLogger("task_lora_lr")


def add_item_arguments(parser: argparse.ArgumentParser) -> None:
    """The tasks and both item sets: `tailored_llama.py`'s validation items and the held-out train items that
    `selection_rows` draws (shared by the scripts that choose on those)."""
    parser.add_argument("--tasks", nargs="+", default=list(COMMONSENSE_TASKS))
    parser.add_argument("--limit", type=int, default=200, help="validation items per task (tailored_llama's)")
    parser.add_argument("--boolq-limit", type=int, default=100, help="BoolQ validation items (tailored_llama's)")
    parser.add_argument("--selection-limit", type=int, default=200, help="held-out train items per task")
    parser.add_argument("--selection-boolq-limit", type=int, default=100, help="held-out BoolQ train items")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of total parameters removed")
    add_item_arguments(parser)
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows of 128 tokens")
    parser.add_argument(
        "--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES), help="task-LoRA rates swept"
    )
    parser.add_argument(
        "--dense-rates",
        choices=("all", "chosen"),
        default="all",
        help="tune the dense model at every rate, or only at the pruned model's chosen rate (the control)",
    )
    add_recovery_arguments(parser)
    parser.add_argument("--out", help="results path without suffix (default: task_lora_lr_<percent>)")
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the cached cells only")
    args = parser.parse_args(argv)
    args.out = args.out or results_path(RESULTS_STEM, args.ratio)
    return args


def selection_rows(task: str, args: argparse.Namespace) -> list[int]:
    """Row numbers of the held-out train items of `task` (in order): a seeded draw of the train split without the K
    shots the adapters train on."""
    train = load_task_split(task, "train", data_dir=args.data_dir)
    # The draw depends on the row count, the labels and the seed only, so the extra column leaves it as `Bench.shots`'.
    numbered = train.add_column("_row", list(range(len(train))))
    shots = set(sample_k_shots(numbered, args.k, seed=args.seed, task=task)["_row"])
    limit = args.selection_boolq_limit if task == "boolq" else args.selection_limit
    order = np.random.default_rng(args.seed + SELECTION_SEED_OFFSET).permutation(len(train)).tolist()
    return sorted([row for row in order if row not in shots][:limit])


def selection_items(task: str, args: argparse.Namespace):
    """Held-out train items of `task` (`selection_rows`)."""
    return load_task_split(task, "train", data_dir=args.data_dir).select(selection_rows(task, args))


def selection_score(model, tokenizer, rows, task: str) -> dict[str, Any]:
    """The primary metric of `model` on `rows` of `task` (held-out train items), scored as `evaluate_tasks` does."""
    items = map_for_scoring(rows, task, prompt="lm_eval")
    model.eval()
    scored = score_multiple_choice(model, tokenizer, items, packed=True).to_dict()
    return {"score": scored[PRIMARY_METRIC[task]], "n": scored["n"]}


class RateBench(Bench):
    """`tailored_llama.Bench` with a selection set per task and task-LoRA cells per learning rate."""

    run_options = RUN_OPTIONS

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.selection = {task: selection_items(task, args) for task in args.tasks}
        self.adopt_dense_cells()

    def adopt_dense_cells(self) -> None:
        """The dense model's cells do not depend on the ratio: those another ratio's run measured with the same
        settings (the ratio aside) are taken over instead of measured again."""
        settings = {k: v for k, v in self.data["settings"].items() if k != "ratio"}
        for path in sorted(self.path.parent.glob(f"{RESULTS_STEM}_*.json")):
            if path == self.path:
                continue
            other = json.loads(path.read_text())
            if {k: v for k, v in other["settings"].items() if k != "ratio"} != settings:
                continue
            for key, cell in other["cells"].items():
                if key.startswith("dense/") and key not in self.data["cells"]:
                    self.data["cells"][key] = cell | {"from": path.name}

    def select_score(self, model, task: str) -> dict[str, Any]:
        """The primary metric of `model` on `task`'s selection items."""
        return selection_score(model, self.tokenizer, self.selection[task], task)

    def untuned_cell(self, model, name: str) -> None:
        def run() -> dict[str, Any]:
            selection = {task: self.select_score(model, task) for task in self.args.tasks}
            return {**self.evaluate(model, self.args.tasks), "selection": selection}

        self.cell(f"{name}/untuned", run, model=model)

    def rate_cells(self, model, name: str, rate: float) -> None:
        """`model` + one task LoRA per task at `rate`, scored on the validation and the selection items."""
        for task in self.args.tasks:

            def run(task: str = task) -> dict[str, Any]:
                tuned, stats = self.tune(copy.deepcopy(model), self.shots(task, self.args.k), learning_rate=rate)
                result = {**self.evaluate(tuned, [task]), "selection": {task: self.select_score(tuned, task)}}
                return result | {"training": stats}

            self.cell(f"{name}/lr={rate:g}/{task}", run, model=model)


def task_scores(cells: dict[str, Any], key: str, tasks: list[str], which: str) -> dict[str, float] | None:
    """`{task: score}` of a model on the `which` items ("validation" or "selection"); None if a cell is missing.
    `key`: a cell key, or a prefix whose per-task cells are `key/<task>`."""
    scores = {}
    for task in tasks:
        cell = cells.get(key) or cells.get(f"{key}/{task}")
        if cell is None:
            return None
        source = cell["tasks"] if which == "validation" else cell["selection"]
        scores[task] = source[task]["score"]
    return scores


def mean(scores: dict[str, float] | None, tasks: list[str]) -> float | None:
    return None if scores is None else sum(scores[t] for t in tasks) / len(tasks)


def chosen_rate(cells: dict[str, Any], name: str, rates: list[float], tasks: list[str]) -> float | None:
    """The rate with the highest 7-task selection mean (ties: the smaller rate); None until every rate is scored."""
    means = {rate: mean(task_scores(cells, f"{name}/lr={rate:g}", tasks, "selection"), tasks) for rate in rates}
    if not means or any(value is None for value in means.values()):
        return None
    return max(sorted(rates), key=lambda rate: (means[rate], -rate))


def main() -> None:
    args = begin_run(parse_args, render)
    if args is None:
        return
    bench = RateBench(args)
    rates = sorted(args.learning_rates)
    model, _ = bench.pruned(args.ratio, **EXTRA_CONFIGS[PRUNED])
    bench.data["params"] = {
        "dense": count_parameters(bench.model),
        "pruned": count_parameters(model),
        "config": config_at(EXTRA_CONFIGS[PRUNED], args.ratio),
    }
    bench.untuned_cell(model, PRUNED)
    for rate in rates:
        bench.rate_cells(model, PRUNED, rate)
    del model
    bench.untuned_cell(bench.model, "dense")
    control = chosen_rate({k: v["value"] for k, v in bench.data["cells"].items()}, PRUNED, rates, args.tasks)
    dense_rates = [control] if args.dense_rates == "chosen" else sorted(rates, key=lambda rate: rate != control)
    for rate in dense_rates:  # the control first
        bench.rate_cells(bench.model, "dense", rate)
    bench.save()
    write_markdown(args.out, render(bench.data))


MODEL_LABELS = {PRUNED: "L0", "dense": "dense"}


@dataclass
class RateRow:
    """One model at one task-LoRA rate (`rate` None: untuned): 7-task means on both item sets (None while a cell is
    missing) and the shares of the untuned dense model's validation mean."""

    model: str
    rate: float | None
    selection: float | None
    validation: dict[str, float] | None
    mean: float | None
    share: float | None
    share_informative: float | None
    chosen: bool


def rates_in(cells: dict[str, Any]) -> list[float]:
    """The task-LoRA rates with at least one cell."""
    return sorted({float(key.split("/")[1][len("lr=") :]) for key in cells if "/lr=" in key})


def informative_tasks(cells: dict[str, Any], tasks: list[str]) -> list[str]:
    """Tasks where the untuned dense model beats chance by more than `NEAR_CHANCE` on the validation items."""
    dense = task_scores(cells, "dense/untuned", tasks, "validation")
    return [t for t in tasks if dense is not None and dense[t] - CHANCE[t] > NEAR_CHANCE]


def rate_rows(data: dict[str, Any]) -> list[RateRow]:
    """Every model at every rate measured (untuned first), in the report's order."""
    cells, tasks = cells_of(data), data["settings"]["tasks"]
    rates, informative = rates_in(cells), informative_tasks(cells, tasks)
    dense = task_scores(cells, "dense/untuned", tasks, "validation")
    rows = []
    for name in MODEL_LABELS:
        chosen = chosen_rate(cells, name, rates, tasks)
        for rate in [None, *rates]:
            key = f"{name}/untuned" if rate is None else f"{name}/lr={rate:g}"
            validation = task_scores(cells, key, tasks, "validation")
            selection = mean(task_scores(cells, key, tasks, "selection"), tasks)
            if validation is None and selection is None:
                continue
            value = mean(validation, tasks)
            share = share_informative = None
            if value is not None and dense is not None:
                share = value / mean(dense, tasks)
                if informative and len(informative) < len(tasks):
                    share_informative = mean(validation, informative) / mean(dense, informative)
            rows.append(
                RateRow(
                    name,
                    rate,
                    selection,
                    validation,
                    value,
                    share,
                    share_informative,
                    chosen is not None and rate == chosen,
                )
            )
    return rows


def moonshot_reading(data: dict[str, Any]) -> dict[str, Any] | None:
    """The pruned model at its chosen rate: `{rate, mean, share, share_informative, target, met, met_informative,
    control}` (`control`: dense + the same tune's validation mean, None until measured); None until chosen."""
    rows = rate_rows(data)
    ours = next((row for row in rows if row.model == PRUNED and row.chosen), None)
    if ours is None or ours.share is None:
        return None
    control = next((row.mean for row in rows if row.model == "dense" and row.rate == ours.rate), None)
    target = MOONSHOT_TARGETS.get(data["settings"]["ratio"])
    return {
        "rate": ours.rate,
        "mean": ours.mean,
        "share": ours.share,
        "share_informative": ours.share_informative,
        "target": target,
        "met": None if target is None else ours.share >= target,
        "met_informative": None
        if target is None or ours.share_informative is None
        else ours.share_informative >= target,
        "control": control,
    }


def cells_of(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in data["cells"].items()}


def render(data: dict[str, Any]) -> str:
    s, params = data["settings"], data.get("params", {})
    cells, tasks, ratio = cells_of(data), s["tasks"], s["ratio"]
    fmt = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    share = lambda v: "" if v is None else f"{v:.1%}"  # noqa: E731
    informative = informative_tasks(cells, tasks)
    near = [t for t in tasks if informative and t not in informative]
    pruned_text = f"{params['pruned']:,} of {params['dense']:,} parameters" if params else ""
    lines = [
        f"# Task-LoRA learning rate at {ratio:.0%} removed (SmolLM2-135M-Instruct)",
        "",
        f"Pruned model: NutePrune's L0 masks + their C4 LoRA (`tailored_llama`'s \"{PRUNED}\" configuration"
        + (", " + ", ".join(f"`{key}={value!r}`" for key, value in params["config"].items()) if params else "")
        + f"; {pruned_text}). Task LoRA: the paper's settings (K={s['k']} shots, r={s['lora_r']}, {s['epochs']:g} "
        f"epochs, batch {s['batch_size']}, one adapter per task) at each learning rate; seed {s['seed']}. Selection: "
        f"{s['selection_limit']} held-out train items per task (BoolQ {s['selection_boolq_limit']}, none of them a "
        f"shot); validation: the first {s['limit']} validation items (BoolQ {s['boolq_limit']}), the items of "
        "`tailored_llama.md`'s moonshot table. Primary metric per task; means over the "
        f"{len(tasks)} tasks. Each model's rate "
        "(chosen) has the highest selection mean; the validation columns played no part in the choice.",
        "",
        "| model | task-LoRA lr | selection mean | "
        + " | ".join(tasks)
        + " | validation mean | share of dense |"
        + (f" share without {', '.join(near)} |" if near else ""),
        "|---" * (len(tasks) + 5 + bool(near)) + "|",
    ]
    for row in rate_rows(data):
        rate_text = "none" if row.rate is None else f"{row.rate:g}" + (" (chosen)" if row.chosen else "")
        per_task = " | ".join(fmt(None if row.validation is None else row.validation[t]) for t in tasks)
        lines.append(
            f"| {MODEL_LABELS[row.model]} | {rate_text} | {fmt(row.selection)} | {per_task} | {fmt(row.mean)} | "
            f"{share(row.share)} |" + (f" {share(row.share_informative)} |" if near else "")
        )
    lines += ["", *findings(data, near)]
    lines.append(
        f"Reproduce: `.venv/bin/python benchmarks/task_lora_lr.py --ratio {ratio:g}`"
        + (" (cells cached; an interrupted run resumes)." if any("—" in line for line in lines) else ".")
    )
    return "\n".join(lines) + "\n"


def findings(data: dict[str, Any], near: list[str]) -> list[str]:
    """The moonshot reading against the target and dense + the same tune; the paper-rate cells against
    `tailored_llama.json`'s."""
    tasks = data["settings"]["tasks"]
    lines = []
    reading = moonshot_reading(data)
    if reading is not None:
        status = (
            "" if reading["target"] is None else f" (target >= {reading['target']:.0%}: {met_text(reading['met'])})"
        )
        lines.append(
            f"- L0 at its chosen rate {reading['rate']:g}: {100 * reading['mean']:.1f}, {reading['share']:.1%} of "
            f"dense{status}."
        )
        if reading["rate"] == max(rates_in(cells_of(data))):
            lines.append(
                "- The chosen rate is the grid's largest, so a larger one may score higher on selection: the grid "
                "grows by a rate until the choice is interior (`LEARNING_RATES`)."
            )
        if reading["share_informative"] is not None:
            lines.append(
                f"- Without {', '.join(near)} (dense within {100 * NEAR_CHANCE:.0f} points of chance on these items, "
                f"where a tune can gain by learning the label prior alone): {reading['share_informative']:.1%} of "
                f"dense ({met_text(reading['met_informative'])})."
            )
        if reading["control"] is not None:
            lines.append(
                f"- Dense + the same tune (lr {reading['rate']:g}): {100 * reading['control']:.1f}; L0 keeps "
                f"{reading['mean'] / reading['control']:.1%} of it."
            )
    lines.append(f"- Chance: {100 * sum(CHANCE[t] for t in tasks) / len(tasks):.1f}.")
    adopted = sorted({cell["from"] for cell in data["cells"].values() if "from" in cell})
    if adopted:
        lines.append(
            f"- Dense cells taken over from {', '.join(f'`{name}`' for name in adopted)} (the same settings at "
            "another ratio; the dense model does not depend on it)."
        )
    lines += reproduction_check(data)
    return [*lines, ""]


def met_text(met: bool | None) -> str:
    return "met" if met else "NOT met"


def reproduction_check(data: dict[str, Any]) -> list[str]:
    """At `tailored_llama.json`'s rate and items, the validation cells against its committed ones."""
    path = RESULTS.with_suffix(".json")
    if not path.is_file():
        return []
    s, cells = data["settings"], cells_of(data)
    committed = json.loads(path.read_text())
    settings = committed["settings"]
    same_items = (settings["limit"], settings["boolq_limit"], settings["k"]) == (s["limit"], s["boolq_limit"], s["k"])
    if settings["learning_rate"] not in rates_in(cells) or not same_items:
        return []
    reference = cells_of(committed)
    rate, tag, tasks = settings["learning_rate"], f"{s['ratio']:.0%}", s["tasks"]
    pairs = (
        (f"{PRUNED}/lr={rate:g}", f"{tag}/{PRUNED}/task"),
        (f"dense/lr={rate:g}", "dense+task"),
        ("dense/untuned", "dense"),
        (f"{PRUNED}/untuned", f"{tag}/{PRUNED}/pruned"),
    )
    lines = []
    for ours, theirs in pairs:
        mine = task_scores(cells, ours, tasks, "validation")
        recorded = task_scores(reference, theirs, tasks, "validation")
        if mine is None or recorded is None:
            continue
        differ = [t for t in tasks if not math.isclose(mine[t], recorded[t], abs_tol=1e-9)]
        verdict = "the same scores" if not differ else f"other scores on {', '.join(differ)}"
        lines.append(f"- `{ours}` vs `tailored_llama.json`'s `{theirs}`: {verdict}.")
    return lines


if __name__ == "__main__":
    main()
