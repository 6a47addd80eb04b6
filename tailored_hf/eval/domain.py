"""Domain-task evaluation (ATP's protocol): generate answers with the task's prompt and score them.

PubMedQA (classification): the first of yes / no / maybe in the generated text, macro-F1 and accuracy. HQS / BillSum
(generation): ROUGE-1/2/L/Lsum F-measure against the reference. CaseHOLD (multiple choice): lm-eval-protocol
log-likelihood scoring of the five holdings. Sampled settings average the metrics over `settings.num_runs` runs.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets

from ..data import get_task, map_for_scoring, map_for_training
from .generation import (
    PUBMEDQA_LABELS,
    GenerationSettings,
    accuracy,
    average_over_runs,
    extract_label,
    generate_predictions,
    macro_f1,
    rouge_scores,
)
from .multiple_choice import score_multiple_choice

logger = logging.getLogger(__name__)

#: Labels generated answers are parsed into, per classification task.
CLASSIFICATION_LABELS: dict[str, tuple[str, ...]] = {"pubmedqa": PUBMEDQA_LABELS}


def evaluate_domain_task(
    model,
    tokenizer,
    dataset: datasets.Dataset,
    task: str,
    prompt: str = "tailored",
    settings: GenerationSettings | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """
    Score `model` on a domain task's rows (in the task's Hub schema).

    Args:
        model (`PreTrainedModel`): Causal LM.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        dataset (`datasets.Dataset`): Evaluation rows, e.g. `load_task_split("pubmedqa", "test")`.
        task (`str`): `pubmedqa`, `hqs`, `billsum`, `casehold`, or any registered task of those kinds.
        prompt (`str`): Prompt variant used to format the rows (the one the model was tuned with).
        settings ([`GenerationSettings`], *optional*): Decoding (default: ATP's sampling, 3 runs).
        limit (`int`, *optional*): First N rows only.
        batch_size (`int`): Scoring batch size for multiple-choice tasks.

    Returns:
        `dict`: the task's metrics (`macro_f1` + `accuracy`, `rouge1`/`rouge2`/`rougeL`/`rougeLsum`, or `acc` +
        `acc_norm`), `n`, and for generated tasks `unparsed` (fraction of answers with no label) where it applies.
    """
    spec = get_task(task)
    if len(dataset) == 0:
        raise ValueError(f"No rows to evaluate {spec.name} on.")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if spec.kind == "multiple_choice":
        items = map_for_scoring(dataset, spec.name, prompt=prompt, tokenizer=tokenizer)
        result = score_multiple_choice(model, tokenizer, items, batch_size=batch_size)
        return {"acc": result.acc, "acc_norm": result.acc_norm, "n": result.n}
    formatted = map_for_training(dataset, spec.name, prompt=prompt, tokenizer=tokenizer)
    prompts, references = formatted["prompt"], [ref.strip() for ref in formatted["completion"]]
    runs = generate_predictions(model, tokenizer, prompts, settings)
    if spec.kind == "classification":
        labels = CLASSIFICATION_LABELS.get(spec.name)
        if labels is None:
            raise ValueError(
                f"No answer labels known for classification task {spec.name!r}; "
                f"known: {sorted(CLASSIFICATION_LABELS)}."
            )
        per_run = []
        for outputs in runs:
            parsed = [extract_label(text, labels) for text in outputs]
            per_run.append(
                {
                    "macro_f1": macro_f1(parsed, references, labels),
                    "accuracy": accuracy(parsed, references),
                    "unparsed": sum(p is None for p in parsed) / len(parsed),
                }
            )
        metrics = average_over_runs(per_run)
    else:
        metrics = average_over_runs([rouge_scores([t.strip() for t in outputs], references) for outputs in runs])
    metrics["n"] = len(prompts)
    return metrics
