"""NutePrune (L0 masks + progressive numerous-teacher KD) on SmolLM2-135M-Instruct: cost and quality.

Measured claims (issue 6):

1. Memory: peak RSS of a NutePrune training step vs a plain LoRA step (target <= 1.15x), and what naive two-model KD
   (a second, frozen copy of the model as teacher) costs: the same step plus the copy's weights. The `naive_kd`
   step measures what the copy alone adds to plain LoRA (its weights and no-grad forward; no masks, no KD loss).
   Each step type runs in its own subprocess, because peak RSS is a process-wide high-water mark. glibc's malloc
   keeps freed heap memory resident, so RSS also counts fragmentation: LoRA and NutePrune steps are measured again
   with a fixed mmap threshold (`MALLOC_MMAP_THRESHOLD_`, every tensor above it mapped and unmapped), where peak RSS
   follows the live tensors; both views are reported, and a third with jemalloc preloaded when it is installed
   (`apt-get install libjemalloc2`).
2. Step time overhead vs a plain LoRA step, next to its floor: one extra no-grad teacher forward (timed alone).
3. Quality at each target (default 20% and 50%), same data budget (steps x batch of C4 windows) for every variant:
   no-KD vs KD vs progressive KD (the paper's Table 6 ordering) and the dependency-group pass + LoRA at equal
   parameter count; 7-task zero-shot mean accuracy and WikiText-2 perplexity, dense baseline alongside.

Writes `benchmarks/results/nuteprune.{json,md}`; each section records the settings it was measured at, and a section
skipped (`--skip-cost`, `--skip-quality`) is carried over from the previous report. Full run (about 4 h of training
per variant on 2 CPU cores; minutes on a GPU):

    python benchmarks/nuteprune.py --targets 0.2,0.5 --steps 400 --batch-size 8 --seq-len 256 --eval-limit 500 \
        --ppl-windows 128

The committed quality section is a CPU-scale run: 64,000 training tokens per variant (1/13 of the full run's) in 500
steps (the masks need steps more than tokens to move), 200 items per task; 9-15 min per L0 variant, 8 min for
depgraph, 2-3 min per evaluation on 2 cores:

    python benchmarks/nuteprune.py --skip-cost --steps 500 --batch-size 1 --seq-len 128 --eval-limit 200

Smoke test (a couple of minutes on 2 cores):

    OMP_NUM_THREADS=1 python benchmarks/nuteprune.py --targets 0.2 --variants progressive,depgraph --steps 2 \
        --batch-size 2 --seq-len 32 --eval-limit 4 --tasks piqa --ppl-windows 2 --cost-steps 2 \
        --out benchmarks/results/nuteprune_smoke
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import L0_DEFAULT_CONSTRAINT, RESULTS_DIR, add_model_arguments
from device_setting import load_benchmark_model

SCRATCH_DIR = Path(tempfile.gettempdir()) / "tailored_hf_nuteprune"  # Trainer output dirs (nothing is saved there)
VARIANTS = ("none", "kd", "progressive", "depgraph")
VARIANT_LABELS = {"none": "L0, no KD", "kd": "L0 + KD", "progressive": "L0 + progressive KD", "depgraph": "depgraph"}
#: The settings each report section depends on: a section skipped in a run is carried over from the previous report
#: with the settings it was measured at.
COST_SETTINGS = (
    "targets",
    "batch_size",
    "seq_len",
    "cost_steps",
    "cost_repeats",
    "lora_r",
    "lora_alpha",
    "lora_targets",
)
QUALITY_SETTINGS = (
    "targets", "variants", "steps", "batch_size", "seq_len", "learning_rate", "lora_r", "lora_alpha", "lora_targets",
    "eval_limit", "tasks", "ppl_windows", "seed",
)  # fmt: skip
STEP_KINDS = ("lora", "nuteprune", "naive_kd")
#: A run whose expected sparsity ended more than this below (above) its target is reported as short of (past) it.
MASK_TARGET_SLACK = 0.02
# NutePrune's LoRA (scripts/cotrain.sh): rank 8, alpha 8, on the query and value projections (`--lora_param Q.V`);
# small adapters also keep the CPU teacher snapshots small (one per 1% of sparsity).
DEFAULT_LORA_TARGETS = "q_proj,v_proj"
MEMORY_CLAIM = 1.15
# glibc mmap threshold of the live-memory view: tensors above 64 KiB are mmapped, and unmapped when freed.
LIVE_MMAP_THRESHOLD = 64 * 1024
# jemalloc, the allocator PyTorch's CPU performance guide recommends (Debian: `apt-get install libjemalloc2`): the
# third view, preloaded into the step subprocesses when found here.
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--targets", default="0.2,0.5", help="comma-separated target sparsities")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per variant (same data budget)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per C4 training window")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="LoRA learning rate (the paper: 1e-3)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=8)
    parser.add_argument("--lora-targets", default=DEFAULT_LORA_TARGETS, help="comma-separated module names")
    parser.add_argument("--eval-limit", type=int, default=500, help="validation items per task")
    parser.add_argument("--tasks", default="boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa")
    parser.add_argument("--ppl-windows", type=int, default=128, help="WikiText-2 windows of 128 tokens (0 = all)")
    parser.add_argument("--cost-steps", type=int, default=5, help="timed steps per step kind (after one warm-up)")
    parser.add_argument(
        "--cost-repeats",
        type=int,
        default=3,
        help="processes per step kind; the median peak is reported (glibc's heap fragmentation varies run to run)",
    )
    parser.add_argument("--skip-cost", action="store_true", help="skip the memory / step-time measurement")
    parser.add_argument("--skip-quality", action="store_true", help="skip the pruning + evaluation runs")
    parser.add_argument(
        "--rerun",
        default="",
        help="comma-separated variants: rerun only these (after a change to them) and carry the dense baseline and "
        "the other variants' runs over from the previous report, which must have the same quality settings",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="re-render the Markdown from the JSON at --out; run nothing"
    )
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="cost only: build `--model` (config + tokenizer folder) with random weights, where the real ones cannot "
        "travel (a lent GPU); memory and step time depend on shapes only",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR / "nuteprune"))
    parser.add_argument("--measure-step", choices=STEP_KINDS, help=argparse.SUPPRESS)  # internal: one subprocess
    return parser.parse_args(argv)


def device_of(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def training_rows(tokenizer, args: argparse.Namespace, n_rows: int):
    """`n_rows` C4 windows of `seq_len` tokens (LM objective, labels = inputs), the paper's pruning data."""
    from datasets import Dataset

    from tailored_hf.data import calibration_batches

    ids = calibration_batches(
        tokenizer, source="c4", n_samples=n_rows, seq_len=args.seq_len, seed=args.seed, data_dir=args.data_dir
    ).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * args.seq_len] * len(ids)})


def trainer_for(model, tokenizer, args: argparse.Namespace, out_dir: Path, callbacks: list, steps: int):
    from transformers import Trainer, TrainingArguments

    device = device_of(args)
    training_args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to=[],
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    rows = training_rows(tokenizer, args, steps * args.batch_size)
    return Trainer(
        model=model, args=training_args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks
    )


def lora_model(model, args: argparse.Namespace):
    from peft import LoraConfig, get_peft_model

    targets = [t for t in args.lora_targets.split(",") if t]
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(model, config)


def l0_config(target: float, distillation: str, sparsity_constraint: str = L0_DEFAULT_CONSTRAINT):
    from tailored_hf.methods.l0 import L0Config

    return L0Config(target_sparsity=target, distillation=distillation, sparsity_constraint=sparsity_constraint)


# ---------------------------------------------------------------------------------------------- cost (subprocess)
class _StepTimer:
    """TrainerCallback timing optimizer steps (wall clock, device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        from transformers import TrainerCallback

        timer = self
        self.device, self.times, self.rss_mb, self._start = device, [], [], 0.0

        class Callback(TrainerCallback):
            def on_step_begin(self, *a, **k):
                timer._sync()
                timer._start = time.perf_counter()

            def on_step_end(self, *a, **k):
                timer._sync()
                timer.times.append(time.perf_counter() - timer._start)
                timer.rss_mb.append(peak_rss_mb())  # the high-water mark so far: steps only, before train end

        self.callback = Callback()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class _NaiveTeacher:
    """Naive two-model KD: a frozen copy of the model runs a no-grad forward before every student forward."""

    def __init__(self, model) -> None:
        from tailored_hf import arch as A

        self.teacher = copy.deepcopy(A.unwrap_model(model)).eval().requires_grad_(False)
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.teacher(input_ids=kwargs["input_ids"], attention_mask=kwargs.get("attention_mask"))


def measure_step(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One step kind in this process: peak RSS / CUDA memory and per-step time over `cost_steps` timed steps."""
    from tailored_hf import PrunerCallback
    from tailored_hf.peft_wrappers import trainable_parameters

    device = device_of(args)
    model, tokenizer = load_benchmark_model(args.model, args.random_weights, args.seed)
    model = lora_model(model.to(device), args)
    timer = _StepTimer(device)
    callbacks: list = [timer.callback]
    pruner = None
    if kind == "nuteprune":
        # Progressive KD with the layer-wise term: the most expensive configuration.
        pruner = PrunerCallback(l0_config(float(args.targets.split(",")[0]), "progressive"))
        callbacks.insert(0, pruner)
    naive = _NaiveTeacher(model) if kind == "naive_kd" else None
    steps = args.cost_steps + 1
    trainer = trainer_for(model, tokenizer, args, SCRATCH_DIR / f"cost_{kind}", callbacks, steps)
    adapter_bytes = sum(p.numel() * p.element_size() for p in trainable_parameters(model).values())  # before pruning
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = {
        "kind": kind,
        "peak_rss_mb": timer.rss_mb[-1],  # after the last step, before on_train_end prunes (apply_plan copies)
        "peak_rss_mb_with_pruning": peak_rss_mb(),
        "step_seconds": timer.times[1:],  # the first step includes lazy initialisation
        "mean_step_seconds": sum(timer.times[1:]) / max(1, len(timer.times) - 1),
        "model_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if pruner is not None:
        method = pruner.method
        result["snapshot_mb"] = method.metrics.get("snapshot_mb", 0.0)
        mask_bytes = sum(p.numel() * p.element_size() for p in method.masks.parameters())
        result["snapshot_mb_each"] = (mask_bytes + adapter_bytes) / 2**20
        # A full run keeps one snapshot per `snapshot_interval` below the target, plus the intact model.
        levels = math.ceil(method.config.target_sparsity / method.config.snapshot_interval)
        result["snapshot_mb_full_run"] = levels * result["snapshot_mb_each"]
    if naive is not None:
        result["teacher_copy_mb"] = sum(p.numel() * p.element_size() for p in naive.teacher.parameters()) / 2**20
    if kind == "lora":
        result["teacher_forward_seconds"] = time_teacher_forward(trainer.model, tokenizer, args, device)
    return result


def time_teacher_forward(model, tokenizer, args: argparse.Namespace, device: torch.device) -> float:
    """The cost floor of NutePrune's overhead: one no-grad forward of the same model on one batch."""
    rows = training_rows(tokenizer, args, args.batch_size)
    ids = torch.tensor(rows["input_ids"], device=device)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(args.cost_steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sum(times[1:]) / max(1, len(times) - 1)


def run_step_subprocess(kind: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--measure-step", kind]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def run_step_repeated(kind: str, argv: list[str], env: dict[str, str], repeats: int) -> dict[str, Any]:
    """`repeats` processes of one step kind: the run with the median peak memory, plus every run's peak and step
    time (`*_runs`). One process can hit a heap-fragmentation event another does not; the median is not luck."""
    runs = [run_step_subprocess(kind, argv, env) for _ in range(max(1, repeats))]
    memory = "peak_cuda_mb" if "peak_cuda_mb" in runs[0] else "peak_rss_mb"
    median = sorted(runs, key=lambda r: r[memory])[(len(runs) - 1) // 2]
    return {
        **median,
        f"{memory}_runs": [r[memory] for r in runs],
        "mean_step_seconds_runs": [r["mean_step_seconds"] for r in runs],
    }


def allocator_view(argv: list[str], env: dict[str, str], repeats: int) -> dict[str, dict[str, Any]]:
    """Peak RSS and step time of the LoRA and NutePrune steps again, with `env` added (an allocator setting)."""
    views = {kind: run_step_repeated(kind, argv, {**os.environ, **env}, repeats) for kind in ("lora", "nuteprune")}
    return {
        kind: {k: r[k] for k in ("peak_rss_mb", "peak_rss_mb_runs", "mean_step_seconds")} for kind, r in views.items()
    }


def measure_costs(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    results = {kind: run_step_repeated(kind, argv, os.environ.copy(), args.cost_repeats) for kind in STEP_KINDS}
    lora, nute, naive = results["lora"], results["nuteprune"], results["naive_kd"]
    if "peak_cuda_mb" in lora:
        # On a GPU the figure is the peak of CUDA memory allocated: exact live tensors, no allocator view to add.
        cuda = {kind: results[kind]["peak_cuda_mb"] for kind in STEP_KINDS}
        results["summary"] = {
            "cuda_ratio_nuteprune_vs_lora": cuda["nuteprune"] / cuda["lora"],
            "cuda_ratio_naive_kd_vs_lora": cuda["naive_kd"] / cuda["lora"],
            "cuda_ratio_two_model_nuteprune_vs_lora": (cuda["nuteprune"] + naive["teacher_copy_mb"]) / cuda["lora"],
            "memory_claim_met": cuda["nuteprune"] / cuda["lora"] <= MEMORY_CLAIM,
            "step_time_ratio": nute["mean_step_seconds"] / lora["mean_step_seconds"],
            "overhead_seconds": nute["mean_step_seconds"] - lora["mean_step_seconds"],
            "floor_seconds_one_teacher_forward": lora["teacher_forward_seconds"],
            # Teacher snapshots live in CPU memory, outside this figure: what a full run holds there.
            "snapshot_mb_full_run": nute["snapshot_mb_full_run"],
        }
        return results
    live = allocator_view(argv, {"MALLOC_MMAP_THRESHOLD_": str(LIVE_MMAP_THRESHOLD)}, args.cost_repeats)
    results["live_memory"] = {"mmap_threshold_bytes": LIVE_MMAP_THRESHOLD, **live}
    jemalloc = next((path for path in JEMALLOC_PATHS if Path(path).is_file()), None)
    if jemalloc is not None:
        results["jemalloc"] = {
            "library": jemalloc,
            **allocator_view(argv, {"LD_PRELOAD": jemalloc}, args.cost_repeats),
        }
    results["summary"] = {
        "rss_ratio_nuteprune_vs_lora": nute["peak_rss_mb"] / lora["peak_rss_mb"],
        "rss_ratio_naive_kd_vs_lora": naive["peak_rss_mb"] / lora["peak_rss_mb"],
        # Naive two-model NutePrune: the same step, its teacher a second resident copy of the weights.
        "rss_ratio_two_model_nuteprune_vs_lora": (nute["peak_rss_mb"] + naive["teacher_copy_mb"])
        / lora["peak_rss_mb"],
        "memory_claim_met": nute["peak_rss_mb"] / lora["peak_rss_mb"] <= MEMORY_CLAIM,
        "rss_ratio_nuteprune_vs_lora_live": live["nuteprune"]["peak_rss_mb"] / live["lora"]["peak_rss_mb"],
        "rss_ratio_nuteprune_vs_lora_jemalloc": (
            results["jemalloc"]["nuteprune"]["peak_rss_mb"] / results["jemalloc"]["lora"]["peak_rss_mb"]
            if jemalloc is not None
            else None
        ),
        # Projection: the measured step plus every snapshot a full run to the target accumulates on the CPU.
        "rss_ratio_nuteprune_full_run_projection": (
            nute["peak_rss_mb"] + nute["snapshot_mb_full_run"] - nute["snapshot_mb"]
        )
        / lora["peak_rss_mb"],
        "step_time_ratio": nute["mean_step_seconds"] / lora["mean_step_seconds"],
        "overhead_seconds": nute["mean_step_seconds"] - lora["mean_step_seconds"],
        "floor_seconds_one_teacher_forward": lora["teacher_forward_seconds"],
    }
    return results


# ---------------------------------------------------------------------------------------------- quality
def evaluate(model, tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    from tailored_hf.eval import evaluate_tasks, llm_pruner_perplexity

    model.eval()
    tasks = [t for t in args.tasks.split(",") if t]
    start = time.perf_counter()
    mc = evaluate_tasks(model, tokenizer, tasks, data_dir=args.data_dir, limit=args.eval_limit)
    ppl = llm_pruner_perplexity(
        model, tokenizer, args.data_dir, datasets=("wikitext2",), max_windows=args.ppl_windows or None
    )["wikitext2"]
    return {
        "tasks": {t: r["primary"] for t, r in mc.items()},
        "task_items": {t: r["n"] for t, r in mc.items()},
        "mean_accuracy": sum(r["primary"] for r in mc.values()) / len(mc),
        "wikitext2_ppl": ppl.perplexity,
        "eval_seconds": time.perf_counter() - start,
    }


def run_variant(variant: str, target: float, args: argparse.Namespace) -> dict[str, Any]:
    """Prune to `target` with `variant` and the same LoRA training budget; evaluate the merged pruned model."""
    merged, tokenizer, info = train_variant(variant, target, args)
    log = info.pop("log")
    result = {**info, **evaluate(merged, tokenizer, args), "log": log}
    del merged
    gc.collect()
    return result


def train_variant(
    variant: str, target: float, args: argparse.Namespace, sparsity_constraint: str = L0_DEFAULT_CONSTRAINT
) -> tuple[Any, Any, dict[str, Any]]:
    """Prune to `target` with `variant` (L0 distillation mode, with `sparsity_constraint`, or `depgraph`) and the LoRA
    training budget of `args`: `(merged pruned model, tokenizer, {variant, target, parameter counts, train_seconds,
    log})`."""
    from tailored_hf import PrunerCallback, load_model
    from tailored_hf.methods.depgraph import DepGraphConfig
    from tailored_hf.structure import count_parameters

    model, tokenizer = load_model(args.model)
    dense = count_parameters(model)
    if variant == "depgraph":
        config = DepGraphConfig(target_sparsity=target, calibration_source="c4", seed=args.seed)
    else:
        config = l0_config(target, variant, sparsity_constraint)
    merged, info = train_lora(model, tokenizer, args, [PrunerCallback(config)], f"{variant}_{int(100 * target)}")
    pruned = count_parameters(merged)
    info = {"variant": variant, "target": target, "params_dense": dense, "params_pruned": pruned} | info
    return merged, tokenizer, info | {"sparsity": 1 - pruned / dense}


def train_lora(model, tokenizer, args: argparse.Namespace, callbacks: list, tag: str) -> tuple[Any, dict[str, Any]]:
    """LoRA on `model` for the training budget of `args` (`steps x batch_size` C4 windows of `seq_len` tokens),
    with `callbacks` (a `PrunerCallback` for the variants; none for a plain recovery of an already pruned model, e.g.
    a peer's at the same budget): `(merged model, {train_seconds, log})`."""
    from transformers import set_seed

    # The LoRA initialisation draws from the global RNG before the Trainer seeds it: seed here, so every run starts
    # from the same adapters whatever ran earlier in this process.
    set_seed(args.seed)
    model = lora_model(model.to(device_of(args)), args)
    trainer = trainer_for(model, tokenizer, args, SCRATCH_DIR / f"run_{tag}", callbacks, args.steps)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    history = [
        {k: v for k, v in e.items() if k.startswith("pruning/") or k in ("loss", "step")}
        for e in trainer.state.log_history
    ]
    del trainer, model
    gc.collect()
    return merged, {"train_seconds": train_seconds, "log": history}


def render(report: dict[str, Any]) -> str:
    lines = [f"# NutePrune on {report['model']}", ""]
    lines += [f"{report['machine']}, {report['torch_threads']} torch threads, device {report['device']}.", ""]
    costs = report.get("costs")
    if costs:
        s, cfg = costs["summary"], costs["config"]
        lines += [
            "## Memory and step time (one process per step kind)",
            "",
            f"One training step of {cfg['batch_size']} C4 windows of {cfg['seq_len']} tokens, LoRA r={cfg['lora_r']} "
            f"on {cfg['lora_targets']}; NutePrune: progressive KD with the layer-wise term, target "
            f"{float(cfg['targets'].split(',')[0]):.0%}; mean of {cfg['cost_steps']} timed steps after a warm-up."
            + (
                f" {cfg['cost_repeats']} processes per step kind: the run with the median peak is shown, every run's "
                "peak in brackets (glibc's heap fragmentation differs from process to process)."
                if cfg.get("cost_repeats", 1) > 1
                else ""
            ),
            "",
        ]
        on_gpu = "cuda_ratio_two_model_nuteprune_vs_lora" in s
        memory, label = ("peak_cuda_mb", "peak CUDA memory allocated") if on_gpu else ("peak_rss_mb", "peak RSS")
        lines += [f"| step | {label} (MB) | vs LoRA | mean step (s) | vs LoRA |", "|---|---|---|---|---|"]
        for kind in STEP_KINDS:
            r = costs[kind]
            runs = r.get(f"{memory}_runs", [])
            spread = f" [{', '.join(f'{v:.0f}' for v in runs)}]" if len(runs) > 1 else ""
            lines.append(
                f"| {kind} | {r[memory]:.0f}{spread} | {r[memory] / costs['lora'][memory]:.3f}x | "
                f"{r['mean_step_seconds']:.3f} | {r['mean_step_seconds'] / costs['lora']['mean_step_seconds']:.2f}x |"
            )
        if on_gpu:
            lines += [
                "",
                f"NutePrune peak CUDA memory / LoRA: **{s['cuda_ratio_nuteprune_vs_lora']:.3f}x** (claim <= "
                f"{MEMORY_CLAIM}x: {'met' if s['memory_claim_met'] else 'NOT met'}); naive two-model KD, i.e. the "
                f"same step with a resident teacher copy ({costs['naive_kd'].get('teacher_copy_mb', 0):.0f} MB): "
                f"{s['cuda_ratio_two_model_nuteprune_vs_lora']:.3f}x; plain LoRA plus that copy's no-grad forward "
                f"(`naive_kd`): {s['cuda_ratio_naive_kd_vs_lora']:.3f}x. Teacher snapshots stay in CPU memory "
                f"({s['snapshot_mb_full_run']:.0f} MB for a full run), not on the GPU.",
                f"Step-time overhead: {s['overhead_seconds']:.3f} s/step ({s['step_time_ratio']:.2f}x); floor = one "
                f"extra no-grad teacher forward = {s['floor_seconds_one_teacher_forward']:.3f} s.",
                "",
            ]
    if costs and not on_gpu:
        lines += [
            "",
            f"NutePrune peak RSS / LoRA: **{s['rss_ratio_nuteprune_vs_lora']:.3f}x** (claim <= {MEMORY_CLAIM}x: "
            f"{'met' if s['memory_claim_met'] else 'NOT met'}; with all snapshots of a full run: "
            f"{s['rss_ratio_nuteprune_full_run_projection']:.3f}x projected); naive two-model KD, i.e. the same "
            f"step with a resident teacher copy ({costs['naive_kd'].get('teacher_copy_mb', 0):.0f} MB): "
            f"{s['rss_ratio_two_model_nuteprune_vs_lora']:.3f}x. The `naive_kd` row is plain LoRA plus that copy's "
            f"no-grad forward, no masks or KD loss ({s['rss_ratio_naive_kd_vs_lora']:.3f}x): what the copy alone "
            "costs"
            + (
                " (here below LoRA's own peak: glibc's heap fragmentation differs between processes by more than the "
                "copy's weights)"
                if s["rss_ratio_naive_kd_vs_lora"] < 1.0
                else ""
            )
            + ". Snapshots held by NutePrune at the end of the "
            f"measured steps: {costs['nuteprune'].get('snapshot_mb', 0):.1f} MB; a full run to the target holds "
            f"{costs['nuteprune'].get('snapshot_mb_full_run', 0):.0f} MB of CPU snapshots "
            f"({costs['nuteprune'].get('snapshot_mb_each', 0):.1f} MB each, one per snapshot_interval plus the intact "
            "model), not included in the step measurement above.",
            f"Step-time overhead: {s['overhead_seconds']:.3f} s/step ({s['step_time_ratio']:.2f}x); floor = one "
            f"extra no-grad teacher forward = {s['floor_seconds_one_teacher_forward']:.3f} s.",
            "",
        ]
        live = costs.get("live_memory")
        if live:
            ratio = s["rss_ratio_nuteprune_vs_lora_live"]
            lines += [
                f"Live-memory view (glibc `MALLOC_MMAP_THRESHOLD_={live['mmap_threshold_bytes']}`: freed tensors "
                f"leave RSS, so heap fragmentation does not count): LoRA {live['lora']['peak_rss_mb']:.0f} MB, "
                f"NutePrune {live['nuteprune']['peak_rss_mb']:.0f} MB: **{ratio:.3f}x** (claim <= {MEMORY_CLAIM}x: "
                f"{'met' if ratio <= MEMORY_CLAIM else 'NOT met'} in this view). The difference from the default-"
                "allocator ratio above is fragmentation, not tensors the method keeps.",
                "",
            ]
        jemalloc = costs.get("jemalloc")
        if jemalloc:
            ratio = s["rss_ratio_nuteprune_vs_lora_jemalloc"]
            lines += [
                f"With jemalloc (`LD_PRELOAD={jemalloc['library']}`, the allocator PyTorch's CPU performance guide "
                f"recommends): LoRA {jemalloc['lora']['peak_rss_mb']:.0f} MB, NutePrune "
                f"{jemalloc['nuteprune']['peak_rss_mb']:.0f} MB: **{ratio:.3f}x** (claim <= {MEMORY_CLAIM}x: "
                f"{'met' if ratio <= MEMORY_CLAIM else 'NOT met'} with this allocator).",
                "",
            ]
    if report.get("random_weights"):
        lines += ["Random weights of the real shapes: memory and step time depend on shapes only.", ""]
    if report.get("note"):
        lines += [f"Note: {report['note']}", ""]
    if report.get("quality"):
        lines += quality_lines(report["quality"])
    return "\n".join(lines) + "\n"


def quality_lines(quality: dict[str, Any]) -> list[str]:
    """The quality table (dense baseline first, chance level last) and what it shows, at the run's data budget."""
    from tailored_llama import CHANCE  # here, not at the top: the memory-measuring subprocesses import nothing extra

    cfg, dense = quality["config"], quality["dense"]
    tasks = list(dense["tasks"])
    tokens = cfg["steps"] * cfg["batch_size"] * cfg["seq_len"]
    lines = [
        "## Quality (zero-shot, validation; WikiText-2 perplexity, LLM-Pruner protocol)",
        "",
        f"Data budget per variant: {cfg['steps']} steps x {cfg['batch_size']} C4 windows of {cfg['seq_len']} tokens "
        f"({tokens:,} tokens); LoRA r={cfg['lora_r']} on {cfg['lora_targets']}, lr {cfg['learning_rate']}, merged "
        f"before evaluation. The first {cfg['eval_limit']} validation items per task; WikiText-2 over "
        f"{cfg['ppl_windows'] or 'all'} windows of 128 tokens. Seed {cfg['seed']}.",
        "",
        "| target | variant | params | removed | s_hat at end | " + " | ".join(tasks) + " | mean | wikitext2 ppl |",
        "|---|---|---|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    for r in [dense, *quality["runs"]]:
        cells = " | ".join(f"{100 * r['tasks'][t]:.1f}" for t in tasks)
        s_hat = final_expected_sparsity(r)
        lines.append(
            f"| {r.get('target', 0):.0%} | {VARIANT_LABELS.get(r['variant'], r['variant'])} | "
            f"{r['params_pruned'] / 1e6:.2f} M | {r['sparsity']:.1%} | {'' if s_hat is None else f'{s_hat:.1%}'} | "
            f"{cells} | {100 * r['mean_accuracy']:.2f} +- {100 * accuracy_stderr(r, cfg):.2f} | "
            f"{r['wikitext2_ppl']:.1f} |"
        )
    chance = sum(CHANCE[t] for t in tasks) / len(tasks)
    lines.append(
        "| | chance | | | | " + " | ".join(f"{100 * CHANCE[t]:.1f}" for t in tasks) + f" | {100 * chance:.2f} | |"
    )
    lines += [
        "",
        "+- is the binomial standard error of the 7-task mean. `s_hat at end`: the masks' expected sparsity at the "
        "last logged step; the deterministic masks applied at the end are chosen to remove exactly the target "
        "(`removed`).",
        "",
    ]
    rerun = sorted({(VARIANT_LABELS[r["variant"]], r["rerun"]) for r in quality["runs"] if r.get("rerun")})
    if rerun:
        lines += [
            "Rerun in a later process with the same settings (`--rerun`), the other rows carried over: "
            + "; ".join(f"{label} on {day}" for label, day in rerun)
            + ".",
            "",
        ]
    lines += ["### What it shows", ""]
    lines += [f"- {line}" for line in quality_findings(quality, chance)]
    return lines + [""]


def ordering(runs: list[dict[str, Any]], key) -> str:
    """Variant labels from worst to best by `key`, ties joined with '=' (equal up to float rounding: a mean of the same
    per-task scores summed in another order is a tie)."""
    ranked = sorted(runs, key=key)
    text = VARIANT_LABELS[ranked[0]["variant"]]
    for previous, run in zip(ranked, ranked[1:]):
        tie = math.isclose(key(run), key(previous), rel_tol=1e-9, abs_tol=1e-12)
        text += (" = " if tie else " < ") + VARIANT_LABELS[run["variant"]]
    return text


def final_expected_sparsity(run: dict[str, Any]) -> float | None:
    """The L0 masks' expected sparsity s_hat at the last logged training step (None for other methods)."""
    values = [e["pruning/s_hat"] for e in run.get("log", []) if "pruning/s_hat" in e]
    return float(values[-1]) if values else None


def accuracy_stderr(run: dict[str, Any], cfg: dict[str, Any]) -> float:
    """Binomial standard error of the mean accuracy over tasks (items independent)."""
    items = run.get("task_items") or {}
    scores = run["tasks"]
    variance = sum(p * (1 - p) / items.get(t, cfg["eval_limit"]) for t, p in scores.items())
    return math.sqrt(variance) / len(scores)


def quality_findings(quality: dict[str, Any], chance: float) -> list[str]:
    """Per target: the paper's Table 6 ordering (no KD < KD < progressive KD) and the best L0 variant vs the
    dependency-group pass at about the same parameter count, all read from the numbers."""
    from tailored_llama import NEAR_CHANCE

    cfg, dense = quality["config"], quality["dense"]
    findings = []
    for target in sorted({r["target"] for r in quality["runs"]}):
        runs = {r["variant"]: r for r in quality["runs"] if r["target"] == target}
        l0 = [runs[v] for v in ("none", "kd", "progressive") if v in runs]
        text = f"**{target:.0%}**: "
        if len(l0) == 3:
            by_acc = ordering(l0, lambda r: r["mean_accuracy"])
            by_ppl = ordering(l0, lambda r: -r["wikitext2_ppl"])
            spread = max(r["mean_accuracy"] for r in l0) - min(r["mean_accuracy"] for r in l0)
            noise = max(accuracy_stderr(r, cfg) for r in l0)
            paper = " < ".join(VARIANT_LABELS[v] for v in ("none", "kd", "progressive"))
            text += (
                f"worst to best by mean accuracy {by_acc}, by perplexity {by_ppl} (the paper's Table 6: {paper}; "
                f"{'matches' if by_acc == paper else 'differs'} on accuracy, "
                f"{'matches' if by_ppl == paper else 'differs'} on perplexity); the accuracy spread, "
                f"{100 * spread:.1f} points, is {spread / noise:.1f} standard errors. "
            )
            kd, progressive = runs["kd"], runs["progressive"]
            if kd["tasks"] == progressive["tasks"] and kd["wikitext2_ppl"] == progressive["wikitext2_ppl"]:
                text += (
                    "KD and progressive KD are identical here: until the student's expected sparsity passes the "
                    "teacher gap, every progressive teacher is the intact model, i.e. plain KD. "
                )
        missing = [VARIANT_LABELS[v] for v in ("none", "kd", "progressive") if v not in runs]
        if missing:
            text += f"Not run at this target: {', '.join(missing)}. "
        best = max(l0, key=lambda r: r["mean_accuracy"], default=None)
        if best is not None and "depgraph" in runs:
            dep = runs["depgraph"]
            text += (
                f"Best L0 ({VARIANT_LABELS[best['variant']]}, {best['params_pruned'] / 1e6:.2f} M) vs depgraph + the "
                f"same LoRA ({dep['params_pruned'] / 1e6:.2f} M): mean {100 * best['mean_accuracy']:.1f} vs "
                f"{100 * dep['mean_accuracy']:.1f}, perplexity {best['wikitext2_ppl']:.1f} vs "
                f"{dep['wikitext2_ppl']:.1f}. "
            )
        short = [r for r in l0 if (final_expected_sparsity(r) or target) < target - MASK_TARGET_SLACK]
        if short:
            text += (
                "Masks short of the target when training ended: "
                + ", ".join(f"{VARIANT_LABELS[r['variant']]} (s_hat {final_expected_sparsity(r):.1%})" for r in short)
                + ": the final deterministic selection then removed units the masks had not learned to drop, so "
                "these rows measure this data budget, not the method at convergence. "
            )
        over = [r for r in l0 if (final_expected_sparsity(r) or target) > target + MASK_TARGET_SLACK]
        if over:
            text += (
                "Masks past the target when training ended (the Lagrangian still oscillating): "
                + ", ".join(f"{VARIANT_LABELS[r['variant']]} (s_hat {final_expected_sparsity(r):.1%})" for r in over)
                + ". "
            )
        near = [VARIANT_LABELS[v] for v, r in runs.items() if r["mean_accuracy"] - chance <= NEAR_CHANCE]
        text += (
            f"Dense: {100 * dense['mean_accuracy']:.1f}, perplexity {dense['wikitext2_ppl']:.1f}; chance "
            f"{100 * chance:.1f}"
            + (f"; within {100 * NEAR_CHANCE:.0f} points of chance: {', '.join(near)}." if near else ".")
        )
        findings.append(text)
    return findings


def rerun_quality(previous: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The previous quality section with the runs of the `--rerun` variants measured again (same settings)."""
    rerun = [v for v in args.rerun.split(",") if v]
    unknown = sorted(set(rerun) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--rerun: unknown variants {unknown}; choose from {VARIANTS}.")
    quality = carried_section(previous, "quality", QUALITY_SETTINGS)
    if quality is None:
        raise SystemExit("--rerun: the previous report has no quality section to carry the other runs from.")
    settings = vars(args)
    differing = [k for k in QUALITY_SETTINGS if k != "variants" and quality["config"].get(k) != settings[k]]
    if differing:
        raise SystemExit(
            "--rerun: the previous quality section was measured with other settings: "
            + ", ".join(f"{k}={quality['config'].get(k)!r} (now {settings[k]!r})" for k in differing)
        )
    runs = []
    for run in quality["runs"]:
        if run["variant"] in rerun:
            run = run_variant(run["variant"], run["target"], args) | {"rerun": time.strftime("%Y-%m-%d")}
        runs.append(run)
    return quality | {"runs": runs}


def carried_section(previous: dict[str, Any], name: str, settings: tuple[str, ...]) -> dict[str, Any] | None:
    """Section `name` of a previous report, with the settings it was measured at (reports written before sections
    carried their own settings kept them at the top level)."""
    section = previous.get(name)
    if not section:
        return None
    if "config" not in section:
        section["config"] = {k: previous["config"][k] for k in settings if k in previous.get("config", {})}
    return section


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("TAILORED_HF_DATA_DIR", args.data_dir)  # depgraph's calibration text (C4) lives there
    if args.measure_step:
        print(json.dumps(measure_step(args.measure_step, args)))
        return
    from tailored_hf import load_model
    from tailored_hf.structure import count_parameters

    out = Path(args.out)
    json_path = out.with_suffix(".json")
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.report_only:
        if not previous:
            raise SystemExit(f"--report-only: no report at {json_path}.")
        report = previous
    else:
        report = {
            "model": args.model,
            "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device_of(args)),
            "random_weights": args.random_weights,
        }
        if args.random_weights and not args.skip_quality:
            raise SystemExit("--random-weights measures cost only: add --skip-quality (quality needs real weights).")
        if args.rerun and args.skip_quality:
            raise SystemExit("--rerun reruns quality variants: drop --skip-quality (or --rerun).")
        settings = vars(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.skip_cost:
            report["costs"] = carried_section(previous, "costs", COST_SETTINGS)
        else:
            report["costs"] = measure_costs(args, argv) | {"config": {k: settings[k] for k in COST_SETTINGS}}
        if args.skip_quality:
            report["quality"] = carried_section(previous, "quality", QUALITY_SETTINGS)
        elif args.rerun:
            report["quality"] = rerun_quality(previous, args)
        else:
            model, tokenizer = load_model(args.model)
            dense = {
                "variant": "dense",
                "target": 0.0,
                "params_dense": count_parameters(model),
                "params_pruned": count_parameters(model),
                "sparsity": 0.0,
                **evaluate(model.to(device_of(args)), tokenizer, args),
            }
            del model
            quality = {"config": {k: settings[k] for k in QUALITY_SETTINGS}, "dense": dense, "runs": []}
            for target in (float(t) for t in args.targets.split(",") if t):
                for variant in (v for v in args.variants.split(",") if v):
                    if variant not in VARIANTS:
                        raise ValueError(f"Unknown variant {variant!r}; choose from {VARIANTS}.")
                    quality["runs"].append(run_variant(variant, target, args))
                    json_path.write_text(json.dumps(report | {"quality": quality}))  # progress, in case of a crash
            report["quality"] = quality
        report = {k: v for k, v in report.items() if v is not None}
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
