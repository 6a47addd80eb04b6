"""ATP vs the two-stage baseline on the HealthCare domain (SmolLM2-135M), after Tables 1-2 and Figs. 3-4 of
arXiv 2412.14426.

Runs, for each pruning ratio (default 40% and 50% of the decoder-layer parameters):

* ATP: `SFTTrainer(peft_config=LoRA)` + `PrunerCallback(ATPConfig(...))` on PubMedQA + HQS training rows; the
  generator's calibration stream holds those rows plus 300 C4 documents, as the paper; removal at the end;
* two-stage baseline: dependency-group pruning (`DepGraphConfig`, Taylor importance, calibrated on the same
  calibration rows) to the same number of removed parameters, then LoRA on the same data for the same steps;

and scores the dense and pruned models with `tailored_hf.eval`: PubMedQA macro-F1 (test, 500), HQS ROUGE-1/2/L
(test, 100), domain perplexity on held-out PubMedQA contexts (test split), and ATP's relative performance (Eq. 9:
mean over tasks of pruned / dense, ROUGE averaged over R1/R2/RL). MedNLI, the paper's third HealthCare task, is not
available offline (PhysioNet credentialed licence), so the relative performance covers PubMedQA and HQS only.

Figures (PNG): Fig. 4, the per-layer pruning ratio of D_QK / D_V / D_GU of each ATP run; Fig. 3, the layer-wise
Hamming difference between the decisions learned with LoRA tuning and without (the same ATP run with LoRA frozen:
learning rate 0), at the first ratio.

Full scale (the lead's run; not timed here: 5 LoRA runs of 3000 steps plus 5 sampled evaluations, meant for a GPU):

    .venv/bin/python benchmarks/atp.py --data-dir ../shared/data --out benchmarks/results

CPU scale (the committed report; about 2 h on 2 cores: 200 steps x 1 row per LoRA run, 50 test items per task,
the generator at 20x the paper's lr, which reached 40% within T_end = 100 generator steps; aiming at 50% it settled
near 42% decided with the paper's alpha = 5 (at lr 1e-2 and 2e-2 alike: an equilibrium of L_LM and alpha * L_s, not
a speed limit), so the 50% ATP run was redone with alpha = 20, which reached the target by step 40):

    .venv/bin/python benchmarks/atp.py --ratios 0.4 0.5 --max-steps 200 --batch-size 1 --max-length 512 \
        --calibration-seq-len 256 --generator-lr 1e-2 --eval-limit 50 --num-runs 1 --ppl-windows 64 \
        --skip-dense-lora  # not run for the committed report (time); drop this flag to add the reference row
    .venv/bin/python benchmarks/atp.py --ratios 0.5 --max-steps 200 --batch-size 1 --max-length 512 \
        --calibration-seq-len 256 --generator-lr 1e-2 --eval-limit 50 --num-runs 1 --ppl-windows 64 \
        --alpha 20 --extend --rerun-atp --skip-dense-lora

Smoke test (a few minutes on CPU; numbers meaningless):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/atp.py --data-dir ../shared/data --smoke --ratios 0.4 \
        --out benchmarks/results/smoke

Generator speed: with the paper's generator lr (5e-4) the decisions of this small model move slowly (CPU probe,
SmolLM2 + LoRA, 2 x 32-token calibration batches, target 40%: 0.05% of the decoder decided after 180 generator
steps at 5e-4; 3% after 30 and 36% after 110 steps at 5e-3), hence the 3000-step default (T_end = 1500 generator
steps). Every ATP entry records `decided_decoder_sparsity` and `target_reached`; if a run falls short, raise
`--max-steps` or `--generator-lr`.

Writes `atp_healthcare.json`, `atp_healthcare.md`, `atp_fig3_hamming.png` and `atp_fig4_layer_ratios.png` under
`--out`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import RESULTS_DIR, add_model_arguments  # noqa: E402

import tailored_hf  # noqa: E402
from tailored_hf import PrunerCallback  # noqa: E402
from tailored_hf.data import load_task_split, map_for_training  # noqa: E402
from tailored_hf.data.calibration import load_calibration_texts  # noqa: E402
from tailored_hf.eval import GenerationSettings, relative_performance, task_score, token_perplexity  # noqa: E402
from tailored_hf.eval.domain import evaluate_domain_task  # noqa: E402
from tailored_hf.methods.atp import ATPConfig, ATPMethod  # noqa: E402
from tailored_hf.methods.depgraph import DepGraphConfig, prune  # noqa: E402
from tailored_hf.structure import ModelGeometry, count_parameters  # noqa: E402
from tailored_hf.structure.plan import atomic_write_text  # noqa: E402

logger = logging.getLogger("benchmarks.atp")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TASKS = ("pubmedqa", "hqs")
PROMPT = "tailored"
TARGET_TOLERANCE = 0.02
#: Above this fraction of PubMedQA answers without a label, the findings say its macro-F1 measures answer format.
UNPARSED_WARNING = 0.5
KIND_LABELS = {"qk": "D_QK", "v": "D_V", "ffn": "D_GU"}


@dataclass
class Scale:
    """Everything that sets the cost of the run."""

    train_per_task: int | None
    c4_docs: int
    calibration_seq_len: int
    max_steps: int
    batch_size: int
    grad_accum: int
    max_length: int
    eval_limit: int | None
    max_new_tokens: int
    num_runs: int
    ppl_seq_len: int
    ppl_windows: int | None
    depgraph_samples: int


FULL = Scale(None, 300, 256, 3000, 4, 1, 512, None, 64, 3, 256, None, 32)
SMOKE = Scale(8, 4, 64, 4, 2, 1, 128, 2, 8, 1, 64, 2, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.5], help="Decoder-parameter ratios.")
    parser.add_argument("--smoke", action="store_true", help="Tiny setting to check the script end to end.")
    parser.add_argument("--train-per-task", type=int, default=None, help="Training rows per task (default: all).")
    parser.add_argument("--c4-docs", type=int, default=None, help="C4 documents in the calibration stream (300).")
    parser.add_argument("--max-steps", type=int, default=None, help="Optimizer steps of every LoRA run.")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None, help="Test rows per task (default: all).")
    parser.add_argument("--num-runs", type=int, default=None, help="Sampled generation runs averaged (ATP: 3).")
    parser.add_argument("--max-length", type=int, default=None, help="Training sequence length (512).")
    parser.add_argument(
        "--calibration-seq-len", type=int, default=None, help="Tokens per calibration row of the generator (256)."
    )
    parser.add_argument(
        "--ppl-windows", type=int, default=None, help="Domain-perplexity windows scored (default: all)."
    )
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument(
        "--generator-lr", type=float, default=None, help="ATP generator AdamW lr (default: the paper's 5e-4)."
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="ATP's weight of the parameter-matching loss L_s (default: 5)."
    )
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument(
        "--group-lasso-reduction", choices=("sum", "mean"), default="sum", help="ATPConfig.group_lasso_reduction."
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-fig3", action="store_true", help="Skip the frozen-LoRA ATP run of Fig. 3.")
    parser.add_argument(
        "--skip-dense-lora", action="store_true", help="Skip the dense + same LoRA reference (same data and steps)."
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="Keep the runs already in `--out`'s report (same setting required) and run only the missing ones.",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="Rewrite the Markdown and Fig. 4 from `--out`'s JSON; run nothing."
    )
    parser.add_argument(
        "--rerun-atp",
        action="store_true",
        help="With --extend: rerun the ATP runs of --ratios even if present (e.g. one that fell short of its target "
        "with a larger --generator-lr, recorded per run); baselines and Fig. 3 are kept.",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def resolve_scale(args: argparse.Namespace) -> Scale:
    scale = SMOKE if args.smoke else FULL
    overrides = {
        "train_per_task": args.train_per_task,
        "c4_docs": args.c4_docs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "eval_limit": args.eval_limit,
        "num_runs": args.num_runs,
        "max_length": args.max_length,
        "calibration_seq_len": args.calibration_seq_len,
        "ppl_windows": args.ppl_windows,
    }
    return Scale(**{**scale.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


# ---------------------------------------------------------------------------------------------------- data
def training_rows(data_dir: str, scale: Scale, seed: int):
    """PubMedQA + HQS training rows as prompt/completion (the `tailored` prompt the evaluation uses)."""
    from datasets import concatenate_datasets

    parts = []
    for task in TASKS:
        split = load_task_split(task, "train", data_dir=data_dir).shuffle(seed=seed)
        if scale.train_per_task is not None:
            split = split.select(range(min(scale.train_per_task, len(split))))
        parts.append(map_for_training(split, task, prompt=PROMPT).select_columns(["prompt", "completion"]))
    return concatenate_datasets(parts).shuffle(seed=seed)


def calibration_rows(tokenizer, train, data_dir: str, scale: Scale) -> list[list[int]]:
    """The generator's stream: the training rows (instruction + response) and `c4_docs` C4 documents."""
    texts = [row["prompt"] + row["completion"] for row in train]
    texts += load_calibration_texts("c4", data_dir=data_dir)[: scale.c4_docs]
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: scale.calibration_seq_len]
        if len(ids) >= 2:
            rows.append(ids)
    return rows


def domain_ppl_ids(tokenizer, data_dir: str) -> torch.Tensor:
    """Held-out PubMedQA contexts (test split, never trained on) as one token stream."""
    test = load_task_split("pubmedqa", "test", data_dir=data_dir)
    contexts = [
        "\n".join(row["CONTEXTS"]) if isinstance(row["CONTEXTS"], list) else str(row["CONTEXTS"]) for row in test
    ]
    return torch.tensor(tokenizer("\n\n".join(contexts), add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------------- eval
def evaluate(model, tokenizer, data_dir: str, scale: Scale, ppl_ids: torch.Tensor, seed: int) -> dict[str, Any]:
    settings = GenerationSettings(max_new_tokens=scale.max_new_tokens, num_runs=scale.num_runs, seed=seed)
    model.eval()
    scores = {}
    for task in TASKS:
        test = load_task_split(task, "test", data_dir=data_dir)
        scores[task] = evaluate_domain_task(
            model, tokenizer, test, task, prompt=PROMPT, settings=settings, limit=scale.eval_limit
        )
    ppl = token_perplexity(model, ppl_ids, seq_len=scale.ppl_seq_len, max_windows=scale.ppl_windows)
    scores["domain_ppl"] = ppl.perplexity
    scores["params"] = count_parameters(model)
    return scores


def relative(scores: dict[str, Any], dense_scores: dict[str, Any]) -> float | None:
    """Eq. 9, or `None` (logged) when a dense score is 0 (e.g. a tiny smoke evaluation)."""
    try:
        return relative_performance(task_scores(scores), dense_scores)
    except ValueError as error:
        logger.warning("relative performance undefined: %s", error)
        return None


def task_scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "pubmedqa": scores["pubmedqa"]["macro_f1"],
        "hqs": {k: scores["hqs"][k] for k in ("rouge1", "rouge2", "rougeL")},
    }


# ---------------------------------------------------------------------------------------------------- runs
def sft_args(out: Path, scale: Scale, learning_rate: float, seed: int):
    from trl import SFTConfig

    use_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(out),
        max_steps=scale.max_steps,
        per_device_train_batch_size=scale.batch_size,
        gradient_accumulation_steps=scale.grad_accum,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_length=scale.max_length,
        completion_only_loss=False,  # ATP: LM loss over instruction + response (same for the baseline)
        bf16=False,
        activation_checkpointing=False,
        use_cpu=not use_gpu,
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, scale.max_steps // 20),
        disable_tqdm=True,
        seed=seed,
    )


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.05,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )


def run_atp(args, scale, ratio, train, calib, out: Path, learning_rate: float):
    """One ATP run; returns (merged pruned model, tokenizer, method)."""
    from trl import SFTTrainer

    model, tokenizer = tailored_hf.load_model(args.model)
    config = ATPConfig(
        target_sparsity=ratio,
        sparsity_scope="decoder",
        group_lasso_reduction=args.group_lasso_reduction,
        **({} if args.generator_lr is None else {"generator_lr": args.generator_lr}),
        **({} if args.alpha is None else {"alpha": args.alpha}),
        calibration_batch_size=scale.batch_size,
        calibration_seq_len=scale.calibration_seq_len,
        seed=args.seed,
    )
    callback = PrunerCallback(config, calibration=calib)
    trainer = SFTTrainer(
        model=model,
        args=sft_args(out, scale, learning_rate, args.seed),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        callbacks=[callback],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    method: ATPMethod = callback.method
    method.metrics["train_seconds"] = seconds
    return merged, tokenizer, method


def run_baseline(args, scale, ratio_total, train, calib, out: Path):
    """Two-stage: dependency-group pruning to the same parameter count, then LoRA on the same data and steps."""
    model, tokenizer = tailored_hf.load_model(args.model)
    rows = [r for r in calib if len(r) >= scale.calibration_seq_len][: scale.depgraph_samples]
    if not rows:
        rows = [calib[0]]
    length = min(len(r) for r in rows)
    calibration = torch.tensor([r[:length] for r in rows])
    config = DepGraphConfig(target_sparsity=ratio_total, importance="taylor", seed=args.seed)
    _, plan = prune(model, config, calibration=calibration, progress=False)
    merged, seconds = train_lora(model, tokenizer, args, scale, train, out)
    return merged, tokenizer, plan, seconds


def train_lora(model, tokenizer, args, scale, train, out: Path):
    """The plain LoRA run every non-ATP row gets (same data, steps and LoRA as ATP); returns (merged, seconds)."""
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=sft_args(out, scale, args.learning_rate, args.seed),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora_config(args),
    )
    start = time.perf_counter()
    trainer.train()
    return trainer.model.merge_and_unload(), time.perf_counter() - start


def decisions_of(method: ATPMethod) -> list[dict[str, str]]:
    """Per layer and kind, the kept (1) / pruned (0) groups as a string of digits: compact in the JSON report."""
    return [
        {k: "".join(str(v) for v in d.get(k).int().tolist()) for k in ("qk", "v", "ffn") if d.get(k) is not None}
        for d in method.decisions
    ]


def hamming(a: list[dict[str, str]], b: list[dict[str, str]]) -> list[dict[str, float]]:
    """Per layer and kind, the fraction of groups whose decisions differ (Fig. 3)."""
    rows = []
    for index, (x, y) in enumerate(zip(a, b)):
        row: dict[str, float] = {"layer": index}
        for kind in x:
            row[kind] = sum(p != q for p, q in zip(x[kind], y[kind])) / len(x[kind])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- report
def plot_fig4(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(r, results["atp"][r]["layer_pruning_ratios"]) for r in results["atp"]]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.5), squeeze=False)
    for ax, (ratio, rows) in zip(axes[0], runs):
        layers = [row["layer"] for row in rows]
        for kind, label in (("qk", "D_QK"), ("v", "D_V"), ("ffn", "D_GU")):
            ax.plot(layers, [row.get(kind, 0.0) for row in rows], marker="o", ms=3, label=label)
        ax.set_title(f"ATP, {float(ratio):.0%} of decoder parameters")
        ax.set_xlabel("layer")
        ax.set_ylabel("pruned fraction")
        ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fig3(rows: list[dict[str, float]], ratio: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    layers = [row["layer"] for row in rows]
    width = 0.27
    for offset, (kind, label) in zip((-width, 0.0, width), (("qk", "D_QK"), ("v", "D_V"), ("ffn", "D_GU"))):
        ax.bar([layer + offset for layer in layers], [row.get(kind, 0.0) for row in rows], width, label=label)
    ax.set_title(f"Hamming difference, decisions with vs without LoRA tuning ({float(ratio):.0%})")
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of groups differing")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    smoke = results["setting"].get("smoke", False)

    def fmt(value: float) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = [
        "# ATP vs two-stage pruning, HealthCare domain (SmolLM2-135M)",
        "",
        *(
            ["**SMOKE SETTING: a check that the script runs end to end; the numbers mean nothing.**", ""]
            if smoke
            else []
        ),
        f"Setting: {json.dumps(results['setting'])}",
        "",
        "MedNLI is not available offline (PhysioNet licence); relative performance (Eq. 9) averages PubMedQA and HQS.",
        "",
        "| model | ratio (decoder) | ratio (total) | params | PubMedQA macro-F1 | PubMedQA unparsed | HQS R1 | HQS R2 "
        "| HQS RL | domain PPL | rel. perf. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, entry: dict[str, Any]) -> None:
        s = entry["scores"]
        hqs = s["hqs"]
        lines.append(
            f"| {name} | {fmt(entry.get('ratio_decoder'))} | {fmt(entry.get('ratio_total'))} | {s['params']:,} | "
            f"{fmt(s['pubmedqa']['macro_f1'])} | {fmt(s['pubmedqa'].get('unparsed'))} | {fmt(hqs['rouge1'])} | "
            f"{fmt(hqs['rouge2'])} | {fmt(hqs['rougeL'])} | "
            f"{fmt(s['domain_ppl'])} | {fmt(entry.get('relative_performance'))} |"
        )

    row("dense", {"scores": results["dense"], "relative_performance": 1.0})
    if "dense_lora" in results:
        row("dense + same LoRA", results["dense_lora"])
    for ratio in results["atp"]:
        row(f"ATP {float(ratio):.0%}", results["atp"][ratio])
        if ratio in results.get("baseline", {}):
            row(f"depgraph + LoRA {float(ratio):.0%}", results["baseline"][ratio])
    lines += [
        "",
        "ATP removal: loss on calibration batches before / after physical removal (f_L vs pruned model):",
        "",
    ]
    for ratio, entry in results["atp"].items():
        m = entry["metrics"]
        reached = "" if entry.get("target_reached", True) else " **TARGET NOT REACHED**"
        lines.append(
            f"- {float(ratio):.0%} (generator lr {entry.get('generator_lr', results['setting']['generator_lr']):g}, "
            f"alpha {entry.get('alpha', results['setting'].get('alpha', 5.0)):g}): "
            f"decided {fmt(entry.get('decided_decoder_sparsity'))} of the decoder{reached}; "
            f"loss {fmt(m.get('removal_loss_before'))} -> {fmt(m.get('removal_loss_after'))} "
            f"(delta {m.get('removal_loss_delta', math.nan):.3g}); clamped groups {int(m.get('clamped_groups', 0))}"
        )
    for name, entry in results.get("superseded", {}).items():
        lines.append(
            f"- superseded `{name}` (generator lr {entry['generator_lr']:g}, alpha {entry['alpha']:g}): decided "
            f"{fmt(entry['decided_decoder_sparsity'])} of the decoder ({entry['ratio_total']:.1%} of all parameters), "
            f"relative performance {fmt(entry['relative_performance'])}, "
            f"domain PPL {fmt(entry['scores']['domain_ppl'])}"
        )
    if "fig3" in results:
        lines += ["", f"Fig. 3 mean Hamming difference: {json.dumps(results['fig3']['mean'])}"]
    figures = ["`atp_fig4_layer_ratios.png`"] + (["`atp_fig3_hamming.png`"] if "fig3" in results else [])
    lines += ["", f"Figures: {', '.join(figures)}."]
    found = findings(results)
    if found:
        lines += ["", "## Findings", "", *(f"- {line}" for line in found)]
    return "\n".join(lines) + "\n"


def findings(results: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers: who is ahead at each ratio, and which scores carry little signal."""
    lines = []
    n = results["dense"]["pubmedqa"].get("n")
    for key, entry in results["atp"].items():
        baseline = results.get("baseline", {}).get(key)
        if baseline is None or entry.get("relative_performance") is None:
            continue
        ours, theirs = entry["relative_performance"], baseline["relative_performance"]
        if theirs is None:
            continue
        ahead = "ATP" if ours > theirs else "the two-stage baseline"
        lines.append(
            f"{float(key):.0%} of the decoder: relative performance ATP {ours:.1%} vs depgraph + LoRA {theirs:.1%} "
            f"({ahead} ahead); domain perplexity {entry['scores']['domain_ppl']:.1f} vs "
            f"{baseline['scores']['domain_ppl']:.1f} (dense {results['dense']['domain_ppl']:.1f})."
        )
    for key, entry in results["atp"].items():
        if entry.get("target_reached", True) or entry.get("relative_performance") is None:
            continue
        others = sorted(
            (b["ratio_total"], b["relative_performance"], k)
            for k, b in results.get("baseline", {}).items()
            if b.get("relative_performance") is not None
        )
        if others:
            listed = ", ".join(f"{r:.1%} ({k}: {perf:.1%})" for r, perf, k in others)
            lines.append(
                f"ATP's {float(key):.0%} run decided only {entry['decided_decoder_sparsity']:.1%} of the decoder "
                f"({entry['ratio_total']:.1%} of all parameters), so it is not at its baseline's parameter count; "
                f"relative performance {entry['relative_performance']:.1%} beside the baselines by share of all "
                f"parameters removed: {listed}."
            )
    dense = task_scores(results["dense"])
    if all(task_score(value) for value in dense.values()):
        per_task = []
        for name, entry in named_entries(results):
            scores = task_scores(entry["scores"])
            per_task.append(
                f"{name} " + " / ".join(f"{task_score(scores[t]) / task_score(dense[t]):.2f}" for t in TASKS)
            )
        lines.append(
            f"Relative performance per task ({' / '.join(TASKS)}, pruned / dense; HQS averages R1/R2/RL): "
            + "; ".join(per_task)
            + "."
        )
    fig3 = results.get("fig3")
    tuned = results["atp"].get(f"{fig3['ratio']:.2f}") if fig3 else None
    if fig3 and tuned:
        ratios = tuned["layer_pruning_ratios"]
        kinds = list(fig3["mean"])
        chance = {k: sum(2 * r[k] * (1 - r[k]) for r in ratios) / len(ratios) for k in kinds}
        lines.append(
            "Fig. 3: LoRA tuning changes the decisions; mean Hamming difference with vs without it "
            + ", ".join(f"{KIND_LABELS[k]} {fig3['mean'][k]:.2f}" for k in kinds)
            + " (two independent random masks with the tuned run's per-layer pruned fractions: "
            + ", ".join(f"{KIND_LABELS[k]} {chance[k]:.2f}" for k in kinds)
            + ")."
        )
    lost = [
        name
        for name, entry in [("dense", {"scores": results["dense"]}), *named_entries(results)]
        if entry["scores"]["pubmedqa"].get("unparsed", 0.0) > UNPARSED_WARNING
    ]
    if lost:
        lines.append(
            f"PubMedQA answers with no yes/no/maybe label in more than {UNPARSED_WARNING:.0%} of the {n} items: "
            f"{', '.join(lost)}; their macro-F1 measures lost answer format more than medical QA."
        )
    lines.append(
        f"Each score is over {n} test items per task (one sampled generation run each): differences of a few points "
        "in macro-F1 or ROUGE are within sampling noise at this size."
    )
    return lines


def named_entries(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    entries = [("dense + same LoRA", results["dense_lora"])] if "dense_lora" in results else []
    for key, entry in results["atp"].items():
        entries.append((f"ATP {float(key):.0%}", entry))
        if key in results.get("baseline", {}):
            entries.append((f"depgraph + LoRA {float(key):.0%}", results["baseline"][key]))
    return entries


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scale = resolve_scale(args)
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "atp_healthcare.json").read_text())
        write_report(results, out)
        return results
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    dense_model, tokenizer = tailored_hf.load_model(args.model)
    train = training_rows(args.data_dir, scale, args.seed)
    calib = calibration_rows(tokenizer, train, args.data_dir, scale)
    ppl_ids = domain_ppl_ids(tokenizer, args.data_dir)
    geometry = ModelGeometry.from_config(dense_model.config)
    decoder = sum(geometry.layer_params(i) for i in range(geometry.num_layers))
    total = geometry.num_parameters()
    setting = {
        "model": args.model,
        "train_rows": len(train),
        "calibration_rows": len(calib),
        "c4_docs": scale.c4_docs,
        **{k: v for k, v in scale.__dict__.items() if k not in ("c4_docs",)},
        "learning_rate": args.learning_rate,
        "generator_lr": args.generator_lr or ATPConfig().generator_lr,
        "alpha": ATPConfig().alpha if args.alpha is None else args.alpha,
        "group_lasso_reduction": args.group_lasso_reduction,
        "lora_r": args.lora_r,
        "smoke": args.smoke,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seed": args.seed,
    }
    if args.rerun_atp and not args.extend:
        raise ValueError("--rerun-atp replaces runs of an existing report: use it with --extend.")
    if args.extend:
        results = previous_results(out, setting, may_differ=("generator_lr", "alpha") if args.rerun_atp else ())
    else:
        results = {"setting": setting, "atp": {}, "baseline": {}}
    if "dense" not in results:
        logger.info("dense evaluation")
        results["dense"] = evaluate(dense_model, tokenizer, args.data_dir, scale, ppl_ids, args.seed)
        write_report(results, out)
    dense_scores = task_scores(results["dense"])
    if not args.skip_dense_lora and "dense_lora" not in results:
        logger.info("dense + the same LoRA run (reference for what tuning alone does)")
        model, seconds = train_lora(dense_model, tokenizer, args, scale, train, out / "dense-lora")
        scores = evaluate(model, tokenizer, args.data_dir, scale, ppl_ids, args.seed)
        results["dense_lora"] = {
            "scores": scores,
            "relative_performance": relative(scores, dense_scores),
            "train_seconds": seconds,
        }
        del model
        write_report(results, out)
    del dense_model
    gc.collect()

    for ratio in args.ratios:
        key = f"{ratio:.2f}"
        ratio_total = ratio * decoder / total  # the same number of removed parameters, as a fraction of all
        if key not in results["atp"] or args.rerun_atp:
            logger.info("ATP at %.0f%% of the decoder parameters", 100 * ratio)
            model, tok, method = run_atp(args, scale, ratio, train, calib, out / f"atp-{key}", args.learning_rate)
            scores = evaluate(model, tok, args.data_dir, scale, ppl_ids, args.seed)
            decided = method.plan.metadata["decided_sparsity"]
            if decided < ratio - TARGET_TOLERANCE:
                logger.warning(
                    "ATP decided only %.3f of the decoder parameters (target %.2f): the generator needs more steps "
                    "(--max-steps) or a larger --generator-lr.",
                    decided,
                    ratio,
                )
            results["atp"][key] = {
                "ratio_decoder": ratio,
                "generator_lr": setting["generator_lr"],
                "alpha": setting["alpha"],
                "decided_decoder_sparsity": decided,
                "target_reached": decided >= ratio - TARGET_TOLERANCE,
                "ratio_total": 1.0 - scores["params"] / total,
                "scores": scores,
                "relative_performance": relative(scores, dense_scores),
                "metrics": dict(method.metrics),
                "layer_pruning_ratios": method.plan.metadata["layer_pruning_ratios"],
                "decisions": decisions_of(method),
            }
            if results.get("fig3", {}).get("ratio") == ratio:
                del results["fig3"]  # compared the replaced decisions: rerun below unless --skip-fig3
            del model
            gc.collect()
            write_report(results, out)
        if not args.skip_baseline and key not in results["baseline"]:
            logger.info("two-stage baseline (depgraph + LoRA) at %.4f of all parameters", ratio_total)
            model, tok, plan, seconds = run_baseline(args, scale, ratio_total, train, calib, out / f"baseline-{key}")
            scores = evaluate(model, tok, args.data_dir, scale, ppl_ids, args.seed)
            results["baseline"][key] = {
                "ratio_decoder": ratio,
                "ratio_total": plan.num_parameters()["sparsity"],
                "scores": scores,
                "relative_performance": relative(scores, dense_scores),
                "train_seconds": seconds,
            }
            del model
            gc.collect()
            write_report(results, out)

    if not args.skip_fig3 and "fig3" not in results:
        ratio = args.ratios[0]
        key = f"{ratio:.2f}"
        logger.info("Fig. 3: ATP at %.0f%% without LoRA tuning (learning rate 0)", 100 * ratio)
        model, _, frozen = run_atp(args, scale, ratio, train, calib, out / f"atp-frozen-{key}", 0.0)
        rows = hamming(results["atp"][key]["decisions"], decisions_of(frozen))
        kinds = [k for k in ("qk", "v", "ffn") if k in rows[0]]
        results["fig3"] = {
            "ratio": ratio,
            "per_layer": rows,
            "mean": {k: sum(r[k] for r in rows) / len(rows) for k in kinds},
        }
        plot_fig3(rows, key, out / "atp_fig3_hamming.png")
        del model

    write_report(results, out)
    logger.info("wrote %s", out / "atp_healthcare.md")
    return results


def previous_results(out: Path, setting: dict[str, Any], may_differ: tuple[str, ...] = ()) -> dict[str, Any]:
    """The report in `out` to extend; its setting must equal this run's except for `may_differ` (keys the old report
    lacks are logged)."""
    path = out / "atp_healthcare.json"
    if not path.is_file():
        raise ValueError(f"--extend: no report to extend at {path}.")
    results = json.loads(path.read_text())
    old = results["setting"]
    differing = {
        k: (old[k], setting[k]) for k in old.keys() & setting.keys() if old[k] != setting[k] and k not in may_differ
    }
    if differing or old.keys() - setting.keys():
        raise ValueError(f"--extend: the report at {path} was measured at another setting: {differing or old}.")
    unrecorded = setting.keys() - old.keys()
    if unrecorded & set(may_differ):
        raise ValueError(
            f"--extend: the report at {path} does not record {sorted(unrecorded & set(may_differ))}, so the runs kept "
            "would be labelled with this run's values; add them to its setting first."
        )
    if unrecorded:
        logger.warning("--extend: the report at %s does not record %s", path, sorted(unrecorded))
    results["setting"] = {**setting, **old}
    results.setdefault("baseline", {})
    return results


def write_report(results: dict[str, Any], out: Path) -> None:
    """JSON, Markdown and Fig. 4 of what has been measured so far (called after every run: CPU runs take hours)."""
    if results["atp"]:
        plot_fig4(results, out / "atp_fig4_layer_ratios.png")
    atomic_write_text(out / "atp_healthcare.json", json.dumps(results, indent=1))
    atomic_write_text(out / "atp_healthcare.md", markdown(results))


if __name__ == "__main__":
    main()
