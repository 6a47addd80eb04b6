"""`tailored-hf`: run a recipe, evaluate a model, push a pruned model to the Hub.

```bash
tailored-hf run recipes/tailored-llama/boolq-20.yaml --set eval_limit=50 --set max_steps=10
tailored-hf eval outputs/tailored-llama/boolq-20/model --tasks boolq,piqa --limit 200
tailored-hf push outputs/tailored-llama/boolq-20 my-name/smollm2-boolq-20
```

Also available as `python -m tailored_hf`. `tailored-hf run --help` lists every recipe key with its type and help.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("tailored_hf.cli")


def _run(args: argparse.Namespace) -> int:
    from .hub.card import write_card
    from .pipeline import render_markdown, run
    from .recipes import load_recipe

    cfg = load_recipe(args.recipe, args.set, output_dir=args.output_dir, resume=args.resume, progress=not args.quiet)
    logger.info("Running %s -> %s", args.recipe, cfg.output_dir)
    report = run(cfg)
    output_dir = Path(cfg.output_dir)
    card = write_card(output_dir / "model", report=report, recipe=str(args.recipe))
    print(render_markdown(report))
    print(f"Model: {output_dir / 'model'}\nCard: {card}\nReport: {output_dir / 'report.json'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval import evaluate_tasks
    from .loading import load_model

    tasks = [t for t in (item.strip() for chunk in args.tasks for item in chunk.split(",")) if t]
    model, tokenizer = load_model(args.model)
    results = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        data_dir=args.data_dir,
        limit=args.limit,
        prompt=args.prompt,
        batch_size=args.batch_size,
    )
    lines = ["| task | metric | value | acc | acc_norm | n |", "|---|---|---|---|---|---|"]
    for task, row in results.items():
        lines.append(
            f"| {task} | {row['primary_metric']} | {row['primary']:.4f} | {row['acc']:.4f} | {row['acc_norm']:.4f} | "
            f"{row['n']} |"
        )
    print("\n".join(lines))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"model": args.model, "results": results}, indent=2))
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    info = push_to_hub(
        args.output,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        base_model=args.base_model,
        license=args.license,
    )
    if info is not None:
        print(f"Pushed {args.output} to {args.repo_id}: {info.commit_url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .recipes import fields_help

    parser = argparse.ArgumentParser(
        prog="tailored-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at INFO level.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="Prune, recover, evaluate and save a model as a recipe says (writes model/, report, card, plot).",
        description="Run a recipe: load model and data (offline-capable), prune, recover with LoRA, evaluate, save "
        "OUTPUT/model (safetensors + pruning_plan.json + README.md card + per-layer PNG), OUTPUT/report.json and "
        "OUTPUT/report.md. Every recipe key can be overridden with --set KEY=VALUE; the keys are listed below.",
        epilog=fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("recipe", type=Path, help="Recipe YAML, e.g. recipes/tailored-llama/boolq-20.yaml.")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a recipe key (repeatable); VALUE is parsed as YAML: 20, 0.5, true, null, [a, b].",
    )
    run.add_argument("--output-dir", default=None, help="Output directory (default: the recipe's, else outputs/...).")
    run.add_argument(
        "--resume",
        action="store_true",
        help="Continue from the last Trainer checkpoint in OUTPUT/trainer (the saved pruning plan is re-applied).",
    )
    run.add_argument("--quiet", action="store_true", help="No progress bars.")
    run.set_defaults(func=_run)

    ev = sub.add_parser("eval", help="Zero-shot multiple-choice evaluation of a model (lm-eval protocol).")
    ev.add_argument("model", help="Local model directory, Hub id or offline alias (e.g. smollm2-135m-instruct).")
    ev.add_argument("--tasks", nargs="+", required=True, help="Task names, space or comma separated (boolq piqa ...).")
    ev.add_argument("--limit", type=int, default=None, help="First N validation items per task (default: all).")
    ev.add_argument("--prompt", default="lm_eval", help="Prompt variant (default: lm-eval's templates).")
    ev.add_argument("--data-dir", default=None, help="Data directory (default: $TAILORED_HF_DATA_DIR or packaged).")
    ev.add_argument("--batch-size", type=int, default=16, help="Sequences per forward pass.")
    ev.add_argument("--output", default=None, help="Also write the results as JSON here.")
    ev.set_defaults(func=_eval)

    push = sub.add_parser("push", help="Push a pruned model (+ tokenizer, plan, card, plot) to the Hugging Face Hub.")
    push.add_argument("output", help="Pipeline output directory (with model/ and report.json) or a saved model dir.")
    push.add_argument("repo_id", help="namespace/name on the Hub.")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in token / $HF_TOKEN).")
    push.add_argument("--private", action="store_true", default=None, help="Create the repository as private.")
    push.add_argument("--revision", default=None, help="Branch to commit to (default: main).")
    push.add_argument("--commit-message", default="Upload pruned model with tailored_hf", help="Commit title.")
    push.add_argument("--base-model", default=None, help="Hub id of the base model (default: from the report).")
    push.add_argument("--license", default=None, help="License id (default: inherited from the base model).")
    push.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tailored-hf` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run" and not args.verbose:
        logging.getLogger("tailored_hf").setLevel(logging.INFO)
    from .hub import HubPushError
    from .recipes import RecipeError

    try:
        return args.func(args)
    except (RecipeError, HubPushError, ValueError, FileNotFoundError) as err:
        print(f"tailored-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
