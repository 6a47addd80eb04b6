"""The main job: dense eval -> prune -> [dense-teacher KD] -> prompt selection -> K-shot task LoRA -> eval -> report.

`make demo` runs it offline on SmolLM2-135M with the packaged data subset; the CLI (`tailored-hf run RECIPE`) and
the recipes reuse it.

Two kinds of methods, one rule:

- Methods that prune once before training (`depgraph`, `magnitude`, or any method class with
  `prunes_at_init = True`) prune the dense model *before* recovery, so the report has a "pruned, no tune" row and
  the prompt is selected on the pruned model.
- Every other registered method (L0 masks, ATP, ...) prunes *during* recovery: the pipeline passes
  `callbacks=[PrunerCallback(method_config)]` to the `SFTTrainer`, exactly as a user script would; the model is
  pruned when training ends, and the report's "pruned, no tune" row is empty.

With `teacher_kd_steps > 0` (methods that prune before training), the pruned model first distils from the dense
model on general text or on the task's train rows without labels (`tailored_hf.distillation`), and the report gains a
"pruned + dense-teacher KD, no tune" row.

With `task_vocabulary` set, the vocabulary is trimmed to the task after the dense evaluation
(`tailored_hf.structure.vocabulary`: the tokens that cover that share of the task's train text, their embedding and
LM-head rows, and the tokenizer), and the method removes the rest of `target_sparsity`, which still counts the dense
model's parameters. Perplexities after trimming are not reported: another tokenizer's per-token perplexity is not
comparable with the dense model's. The report also gives the vocabulary's held-out share (counted without the dev
slice, the share of that slice's tokens it keeps), and a warning when a small train split makes it low.

Resuming (`resume=True`): the first run records the pre-training stages (evaluations, selected prompt) and the
pruning plan under `OUTPUT/trainer/`; a resumed run re-applies that plan to the freshly loaded dense model (no
re-pruning), or reloads the distilled model saved under `OUTPUT/trainer/distilled/`, and continues from the last
Trainer checkpoint (`save_strategy="steps"` makes checkpoints).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from .data import get_task, load_task_split, map_for_scoring, map_for_training, sample_k_shots
from .data.selection import select_prompt, split_dev_and_pool
from .loading import DEFAULT_MODEL, load_model
from .methods import METHOD_REGISTRY, MethodConfig
from .structure import PLAN_ATTRIBUTE, PruningPlan, apply_plan, count_parameters, save_pruned
from .structure.plan import atomic_write_text

logger = logging.getLogger(__name__)

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Methods that prune once, before recovery (others prune during training through `PrunerCallback`).
INIT_TIME_METHODS = ("depgraph", "magnitude")
STATE_FILENAME = "pipeline_state.json"
#: Under OUTPUT/trainer: the pruned model after dense-teacher KD, which a resumed run recovers from.
DISTILLED_DIRNAME = "distilled"


@dataclass
class PipelineConfig:
    """Settings of the prune-and-recover job (every field is a `--flag` of `python -m tailored_hf.pipeline`)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Local path, Hub id or offline alias."})
    task: str = field(
        default="piqa", metadata={"help": "Task to tailor the model to (PIQA: short items, fits the CPU demo)."}
    )
    method: str = field(
        default="depgraph", metadata={"help": "Pruning method: a registered name (depgraph, magnitude, ...)."}
    )
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
    eval_task: str | None = field(
        default=None,
        metadata={
            "help": "Multiple-choice task scored before/after pruning (default: `task`). Needed when `task` is a "
            "generation task such as alpaca."
        },
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Split of the scored task to evaluate on (default: validation, else test; a task with only a "
            "train split, such as the local CaseHOLD file, has eval_limit rows held out of it, disjoint from the "
            "dev slice and the shots)."
        },
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGET_MODULES),
        metadata={"help": "Modules that receive LoRA adapters (default: every attention and FFN projection)."},
    )
    method_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Further fields of the method's config (e.g. DepGraphConfig's importance, round_to); "
            "target_sparsity and seed are passed from this config."
        },
    )
    training_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Further `trl.SFTConfig` fields (override the pipeline's training defaults)."},
    )
    teacher_kd_steps: int = field(
        default=0,
        metadata={
            "help": "Steps of distillation from the dense model after pruning, before task recovery: every weight of "
            "the pruned model trains on the dense model's next-token distribution over `teacher_kd_source` (0: "
            "none). Only for methods that prune before training."
        },
    )
    teacher_kd_source: str = field(
        default="c4",
        metadata={
            "help": "Text it distills on: `task` (the task's train rows outside the dev slice, every choice, no "
            "labels), a calibration source (c4, book, wikitext2) or a text / JSON file."
        },
    )
    teacher_kd_seq_len: int = field(default=256, metadata={"help": "Tokens per distillation window."})
    teacher_kd_batch_size: int = field(default=8, metadata={"help": "Distillation windows per step."})
    teacher_kd_learning_rate: float = field(default=1e-4, metadata={"help": "Distillation learning rate (AdamW)."})
    task_vocabulary: float | None = field(
        default=None,
        metadata={
            "help": "Trim the vocabulary to the task before pruning: keep the tokens that cover this share of the "
            "task's train text (1.0: every token it uses), with the tokenizer; the method removes the rest of "
            "target_sparsity. None keeps the whole vocabulary."
        },
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last Trainer checkpoint in OUTPUT/trainer (re-applies the saved plan)."},
    )
    progress: bool = field(default=False, metadata={"help": "Show progress bars (stages and training steps)."})

    def __post_init__(self) -> None:
        if not 0.0 < self.target_sparsity <= 0.9:
            raise ValueError(f"target_sparsity must be in (0, 0.9], got {self.target_sparsity}.")
        if self.method not in METHOD_REGISTRY:
            close = difflib.get_close_matches(self.method, list(METHOD_REGISTRY), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown method {self.method!r}; registered methods: {sorted(METHOD_REGISTRY)}.{hint}")
        if "per_device_train_batch_size" in self.training_kwargs and self.batch_size != PipelineConfig.batch_size:
            raise ValueError(
                "Both batch_size and per_device_train_batch_size are set; set only one (batch_size is the "
                "pipeline's name for per_device_train_batch_size)."
            )
        self.method_config()  # validates method_kwargs early
        if self.task_vocabulary is not None and not 0.0 < self.task_vocabulary <= 1.0:
            raise ValueError(
                f"task_vocabulary must be a share of the task's tokens in (0, 1], got {self.task_vocabulary}."
            )
        if self.teacher_kd_steps < 0:
            raise ValueError(f"teacher_kd_steps must be >= 0, got {self.teacher_kd_steps}.")
        for name in ("teacher_kd_seq_len", "teacher_kd_batch_size", "teacher_kd_learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.teacher_kd_steps and not self.prunes_before_training:
            raise ValueError(
                f"teacher_kd_steps distills the pruned model before task recovery, but method {self.method!r} prunes "
                "during recovery: use a method that prunes before training (depgraph, magnitude) or set "
                "teacher_kd_steps=0."
            )
        if self.prompt is None and get_task(self.task).kind == "generation":
            raise ValueError(
                f"Task {self.task!r} is a generation task, so no prompt can be selected by scoring it: set `prompt` "
                "(e.g. prompt: alpaca) and `eval_task` (a multiple-choice task to score)."
            )

    @property
    def scored_task(self) -> str:
        """The multiple-choice task that is evaluated (`eval_task`, else `task`)."""
        return self.eval_task or self.task

    def method_config(self, target_sparsity: float | None = None) -> MethodConfig:
        """The method's config dataclass: `target_sparsity` (or the one given) and `seed` from here, then
        `method_kwargs`."""
        config_class = METHOD_REGISTRY[self.method].config_class
        names = {f.name for f in fields(config_class)}
        unknown = [k for k in self.method_kwargs if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{config_class.__name__} has no field {unknown[0]!r}.{hint} Valid fields: {sorted(names)}."
            )
        target = self.target_sparsity if target_sparsity is None else target_sparsity
        kwargs = {k: v for k, v in (("target_sparsity", target), ("seed", self.seed)) if k in names}
        kwargs.update(self.method_kwargs)
        return config_class(**kwargs)

    @property
    def prunes_before_training(self) -> bool:
        """True for methods that prune once before recovery; False for methods that prune during training."""
        return prunes_before_training(self.method)


def prunes_before_training(method: str) -> bool:
    """Whether `method` prunes before recovery (class attribute `prunes_at_init`, default: depgraph/magnitude)."""
    cls = METHOD_REGISTRY[method]
    return bool(getattr(cls, "prunes_at_init", method in INIT_TIME_METHODS))


def evaluation_and_train_splits(cfg: PipelineConfig) -> tuple[Any, Any]:
    """The scored rows (first `eval_limit` of the evaluation split) and the task's train split.

    The evaluation split is `eval_split`, else the scored task's validation split, else its test split. A task whose
    data has a train split only gets `eval_limit` rows held out of a seeded shuffle of it (at most half); when it is
    also the training task, the dev slice and the shots come from the remaining rows only.
    """
    held_out = _scored_rows_held_out_of_train(cfg)
    if held_out is None:
        splits = get_task(cfg.scored_task).splits
        split = cfg.eval_split or next(name for name in ("validation", "test") if name in splits)
        evaluation = load_task_split(cfg.scored_task, split, data_dir=cfg.data_dir)
        evaluation = evaluation.select(range(min(cfg.eval_limit, len(evaluation))))
        return evaluation, load_task_split(cfg.task, "train", data_dir=cfg.data_dir)
    evaluation, rest = held_out
    logger.info(
        "%s has no validation or test split here: scoring %d rows held out of train", cfg.scored_task, len(evaluation)
    )
    train_split = rest if cfg.scored_task == cfg.task else load_task_split(cfg.task, "train", data_dir=cfg.data_dir)
    return evaluation, train_split


def _scored_rows_held_out_of_train(cfg: PipelineConfig) -> tuple[Any, Any] | None:
    """For a scored task without an evaluation split (no `eval_split`, validation or test): its train split, shuffled
    with `seed`, as (the first `eval_limit` rows (at most half), the rest); None when it has an evaluation split."""
    splits = get_task(cfg.scored_task).splits
    if cfg.eval_split or any(name in splits for name in ("validation", "test")):
        return None
    rows = load_task_split(cfg.scored_task, "train", data_dir=cfg.data_dir).shuffle(seed=cfg.seed)
    held_out = min(cfg.eval_limit, len(rows) // 2)
    return rows.select(range(held_out)), rows.select(range(held_out, len(rows)))


def scored_task_train_rows(cfg: PipelineConfig) -> Any | None:
    """The train rows of the scored task (`eval_task`) that are not scored, when it is not the training task; None
    when it is, when it has no train split, or when its train split is the one scored (`eval_split="train"`)."""
    if cfg.scored_task == cfg.task or "train" not in get_task(cfg.scored_task).splits or cfg.eval_split == "train":
        return None
    held_out = _scored_rows_held_out_of_train(cfg)
    return load_task_split(cfg.scored_task, "train", data_dir=cfg.data_dir) if held_out is None else held_out[1]


def evaluate_model(
    model, tokenizer, cfg: PipelineConfig, validation, prompt: str = "lm_eval", perplexity: bool = True
) -> dict[str, Any]:
    """Task accuracy (lm-eval protocol) on the validation slice and WikiText-2 perplexity (`None` unless
    `perplexity`)."""
    from .data import load_lm_text
    from .eval.multiple_choice import score_multiple_choice
    from .eval.perplexity import token_perplexity

    model.eval()
    start = time.perf_counter()
    items = map_for_scoring(validation, cfg.scored_task, prompt=prompt, tokenizer=tokenizer)
    result = score_multiple_choice(model, tokenizer, items, batch_size=16, packed=True)
    scored = time.perf_counter()
    ppl = None
    if perplexity:
        stream = tokenizer(load_lm_text("wikitext2", data_dir=cfg.data_dir), return_tensors="pt").input_ids[0]
        ppl = token_perplexity(model, stream, max_windows=cfg.ppl_windows).perplexity
    return {
        "task": cfg.scored_task,
        "prompt": prompt,
        "acc": result.acc,
        "acc_norm": result.acc_norm,
        "n": result.n,
        "wikitext2_ppl": ppl,
        "seconds": {"task": scored - start, "ppl": time.perf_counter() - scored},
    }


#: `trim_to_task_vocabulary` warns when the vocabulary, counted without the dev slice, keeps less than its coverage
#: minus this margin of the dev slice's tokens. Measured on SmolLM2-135M at coverage 0.99: the tasks with 9,000+
#: train rows keep 98.2-98.7% of 200 held-out rows' tokens; ARC-Challenge (1,119 rows) keeps 94.4%, and a model
#: with its own vocabulary scores 5 points below one with the 7 tasks' shared vocabulary
#: (`benchmarks/results/vocabulary_held_out.md`, `paired_comparison_20.md`).
VOCABULARY_HELD_OUT_MARGIN = 0.02


def trim_to_task_vocabulary(model, tokenizer, cfg: PipelineConfig, train_split):
    """`cfg.task_vocabulary`: the model and tokenizer trimmed to the tokens of the task's train text (every choice of
    every row, in each prompt variant that may be trained or scored: `cfg.prompt` and the scored format, or every
    registered variant when the prompt is selected later) and, with an `eval_task`, of its train rows that are not
    scored (in those variants that it has).

    Returns `(model, tokenizer, target, held_out_share)`: `target` is the share of the trimmed model that the method
    must remove for `cfg.target_sparsity` of the dense model's parameters; `held_out_share` the share of the dev
    slice's tokens (`split_dev_and_pool`) that a vocabulary counted without it keeps, i.e. how well the vocabulary
    carries over to text it was not counted on (None when the split has no more rows than `cfg.dev_size`). A small
    train split carries over poorly (warned about)."""
    from collections import Counter

    from .data import label_free_texts
    from .data.prompts import LM_EVAL_PROMPT, list_prompts
    from .data.selection import candidate_prompts
    from .structure.vocabulary import held_out_share, remaining_sparsity, select_tokens, token_counts, trim_vocabulary

    dense = count_parameters(model)
    prompts = candidate_prompts(cfg.task, tokenizer) if cfg.prompt is None else sorted({cfg.prompt, LM_EVAL_PROMPT})
    if len(train_split) > cfg.dev_size:
        dev, pool = split_dev_and_pool(train_split, dev_size=cfg.dev_size, seed=cfg.seed)  # the pipeline's split
    else:  # no dev slice to hold out (`run` needs one; a direct call may not have it): no check
        dev, pool = train_split.select([]), train_split
    pool_counts: Counter[int] = Counter()
    dev_counts: Counter[int] = Counter()
    for prompt in prompts:
        for rows, counts in ((pool, pool_counts), (dev, dev_counts)):
            texts = label_free_texts(rows, cfg.task, prompt=prompt, tokenizer=tokenizer)
            counts += token_counts(tokenizer, texts)
    scored_rows = scored_task_train_rows(cfg)
    if scored_rows is not None:  # an `eval_task`: scored in the same variants, where registered for it
        for prompt in [p for p in prompts if p in list_prompts(cfg.scored_task)]:
            texts = label_free_texts(scored_rows, cfg.scored_task, prompt=prompt, tokenizer=tokenizer)
            pool_counts += token_counts(tokenizer, texts)
    tokens = select_tokens(tokenizer, counts=pool_counts + dev_counts, coverage=cfg.task_vocabulary)
    held_out = held_out_share(tokenizer, pool_counts, dev_counts, cfg.task_vocabulary) if len(dev) else None
    if held_out is not None and held_out < cfg.task_vocabulary - VOCABULARY_HELD_OUT_MARGIN:
        logger.warning(
            "The task vocabulary carries over poorly: counted without the %d dev rows, it keeps %.1f%% of their "
            "tokens (%.1f%% of the text it was counted on). Text it was not counted on, such as the validation split, "
            "will be tokenized in smaller pieces; the train split (%d rows) may be too small for a task vocabulary "
            "(task_vocabulary=None keeps the whole vocabulary).",
            len(dev),
            100 * held_out,
            100 * cfg.task_vocabulary,
            len(train_split),
        )
    model, tokenizer = trim_vocabulary(model, tokenizer, tokens)
    trimmed = count_parameters(model)
    logger.info(
        "Task vocabulary: %d tokens kept, %.1f%% of the parameters removed%s",
        len(tokens),
        100 * (1 - trimmed / dense),
        "" if held_out is None else f"; {held_out:.1%} of held-out train tokens kept",
    )
    return model, tokenizer, remaining_sparsity(cfg.target_sparsity, dense, trimmed), held_out


def prune_model(model, tokenizer, cfg: PipelineConfig, target_sparsity: float | None = None) -> PruningPlan:
    """Prune with a method that prunes before training (see `prunes_before_training`); returns the plan (relative to
    the model given; `target_sparsity` replaces `cfg.target_sparsity`)."""
    method_config = cfg.method_config(target_sparsity)
    if cfg.method == "magnitude":
        from .structure.simple import magnitude_plan

        plan = magnitude_plan(model, method_config.target_sparsity, prune_heads=method_config.prune_heads)
        apply_plan(model, plan)
        return plan
    if cfg.method == "depgraph":
        from .methods.depgraph import calibration_for, prune

        calibration = None
        if method_config.importance not in ("l1", "l2", "random"):
            calibration = calibration_for(method_config, tokenizer, data_dir=cfg.data_dir)
        _, plan = prune(model, method_config, calibration=calibration, progress=cfg.progress)
        return plan
    from .methods import build_method

    method = build_method(method_config)
    method.check_model(model)
    method.on_init_end(model, tokenizer=tokenizer, args=None, calibration=None, progress=cfg.progress)
    if method.plan is None:
        raise ValueError(
            f"Method {cfg.method!r} declares prunes_at_init but produced no plan in on_init_end; set "
            "`prunes_at_init = False` on its class so the pipeline prunes it during training."
        )
    return method.plan


def training_arguments(cfg: PipelineConfig, output_dir: Path):
    """The `SFTConfig` of the recovery run: the pipeline's defaults, then `cfg.training_kwargs`."""
    from trl import SFTConfig

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
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
        disable_tqdm=not cfg.progress,
    )
    valid = {f.name for f in fields(SFTConfig)}
    for key in cfg.training_kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"training_kwargs: SFTConfig has no field {key!r}.{hint}")
    kwargs.update(cfg.training_kwargs)
    # Pinned host memory only helps a copy to an accelerator (on CPU the dataloader warns that it is unused).
    kwargs.setdefault("dataloader_pin_memory", not kwargs["use_cpu"] and torch.accelerator.is_available())
    return SFTConfig(**kwargs)


def recover(
    model,
    tokenizer,
    shots,
    cfg: PipelineConfig,
    prompt: str,
    output_dir: Path,
    resume_from: str | None = None,
    target_sparsity: float | None = None,
):
    """K-shot task-specific LoRA recovery with TRL's SFTTrainer (completion-only loss).

    Methods that prune during training run here, as `callbacks=[PrunerCallback(cfg.method_config())]`
    (`target_sparsity` replaces `cfg.target_sparsity`).
    """
    from peft import LoraConfig
    from trl import SFTTrainer

    train = map_for_training(shots, cfg.task, prompt=prompt, tokenizer=tokenizer)
    args = training_arguments(cfg, output_dir)
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    callbacks = []
    if not cfg.prunes_before_training:
        from .callback import PrunerCallback

        method_config = cfg.method_config(target_sparsity)
        callbacks.append(PrunerCallback(method_config, calibration=method_calibration(method_config, tokenizer, cfg)))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if len(trainer.train_dataset) == 0:  # TRL drops examples whose completion was truncated away entirely
        raise ValueError(
            f"No training example keeps a completion token within max_length={cfg.max_length} (all {len(train)} "
            "were dropped after truncation): raise max_length or use a shorter prompt."
        )
    result = trainer.train(resume_from_checkpoint=resume_from)
    tuned = trainer.model
    if hasattr(tuned, "merge_and_unload"):  # evaluate and save the merged weights (same function, faster forward)
        tuned = tuned.merge_and_unload()
    example = train[0]["prompt"] + train[0]["completion"] if len(train) and "prompt" in train.column_names else None
    stats = {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "examples": len(train),
        "example": example,
    }
    return tuned, stats


def method_calibration(method_config: MethodConfig, tokenizer, cfg: PipelineConfig) -> torch.Tensor | None:
    """Calibration token ids for a method whose config names a calibration source, drawn with `cfg.data_dir`.

    Methods draw their own calibration when given none, but without the pipeline's `data_dir`; drawing it here
    makes `data_dir` in a recipe reach every method. Returns None when the config has no calibration fields.
    """
    names = ("calibration_source", "num_calibration_samples", "calibration_seq_len")
    if not all(hasattr(method_config, name) for name in names):
        return None
    from .data import calibration_batches

    return calibration_batches(
        tokenizer,
        source=method_config.calibration_source,
        n_samples=method_config.num_calibration_samples,
        seq_len=method_config.calibration_seq_len,
        seed=getattr(method_config, "seed", cfg.seed),
        data_dir=cfg.data_dir,
    )


def distill_pruned(model, teacher, tokenizer, cfg: PipelineConfig, pool, output_dir: Path) -> dict[str, Any]:
    """`cfg.teacher_kd_steps` steps of distillation of the pruned `model` (in place) from `teacher`, the dense model,
    on packed windows of `cfg.teacher_kd_source` (`"task"`: the label-free text of `pool`, the train rows outside the
    dev slice); returns the training stats."""
    from .data import label_free_texts, packed_windows
    from .distillation import distill_from_teacher

    # One pass over as many windows as the steps take (fewer when the text runs out: the trainer then repeats them).
    packing = {
        "seq_len": cfg.teacher_kd_seq_len,
        "seed": cfg.seed,
        "max_windows": cfg.teacher_kd_steps * cfg.teacher_kd_batch_size,
    }
    if cfg.teacher_kd_source == "task":
        windows = packed_windows(tokenizer, texts=label_free_texts(pool, cfg.task, tokenizer=tokenizer), **packing)
    else:
        windows = packed_windows(tokenizer, cfg.teacher_kd_source, data_dir=cfg.data_dir, **packing)
    _, stats = distill_from_teacher(
        model,
        teacher,
        windows,
        output_dir,
        max_steps=cfg.teacher_kd_steps,
        batch_size=cfg.teacher_kd_batch_size,
        learning_rate=cfg.teacher_kd_learning_rate,
        seed=cfg.seed,
        use_cpu=cfg.training_kwargs.get("use_cpu", True),  # as the recovery run (`training_arguments`)
    )
    model.eval()
    return stats


def _last_checkpoint(trainer_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(trainer_dir)) if trainer_dir.is_dir() else None


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole job and write `model/`, `report.json` and `report.md` under `cfg.output_dir`."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    output_dir = Path(cfg.output_dir)
    trainer_dir = output_dir / "trainer"
    state_path = trainer_dir / STATE_FILENAME
    stages = tqdm(total=6, desc="tailored_hf", unit="stage", disable=not cfg.progress)

    def stage(name: str) -> None:
        stages.set_postfix_str(name)

    resume_from = _last_checkpoint(trainer_dir) if cfg.resume else None
    if cfg.resume and resume_from is None:
        logger.info("resume=True but no checkpoint in %s: starting from scratch", trainer_dir)
    saved = json.loads(state_path.read_text()) if resume_from and state_path.is_file() else None
    if resume_from and saved is None:
        raise ValueError(
            f"Cannot resume from {resume_from}: {state_path} is missing (it is written before training starts). "
            "Run again without resume."
        )

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    stage("load")
    model, tokenizer = load_model(cfg.model)
    timings["load"] = time.perf_counter() - t0

    validation, train_split = evaluation_and_train_splits(cfg)
    dev, pool = split_dev_and_pool(train_split, dev_size=cfg.dev_size, seed=cfg.seed)
    shots = sample_k_shots(pool, cfg.k_shots, seed=cfg.seed, task=cfg.task)
    stages.update()

    plan: PruningPlan | None = None
    if saved is not None:
        logger.info("Resuming from %s (re-applying the saved plan, reusing the recorded evaluations)", resume_from)
        timings.update(saved["timings"])
        dense, pruned, prompt, selection_table = (
            saved["dense"],
            saved["pruned_no_tune"],
            saved["prompt"],
            saved["selection_table"],
        )
        params_dense = saved["params_dense"]
        distilled, teacher_kd = saved.get("distilled_no_tune"), saved.get("teacher_kd")
        structural_target = saved.get("structural_target")
        vocabulary_held_out = saved.get("vocabulary_held_out_share")
        if saved.get("plan") is not None:  # relative to the dense model: the vocabulary rows included
            plan = PruningPlan.from_dict(saved["plan"])
            apply_plan(model, plan)
            if plan.tokens is not None:
                from .structure.vocabulary import trim_tokenizer

                tokenizer = trim_tokenizer(tokenizer, plan.tokens)
        elif saved.get("tokens") is not None:  # a method that prunes during training, on the task vocabulary
            from .structure.vocabulary import trim_vocabulary

            model, tokenizer = trim_vocabulary(model, tokenizer, saved["tokens"])
        if teacher_kd is not None:  # the distilled weights, saved before recovery started
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(trainer_dir / DISTILLED_DIRNAME)
        stages.update(3)
    else:
        stage("dense eval")
        t = time.perf_counter()
        dense = evaluate_model(model, tokenizer, cfg, validation)
        timings["eval_dense"] = time.perf_counter() - t
        params_dense = count_parameters(model)
        stages.update()

        stage("prune")
        pruned = distilled = teacher_kd = None
        structural_target = vocabulary_held_out = None
        if cfg.task_vocabulary is not None:
            t = time.perf_counter()
            model, tokenizer, structural_target, vocabulary_held_out = trim_to_task_vocabulary(
                model, tokenizer, cfg, train_split
            )
            timings["task_vocabulary"] = time.perf_counter() - t
        ppl = cfg.task_vocabulary is None  # another tokenizer's per-token perplexity is not comparable
        if cfg.prunes_before_training:
            teacher = copy.deepcopy(model) if cfg.teacher_kd_steps else None
            t = time.perf_counter()
            prune_model(model, tokenizer, cfg, structural_target)
            plan = getattr(model, PLAN_ATTRIBUTE)  # relative to the dense model (composed with the vocabulary's)
            timings["prune"] = time.perf_counter() - t
            t = time.perf_counter()
            pruned = evaluate_model(model, tokenizer, cfg, validation, perplexity=ppl)
            timings["eval_pruned"] = time.perf_counter() - t
            if teacher is not None:
                stage("teacher KD")
                t = time.perf_counter()
                teacher_kd = distill_pruned(model, teacher, tokenizer, cfg, pool, trainer_dir / "teacher_kd")
                del teacher
                timings["teacher_kd"] = time.perf_counter() - t
                t = time.perf_counter()
                distilled = evaluate_model(model, tokenizer, cfg, validation, perplexity=ppl)
                timings["eval_distilled"] = time.perf_counter() - t
                save_pruned(model, trainer_dir / DISTILLED_DIRNAME, plan=plan)  # what a resumed run recovers from
        stages.update()

        stage("prompt selection")
        t = time.perf_counter()
        if cfg.prompt is None:
            selection = select_prompt(model, tokenizer, dev, cfg.task, packed=True)
            prompt = selection.best
            selection_table = selection.table
        else:
            prompt, selection_table = cfg.prompt, []
        timings["prompt_selection"] = time.perf_counter() - t
        stages.update()
        trainer_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "dense": dense,
            "pruned_no_tune": pruned,
            "distilled_no_tune": distilled,
            "teacher_kd": teacher_kd,
            "prompt": prompt,
            "selection_table": selection_table,
            "params_dense": params_dense,
            "plan": plan.to_dict() if plan is not None else None,
            "tokens": getattr(getattr(model, PLAN_ATTRIBUTE, None), "tokens", None),
            "structural_target": structural_target,
            "vocabulary_held_out_share": vocabulary_held_out,
            "timings": timings,
        }
        atomic_write_text(state_path, json.dumps(state))

    stage("recovery")
    t = time.perf_counter()
    vocabulary_plan = getattr(model, PLAN_ATTRIBUTE, None)  # the task vocabulary's, if any, before training
    tuned_model, train_stats = recover(
        model, tokenizer, shots, cfg, prompt, output_dir, resume_from=resume_from, target_sparsity=structural_target
    )
    timings["recovery"] = time.perf_counter() - t
    from . import arch as A

    if plan is None:  # a method that pruned during training
        plan = getattr(A.unwrap_model(tuned_model), PLAN_ATTRIBUTE, None)
        if plan is None or plan is vocabulary_plan:
            raise ValueError(f"Method {cfg.method!r} finished training without producing a pruning plan.")
    params_pruned = count_parameters(tuned_model)
    stages.update()

    stage("final eval")
    t = time.perf_counter()
    ppl = cfg.task_vocabulary is None
    tuned = evaluate_model(tuned_model, tokenizer, cfg, validation, perplexity=ppl)
    tuned_same_prompt = None
    if prompt != "lm_eval":
        tuned_same_prompt = evaluate_model(tuned_model, tokenizer, cfg, validation, prompt=prompt, perplexity=ppl)
    timings["eval_tuned"] = time.perf_counter() - t

    t = time.perf_counter()
    save_pruned(
        tuned_model,
        output_dir / "model",
        tokenizer,
        plan=plan,
        extra_metadata={"method": cfg.method, "target_sparsity": cfg.target_sparsity, "task": cfg.task},
    )
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    stages.update()
    stages.close()

    chance = get_task(cfg.scored_task).chance
    report = {
        "config": asdict(cfg),
        "method_config": cfg.method_config().to_dict(),
        "method_non_default": cfg.method_config().non_default_fields(),
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
        "distilled_no_tune": distilled,
        "tuned": tuned,
        "tuned_selected_prompt": tuned_same_prompt,
        "recovery_rate": {  # undefined (None) when the dense model scores 0
            "pruned_no_tune": pruned["acc"] / dense["acc"] if pruned and dense["acc"] else None,
            "distilled_no_tune": distilled["acc"] / dense["acc"] if distilled and dense["acc"] else None,
            "tuned": tuned["acc"] / dense["acc"] if dense["acc"] else None,
        },
        "chance": chance,
        "dense_near_chance": abs(dense["acc"] - chance) <= 0.02,
        "prompt_selection": {"selected": prompt, "table": selection_table},
        "training": {**train_stats, "resumed_from": resume_from},
        "teacher_kd": teacher_kd,
        "task_vocabulary": None
        if plan.tokens is None
        else {
            "kept": len(plan.tokens),
            "source": plan.source.vocab_size,
            "removed_share": 1
            - replace(plan.source, vocab_size=len(plan.tokens)).num_parameters() / plan.source.num_parameters(),
            "held_out_share": vocabulary_held_out,
        },
        "timings_s": timings,
        "perplexity": {
            "wikitext2": {
                "dense": dense["wikitext2_ppl"],
                "pruned": pruned["wikitext2_ppl"] if pruned else None,
                "distilled": distilled["wikitext2_ppl"] if distilled else None,
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

    def recovery(acc: float) -> str:
        return f"{acc / dense_acc:.3f}" if dense_acc else "-"

    def ppl(row: dict[str, Any]) -> str:
        return "n/a (task vocabulary)" if row["wikitext2_ppl"] is None else f"{row['wikitext2_ppl']:.2f}"

    rows = [("dense", "dense"), ("pruned, no tune", "pruned_no_tune"), ("pruned + task LoRA", "tuned")]
    if report.get("distilled_no_tune"):
        rows.insert(2, ("pruned + dense-teacher KD, no tune", "distilled_no_tune"))
    for label, key in rows:
        row = report[key]
        if row is None:  # the method pruned during training: there is no pruned-but-untuned model
            lines.append(f"| {label} | - | - | - | - |")
            continue
        lines.append(f"| {label} | {row['acc']:.4f} | {row['acc_norm']:.4f} | {recovery(row['acc'])} | {ppl(row)} |")
    if report.get("tuned_selected_prompt"):
        row = report["tuned_selected_prompt"]
        lines.append(
            f"| pruned + task LoRA, scored with `{row['prompt']}` | {row['acc']:.4f} | {row['acc_norm']:.4f} | "
            f"{recovery(row['acc'])} | {ppl(row)} |"
        )
    lines += ["", f"Selected prompt: `{report['prompt_selection']['selected']}`", ""]
    if report.get("task_vocabulary"):
        vocabulary = report["task_vocabulary"]
        lines += [
            f"Task vocabulary: {vocabulary['kept']:,} of {vocabulary['source']:,} tokens kept (those covering "
            f"{cfg['task_vocabulary']:.1%} of the task's train text), {vocabulary['removed_share']:.1%} of the "
            "parameters; the method removed the rest. The tokenizer is trimmed with the model."
            + (
                ""
                if vocabulary.get("held_out_share") is None
                else f" Counted without the dev slice, it keeps {vocabulary['held_out_share']:.1%} of that slice's "
                "tokens (text it was not counted on)."
            ),
            "",
        ]
    if report["prompt_selection"]["table"]:
        lines += ["| prompt | dev acc | dev acc_norm |", "|---|---|---|"]
        lines += [
            f"| {r['prompt']} | {r['acc']:.4f} | {r['acc_norm']:.4f} |" for r in report["prompt_selection"]["table"]
        ]
        lines.append("")
    if report.get("teacher_kd"):
        kd = report["teacher_kd"]
        lines += [
            f"Dense-teacher KD before task recovery: {kd['steps']} steps, {kd['tokens']:,} tokens of "
            f"`{cfg['teacher_kd_source']}`, loss {kd['train_loss']:.4f}.",
            "",
        ]
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    """Scalar fields become `--flags`; list/dict fields (method_kwargs, training_kwargs, ...) are set by recipes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PipelineConfig):
        base = str(f.type).split(" ")[0]
        if base.startswith(("list", "dict")):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = {"float": float, "int": int, "bool": _parse_bool}.get(base, str)
        parser.add_argument(flag, type=kind, default=f.default, help=f.metadata.get("help"))
    return PipelineConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(parse_args(argv))
    print(render_markdown(report))


if __name__ == "__main__":
    main()
