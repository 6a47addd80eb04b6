"""Performance of the dependency-group pass and of pruned models vs their physical limits (SmolLM2-135M, this CPU).

Measured side by side in one run, seeds fixed:

1. Importance pass (Taylor, 20 x 128-token book calibration, batch 1): wall time and peak-memory increase over the
   loaded model, each in its own subprocess (peak RSS is a process-wide high-water mark), for
   * `plain`: one ordinary forward + backward per sample (gradients kept in `.grad` for the step, then dropped),
   * `floor`: forward + backward with every gradient freed as it arrives (no scoring): the memory floor,
   * `ours`: `tailored_hf.prune` (importance with post-accumulate-grad hooks + grouping + plan + slicing),
   * `naive`: LLM-Pruner's way, full-model gradients accumulated in `.grad` over all samples, then |g * w|.
   Targets (issue 9): ours <= 1.2x plain time, ours <= 1.3x the floor's memory increase.
2. Inference of pruned models at 20% / 50%, uniform (every layer pruned alike: a stock `LlamaConfig`) and
   heterogeneous (global ranking: a `tailored_llama` model): prefill tokens/s (1 x 512 tokens) and greedy decode
   tokens/s (64 new tokens after 32, KV cache), speed-up over dense as a fraction of the ideal (the parameter ratio),
   forward hooks on the saved-and-reloaded model (must be 0: no masks), and throughput per parameter of the
   heterogeneous vs the uniform model at the same ratio.
   A third layout rounds every kept count to a multiple of 32 (`round_to=32`) for matmul-friendly shapes.
3. Checkpoint size on disk vs parameters x 4 bytes.

    .venv/bin/python benchmarks/performance.py     # about 5 minutes on 2 quiet cores

Writes `benchmarks/results/performance.{json,md}`. On a lent GPU (`--device cuda`), memory is the peak of CUDA
memory allocated, times are synchronised, and the larger setting of `benchmarks/gpu/run.sh` applies; the model there
has random weights of the real shapes, and the pruned layouts are the ones computed here from the real weights
(`--save-shapes`, then `--shapes-dir` there): see `benchmarks/device_setting.py`.
"""

from __future__ import annotations

import argparse
import copy
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
from device_setting import (
    add_device_arguments,
    current_memory_mib,
    load_benchmark_model,
    peak_memory_mib,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from training_overhead import count_forward_hooks

RESULTS = RESULTS_DIR / "performance"
#: `ours`: `tailored_hf.methods.depgraph.prune`, the whole call (grouping, scores, plan, slicing); `pass`: the same
#: call's importance pass alone (`DepGraphPruner.compute_plan`: grouping, scores, plan; no slicing), the part the
#: target names and the part whose cost grows with the calibration tokens.
IMPORTANCE_VARIANTS = ("plain", "floor", "pass", "ours", "naive")
TARGET_TIME_RATIO = 1.2
# The settings each section depends on: a section skipped in a run keeps those it was measured at.
INFERENCE_SETTINGS = ("prefill_tokens", "decode_tokens", "batch_size", "dtype", "shapes_dir", "repeats")
IMPORTANCE_SETTINGS = ("samples", "seq_len", "rounds")
TARGET_MEMORY_RATIO = 1.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=20, help="calibration samples (Tailored-LLaMA: 20)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per prefill and per decode")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="weights of the inference models"
    )
    parser.add_argument(
        "--save-shapes",
        help="only prune the real model in every layout and write the configurations (no weights) to this folder",
    )
    parser.add_argument(
        "--shapes-dir", help="build the pruned models from the configurations `--save-shapes` wrote, not by pruning"
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="interleaved timing rounds: ratios are paired within a round, their median and range reported",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the importance workers")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--skip-importance",
        action="store_true",
        help="keep the importance-pass figures of the existing report at --out",
    )
    parser.add_argument(
        "--skip-inference",
        action="store_true",
        help="keep the inference figures of the existing report at --out",
    )
    parser.add_argument("--importance-worker", choices=IMPORTANCE_VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args()


def load(args: argparse.Namespace):
    from tailored_hf.data import calibration_batches

    model, tokenizer = load_benchmark_model(args.model, args.random_weights)
    calibration = calibration_batches(
        tokenizer, source="book", n_samples=args.samples, seq_len=args.seq_len, seed=0, data_dir=args.data_dir
    )
    return model, tokenizer, calibration


# ------------------------------------------------------------------------------------------------ importance
def importance_worker(args: argparse.Namespace) -> None:
    """One variant in a fresh process; prints a JSON line with seconds and the peak-memory increase."""
    from tailored_hf.methods.depgraph import DepGraphConfig, DepGraphPruner, prune

    torch.manual_seed(0)
    device = resolve_device(args.device)
    model, _, calibration = load(args)
    model.to(device).eval()
    calibration = calibration.to(device)
    if device.type == "cuda":  # CUDA context, cuBLAS handles and kernel choice: outside the timed pass
        model(input_ids=calibration[:1], labels=calibration[:1], use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize(device)
    reset_peak_memory(device)
    base = current_memory_mib(device)
    variant = args.importance_worker
    start = time.perf_counter()
    config = DepGraphConfig(target_sparsity=0.2, num_calibration_samples=args.samples)
    if variant == "ours":
        prune(model, config, calibration=calibration)
    elif variant == "pass":
        DepGraphPruner(config).compute_plan(model, calibration)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        handles = []
        if variant == "floor":
            handles = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in params]
        for ids in calibration.split(1):
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            if variant == "plain":
                model.zero_grad(set_to_none=True)
        if variant == "naive":
            with torch.no_grad():
                scores = [(p.grad * p).abs() for p in params]  # LLM-Pruner: element scores from the full gradients
            del scores
        for handle in handles:
            handle.remove()
    synchronize(device)
    seconds = time.perf_counter() - start
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_increase_mib": peak_memory_mib(device) - base}))


def measure_importance(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant `args.rounds` times, interleaved (this machine's speed drifts): fastest time, largest memory."""
    results: dict[str, Any] = {}
    for _ in range(args.rounds):
        for variant in IMPORTANCE_VARIANTS:
            command = [sys.executable, __file__, "--importance-worker", variant, "--model", args.model]
            command += ["--data-dir", args.data_dir, "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
            command += ["--device", args.device] + (["--random-weights"] if args.random_weights else [])
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"importance worker {variant} failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            best = results.setdefault(variant, {"variant": variant, "seconds": float("inf"), "peak_increase_mib": 0})
            best["seconds"] = min(best["seconds"], run["seconds"])
            best["peak_increase_mib"] = max(best["peak_increase_mib"], run["peak_increase_mib"])
    plain, floor, ours, importance_pass = results["plain"], results["floor"], results["ours"], results["pass"]
    results["ratios"] = {
        "pass_time_vs_plain": importance_pass["seconds"] / plain["seconds"],
        "pass_memory_vs_floor": importance_pass["peak_increase_mib"] / floor["peak_increase_mib"],
        "ours_time_vs_plain": ours["seconds"] / plain["seconds"],
        "ours_memory_vs_floor": ours["peak_increase_mib"] / floor["peak_increase_mib"],
        "naive_memory_vs_floor": results["naive"]["peak_increase_mib"] / floor["peak_increase_mib"],
    }
    return results


# ------------------------------------------------------------------------------------------------ inference
def best_of(repeats: int, fn, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def speed_once(model, args: argparse.Namespace) -> dict[str, float]:
    """One prefill and one greedy decode timing (after a full-size warm-up on the first call); tokens/s count every
    sequence of the batch."""
    device = model.device
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.prefill_tokens)
    prefill_ids = torch.randint(100, model.config.vocab_size, shape, generator=generator).to(device)
    prompt = prefill_ids[:, :32]
    decode_kwargs = dict(
        max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, do_sample=False, pad_token_id=0
    )
    with torch.inference_mode():
        if not getattr(model, "_warmed_up", False):
            model(input_ids=prefill_ids, use_cache=False)  # allocator, kernels
            model.generate(prompt, **decode_kwargs)
            model._warmed_up = True
        prefill = best_of(1, lambda: model(input_ids=prefill_ids, use_cache=False), device)
        decode = best_of(1, lambda: model.generate(prompt, **decode_kwargs), device)
    tokens = args.batch_size * args.prefill_tokens, args.batch_size * args.decode_tokens
    return {"prefill_tok_s": tokens[0] / prefill, "decode_tok_s": tokens[1] / decode}


def pruned_layouts(layers: int) -> tuple[tuple[str, dict[str, Any]], ...]:
    return (
        ("uniform", {"layer_range": (0, layers)}),
        ("heterogeneous", {"global_ranking": True}),
        ("heterogeneous, round_to 32", {"global_ranking": True, "round_to": 32}),
    )


def shapes_folder(layout: str, ratio: float) -> str:
    return f"{layout.replace(', ', '-').replace(' ', '')}-{ratio}"


def build_from_shapes(folder: Path, dtype: torch.dtype):
    """A pruned model of the shapes `--save-shapes` recorded, random weights: what loads from the Hub, minus values."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)


def layer_shapes(config) -> dict[str, list[int]]:
    """Per-layer FFN width and query / KV head counts of a (possibly heterogeneous) configuration."""
    from tailored_hf.structure import ModelGeometry

    layers = ModelGeometry.from_config(config).layers
    return {
        "layer_intermediate_sizes": [layer.intermediate_size for layer in layers],
        "layer_heads": [layer.num_heads for layer in layers],
        "layer_kv_heads": [layer.num_kv_heads for layer in layers],
    }


def save_shapes(args: argparse.Namespace) -> None:
    """Prunes the real model in every layout and ratio of `measure_inference`; writes each configuration only."""
    from tailored_hf.methods.depgraph import DepGraphConfig, prune

    torch.manual_seed(0)
    dense, _, calibration = load(args)
    for ratio in args.ratios:
        for layout, kwargs in pruned_layouts(dense.config.num_hidden_layers):
            model = copy.deepcopy(dense)
            prune(model, DepGraphConfig(target_sparsity=ratio, **kwargs), calibration=calibration, progress=False)
            model.config.save_pretrained(Path(args.save_shapes) / shapes_folder(layout, ratio))
            print(f"{layout} {ratio:.0%}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)


def measure_inference(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from tailored_hf.methods.depgraph import DepGraphConfig, prune
    from tailored_hf.structure import count_parameters, save_pruned

    torch.manual_seed(0)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    dense, _, calibration = load(args)
    dense.to(dtype)
    layers = dense.config.num_hidden_layers
    models = {"dense": dense.eval()}
    rows: dict[str, dict[str, Any]] = {"dense": {"params": count_parameters(dense), **layer_shapes(dense.config)}}
    with tempfile.TemporaryDirectory(prefix="tailored_hf-perf-") as tmp:
        dense_dir = Path(tmp) / "dense"
        dense.save_pretrained(dense_dir)
        rows["dense"]["checkpoint_bytes"] = (dense_dir / "model.safetensors").stat().st_size
        for ratio in args.ratios:
            for layout, kwargs in pruned_layouts(layers):
                out = Path(tmp) / shapes_folder(layout, ratio)
                if args.shapes_dir:
                    build_from_shapes(Path(args.shapes_dir) / shapes_folder(layout, ratio), dtype).save_pretrained(out)
                else:
                    model = copy.deepcopy(dense).float()  # importance in fp32, as the library computes it
                    prune(model, DepGraphConfig(target_sparsity=ratio, **kwargs), calibration=calibration)
                    save_pruned(model.to(dtype), out)
                    del model
                name = f"{layout} {ratio:.0%}"
                models[name] = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()  # what users load
                rows[name] = {
                    "params": count_parameters(models[name]),
                    "model_type": models[name].config.model_type,
                    "forward_hooks": count_forward_hooks(models[name]),
                    "checkpoint_bytes": (out / "model.safetensors").stat().st_size,
                    **layer_shapes(models[name].config),
                }
    models = {name: model.to(device) for name, model in models.items()}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for _ in range(args.repeats):  # round-robin, so that drifts in machine speed hit every model alike
        for name, model in models.items():
            rounds[name].append(speed_once(model, args))
    base = rows["dense"]
    for name, row in rows.items():
        row["rounds"] = rounds[name]
        for kind in ("prefill", "decode"):
            row[f"{kind}_tok_s"] = max(r[f"{kind}_tok_s"] for r in rounds[name])  # best of the rounds
    for name, row in rows.items():
        ideal = base["params"] / row["params"]
        row["ideal_speedup"] = ideal
        for kind in ("prefill", "decode"):
            # Paired within each round (same minute of this VM), then the median over rounds.
            paired = [r[f"{kind}_tok_s"] / d[f"{kind}_tok_s"] for r, d in zip(rounds[name], rounds["dense"])]
            row[f"{kind}_speedup"] = statistics.median(paired)
            row[f"{kind}_speedup_range"] = [min(paired), max(paired)]
            row[f"{kind}_fraction_of_ideal"] = (row[f"{kind}_speedup"] - 1) / (ideal - 1) if ideal > 1 else None
        row["bytes_per_param"] = row["checkpoint_bytes"] / row["params"]
    for ratio in args.ratios:
        uniform_name = f"uniform {ratio:.0%}"
        uniform = rows[uniform_name]
        for name in (f"heterogeneous {ratio:.0%}", f"heterogeneous, round_to 32 {ratio:.0%}"):
            hetero = rows[name]
            for kind in ("prefill", "decode"):  # tokens/s x params: throughput per unit of work, paired per round
                paired = [
                    (h[f"{kind}_tok_s"] * hetero["params"]) / (u[f"{kind}_tok_s"] * uniform["params"])
                    for h, u in zip(rounds[name], rounds[uniform_name])
                ]
                hetero[f"{kind}_per_param_vs_uniform"] = statistics.median(paired)
                hetero[f"{kind}_per_param_vs_uniform_range"] = [min(paired), max(paired)]
    return rows


# ------------------------------------------------------------------------------------------------ report
def spread(row: dict[str, Any], key: str) -> str:
    """`median [min-max]` of a paired ratio (just the value for reports written before ranges were kept)."""
    low_high = row.get(f"{key}_range")
    return f"{row[key]:.2f}" if low_high is None else f"{row[key]:.2f} [{low_high[0]:.2f}-{low_high[1]:.2f}]"


def render(report: dict[str, Any]) -> str:
    imp = report["importance"]
    ratios = imp["ratios"]
    env = report["environment"]
    on_gpu = env.get("device", "cpu") != "cpu"
    where = env.get("gpu") if on_gpu else f"{env['cores']} CPU cores"
    lines = [f"# Performance: {report['model']} on {where}", ""]
    if report.get("random_weights"):
        lines += [
            "Random weights of the real shapes (speed and memory depend on shapes only; the real weights cannot "
            "travel to the lent GPU)"
            + (
                ", pruned layouts computed from the real weights on the CPU machine."
                if report.get("shapes_dir")
                else "."
            )
            + " Quality figures are never taken from such a run.",
            "",
        ]
    memory = "peak CUDA memory allocated" if on_gpu else "peak memory"
    lines += [
        f"## Importance pass ({report['samples']} x {report['seq_len']} calibration tokens, batch 1; fastest of "
        f"{report['rounds']} interleaved runs per variant, each in a fresh process)",
        "",
        f"| variant | seconds | {memory} increase (MiB) |",
        "|---|---|---|",
    ]
    labels = {
        "plain": "plain forward + backward (grads dropped per sample)",
        "floor": "forward + backward, grads freed on arrival (memory floor)",
        "pass": "tailored_hf importance pass (grouping + scores + plan)",
        "ours": "tailored_hf.prune (importance pass + slicing)",
        "naive": "naive: full-model grads kept, then abs(g * w) (LLM-Pruner)",
    }
    for variant in IMPORTANCE_VARIANTS:
        if variant in imp:  # reports before the `pass` variant lack it
            row = imp[variant]
            lines.append(f"| {labels[variant]} | {row['seconds']:.1f} | {row['peak_increase_mib']:.0f} |")
    t, m = ratios["ours_time_vs_plain"], ratios["ours_memory_vs_floor"]
    if "pass_time_vs_plain" in ratios:
        tp, mp = ratios["pass_time_vs_plain"], ratios["pass_memory_vs_floor"]
        lines += [
            "",
            f"- time: importance pass / plain = {tp:.2f} (target <= {TARGET_TIME_RATIO}: "
            f"{'met' if tp <= TARGET_TIME_RATIO else 'missed'}); the whole prune (+ slicing) / plain = {t:.2f}.",
            f"- memory: importance pass / floor = {mp:.2f} (target <= {TARGET_MEMORY_RATIO}: "
            f"{'met' if mp <= TARGET_MEMORY_RATIO else 'missed'}); the whole prune / floor = {m:.2f}; naive / floor = "
            f"{ratios['naive_memory_vs_floor']:.2f}.",
            "- Ours can beat the plain pass: gradients are computed only for parameters inside scored groups (not the "
            "embedding / LM head while the hidden size is kept) and each is freed on arrival.",
        ]
    else:
        lines += [
            "",
            f"- time: ours / plain = {t:.2f} (target <= {TARGET_TIME_RATIO}: "
            f"{'met' if t <= TARGET_TIME_RATIO else 'missed'}; ours includes grouping, plan and slicing); "
            f"ours / floor = {imp['ours']['seconds'] / imp['floor']['seconds']:.2f}. Ours can beat the plain pass: "
            "gradients are computed only for parameters inside scored groups (not the embedding / LM head while the "
            "hidden size is kept) and each is freed on arrival.",
            f"- memory: ours / floor = {m:.2f} (target <= {TARGET_MEMORY_RATIO}: "
            f"{'met' if m <= TARGET_MEMORY_RATIO else 'missed'}); naive / floor = "
            f"{ratios['naive_memory_vs_floor']:.2f}",
        ]
    if imp.get("note"):
        lines += ["", f"- Note: {imp['note']}"]
    lines += [
        "",
        f"## Inference ({report.get('dtype', 'float32')} weights; prefill {report.get('batch_size', 1)} x "
        f"{report['prefill_tokens']} tokens; greedy decode of {report['decode_tokens']} tokens after 32 for "
        f"{report.get('batch_size', 1)} sequence(s), KV cache; {report['repeats']} interleaved rounds: tok/s is the "
        "best round, speed-ups are ratios to dense within each round, median over rounds [min-max])",
        "",
        "| model | params | type | hooks | prefill tok/s | decode tok/s | ideal speed-up | prefill speed-up "
        "| decode speed-up | prefill: share of ideal | decode: share of ideal | checkpoint MiB | bytes/param |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["inference"].items():
        share = lambda v: "—" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        lines.append(
            f"| {name} | {row['params']:,} | {row.get('model_type', 'llama')} | {row.get('forward_hooks', 0)} "
            f"| {row['prefill_tok_s']:.0f} | {row['decode_tok_s']:.1f} | {row['ideal_speedup']:.2f}x "
            f"| {spread(row, 'prefill_speedup')} | {spread(row, 'decode_speedup')} "
            f"| {share(row['prefill_fraction_of_ideal'])} | {share(row['decode_fraction_of_ideal'])} "
            f"| {row['checkpoint_bytes'] / 2**20:.1f} | {row['bytes_per_param']:.3f} |"
        )
    lines += [
        "",
        "Heterogeneous vs uniform at the same ratio, throughput per parameter (1.00 = same speed per FLOP; paired "
        "within each round, median [min-max]):",
        "",
    ]
    for name, row in report["inference"].items():
        if "prefill_per_param_vs_uniform" in row:
            lines.append(
                f"- {name}: prefill {spread(row, 'prefill_per_param_vs_uniform')}, "
                f"decode {spread(row, 'decode_per_param_vs_uniform')}"
            )
    lines += [
        "",
        "Share of ideal = (speed-up - 1) / (parameter ratio - 1): 100% means the time saved is proportional to the "
        "parameters removed; the LM head (tied to the embedding, never pruned here) is inside the parameter ratio.",
        "",
        f"Reproduce: `{report.get('command', '.venv/bin/python benchmarks/performance.py')}`. torch {env['torch']}, "
        f"{env['threads']} threads.",
    ]
    return "\n".join(lines) + "\n"


def previous_report(args: argparse.Namespace) -> dict[str, Any]:
    """The report already at `--out`, whose figures `--skip-importance` / `--skip-inference` keep."""
    path = Path(args.out).with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"--skip-importance / --skip-inference need an earlier report at {path}")
    return json.loads(path.read_text())


def main() -> None:
    args = parse_args()
    if args.importance_worker:
        importance_worker(args)
        return
    if args.save_shapes:
        save_shapes(args)
        return
    if args.skip_importance and args.skip_inference:
        raise SystemExit("--skip-importance and --skip-inference together leave nothing to measure")
    previous = previous_report(args) if args.skip_importance or args.skip_inference else None
    report = {
        "model": args.model,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "prefill_tokens": args.prefill_tokens,
        "decode_tokens": args.decode_tokens,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "random_weights": args.random_weights,
        "shapes_dir": args.shapes_dir,
        "command": "python benchmarks/performance.py " + " ".join(sys.argv[1:]),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "importance": previous["importance"] if args.skip_importance else measure_importance(args),
        "inference": previous["inference"] if args.skip_inference else measure_inference(args),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "device": resolve_device(args.device).type,
            "gpu": torch.cuda.get_device_name() if resolve_device(args.device).type == "cuda" else None,
        },
    }
    # A skipped section keeps the settings it was measured at (reports from before a setting existed: its default).
    if args.skip_inference:
        report.update({k: previous.get(k, report[k]) for k in INFERENCE_SETTINGS})
    if args.skip_importance:
        report.update({k: previous.get(k, report[k]) for k in IMPORTANCE_SETTINGS})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
