"""Training-step overhead of each method vs a plain LoRA step on the same batch (SmolLM2-135M-Instruct, this CPU).

Every step kind trains the same LoRA (r=8 on all seven projections, AdamW) with a plain `transformers.Trainer` on
the same C4 windows; only the callback differs:

* `lora`: no callback, the dense model (the reference);
* `lora_pruned`: no callback, the model already pruned to 20% with `tailored_hf.prune` (the reference of the next);
* `depgraph`: `PrunerCallback(DepGraphConfig(0.2))` prunes in `on_init_end`, then trains: target 0% over
  `lora_pruned` (pruned models carry no masks or hooks);
* `l0`: `PrunerCallback(L0Config(distillation="none"))`, hard-concrete masks co-trained with LoRA: target <= 15%;
* `l0_kd` / `l0_progressive`: the same with plain KD (teacher = the intact model) / progressive numerous teachers;
  floor: one extra no-grad teacher forward of the batch;
* `atp`: `PrunerCallback(ATPConfig(...))` while the generator trains (one generator update per step on a calibration
  batch of the same shape); floor: one extra forward + backward of that batch;
* `atp_frozen`: ATP after T_end (generator frozen): LoRA-aware forward with the decisions, group lasso at 100 beta.

A step is the wall time between consecutive `on_step_end` events (a timing callback placed last, so it covers every
other callback's work, the forward/backward and the optimizer). Each kind runs in its own subprocess (peak RSS is a
process-wide high-water mark, read at the last step's end, before `on_train_end` removes anything); kinds are
interleaved over `--rounds` rounds so drift of this VM's speed hits all of them alike; the median step per kind is
reported, with peak RSS. Floors are timed in the `lora` subprocess.

Whole-step ratios carry this VM's run-to-run noise (about 15%), too coarse for a 0% target. So each kind with a
callback also reports the direct per-step cost of the method: the median wall time spent inside `PrunerCallback`'s
event handlers per timed training step, and the forward hooks installed on the model while it trains (for `depgraph`
both are the method's whole per-step work: after pruning it trains the very model of `lora_pruned`).

    .venv/bin/python benchmarks/training_overhead.py     # ~15 minutes on 2 quiet cores

Writes `benchmarks/results/training_overhead.{json,md}`. On a lent GPU (`--device cuda`, `benchmarks/gpu/run.sh`)
steps are synchronised and memory is the peak of CUDA memory allocated (`peak_cuda_mib`) instead of peak RSS; the
model there has random weights of the real shapes (`--random-weights`, see `benchmarks/device_setting.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, add_model_arguments
from device_setting import add_device_arguments, load_benchmark_model, peak_memory_mib, resolve_device, synchronize

RESULTS = RESULTS_DIR / "training_overhead"
SCRATCH = Path(tempfile.gettempdir()) / "tailored_hf_overhead"
KINDS = ("lora", "lora_pruned", "depgraph", "l0", "l0_kd", "l0_progressive", "atp", "atp_frozen")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Issue 9's targets: step time ratio over the matching plain LoRA step.
TARGETS = {"depgraph": 1.0, "l0": 1.15}
REFERENCE = {"depgraph": "lora_pruned"}  # every other kind is compared with the dense `lora` step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--ratio", type=float, default=0.2, help="target sparsity of every pruning method")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per subprocess")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per subprocess")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    add_device_arguments(parser)
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)  # internal: one kind in this process
    return parser.parse_args(argv)


class StepTimer:
    """Times the interval between consecutive `on_step_end` events (install it as the last callback)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        from transformers import TrainerCallback

        timer = self
        self.times: list[float] = []
        self.step_rss_mib = 0.0
        self.hooks_while_training = 0
        self._last: float | None = None

        class Callback(TrainerCallback):
            def on_train_begin(self, *args, **kwargs):
                timer._last = None

            def on_step_end(self, *args, **kwargs):
                synchronize(device)
                now = time.perf_counter()
                if timer._last is not None:
                    timer.times.append(now - timer._last)
                # The high-water mark of the steps, before on_train_end prunes.
                timer.step_rss_mib = peak_memory_mib(device)
                timer.hooks_while_training = count_forward_hooks(model)
                timer._last = now

        self.callback = Callback()


class HandlerClock:
    """Times every `on_*` event handler of one callback instance (wall clock), per training step: events from one
    `on_step_begin` to the next belong to that step; `on_init_end`, `on_train_begin` and `on_train_end` are set-up
    and tear-down, outside the steps, and counted apart."""

    SETUP_EVENTS = ("on_init_end", "on_train_begin", "on_train_end")

    def __init__(self, callback: Any) -> None:
        self.per_step: list[float] = []  # handler seconds of step 1, 2, ...
        self.setup_seconds = 0.0
        for name in dir(callback):
            if name.startswith("on_") and callable(getattr(callback, name)):
                setattr(callback, name, self._timed(name, getattr(callback, name)))

    def _timed(self, name: str, handler: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name == "on_step_begin":
                self.per_step.append(0.0)
            start = time.perf_counter()
            try:
                return handler(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                if name in self.SETUP_EVENTS or not self.per_step:
                    self.setup_seconds += elapsed
                else:
                    self.per_step[-1] += elapsed

        return timed


def count_forward_hooks(model: torch.nn.Module) -> int:
    """Forward and forward-pre hooks on every module of `model`."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def batches(tokenizer, args: argparse.Namespace, n_rows: int, seed_offset: int = 0) -> torch.Tensor:
    from tailored_hf.data import calibration_batches

    return calibration_batches(
        tokenizer,
        source="c4",
        n_samples=n_rows,
        seq_len=args.seq_len,
        seed=args.seed + seed_offset,
        data_dir=args.data_dir,
    )


def method_config(kind: str, args: argparse.Namespace, total_steps: int):
    from tailored_hf.methods.atp import ATPConfig
    from tailored_hf.methods.depgraph import DepGraphConfig
    from tailored_hf.methods.l0 import L0Config

    if kind == "depgraph":
        return DepGraphConfig(target_sparsity=args.ratio, seed=args.seed)
    if kind.startswith("l0"):
        distillation = {"l0": "none", "l0_kd": "kd", "l0_progressive": "progressive"}[kind]
        return L0Config(target_sparsity=args.ratio, distillation=distillation, seed=args.seed)
    end_step = total_steps + 1 if kind == "atp" else 1  # generator active on every timed step / frozen from step 1
    return ATPConfig(
        target_sparsity=args.ratio,
        generator_end_step=end_step,
        calibration_batch_size=args.batch_size,
        removal_eval_batches=1,
        seed=args.seed,
    )


def timed_floors(model, ids: torch.Tensor, repeats: int) -> dict[str, float]:
    """The cost floors: one no-grad forward (a teacher) and one forward + backward (a generator batch)."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    forward, forward_backward = [], []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids)
        synchronize(device)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        synchronize(device)
        forward_backward.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return {"forward": statistics.median(forward[1:]), "forward_backward": statistics.median(forward_backward[1:])}


def worker(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Trains `warmup + steps + 1` steps of one kind in this process and reports its step times and peak RSS."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from tailored_hf import PrunerCallback
    from tailored_hf.methods.depgraph import DepGraphConfig, prune

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model, tokenizer = load_benchmark_model(args.model, args.random_weights, args.seed)
    if kind == "lora_pruned":
        # The same plan as the `depgraph` kind's callback: the config's default book calibration, same seed.
        prune(model, DepGraphConfig(target_sparsity=args.ratio, seed=args.seed), tokenizer=tokenizer, progress=False)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = get_peft_model(model, lora)
    total_steps = args.warmup_steps + args.steps + 1
    ids = batches(tokenizer, args, total_steps * args.batch_size)
    rows = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    callbacks: list = []
    clock = None
    if kind not in ("lora", "lora_pruned"):
        calibration = batches(tokenizer, args, 8 * args.batch_size, seed_offset=1) if kind.startswith("atp") else None
        callbacks.append(PrunerCallback(method_config(kind, args, total_steps), calibration=calibration))
        clock = HandlerClock(callbacks[-1])  # before the Trainer exists: on_init_end is timed as well
    timer = StepTimer(model, device)
    callbacks.append(timer.callback)
    training_args = TrainingArguments(
        output_dir=str(SCRATCH / kind),
        per_device_train_batch_size=args.batch_size,
        max_steps=total_steps,
        learning_rate=1e-4,
        optim="adamw_torch",
        save_strategy="no",
        report_to=[],
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        logging_steps=total_steps,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks
    )
    memory = "peak_cuda_mib" if device.type == "cuda" else "peak_rss_mib"
    memory_before = peak_memory_mib(device)
    trainer.train()
    timed = timer.times[args.warmup_steps :]
    result = {
        "kind": kind,
        "step_seconds": timed,
        "median_step_seconds": statistics.median(timed),
        memory: timer.step_rss_mib,
        f"{memory}_with_train_end": peak_memory_mib(device),
        f"{memory}_before_training": memory_before,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "forward_hooks_while_training": timer.hooks_while_training,
    }
    if clock is not None:
        # The steps the timer measures: each interval between consecutive on_step_end events, after the warm-up.
        result["callback_step_seconds"] = clock.per_step[1 + args.warmup_steps :]
        result["callback_seconds_per_step"] = statistics.median(result["callback_step_seconds"])
        result["callback_setup_seconds"] = clock.setup_seconds
    if kind == "lora":
        model.train()
        result["floors"] = timed_floors(model, ids[: args.batch_size], args.steps)
    return result


def run_worker(kind: str, argv: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", kind]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"step kind {kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def memory_key(row: dict[str, Any]) -> str:
    """`peak_cuda_mib` for a run on a GPU, else `peak_rss_mib`."""
    return "peak_cuda_mib" if "peak_cuda_mib" in row else "peak_rss_mib"


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median step over every timed step of every round, the ratio to the kind's reference, and the floors."""
    median = {kind: statistics.median([t for run in rs for t in run["step_seconds"]]) for kind, rs in runs.items()}
    floors = runs["lora"][0]["floors"] if "lora" in runs else {}
    if "lora" in runs and len(runs["lora"]) > 1:
        floors = {k: statistics.median([run["floors"][k] for run in runs["lora"]]) for k in floors}
    rows = {}
    for kind in runs:
        reference = REFERENCE.get(kind, "lora")
        memory = memory_key(runs[kind][0])
        row: dict[str, Any] = {
            "median_step_seconds": median[kind],
            memory: max(run[memory] for run in runs[kind]),
            "reference": reference,
        }
        hooks = [run["forward_hooks_while_training"] for run in runs[kind] if "forward_hooks_while_training" in run]
        if hooks:
            row["forward_hooks_while_training"] = max(hooks)
        per_step = [run["callback_seconds_per_step"] for run in runs[kind] if "callback_seconds_per_step" in run]
        if per_step:
            row["callback_seconds_per_step"] = statistics.median(per_step)
            if reference in median:
                row["callback_share_of_reference_step"] = row["callback_seconds_per_step"] / median[reference]
        if reference in median and kind != reference:
            row["ratio"] = median[kind] / median[reference]
            row["overhead_seconds"] = median[kind] - median[reference]
            row["target_ratio"] = TARGETS.get(kind)
            floor = {"l0_kd": "forward", "l0_progressive": "forward", "atp": "forward_backward"}.get(kind)
            if floor and floors:
                row["floor"] = floor
                row["floor_seconds"] = floors[floor]
                row["overhead_over_floor"] = row["overhead_seconds"] / floors[floor]
        rows[kind] = row
    return {"kinds": rows, "floors": floors}


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    floors = report["summary"]["floors"]
    env = report["environment"]
    gpu = env.get("gpu")
    kinds = report["summary"]["kinds"]
    memory = memory_key(next(iter(kinds.values())))
    lines = [
        f"# Training-step overhead vs a plain LoRA step (SmolLM2-135M-Instruct, {gpu or 'CPU'})",
        "",
        f"Batch {s['batch_size']} x {s['seq_len']} C4 tokens, LoRA r=8 on all projections, AdamW, plain `Trainer`; "
        f"pruning target {s['ratio']:.0%}. Median over {s['steps']} timed steps x {s['rounds']} interleaved rounds "
        f"(after {s['warmup_steps']} warm-up steps) of the wall time between consecutive `on_step_end` events; "
        f"each kind in its own process. {env['cores']} cores, torch {env['torch']}."
        + (
            " Random weights of the real shapes (speed and memory depend on shapes only)."
            if s.get("random_weights")
            else ""
        ),
        "",
        f"| step | median s | vs | ratio | target | overhead s | floor | overhead / floor | "
        f"{'peak CUDA MiB' if memory == 'peak_cuda_mib' else 'peak RSS MiB'} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in report["summary"]["kinds"].items():
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "—"
        target = f"<= {row['target_ratio']:.2f}x" if row.get("target_ratio") else "—"
        overhead = f"{row['overhead_seconds']:+.2f}" if "overhead_seconds" in row else "—"
        floor = f"{row['floor']} {row['floor_seconds']:.2f} s" if "floor" in row else "—"
        over_floor = f"{row['overhead_over_floor']:.2f}x" if "overhead_over_floor" in row else "—"
        reference = row["reference"] if kind != row["reference"] else "—"
        lines.append(
            f"| `{kind}` | {row['median_step_seconds']:.2f} | {reference} | {ratio} | {target} | {overhead} | "
            f"{floor} | {over_floor} | {row[memory]:.0f} |"
        )
    direct = {k: r for k, r in report["summary"]["kinds"].items() if "callback_seconds_per_step" in r}
    if direct:
        lines += [
            "",
            "Direct per-step cost of each method, free of the VM's step-to-step noise: median wall time inside "
            "`PrunerCallback`'s event handlers per timed training step (its share of the reference step), and forward "
            "hooks on the model while it trains (mask hooks run inside the forward, so they count in the ratio above, "
            "not here).",
            "",
            "| step | callback ms / step | share of reference step | forward hooks while training |",
            "|---|---|---|---|",
            *(
                f"| `{k}` | {1e3 * r['callback_seconds_per_step']:.2f} | "
                f"{r.get('callback_share_of_reference_step', float('nan')):.4%} | "
                f"{r['forward_hooks_while_training']} |"
                for k, r in direct.items()
            ),
        ]
    if floors:
        lines += [
            "",
            f"Floors (timed on the LoRA model, same batch): one no-grad forward {floors['forward']:.2f} s (a KD "
            f"teacher), one forward + backward {floors['forward_backward']:.2f} s (an ATP generator batch).",
        ]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    lines += ["", f"Reproduce: `{report.get('command', '.venv/bin/python benchmarks/training_overhead.py')}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.kinds}
    for round_index in range(args.rounds):
        for kind in args.kinds:
            runs[kind].append(run_worker(kind, argv))
            print(f"round {round_index + 1} {kind}: {runs[kind][-1]['median_step_seconds']:.2f} s", flush=True)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
        "command": "python benchmarks/training_overhead.py " + " ".join(argv),
        "runs": runs,
        "summary": summarise(runs),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if resolve_device(args.device).type == "cuda" else None,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
