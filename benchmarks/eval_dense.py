"""Dense SmolLM2-135M-Instruct baseline: 7 commonsense tasks (zero-shot, validation) + WikiText-2/PTB perplexity.

Writes `benchmarks/results/eval_dense.{json,md}` with wall-clock timings per task.

    python benchmarks/eval_dense.py --limit 300
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, add_model_arguments

from tailored_hf.data import get_task
from tailored_hf.eval import COMMONSENSE_TASKS, evaluate_tasks, llm_pruner_perplexity
from tailored_hf.eval.multiple_choice import DEFAULT_MAX_BATCH_TOKENS
from tailored_hf.loading import load_model

NEAR_CHANCE = 0.02


def gemm_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate (best of 3 timings of `repeats` square products): the compute ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best / 1e9


def linear_flops_per_token(model) -> int:
    """2 x the weights of the decoder layers' linear projections: the FLOPs every input token costs at least."""
    return 2 * sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))


def forwarded_tokens(tokenizer, task: str, limit: int, data_dir: str) -> int:
    """Input tokens the packed scorer feeds for `task` (each item's shared context once, then every choice's rest)."""
    from tailored_hf.data import load_task_split, map_for_scoring
    from tailored_hf.eval.multiple_choice import encode_pair, packed_input_length

    dataset = load_task_split(task, "validation", data_dir=data_dir)
    total = 0
    for item in map_for_scoring(dataset.select(range(min(limit, len(dataset)))), task, prompt="lm_eval"):
        pairs = [encode_pair(tokenizer, c, x, None) for c, x in zip(item["contexts"], item["continuations"])]
        total += packed_input_length([list(c) + list(x) for c, x in pairs])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--limit", type=int, default=300, help="items per task (validation)")
    parser.add_argument("--batch-size", type=int, default=32, help="packed rows per forward (cap)")
    parser.add_argument(
        "--batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS, help="padded tokens per forward (0 = no cap)"
    )
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-windows", type=int, default=256, help="cap on perplexity windows per dataset (0 = all)")
    parser.add_argument("--tasks", default=",".join(COMMONSENSE_TASKS))
    parser.add_argument("--out", default=str(RESULTS_DIR / "eval_dense"))
    args = parser.parse_args()

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    load_s = time.perf_counter() - start
    tasks = [t for t in args.tasks.split(",") if t]
    mc_start = time.perf_counter()
    mc = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        data_dir=args.data_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        max_batch_tokens=args.batch_tokens or None,
    )
    mc_s = time.perf_counter() - mc_start
    ppl = {}
    for name in ("wikitext2", "ptb"):
        t0 = time.perf_counter()
        res = llm_pruner_perplexity(
            model,
            tokenizer,
            args.data_dir,
            datasets=(name,),
            seq_len=args.seq_len,
            max_windows=args.max_windows or None,
        )[name]
        ppl[name] = {**res.__dict__, "seconds": time.perf_counter() - t0}
    mean_primary = sum(r["primary"] for r in mc.values()) / len(mc)
    peak = gemm_peak_gflops()
    flops_per_token = linear_flops_per_token(model)
    for task, r in mc.items():
        r["forwarded_tokens"] = forwarded_tokens(tokenizer, task, args.limit, args.data_dir)
        r["tokens_per_s"] = r["forwarded_tokens"] / r["seconds"]
        r["linear_gflops"] = r["tokens_per_s"] * flops_per_token / 1e9
    total_tokens = sum(r["forwarded_tokens"] for r in mc.values())
    mc_gflops = total_tokens / mc_s * flops_per_token / 1e9
    report = {
        "model": args.model,
        "limit": args.limit,
        "split": "validation",
        "prompt": "lm_eval (zero-shot)",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_batch_tokens": args.batch_tokens or None,
        "machine": platform.processor() or platform.machine(),
        "load_seconds": load_s,
        "multiple_choice_seconds": mc_s,
        "tasks": mc,
        "mean_primary": mean_primary,
        "perplexity": ppl,
        "gemm_peak_gflops": peak,
        "linear_flops_per_token": flops_per_token,
        "multiple_choice_linear_gflops": mc_gflops,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Dense {args.model}: zero-shot commonsense (validation, first {args.limit} items) and perplexity",
        "",
        "| task | primary | acc | acc_norm | chance | n | seconds | items/s | tokens/s | % of GEMM peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, r in mc.items():
        chance = get_task(task).chance
        flag = " (within 2 points of chance)" if r["primary"] - chance <= NEAR_CHANCE else ""
        lines.append(
            f"| {task} | {r['primary_metric']} {100 * r['primary']:.2f}{flag} "
            f"| {100 * r['acc']:.2f} ± {100 * r['acc_stderr']:.2f} "
            f"| {100 * r['acc_norm']:.2f} ± {100 * r['acc_norm_stderr']:.2f} | {100 * chance:.0f} | {r['n']} "
            f"| {r['seconds']:.1f} | {r['n'] / r['seconds']:.2f} | {r['tokens_per_s']:.0f} "
            f"| {100 * r['linear_gflops'] / peak:.0f} |"
        )
    lines += [
        f"| **mean (primary)** | {100 * mean_primary:.2f} | | | | | {mc_s:.1f} | | {total_tokens / mc_s:.0f} "
        f"| {100 * mc_gflops / peak:.0f} |",
        "",
        f"Speed vs the machine's limit: the packed scorer feeds {total_tokens:,} tokens (each item's context once); "
        f"every token costs at least {flops_per_token / 1e6:.0f} MFLOP in the decoder's linear layers (attention "
        f"scores, norms and the LM head, which runs on the scored positions only, come on top), so the "
        f"{mc_s / 60:.1f} min run sustains {mc_gflops:.0f} GFLOP/s = {100 * mc_gflops / peak:.0f}% of this machine's "
        f"measured fp32 matmul rate ({peak:.0f} GFLOP/s, 2048^2 GEMM). The floor at 100% would be "
        f"{total_tokens * flops_per_token / peak / 1e9 / 60:.1f} min.",
        "",
        f"Perplexity (LLM-Pruner protocol, seq_len {args.seq_len}, non-overlapping windows):",
        "",
        "| dataset | ppl | windows | tokens | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in ppl.items():
        lines.append(f"| {name} | {r['perplexity']:.2f} | {r['n_windows']} | {r['n_tokens']} | {r['seconds']:.1f} |")
    budget = f"{args.batch_tokens} padded tokens" if args.batch_tokens else "no token cap"
    lines += [
        "",
        f"{torch.get_num_threads()} torch threads; model load {load_s:.1f}s; packed scoring, at most "
        f"{args.batch_size} rows and {budget} per forward. Reproduce: `.venv/bin/python benchmarks/eval_dense.py "
        f"--limit {args.limit}`.",
    ]
    md = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
