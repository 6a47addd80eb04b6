"""Paired comparison with Torch-Pruning on more validation items: is ours ahead beyond sampling error?

`torch_pruning_peer.py` scores the first 200 validation items per task (BoolQ 100), where the 50% gaps between our
models and Torch-Pruning's are within two unpaired standard errors (about 3.7 points on the 7-task mean). This script
rebuilds the models those gaps rest on, at one ratio, scores them on the first `--limit` items of every task keeping
each item's score, and reports the paired difference of the 7-task means (`tailored_hf.eval.paired_mean_difference`:
per-item differences on the same items, so the items' shared difficulty cancels) with its standard error.

Pairs, ours vs the peer after the same training budget:
- "no tune": our pass (the paper's configuration) vs Torch-Pruning with `--importance`, neither trained.
- "task LoRA": our pass (the paper's configuration) vs Torch-Pruning with `--importance` (by default the importance
  the peer table tunes at that ratio), each + the task-specific LoRA (K=50, one adapter per task,
  `tailored_llama.Bench.tune`).
- "C4 LoRA": NutePrune's L0 masks trained with their C4 LoRA (`tailored_llama`'s "l0" configuration) vs
  Torch-Pruning + the same C4 LoRA (`tailored_llama.c4_lora`), no task tuning.
- "C4 + task LoRA": those two models, each + the task LoRA.
- "pass + C4 LoRA" / "pass + C4 + task LoRA": our pass (the paper's configuration) + the same C4 LoRA, merged
  (`tailored_llama`'s "c4" configuration), vs the same peer, without and with the task LoRA: the dependency-group
  pass at the C4 budget. (`tailored_llama`'s "iterative_c4", picked by `c4_budget_configs.py` on perplexity, is not
  paired: on the 200-item cells at 50% it trails the L0 model before and after the task LoRA, 34.8 / 36.1 vs
  37.3 / 38.3.)
- "long C4 LoRA" / "long C4 + task LoRA": NutePrune's L0 masks trained with their C4 LoRA for `LONG_C4_STEPS` steps
  instead of 500 vs Torch-Pruning + that same longer C4 LoRA: does a larger generic budget (the moonshot sets none)
  change the share of dense kept, and the gap to the peer? Their dense control, the dense model + that C4 LoRA (+ the
  task LoRA), is scored with `--dense` (for the 500-step budget too), as "dense + same tune" rows of the share table.
  These models have no 200-item cells to check against.
- "C4 + task LoRA, K=`MORE_SHOTS`": the "C4 + task LoRA" pair with `MORE_SHOTS` task shots instead of the paper's
  K=50 (the shots ablation of its Table 3), with the dense + same tune control under `--dense`: how much of the gap to
  dense more task-specific data closes.
- "C4 + task LoRA, chosen rate": the "C4 + task LoRA" pair with the task LoRA's learning rate that
  `benchmarks/task_lora_lr.py` chose for the L0 model at this ratio (on held-out train items, no validation score
  used; run it first), given to the peer and the dense control alike: does the larger rate's gain on its 200 items
  hold on these? Its first 200 items (BoolQ 100) are checked against `task_lora_lr`'s cells at that rate.
- "vocab C4 LoRA" / "vocab C4 + task LoRA": `tailored_llama`'s "vocab_l0" (the 7 tasks' vocabulary trimmed, then
  NutePrune's L0 masks and their C4 LoRA remove the rest of the ratio; scored and tuned with its own tokenizer) vs
  the same peer. In a table of its own (`ABLATION_PAIRS`), the same model + task LoRA vs the "l0" model + task LoRA
  at the same ratio (and both untuned): what the task vocabulary adds, on these items; and the dense model trimmed to
  that vocabulary alone, untuned, vs dense: the trim's own cost.
- "own vocab C4 LoRA" / "own vocab C4 + task LoRA": the same, but one model per task, its vocabulary counted on that
  task's train text alone (`PER_TASK`; what `tailored_hf.pipeline` builds for one task), each scored on its task. It
  trims more of the model (13-18% of the parameters on the tasks but BoolQ, against 10.7% for the 7 tasks'
  vocabulary), leaving less to the L0 masks. Against the "vocab" model in `ABLATION_PAIRS`, and its trim alone
  against dense. "(own) vocab C4 + task LoRA, chosen rate": the two task-vocabulary models tuned at the "chosen
  rate" pair's rate (chosen for the L0 model, not for these), against the same peer at that rate.

Every model is rebuilt deterministically (same calibration, seeds and settings as the committed cells), so the mean
over the first 200 items (BoolQ 100) of each cell is checked against the committed 200-item cell of
`tailored_llama.json` / `torch_pruning.json` and the report says whether they agree. Cells are cached in the JSON, so
an interrupted run resumes; pairs run in the order above (on a C4 budget: our models, then the dense controls,
then the peer).

    make peers                                                                   # once: Torch-Pruning into .peers/
    .venv/bin/python benchmarks/peers/paired_comparison.py                      # 50%, ~3 h on 2 quiet cores
    .venv/bin/python benchmarks/peers/paired_comparison.py --ratio 0.2         # 20%
    .venv/bin/python benchmarks/peers/paired_comparison.py --pairs c4_task_lora_k200  # one pair (+ its controls)
    .venv/bin/python benchmarks/peers/paired_comparison.py --report-only        # Markdown from the cached cells
    .venv/bin/python benchmarks/peers/paired_comparison.py --tasks piqa --limit 8 --boolq-limit 8 --ppl-windows 2 \
        --pairs task_lora --out /tmp/paired_smoke/paired                       # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT / "benchmarks"))
sys.path.append(str(ROOT / "benchmarks" / "peers"))

from common import RESULTS_DIR, add_model_arguments, begin_run, results_path, write_markdown  # noqa: E402
from tailored_llama import (  # noqa: E402
    CHANCE,
    EXTRA_CONFIGS,
    NEAR_CHANCE,
    add_recovery_arguments,
    c4_lora,
    config_at,
    forget_other_config,
)
from task_lora_lr import PRUNED as RATE_MODEL  # noqa: E402
from task_lora_lr import RESULTS_STEM as RATE_STEM  # noqa: E402
from task_lora_lr import cells_of, chosen_rate, rates_in  # noqa: E402
from torch_pruning_peer import IMPORTANCES, PeerBench, best_importance, tp_version  # noqa: E402

from tailored_hf.eval import COMMONSENSE_TASKS, paired_mean_difference  # noqa: E402
from tailored_hf.structure import count_parameters  # noqa: E402

#: Results per ratio: `<RESULTS>_<percent>.json` / `.md` (e.g. `paired_comparison_50.json`).
RESULTS = RESULTS_DIR / "paired_comparison"
OURS = RESULTS_DIR / "tailored_llama.json"
PEER = RESULTS_DIR / "torch_pruning.json"
#: A larger generic budget than `NUTEPRUNE_ARGS`' 500 steps: the same C4 LoRA (windows drawn the same way, rank,
#: targets, rate) for this many steps, given to our L0 model, to the peer and to the dense model alike.
LONG_C4_STEPS = 2000
#: Our models trained on a C4 budget: cell prefix -> (`Bench.pruned` overrides as `tailored_llama.EXTRA_CONFIGS`, with
#: `c4_steps` for a budget other than `NUTEPRUNE_ARGS`', label, names of their pairs untuned / + task LoRA); every
#: such pair's peer is Torch-Pruning + the same C4 LoRA (`peer_c4_prefix`).
C4_MODELS: dict[str, tuple[dict[str, Any], str, str, str]] = {
    "l0": (EXTRA_CONFIGS["l0"], "NutePrune L0 + its C4 LoRA", "c4_lora", "c4_task_lora"),
    "c4": (EXTRA_CONFIGS["c4"], "our pass + C4 LoRA", "pass_c4_lora", "pass_c4_task_lora"),
    f"l0-c4_{LONG_C4_STEPS}": (
        EXTRA_CONFIGS["l0"] | {"c4_steps": LONG_C4_STEPS},
        f"NutePrune L0 + its C4 LoRA, {LONG_C4_STEPS} steps",
        "long_c4_lora",
        "long_c4_task_lora",
    ),
    "vocab_l0": (
        EXTRA_CONFIGS["vocab_l0"],
        "task vocabulary + NutePrune L0 + its C4 LoRA",
        "vocab_c4_lora",
        "vocab_c4_task_lora",
    ),
    "own_vocab_l0": (
        EXTRA_CONFIGS["vocab_l0"] | {"vocabulary_per_task": True},
        "each task's own vocabulary + NutePrune L0 + its C4 LoRA",
        "own_vocab_c4_lora",
        "own_vocab_c4_task_lora",
    ),
}
#: The `C4_MODELS` override that makes one model per task: the vocabulary counted on that task's train text alone
#: (`Bench.pruned`'s `vocabulary_task`, as `tailored_hf.pipeline` counts it for the task it tailors a model to), then
#: the L0 masks and their C4 LoRA for the rest of the ratio on that task's trimmed model. Each model is scored on its
#: own task only (cells `<prefix>/pruned/<task>`).
PER_TASK = "vocabulary_per_task"


def is_per_task(name: str) -> bool:
    """Whether the `C4_MODELS` model `name` is one model per task (`PER_TASK`)."""
    return bool(C4_MODELS[name][0].get(PER_TASK))


def task_overrides(overrides: dict[str, Any], task: str | None) -> dict[str, Any]:
    """`Bench.pruned`'s overrides of a `C4_MODELS` model: `PER_TASK` replaced by the task (`vocabulary_task`)."""
    rest = {k: v for k, v in overrides.items() if k != PER_TASK}
    return rest if task is None or not overrides.get(PER_TASK) else rest | {"vocabulary_task": task}


def peer_c4_prefix(c4_steps: int | None) -> str:
    """Cell prefix of Torch-Pruning + the C4 LoRA of `c4_steps` steps (None: `NUTEPRUNE_ARGS`'), `{imp}` unfilled."""
    return "tp-{imp}-c4" + ("" if c4_steps is None else f"_{c4_steps}")


#: Cell prefix of the dense model + the task LoRA alone: the "task LoRA" pair's dense control.
DENSE_TASK = "dense/task"


def dense_c4_prefix(c4_steps: int | None) -> str:
    """Cell prefix of the dense model + the C4 LoRA of `c4_steps` steps (None: `NUTEPRUNE_ARGS`')."""
    return "dense-c4" + ("" if c4_steps is None else f"_{c4_steps}")


class TaskBudget(NamedTuple):
    """A task-LoRA budget: `shots` per task (None: the run's `--k`, the paper's 50), and whether the learning rate is
    the one `task_lora_lr.py` chose at the run's ratio (`chosen_rate`) instead of the run's `--learning-rate`."""

    shots: int | None = None
    chosen_rate: bool = False

    @property
    def kind(self) -> str:
        """Cell kind of a model + the task LoRA on this budget: `task`, `task_k200`, `task_chosen_lr`."""
        return "task" + ("" if self.shots is None else f"_k{self.shots}") + ("_chosen_lr" if self.chosen_rate else "")

    @property
    def label(self) -> str:
        """The budget in a label (empty for the paper's); `{rate}` is filled with the chosen rate when rendered."""
        return ("" if self.shots is None else f" (K={self.shots})") + (
            " (lr {rate}, chosen on held-out train items)" if self.chosen_rate else ""
        )


PAPER_BUDGET = TaskBudget()
#: A larger task-specific budget than the paper's K=50 (its Table 3 varies K): the same task LoRA (rank, rate, epochs,
#: batch) on this many shots of each task.
MORE_SHOTS = 200
CHOSEN_RATE = TaskBudget(chosen_rate=True)
#: Pairs on another task budget than the paper's: pair name -> (a `C4_MODELS` name, budget); the peer and the dense
#: control get the same C4 LoRA and the same budget.
BUDGET_PAIRS: dict[str, tuple[str, TaskBudget]] = {
    f"c4_task_lora_k{MORE_SHOTS}": ("l0", TaskBudget(shots=MORE_SHOTS)),
    "c4_task_lora_chosen_lr": (RATE_MODEL, CHOSEN_RATE),
    "vocab_c4_task_lora_chosen_lr": ("vocab_l0", CHOSEN_RATE),
    "own_vocab_c4_task_lora_chosen_lr": ("own_vocab_l0", CHOSEN_RATE),
}


def is_task_prefix(prefix: str) -> bool:
    """Whether `prefix` names a model + a task LoRA, i.e. one cell per task (`<prefix>/<task>`)."""
    return prefix.rsplit("/", 1)[-1].startswith("task")


#: The C4 budgets of `C4_MODELS` (None: `NUTEPRUNE_ARGS`'), each also given to the peer and, with `--dense`, to the
#: dense model (the "dense + same tune" control of the share rows).
C4_BUDGETS = tuple(dict.fromkeys(overrides.get("c4_steps") for overrides, *_ in C4_MODELS.values()))
#: Pair name -> (our cell prefix, peer cell prefix, label); `{imp}` is the peer's importance.
PAIRS: dict[str, tuple[str, str, str]] = (
    {
        "no_tune": ("ours/pruned", "tp-{imp}/pruned", "our pass vs Torch-Pruning ({imp}), no tuning"),
        "task_lora": ("ours/task", "tp-{imp}/task", "our pass + task LoRA vs Torch-Pruning ({imp}) + task LoRA"),
    }
    | {
        pair: (f"{name}/{kind}", f"{peer_c4_prefix(overrides.get('c4_steps'))}/{kind}", text)
        for name, (overrides, label, untuned, tuned) in C4_MODELS.items()
        for pair, kind, text in (
            (untuned, "pruned", f"{label} vs Torch-Pruning ({{imp}}) + the same C4 LoRA"),
            (tuned, "task", f"{label} vs the same peer, each + task LoRA"),
        )
    }
    | {
        pair: (
            f"{name}/{budget.kind}",
            f"{peer_c4_prefix(C4_MODELS[name][0].get('c4_steps'))}/{budget.kind}",
            f"{C4_MODELS[name][1]} vs the same peer, each + task LoRA{budget.label}",
        )
        for pair, (name, budget) in BUDGET_PAIRS.items()
    }
)
#: The model of the "vocabulary_alone" pair: the dense model trimmed to `C4_MODELS["vocab_l0"]`'s task vocabulary,
#: nothing else pruned; scored (untuned) in runs that ask for a "vocab_l0" pair. `OWN_VOCABULARY_ALONE`: the same
#: per task, trimmed to each task's own vocabulary (`C4_MODELS["own_vocab_l0"]`'s), in runs that ask for its pairs.
VOCABULARY_ALONE = "vocabulary"
OWN_VOCABULARY_ALONE = "own_vocabulary"
#: Our models against each other at the same ratio: name -> (cell prefix, cell prefix of the model it is compared
#: with, label); rendered apart from the peer pairs, whenever both are measured.
ABLATION_PAIRS: dict[str, tuple[str, str, str]] = {
    "vocabulary_alone": (
        "vocabulary/pruned",
        "dense",
        "task vocabulary alone (nothing else pruned) vs dense, neither tuned: the cost of the trim",
    ),
    "vocabulary_untuned": (
        "vocab_l0/pruned",
        "l0/pruned",
        "task vocabulary + NutePrune L0 vs NutePrune L0 alone, each + its C4 LoRA",
    ),
    "vocabulary": (
        "vocab_l0/task",
        "l0/task",
        "task vocabulary + NutePrune L0 vs NutePrune L0 alone, each + its C4 LoRA + task LoRA",
    ),
    "own_vocabulary_alone": (
        f"{OWN_VOCABULARY_ALONE}/pruned",
        "dense",
        "each task's own vocabulary alone (nothing else pruned) vs dense, neither tuned: the cost of that trim",
    ),
    "own_vocabulary_untuned": (
        "own_vocab_l0/pruned",
        "vocab_l0/pruned",
        "each task's own vocabulary vs the 7 tasks' vocabulary, each + NutePrune L0 + its C4 LoRA",
    ),
    "own_vocabulary": (
        "own_vocab_l0/task",
        "vocab_l0/task",
        "each task's own vocabulary vs the 7 tasks' vocabulary, each + NutePrune L0 + its C4 LoRA + task LoRA",
    ),
}
#: Where each of our / the peer's cells was first measured on 200 items: (file, or the stem of a script's results per
#: ratio (`results_path`), cell key with `{tag}`, `{imp}`, `{rate}`); the models of the larger C4 budget have none.
COMMITTED: dict[str, tuple[Path | str, str]] = (
    {
        "dense": (OURS, "dense"),
        DENSE_TASK: (OURS, "dense+task"),
        "ours/pruned": (OURS, "{tag}/pruned"),
        "ours/task": (OURS, "{tag}/task"),
        "tp-{imp}/pruned": (PEER, "{tag}/{imp}/pruned"),
        "tp-{imp}/task": (PEER, "{tag}/{imp}/task"),
        "tp-{imp}-c4/pruned": (PEER, "{tag}/{imp}/c4/pruned"),
        "tp-{imp}-c4/task": (PEER, "{tag}/{imp}/c4/task"),
    }
    | {
        f"{name}/{kind}": (OURS, f"{{tag}}/{name}/{kind}")
        for name, (overrides, *_) in C4_MODELS.items()
        if "c4_steps" not in overrides and PER_TASK not in overrides
        for kind in ("pruned", "task")
    }
    | {
        f"{RATE_MODEL}/{CHOSEN_RATE.kind}": (
            RATE_STEM,
            f"{RATE_MODEL}/lr={{rate}}",
        )
    }
)
#: Items per task of the committed cells (BoolQ: its own limit).
COMMITTED_LIMIT, COMMITTED_BOOLQ_LIMIT = 200, 100
#: |z| at which a paired difference counts as resolved (about 95% two-sided).
RESOLVED_Z = 2.0
RUN_OPTIONS = ("out", "report_only", "pairs", "dense")


def budget_text(c4_steps: int | None) -> str:
    """A C4 budget in a label: empty for `NUTEPRUNE_ARGS`', else its steps."""
    return "" if c4_steps is None else f" ({c4_steps} steps)"


def build_share_rows() -> tuple[tuple[str, str, str | None], ...]:
    """The models whose share of the dense 7-task mean is reported: (cell prefix, label, cell prefix of the dense model
    after the same training, None for a dense model itself or where the run has no such control); `{imp}`: the peer's
    importance."""
    rows: list[tuple[str, str, str | None]] = [
        ("ours/pruned", "our pass, no tuning", "dense"),
        ("ours/task", "our pass + task LoRA", DENSE_TASK),
        ("tp-{imp}/pruned", "Torch-Pruning ({imp}), no tuning", "dense"),
        ("tp-{imp}/task", "Torch-Pruning ({imp}) + task LoRA", DENSE_TASK),
        (DENSE_TASK, "dense + task LoRA", None),
    ]
    for steps in C4_BUDGETS:
        dense, peer, budget = dense_c4_prefix(steps), peer_c4_prefix(steps), budget_text(steps)
        rows += [
            (dense, f"dense + C4 LoRA{budget}", None),
            (f"{dense}/task", f"dense + C4 LoRA{budget} + task LoRA", None),
            (f"{peer}/pruned", f"Torch-Pruning ({{imp}}) + C4 LoRA{budget}", dense),
            (f"{peer}/task", f"Torch-Pruning ({{imp}}) + C4 LoRA{budget} + task LoRA", f"{dense}/task"),
        ]
    for name, (overrides, label, _, _) in C4_MODELS.items():
        dense = dense_c4_prefix(overrides.get("c4_steps"))
        rows += [(f"{name}/pruned", label, dense), (f"{name}/task", f"{label} + task LoRA", f"{dense}/task")]
    rows.append((f"{VOCABULARY_ALONE}/pruned", "task vocabulary alone, no tuning", "dense"))
    rows.append((f"{OWN_VOCABULARY_ALONE}/pruned", "each task's own vocabulary alone, no tuning", "dense"))
    for name, task_budget in BUDGET_PAIRS.values():
        overrides, label, *_ = C4_MODELS[name]
        steps, kind, tuned = overrides.get("c4_steps"), task_budget.kind, f"task LoRA{task_budget.label}"
        dense, budget = f"{dense_c4_prefix(steps)}/{kind}", budget_text(steps)
        rows += [
            (dense, f"dense + C4 LoRA{budget} + {tuned}", None),
            (f"{peer_c4_prefix(steps)}/{kind}", f"Torch-Pruning ({{imp}}) + C4 LoRA{budget} + {tuned}", dense),
            (f"{name}/{kind}", f"{label} + {tuned}", dense),
        ]
    return tuple(dict.fromkeys(rows))  # two models on one budget share its dense and peer rows


SHARE_ROWS = build_share_rows()

logger = logging.getLogger("paired_comparison")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of total parameters removed")
    parser.add_argument(
        "--importance",
        choices=IMPORTANCES,
        help="Torch-Pruning's importance (default: the one torch_pruning_peer.py tuned at this ratio, i.e. the higher "
        "no-tune mean in its committed cells)",
    )
    parser.add_argument("--tasks", nargs="+", default=list(COMMONSENSE_TASKS))
    parser.add_argument("--limit", type=int, default=1000, help="validation items per task (all when fewer)")
    parser.add_argument("--boolq-limit", type=int, default=400, help="BoolQ items (long passages)")
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows of 128 tokens")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument(
        "--dense",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the dense model on the same items (the share of dense each model keeps)",
    )
    add_recovery_arguments(parser)
    parser.add_argument("--out", help=f"results path without suffix (default: {RESULTS.name}_<percent>)")
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the cached cells only")
    args = parser.parse_args(argv)
    args.out = args.out or results_path(RESULTS.name, args.ratio)
    if args.importance is None and not args.report_only:
        cells = {k: v["value"] for k, v in json.loads(PEER.read_text())["cells"].items()} if PEER.is_file() else {}
        args.importance = best_importance(cells, f"{args.ratio:.0%}", list(IMPORTANCES), args.tasks)
        if args.importance is None:
            parser.error(f"no committed Torch-Pruning cells at {args.ratio:.0%} in {PEER}: pass --importance.")
    return args


class PairedBench(PeerBench):
    """`PeerBench` whose evaluation keeps every item's score (as a `"0"`/`"1"` string per task)."""

    run_options = RUN_OPTIONS
    keep_items = True

    def our_model(self) -> torch.nn.Module:
        """Our pass (the paper's configuration) at the ratio, its parameter counts recorded."""
        model, _ = self.pruned(self.args.ratio)
        self.record_params("ours", model)
        return model

    def peer_model(self) -> torch.nn.Module:
        """Torch-Pruning's model at the ratio, starting the ratio search at the committed cell's TP ratio."""
        start = None
        if PEER.is_file():
            cell = json.loads(PEER.read_text())["cells"].get(f"{self.tag}/{self.args.importance}/pruned")
            start = cell["value"]["pruning"]["tp_ratio"] if cell else None
        model, record = self.tp_pruned(self.args.ratio, self.args.importance, start=start)
        self.data.setdefault("params", {})[f"tp-{self.args.importance}"] = record
        return model

    @property
    def tag(self) -> str:
        return f"{self.args.ratio:.0%}"

    def record_params(
        self, name: str, model: torch.nn.Module, config: dict[str, Any] | None = None, task: str | None = None
    ) -> None:
        """`model`'s parameter counts under `name`, with the `Bench.pruned` overrides it was made with (`config`);
        `task`: one of the models made per task, whose counts go under `per_task` (the first also fills the record)."""
        counts = {
            "dense": self.dense_params,
            "pruned": count_parameters(model),
            "achieved": 1 - count_parameters(model) / self.dense_params,
        }
        params = self.data.setdefault("params", {})
        if task is None or name not in params:
            params[name] = counts | ({} if config is None else {"config": config})
        if task is not None:
            params[name].setdefault("per_task", {})[task] = counts

    #: The task-LoRA rate `task_lora_lr.py` chose at this ratio, for the `CHOSEN_RATE` cells (`use_chosen_rate`).
    chosen_rate: float | None = None

    def use_chosen_rate(self) -> None:
        """Reads the rate `task_lora_lr.py` chose for its model at this ratio (its run must share this run's model,
        data, tasks and recovery settings but the rate), records it, and drops `CHOSEN_RATE` cells made at another."""
        path = Path(results_path(RATE_STEM, self.args.ratio) + ".json")
        if not path.is_file():
            raise SystemExit(f"{CHOSEN_RATE.kind} cells need {path}: run benchmarks/task_lora_lr.py first")
        data = json.loads(path.read_text())
        shared = ("model", "data_dir", "tasks", "k", "lora_r", "epochs", "batch_size", "seed")
        differ = [key for key in shared if data["settings"].get(key) != vars(self.args)[key]]
        if differ:
            raise SystemExit(f"{path.name} was run with other settings ({', '.join(differ)}) than this run")
        cells = cells_of(data)
        self.chosen_rate = chosen_rate(cells, RATE_MODEL, rates_in(cells), self.args.tasks)
        if self.chosen_rate is None:
            raise SystemExit(f"{path.name} has not scored every rate of its grid yet: no rate chosen")
        self.data["chosen_task_rate"] = {"rate": self.chosen_rate, "source": path.name}
        stale = [
            key
            for key, cell in self.data["cells"].items()
            if f"/{CHOSEN_RATE.kind}/" in key and cell["value"].get("learning_rate") != self.chosen_rate
        ]
        for key in stale:
            logger.info("%s: made at another rate than the chosen %g, measured again", key, self.chosen_rate)
            del self.data["cells"][key]

    def model_cells(
        self,
        model: torch.nn.Module,
        prefix: str,
        budgets: Iterable[TaskBudget] = (),
        untuned: bool = True,
        task: str | None = None,
    ) -> None:
        """`model`'s cells under `prefix`: scored as it is (`prefix/pruned`, or `prefix` itself for a dense-based
        model) when `untuned`, and after each task's LoRA on each of `budgets` (`prefix/<budget.kind>/<task>`).
        `task`: a model made for that task alone, scored and tuned on it only (untuned: `prefix/pruned/<task>`)."""
        tasks = self.args.tasks if task is None else [task]
        if untuned:
            key = f"{self.tag}/{prefix}" + ("" if prefix.startswith("dense") else "/pruned")
            key += "" if task is None else f"/{task}"
            self.cell(key, lambda: self.evaluate(model, tasks), model=model)
        for budget in budgets:
            rate = None
            if budget.chosen_rate:
                if self.chosen_rate is None:
                    raise RuntimeError("call use_chosen_rate() before measuring chosen-rate cells")
                rate = self.chosen_rate
            for tuned in tasks:
                key = f"{self.tag}/{prefix}/{budget.kind}/{tuned}"
                train = self.shots(tuned, budget.shots or self.args.k)
                self.tuned_cell(model, key, train, [tuned], learning_rate=rate)

    def missing(self, *prefixes: str, task: str | None = None) -> bool:
        """Whether a cell of `prefixes` is not measured yet (`task`: those of the model made for that task alone)."""
        tasks = self.args.tasks if task is None else [task]
        keys = []
        for prefix in prefixes:
            if is_task_prefix(prefix):
                keys += [f"{self.tag}/{prefix}/{t}" for t in tasks]
            else:
                keys.append(f"{self.tag}/{prefix}" + ("" if task is None else f"/{task}"))
        return not all(key in self.data["cells"] for key in keys)


def main() -> None:
    args = begin_run(parse_args, render)
    if args is None:
        return
    bench = PairedBench(args)
    imp = args.importance
    untrained = {"no_tune": "pruned", "task_lora": "task"}  # pair -> our / the peer's cell kind
    kinds = [kind for pair, kind in untrained.items() if pair in args.pairs]
    for prefix, build in (("ours", bench.our_model), (f"tp-{imp}", bench.peer_model)):
        if kinds and bench.missing(*(f"{prefix}/{kind}" for kind in kinds)):
            model = build()
            bench.model_cells(model, prefix, [PAPER_BUDGET] if "task" in kinds else [], untuned="pruned" in kinds)
            del model
    # Per C4 model / C4 budget asked for: the task budgets its cells need.
    budgets_of: dict[str, list[TaskBudget]] = {}
    for name, (_, _, untuned_pair, tuned_pair) in C4_MODELS.items():
        if untuned_pair in args.pairs or tuned_pair in args.pairs:
            budgets_of[name] = [PAPER_BUDGET] if tuned_pair in args.pairs else []
    for pair, (name, budget) in BUDGET_PAIRS.items():
        if pair in args.pairs:
            budgets_of.setdefault(name, []).append(budget)
    if any(CHOSEN_RATE in budgets for budgets in budgets_of.values()):
        bench.use_chosen_rate()
    c4_budgets: dict[int | None, list[TaskBudget]] = {}  # C4 steps -> the task budgets tuned on that C4 LoRA
    for name, budgets in budgets_of.items():
        overrides = C4_MODELS[name][0]
        steps = overrides.get("c4_steps")
        c4_budgets[steps] = list(dict.fromkeys(c4_budgets.get(steps, []) + budgets))
        forget_other_config(bench.data, name, f"{bench.tag}/{name}", overrides, args.ratio)
        for task in args.tasks if is_per_task(name) else [None]:  # one model per task, or one for all
            if not bench.missing(f"{name}/pruned", *(f"{name}/{budget.kind}" for budget in budgets), task=task):
                continue
            model, _ = bench.pruned(args.ratio, **task_overrides(overrides, task))
            bench.record_params(name, model, config_at(overrides, args.ratio), task=task)
            with bench.scoring_with(bench.tokenizer_for(task_overrides(overrides, task))):  # its own tokenizer
                bench.model_cells(model, name, budgets, task=task)
            del model
    for name, alone in (("vocab_l0", VOCABULARY_ALONE), ("own_vocab_l0", OWN_VOCABULARY_ALONE)):
        if name not in budgets_of:
            continue
        coverage = C4_MODELS[name][0]["vocabulary_coverage"]
        for task in args.tasks if is_per_task(name) else [None]:  # the trim's own cost
            if bench.missing(f"{alone}/pruned", task=task):
                model, tokenizer, _ = bench.trimmed_model(coverage, task)
                bench.record_params(alone, model, {"vocabulary_coverage": coverage}, task=task)
                with bench.scoring_with(tokenizer):
                    bench.model_cells(model, alone, task=task)
                del model
    if args.dense:  # first: the dense + same tune controls are what the shares are read against
        bench.cell("dense", lambda: bench.evaluate(bench.model, args.tasks), model=bench.model)
        if "task_lora" in args.pairs:
            bench.model_cells(bench.model, "dense", [PAPER_BUDGET], untuned=False)
        for steps, budgets in c4_budgets.items():  # dense + the same C4 LoRA (+ task LoRA)
            prefix = dense_c4_prefix(steps)
            budgets = list(dict.fromkeys([PAPER_BUDGET, *budgets]))
            if bench.missing(prefix, *(f"{prefix}/{budget.kind}" for budget in budgets)):
                model = c4_lora(copy.deepcopy(bench.model), bench.tokenizer, args, steps)
                bench.model_cells(model, prefix, budgets)
                del model
    for steps, budgets in c4_budgets.items():
        peer = peer_c4_prefix(steps).format(imp=imp)
        if bench.missing(f"{peer}/pruned", *(f"{peer}/{budget.kind}" for budget in budgets)):
            model = c4_lora(bench.peer_model(), bench.tokenizer, args, steps)
            bench.model_cells(model, peer, budgets)
            del model
    bench.data["environment"] = {"torch_pruning": tp_version(), "torch": torch.__version__}
    bench.save()
    write_markdown(args.out, render(bench.data))


# ---------------------------------------------------------------------------------------------------- report
def item_scores(cells: dict[str, Any], tag: str, prefix: str, tasks: list[str]) -> dict[str, list[float]] | None:
    """Task -> per-item scores of one model (`prefix` of a model + task LoRA, `is_task_prefix`: one adapter and cell
    per task; `"dense"`: the dense model's cell), None if missing."""
    scores = {}
    for task in tasks:
        key = f"{tag}/{prefix}/{task}" if is_task_prefix(prefix) else f"{tag}/{prefix}"
        key = "dense" if prefix == "dense" else key
        if key not in cells and f"{key}/{task}" in cells:  # a model made for each task (`PER_TASK`)
            key = f"{key}/{task}"
        cell = cells.get(key)
        if cell is None or task not in cell["tasks"]:
            return None
        scores[task] = [float(c) for c in cell["tasks"][task]["items"]]
    return scores


def chosen_rate_text(data: dict[str, Any]) -> str:
    """The task-LoRA rate of the `CHOSEN_RATE` cells, as labels show it."""
    chosen = data.get("chosen_task_rate")
    return "not chosen yet" if chosen is None else f"{chosen['rate']:g}"


def fill(label: str, data: dict[str, Any]) -> str:
    """A pair's or share row's label with the peer's importance and the chosen task-LoRA rate filled in."""
    return label.format(imp=data["settings"]["importance"], rate=chosen_rate_text(data))


def committed_check(prefix: str, scores: dict[str, list[float]], data: dict[str, Any]) -> str:
    """Whether the first 200 items (BoolQ 100) reproduce the committed 200-item cells, task by task (`prefix`: a
    `COMMITTED` key)."""
    s = data["settings"]
    path, pattern = COMMITTED[prefix]
    path = Path(results_path(path, s["ratio"]) + ".json") if isinstance(path, str) else path
    if not path.is_file():
        return "no committed cells"
    cells = {k: v["value"] for k, v in json.loads(path.read_text())["cells"].items()}
    base = pattern.format(tag=f"{s['ratio']:.0%}", imp=s["importance"], rate=chosen_rate_text(data))
    mismatches, rebuilt, committed = [], [], []
    for task, items in scores.items():
        cell = cells.get(f"{base}/{task}" if is_task_prefix(prefix) else base)
        limit = COMMITTED_BOOLQ_LIMIT if task == "boolq" else COMMITTED_LIMIT
        if cell is None or task not in cell["tasks"] or len(items) < min(limit, cell["tasks"][task]["n"]):
            continue
        n = cell["tasks"][task]["n"]
        rebuilt.append(sum(items[:n]) / n)
        committed.append(cell["tasks"][task]["score"])
        if not math.isclose(rebuilt[-1], committed[-1], abs_tol=1e-9):
            mismatches.append(f"{task} {100 * rebuilt[-1]:.1f} vs {100 * committed[-1]:.1f}")
    if not rebuilt:
        return "no committed cells"
    if mismatches:
        means = f"{100 * sum(rebuilt) / len(rebuilt):.1f} vs {100 * sum(committed) / len(committed):.1f}"
        return f"differs (mean over those items {means}): {', '.join(mismatches)}"
    return f"equal on all {len(rebuilt)} tasks"


def pair_results(data: dict[str, Any], pairs: dict[str, tuple[str, str, str]] = PAIRS) -> list[dict[str, Any]]:
    """One entry per pair of `pairs` (`PAIRS` or `ABLATION_PAIRS`): its label, and once both models are measured their
    per-item scores, 7-task means, paired difference ([`PairedDifference`]) and unpaired standard error."""
    s = data["settings"]
    tasks, tag, imp = s["tasks"], f"{s['ratio']:.0%}", s["importance"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    results = []
    for name, (ours_prefix, peer_pattern, label) in pairs.items():
        entry: dict[str, Any] = {"name": name, "label": fill(label, data), "prefixes": (ours_prefix, peer_pattern)}
        ours = item_scores(cells, tag, ours_prefix, tasks)
        peer = item_scores(cells, tag, peer_pattern.format(imp=imp), tasks)
        entry |= {"ours_items": ours, "peer_items": peer}
        if ours is not None and peer is not None:
            means = [sum(sum(v) / len(v) for v in side.values()) / len(tasks) for side in (ours, peer)]
            variance = sum(
                p * (1 - p) / len(v) for side in (ours, peer) for v in side.values() for p in [sum(v) / len(v)]
            )
            entry |= {
                "ours": means[0],
                "peer": means[1],
                "paired": paired_mean_difference(ours, peer, tasks),
                "unpaired_stderr": math.sqrt(variance) / len(tasks),
            }
            informative = informative_tasks(data)
            if informative and len(informative) < len(tasks):
                entry["informative"] = (informative, paired_mean_difference(ours, peer, informative))
        results.append(entry)
    return results


def informative_tasks(data: dict[str, Any]) -> list[str] | None:
    """The tasks where the dense model, on these items, beats chance by more than `NEAR_CHANCE` (None without a
    dense cell): on the others a tuned model can gain by learning the label prior alone."""
    s = data["settings"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    dense = item_scores(cells, f"{s['ratio']:.0%}", "dense", s["tasks"])
    if dense is None:
        return None
    return [t for t in s["tasks"] if sum(dense[t]) / len(dense[t]) - CHANCE[t] > NEAR_CHANCE]


@dataclass(frozen=True)
class ShareRow:
    """One model's 7-task mean on these items and its shares: of the dense mean, of the dense mean over
    `informative_tasks` only (None when every task is informative), and of its dense control's mean (the dense model
    after the same training; None where that control is not measured)."""

    label: str
    mean: float
    share: float | None
    share_informative: float | None
    share_of_control: float | None


def shares(data: dict[str, Any]) -> tuple[float | None, list[ShareRow]]:
    """The dense 7-task mean on these items (None when not scored) and a [`ShareRow`] per measured model of
    `SHARE_ROWS` (shares of dense None without a dense cell)."""
    s = data["settings"]
    tasks, tag, imp = s["tasks"], f"{s['ratio']:.0%}", s["importance"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    informative = informative_tasks(data)
    informative = informative if informative and len(informative) < len(tasks) else None

    def mean_of(prefix: str, subset: list[str]) -> float | None:
        scores = item_scores(cells, tag, prefix, tasks)
        return None if scores is None else sum(sum(scores[t]) / len(scores[t]) for t in subset) / len(subset)

    dense = mean_of("dense", tasks)
    dense_informative = mean_of("dense", informative) if informative else None
    rows = []
    for prefix, label, control in SHARE_ROWS:
        value = mean_of(prefix.format(imp=imp), tasks)
        if value is None:
            continue
        share_informative = None
        if dense_informative:
            share_informative = mean_of(prefix.format(imp=imp), informative) / dense_informative
        control_mean = None if control is None else mean_of(control, tasks)
        rows.append(
            ShareRow(
                label=fill(label, data),
                mean=value,
                share=None if dense is None else value / dense,
                share_informative=share_informative,
                share_of_control=None if control_mean is None else value / control_mean,
            )
        )
    return dense, rows


def share_text(share: float | None) -> str:
    """`share` as a percentage with one decimal, or a dash for a share not measured."""
    return "—" if share is None else f"{share:.1%}"


def verdict_text(paired) -> str:
    """`yes, resolved` / `NO, within sampling error` for a [`PairedDifference`] of ours minus the peer."""
    resolved = ", resolved" if paired.resolved(RESOLVED_Z) else ", within sampling error"
    return ("yes" if paired.difference > 0 else "NO") + resolved


def summary_table(
    data: dict[str, Any],
    pairs: dict[str, tuple[str, str, str]] = PAIRS,
    sides: tuple[str, str] = ("ours", "peer"),
    measured_only: bool = False,
) -> list[str]:
    """`pairs` as a Markdown table (also `run_all.py`'s), its two models' columns headed `sides`; a pair not measured
    yet is a row saying so, or left out with `measured_only`."""
    informative = informative_tasks(data)
    dropped = [t for t in data["settings"]["tasks"] if informative is not None and t not in informative]
    without = f"without {', '.join(dropped)} (dense within {100 * NEAR_CHANCE:.0f} points of chance)"
    lines = [
        f"| pair | {sides[0]} | {sides[1]} | difference (paired stderr) | z | unpaired stderr | {sides[0]} ahead? |"
        + (f" {without}: difference (stderr), z |" if dropped else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if dropped else ""),
    ]
    for entry in pair_results(data, pairs):
        if "paired" not in entry:
            if measured_only:
                continue
            lines.append(f"| {entry['label']} | not measured | | | | | |" + (" |" if dropped else ""))
            continue
        paired = entry["paired"]
        row = (
            f"| {entry['label']} | {100 * entry['ours']:.1f} | {100 * entry['peer']:.1f} | "
            f"{100 * paired.difference:+.1f} ({100 * paired.stderr:.1f}) | {paired.z_score():+.2f} | "
            f"{100 * entry['unpaired_stderr']:.1f} | {verdict_text(paired)} |"
        )
        if "informative" in entry:
            sub = entry["informative"][1]
            row += (
                f" {100 * sub.difference:+.1f} ({100 * sub.stderr:.1f}), {sub.z_score():+.2f}: {verdict_text(sub)} |"
            )
        lines.append(row)
    return lines


def ablation_lines(data: dict[str, Any]) -> list[str]:
    """The measured `ABLATION_PAIRS` as a paragraph and table (none measured: no lines)."""
    table = summary_table(data, ABLATION_PAIRS, sides=("A", "B"), measured_only=True)
    if len(table) == 2:
        return []
    return [
        "",
        'Our models against each other, pair "A vs B" (the same items, the same paired difference A - B):',
        "",
        *table,
    ]


def own_vocabulary_lines(data: dict[str, Any]) -> list[str]:
    """The per-task models' sizes (`PER_TASK`), as a paragraph: how much each task's own vocabulary trims, and what
    share of the ratio it leaves to the L0 masks (no lines before any such model is measured)."""
    params = data.get("params", {})
    alone, pruned = params.get(OWN_VOCABULARY_ALONE, {}), params.get("own_vocab_l0", {})
    tasks = [t for t in data["settings"]["tasks"] if t in alone.get("per_task", {})]
    if not tasks:
        return []
    trimmed = {t: alone["per_task"][t]["achieved"] for t in tasks}
    removed = {t: pruned.get("per_task", {}).get(t, {}).get("achieved") for t in tasks}
    return [
        "",
        "Each task's own vocabulary (rows so labelled): the tokens of "
        f"{params['own_vocab_l0']['config']['vocabulary_coverage']:.0%} of that task's train text alone (as "
        "`tailored_hf.pipeline` counts it for the task it tailors a model to), one model per task, scored on its "
        "task; the share of the dense parameters the trim removes, then (after the L0 masks) the model in all: "
        + "; ".join(f"{t} {trimmed[t]:.1%}" + ("" if removed[t] is None else f" / {removed[t]:.1%}") for t in tasks)
        + ".",
    ]


def settings_text(data: dict[str, Any]) -> str:
    s = data["settings"]
    chance = sum(CHANCE[t] for t in s["tasks"]) / len(s["tasks"])
    return (
        f"First {s['limit']} validation items per task (all when fewer; BoolQ {s['boolq_limit']}), primary metric "
        f"per task, the same items for both models; chance mean {100 * chance:.1f}. Difference = ours - peer on the "
        "7-task mean, with its paired standard error (per task the stderr of the per-item differences, combined over "
        f"tasks); resolved when |z| >= {RESOLVED_Z:g}. Task LoRA: r={s['lora_r']}, lr {s['learning_rate']:g}, "
        f"{s['epochs']:g} epochs, batch {s['batch_size']}, K={s['k']} shots, one adapter per task."
    )


def render(data: dict[str, Any]) -> str:
    s = data["settings"]
    tasks, tag, imp = s["tasks"], f"{s['ratio']:.0%}", s["importance"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    lines = [
        f"# Paired comparison with Torch-Pruning at {tag} of the parameters (SmolLM2-135M-Instruct)",
        "",
        settings_text(data),
        "",
        *summary_table(data),
        *ablation_lines(data),
        *own_vocabulary_lines(data),
    ]
    checks = [
        (dense, committed_check(dense, dense_items, data))
        for dense in ("dense", DENSE_TASK)
        if (dense_items := item_scores(cells, tag, dense, tasks)) is not None
    ]
    per_task_rows, counts = [], {}
    for entry in pair_results(data):
        for pattern, scores in zip(entry["prefixes"], (entry["ours_items"], entry["peer_items"])):
            if pattern not in COMMITTED:
                continue
            if scores is not None and pattern.format(imp=imp) not in [c[0] for c in checks]:
                checks.append((pattern.format(imp=imp), committed_check(pattern, scores, data)))
        if "paired" not in entry:
            continue
        ours, peer, paired = entry["ours_items"], entry["peer_items"], entry["paired"]
        counts = counts or {t: len(ours[t]) for t in tasks}
        per_task_rows.append(
            f"| {entry['name']} | "
            + " | ".join(
                f"{100 * sum(ours[t]) / len(ours[t]):.1f} / {100 * sum(peer[t]) / len(peer[t]):.1f} "
                f"({100 * paired.per_task[t][0]:+.1f} ± {100 * paired.per_task[t][1]:.1f})"
                for t in tasks
            )
            + " |"
        )
    if per_task_rows:
        lines += [
            "",
            "Per task, ours / peer (difference ± paired stderr), n = "
            + ", ".join(f"{t} {n}" for t, n in counts.items())
            + ":",
            "",
            "| pair | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
            *per_task_rows,
        ]
    dense, share_rows = shares(data)
    if share_rows:
        dense_text = "not scored" if dense is None else f"{100 * dense:.1f}"
        informative = informative_tasks(data) or []
        split = any(row.share_informative is not None for row in share_rows)
        controlled = any(row.share_of_control is not None for row in share_rows)
        lines += ["", f"Share of the dense 7-task mean on the same items (dense: {dense_text}):", ""]
        lines += [
            "| model | 7-task mean | share of dense |"
            + (
                f" share of dense on {', '.join(informative)} (dense beats chance by more than "
                f"{100 * NEAR_CHANCE:.0f} points) |"
                if split
                else ""
            )
            + (" share of the dense model after the same training |" if controlled else ""),
            "|---|---|---|" + ("---|" if split else "") + ("---|" if controlled else ""),
        ]
        lines += [
            f"| {row.label} | {100 * row.mean:.1f} | {share_text(row.share)} |"
            + (f" {share_text(row.share_informative)} |" if split else "")
            + (f" {share_text(row.share_of_control)} |" if controlled else "")
            for row in share_rows
        ]
    ppl_rows = [
        f"| {prefix.format(imp=imp)} | {cells[f'{tag}/{prefix.format(imp=imp)}']['wikitext2_ppl']:.1f} |"
        for prefix in (
            *(f"{name}/pruned" for name in C4_MODELS),
            *(f"{peer_c4_prefix(steps)}/pruned" for steps in C4_BUDGETS),
            *(dense_c4_prefix(steps) for steps in C4_BUDGETS),
        )
        # None: a task vocabulary's model, whose per-token perplexity is another tokenizer's
        if cells.get(f"{tag}/{prefix.format(imp=imp)}", {}).get("wikitext2_ppl") is not None
    ]
    if ppl_rows:
        lines += [
            "",
            "WikiText-2 perplexity (40 windows of 128 tokens) of the models trained on a C4 budget:",
            "",
            "| model | ppl |",
            "|---|---|",
        ]
        lines += [f"| dense | {cells['dense']['wikitext2_ppl']:.1f} |"] if "dense" in cells else []
        lines += ppl_rows
    if checks:
        lines += ["", "Rebuilt models vs the committed 200-item cells (first 200 items, BoolQ 100):", ""]
        lines += [f"- `{prefix}`: {text}" for prefix, text in checks]
        if any(text.startswith("differs") for _, text in checks):
            lines += [
                "",
                "A rebuilt model that differs is another model than the committed cells' (a trained one: NutePrune's "
                "masks take 500 steps; at a fixed commit its training reproduces bit for bit, checked once by "
                "retraining the 50% model, so the difference comes from changes to the L0 step since those cells "
                "(float-level and sampling-order)); every pair above judges the rebuilt models, on the same items.",
            ]
    lines += [
        "",
        "Reproduce: `make peers`, then `.venv/bin/python benchmarks/peers/paired_comparison.py"
        + (f" --ratio {s['ratio']}" if s["ratio"] != 0.5 else "")
        + (f" --importance {imp}" if imp != "magnitude" else "")
        + "`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
