"""Recovery by distillation from the dense model: a `transformers.Trainer` whose loss is the teacher's KL.

After physical pruning, the smaller model (the student, every weight or its LoRA adapters trainable) learns to match
the dense model's next-token distribution on general text, as Minitron and Sheared-LLaMA recover pruned models (on
billions of tokens; `benchmarks/tailored_llama.py` measures what a CPU budget buys). The teacher is a second, frozen
model in memory; its logits are never held whole when both LM heads are plain bias-free linears
(`chunked_logit_distillation`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from .. import arch as A
from .losses import chunked_logit_distillation, logit_distillation, token_selection

logger = logging.getLogger(__name__)

#: Forward arguments shared by the student and the teacher forward (labels stay out: the loss is the KL).
FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids")


class TeacherDistillationTrainer(Trainer):
    """
    `Trainer` that trains `model` to match a frozen `teacher_model`'s next-token distribution (KL(p_teacher ||
    p_student) at `temperature`, times T^2) on the selected tokens of each batch: those with a next-token label when
    the batch has `labels`, else the non-padding ones.

    Args:
        teacher_model (`nn.Module`): The teacher (e.g. the dense model before pruning), same tokenizer. Put in eval
            mode, frozen, and moved to the training device.
        temperature (`float`, defaults to 1.0): Softmax temperature of both distributions.
        chunk_tokens (`int`, defaults to 1024): Tokens per chunk of the chunked KL (memory grows with
            `chunk_tokens x vocab`, not `tokens x vocab`).
        *args, **kwargs: As for `transformers.Trainer`.
    """

    def __init__(
        self, *args: Any, teacher_model: nn.Module, temperature: float = 1.0, chunk_tokens: int = 1024, **kwargs: Any
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}.")
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model.eval().requires_grad_(False).to(self.args.device)
        self.temperature = temperature
        self.chunk_tokens = chunk_tokens
        # The loss is a mean over each micro-batch's tokens: the Trainer divides it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        """The KL of the selected tokens, from both models' final hidden states (`logits_to_keep=1`: no full
        logits from the forwards themselves)."""
        forward = {key: inputs[key] for key in FORWARD_KEYS if inputs.get(key) is not None}
        student_out, student_hidden = final_hidden_states(model, forward)
        with torch.no_grad():
            _, teacher_hidden = final_hidden_states(self.teacher_model, forward)
        selected = token_selection(inputs, student_hidden.shape[:2], student_hidden.device)
        loss = self.distillation_loss(model, student_hidden[selected], teacher_hidden[selected])
        return (loss, student_out) if return_outputs else loss

    def distillation_loss(self, model: nn.Module, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """KL from `[tokens, hidden]` final hidden states, in chunks when both heads are bias-free linears."""
        head, teacher_head = A.lm_head(model), A.lm_head(self.teacher_model)
        plain = all(isinstance(h, nn.Linear) and h.bias is None for h in (head, teacher_head))
        if plain:
            return chunked_logit_distillation(
                student, teacher, head.weight, self.temperature, self.chunk_tokens, teacher_weight=teacher_head.weight
            )
        return logit_distillation(head(student), teacher_head(teacher), self.temperature)  # e.g. a LoRA-wrapped head


def final_hidden_states(model: nn.Module, forward: dict[str, Any]) -> tuple[Any, torch.Tensor]:
    """`model(**forward)` with `logits_to_keep=1`, and the output of its final norm (`[batch, seq, hidden]`), caught
    by a hook: the LM head's input at every position, whatever modules a pruned model's layers are."""
    caught: list[torch.Tensor] = []
    handle = A.final_norm(model).register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        output = model(**forward, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return output, caught[-1]


def distill_from_teacher(
    model: nn.Module,
    teacher_model: nn.Module,
    windows: torch.Tensor,
    output_dir: str | Path,
    max_steps: int,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    temperature: float = 1.0,
    seed: int = 0,
    **training_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """
    Trains every parameter of `model` for `max_steps` steps of `batch_size` windows to match `teacher_model`
    (`TeacherDistillationTrainer`; AdamW, linear decay after a 10% warm-up, gradient norm clipped at 1).

    Args:
        model (`nn.Module`): The student, e.g. a physically pruned model; trained in place.
        teacher_model (`nn.Module`): The frozen teacher, e.g. the dense model it was pruned from.
        windows (`torch.Tensor`): `[n, seq_len]` token ids (e.g. `tailored_hf.data.packed_windows`), visited in a
            seeded random order; `max_steps * batch_size` may exceed `n` (further epochs).
        output_dir (`str` or `Path`): The Trainer's output directory (nothing is saved there unless
            `training_kwargs` asks for checkpoints).
        max_steps (`int`): Optimizer steps.
        batch_size (`int`, defaults to 8), learning_rate (`float`, defaults to 1e-4), temperature (`float`,
            defaults to 1.0), seed (`int`, defaults to 0): As named.
        **training_kwargs: Further `TrainingArguments` fields (e.g. `use_cpu=True`, `bf16=True`), applied last.

    Returns:
        `(model, stats)`: the trained model and `{"train_loss", "steps", "tokens", "windows", "train_seconds"}`
        (`windows`: the distinct windows given, `n`).
    """
    from datasets import Dataset

    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty [n, seq_len] tensor, got shape {tuple(windows.shape)}.")
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}.")
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.1,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        seed=seed,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    settings.update(training_kwargs)
    # Pinned host memory only helps a copy to an accelerator (on CPU the dataloader warns that it is unused).
    settings.setdefault(
        "dataloader_pin_memory", not settings.get("use_cpu", False) and torch.accelerator.is_available()
    )
    dataset = Dataset.from_dict({"input_ids": windows.tolist()}).with_format("torch")
    trainer = TeacherDistillationTrainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=dataset,
        teacher_model=teacher_model,
        temperature=temperature,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    tokens = result.global_step * batch_size * windows.shape[1] * trainer.args.gradient_accumulation_steps
    logger.info(
        "Distilled %d steps (%d tokens) in %.0fs, loss %.4f", result.global_step, tokens, seconds, result.training_loss
    )
    return trainer.model, {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "tokens": tokens,
        "windows": windows.shape[0],
        "train_seconds": seconds,
    }
