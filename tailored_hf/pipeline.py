"""The main job: dense eval -> prune -> prompt selection -> K-shot task-specific LoRA recovery -> eval -> report.

`make demo` runs it offline on SmolLM2-135M with the packaged data subset; the CLI and recipes reuse it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .data import load_task_split, map_for_scoring, map_for_training, sample_k_shots
from .data.selection import select_prompt, split_dev_and_pool
from .loading import DEFAULT_MODEL, load_model
from .structure import count_parameters, save_pruned
from .structure.plan import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Settings of the prune-and-recover job (every field is a `--flag` of `python -m tailored_hf.pipeline`)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Local path, Hub id or offline alias."})
    task: str = field(
        default="piqa", metadata={"help": "Task to tailor the model to (PIQA: short items, fits the CPU demo)."}
    )
    method: str = field(default="depgraph", metadata={"help": "Pruning method: depgraph or magnitude."})
    target_sparsity: float = field(default=0.2, metadata={"help": "Fraction of total parameters removed."})
    k_shots: int = field(default=50, metadata={"help": "Training shots for recovery (paper: 50)."})
    prompt: str | None = field(default=None, metadata={"help": "Prompt variant; None selects one on a dev slice."})
    dev_size: int = field(default=100, metadata={"help": "Dev rows (from train, disjoint from shots) for selection."})
    eval_limit: int = field(default=200, metadata={"help": "Validation items scored per evaluation."})
    ppl_windows: int = field(default=40, metadata={"help": "WikiText-2 windows of 128 tokens for perplexity."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 8)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Recovery learning rate (paper: 1e-4)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Recovery epochs (paper: 3)."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch (paper: 64; 50 shots would be 1 step)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Warm-up fraction of the recovery steps."})
    max_length: int = field(default=512, metadata={"help": "Max tokens per training example."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Data dir (default: $TAILORED_HF_DATA_DIR/packaged)."}
    )
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the model and reports go."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, calibration and training."})

    def __post_init__(self) -> None:
        if not 0.0 < self.target_sparsity <= 0.9:
            raise ValueError(f"target_sparsity must be in (0, 0.9], got {self.target_sparsity}.")
        if self.method not in ("depgraph", "magnitude"):
            raise ValueError(f"method must be 'depgraph' or 'magnitude', got {self.method!r}.")


def evaluate_model(model, tokenizer, cfg: PipelineConfig, validation, prompt: str = "lm_eval") -> dict[str, Any]:
    """Task accuracy (lm-eval protocol) on the validation slice and WikiText-2 perplexity."""
    from .data import load_lm_text
    from .eval.multiple_choice import score_multiple_choice
    from .eval.perplexity import token_perplexity

    model.eval()
    start = time.perf_counter()
    items = map_for_scoring(validation, cfg.task, prompt=prompt, tokenizer=tokenizer)
    result = score_multiple_choice(model, tokenizer, items, batch_size=16, packed=True)
    scored = time.perf_counter()
    stream = tokenizer(load_lm_text("wikitext2", data_dir=cfg.data_dir), return_tensors="pt").input_ids[0]
    ppl = token_perplexity(model, stream, max_windows=cfg.ppl_windows).perplexity
    return {
        "task": cfg.task,
        "prompt": prompt,
        "acc": result.acc,
        "acc_norm": result.acc_norm,
        "n": result.n,
        "wikitext2_ppl": ppl,
        "seconds": {"task": scored - start, "ppl": time.perf_counter() - scored},
    }


def prune_model(model, tokenizer, cfg: PipelineConfig):
    """Prune with the configured method; returns the plan."""
    from .structure import apply_plan

    if cfg.method == "magnitude":
        from .structure.simple import magnitude_plan

        plan = magnitude_plan(model, cfg.target_sparsity)
        apply_plan(model, plan)
        return plan
    from .data import calibration_batches
    from .methods.depgraph import DepGraphConfig, prune

    method_config = DepGraphConfig(target_sparsity=cfg.target_sparsity, seed=cfg.seed)
    calibration = calibration_batches(
        tokenizer,
        source=method_config.calibration_source,
        n_samples=method_config.num_calibration_samples,
        seq_len=method_config.calibration_seq_len,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    _, plan = prune(model, method_config, calibration=calibration)
    return plan


def recover(model, tokenizer, shots, cfg: PipelineConfig, prompt: str, output_dir: Path):
    """K-shot task-specific LoRA recovery with TRL's SFTTrainer (completion-only loss)."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    train = map_for_training(shots, cfg.task, prompt=prompt, tokenizer=tokenizer)
    args = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        max_length=cfg.max_length,
        completion_only_loss=True,
        seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
    )
    result = trainer.train()
    return trainer.model, {"train_loss": result.training_loss, "steps": result.global_step, "examples": len(train)}


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole job and write `model/`, `report.json` and `report.md` under `cfg.output_dir`."""
    torch.manual_seed(cfg.seed)
    output_dir = Path(cfg.output_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model)
    timings["load"] = time.perf_counter() - t0

    validation = load_task_split(cfg.task, "validation", data_dir=cfg.data_dir)
    validation = validation.select(range(min(cfg.eval_limit, len(validation))))
    train_split = load_task_split(cfg.task, "train", data_dir=cfg.data_dir)
    dev, pool = split_dev_and_pool(train_split, dev_size=cfg.dev_size, seed=cfg.seed)
    shots = sample_k_shots(pool, cfg.k_shots, seed=cfg.seed, task=cfg.task)

    t = time.perf_counter()
    dense = evaluate_model(model, tokenizer, cfg, validation)
    timings["eval_dense"] = time.perf_counter() - t
    params_dense = count_parameters(model)

    t = time.perf_counter()
    plan = prune_model(model, tokenizer, cfg)
    timings["prune"] = time.perf_counter() - t
    params_pruned = count_parameters(model)

    t = time.perf_counter()
    pruned = evaluate_model(model, tokenizer, cfg, validation)
    timings["eval_pruned"] = time.perf_counter() - t

    t = time.perf_counter()
    if cfg.prompt is None:
        selection = select_prompt(model, tokenizer, dev, cfg.task, packed=True)
        prompt = selection.best
        selection_table = selection.table
    else:
        prompt, selection_table = cfg.prompt, []
    timings["prompt_selection"] = time.perf_counter() - t

    t = time.perf_counter()
    tuned_model, train_stats = recover(model, tokenizer, shots, cfg, prompt, output_dir)
    timings["recovery"] = time.perf_counter() - t

    t = time.perf_counter()
    tuned = evaluate_model(tuned_model, tokenizer, cfg, validation)
    tuned_same_prompt = None
    if prompt != "lm_eval":
        tuned_same_prompt = evaluate_model(tuned_model, tokenizer, cfg, validation, prompt=prompt)
    timings["eval_tuned"] = time.perf_counter() - t

    t = time.perf_counter()
    save_pruned(
        tuned_model,
        output_dir / "model",
        tokenizer,
        extra_metadata={"method": cfg.method, "target_sparsity": cfg.target_sparsity, "task": cfg.task},
    )
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    from .data import get_task

    chance = get_task(cfg.task).chance
    report = {
        "config": asdict(cfg),
        "params": {
            "dense": params_dense,
            "pruned": params_pruned,
            "plan_dense": plan.num_parameters()["dense"],
            "plan_pruned": plan.num_parameters()["pruned"],
        },
        "achieved_sparsity": 1 - params_pruned / params_dense,
        "per_layer": plan.per_layer_sizes(),
        "dense": dense,
        "pruned_no_tune": pruned,
        "tuned": tuned,
        "tuned_selected_prompt": tuned_same_prompt,
        "recovery_rate": {
            "pruned_no_tune": pruned["acc"] / dense["acc"],
            "tuned": tuned["acc"] / dense["acc"],
        },
        "chance": chance,
        "dense_near_chance": abs(dense["acc"] - chance) <= 0.02,
        "prompt_selection": {"selected": prompt, "table": selection_table},
        "training": train_stats,
        "timings_s": timings,
        "perplexity": {
            "wikitext2": {
                "dense": dense["wikitext2_ppl"],
                "pruned": pruned["wikitext2_ppl"],
                "tuned": tuned["wikitext2_ppl"],
            }
        },
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(output_dir / "report.md", render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"# tailored_hf: {cfg['model']} -> {cfg['task']} at {cfg['target_sparsity']:.0%} ({cfg['method']})",
        "",
        f"Parameters: {report['params']['dense']:,} -> {report['params']['pruned']:,} "
        f"(achieved sparsity {report['achieved_sparsity']:.2%}). Validation items: {report['dense']['n']}; "
        f"chance {report['chance']:.2f}"
        + (" (dense model within 2 points of chance)" if report["dense_near_chance"] else ""),
        "",
        "| model | acc | acc_norm | recovery (acc) | WikiText-2 ppl |",
        "|---|---|---|---|---|",
    ]
    dense_acc = report["dense"]["acc"]
    for label, key in (("dense", "dense"), ("pruned, no tune", "pruned_no_tune"), ("pruned + task LoRA", "tuned")):
        row = report[key]
        lines.append(
            f"| {label} | {row['acc']:.4f} | {row['acc_norm']:.4f} | {row['acc'] / dense_acc:.3f} | {row['wikitext2_ppl']:.2f} |"
        )
    if report.get("tuned_selected_prompt"):
        row = report["tuned_selected_prompt"]
        lines.append(
            f"| pruned + task LoRA, scored with `{row['prompt']}` | {row['acc']:.4f} | {row['acc_norm']:.4f} | "
            f"{row['acc'] / dense_acc:.3f} | {row['wikitext2_ppl']:.2f} |"
        )
    lines += ["", f"Selected prompt: `{report['prompt_selection']['selected']}`", ""]
    if report["prompt_selection"]["table"]:
        lines += ["| prompt | dev acc | dev acc_norm |", "|---|---|---|"]
        lines += [
            f"| {r['prompt']} | {r['acc']:.4f} | {r['acc_norm']:.4f} |" for r in report["prompt_selection"]["table"]
        ]
        lines.append("")
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    parser = argparse.ArgumentParser(description=__doc__)
    for f in fields(PipelineConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"float": float, "int": int}.get(str(f.type).split(" ")[0], str)
        parser.add_argument(flag, type=kind, default=f.default, help=f.metadata.get("help"))
    return PipelineConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(parse_args(argv))
    print(render_markdown(report))


if __name__ == "__main__":
    main()
