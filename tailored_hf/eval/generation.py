"""Generation and metrics for the domain tasks (ATP's protocol): ROUGE for summarisation, macro-F1 / accuracy for
classification-style answers.

ROUGE: `evaluate.load("rouge")` fetches its metric script from the Hub, which fails offline unless the script is
cached. We therefore call `rouge_score` directly with evaluate's defaults (`rouge_types=["rouge1", "rouge2", "rougeL",
"rougeLsum"]`, `use_stemmer=False`, the default tokenizer) and report the mean F-measure over examples. evaluate's
default `use_aggregator=True` reports the median of a bootstrap resampling of that mean (`BootstrapAggregator().mid`),
which differs from the plain mean only by resampling noise; the plain mean is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: evaluate's `rouge` defaults.
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
#: ATP's averaged ROUGE uses R1/R2/RL.
ATP_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
PUBMEDQA_LABELS = ("yes", "no", "maybe")
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class GenerationSettings:
    """
    Decoding settings. The defaults are ATP's sampling setup (do_sample, top_k 50, top_p 0.9, temperature 0.9,
    3 runs averaged); `GenerationSettings.greedy()` gives deterministic decoding.

    Args:
        max_new_tokens (`int`): Tokens to generate per prompt.
        do_sample (`bool`): Sample instead of greedy decoding.
        top_k (`int`): Top-k filter when sampling.
        top_p (`float`): Nucleus filter when sampling.
        temperature (`float`): Sampling temperature.
        num_runs (`int`): Independent generation runs (metrics are averaged over runs).
        batch_size (`int`): Prompts per `generate` call (left padded).
        seed (`int`): Seed of run 0 (run `r` uses `seed + r`).
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = True
    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 0.9
    num_runs: int = 3
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_runs < 1 or self.batch_size < 1:
            raise ValueError("`max_new_tokens`, `num_runs` and `batch_size` must be positive.")

    @classmethod
    def greedy(cls, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 8) -> GenerationSettings:
        """Deterministic decoding, one run."""
        return cls(max_new_tokens=max_new_tokens, do_sample=False, num_runs=1, batch_size=batch_size)


def generate_predictions(
    model, tokenizer, prompts: Sequence[str], settings: GenerationSettings | None = None
) -> list[list[str]]:
    """
    Generate a completion for every prompt, `settings.num_runs` times.

    Args:
        model (`PreTrainedModel`): Causal LM.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer (a pad token is borrowed from EOS if missing).
        prompts (`Sequence[str]`): Fully formatted prompts.
        settings ([`GenerationSettings`], *optional*): Decoding settings (default: ATP's sampling).

    Returns:
        `list[list[str]]`: `runs[r][i]` is run `r`'s completion of prompt `i` (new tokens only, special tokens
        skipped).
    """
    settings = settings or GenerationSettings()
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no pad or EOS token to pad a batch with.")
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    gen_kwargs: dict = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
    if settings.do_sample:
        gen_kwargs.update(top_k=settings.top_k, top_p=settings.top_p, temperature=settings.temperature)
    else:
        gen_kwargs.update(top_k=None, top_p=None, temperature=None)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    runs: list[list[str]] = []
    try:
        model.eval()
        for run in range(settings.num_runs):
            torch.manual_seed(settings.seed + run)
            outputs: list[str] = []
            for start in range(0, len(prompts), settings.batch_size):
                batch = tokenizer(
                    list(prompts[start : start + settings.batch_size]), return_tensors="pt", padding=True
                )
                batch = batch.to(device)
                with torch.inference_mode():
                    generated = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
                new_tokens = generated[:, batch["input_ids"].shape[1] :]
                outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            runs.append(outputs)
    finally:
        tokenizer.padding_side = padding_side
    return runs


def rouge_scores(
    predictions: Sequence[str], references: Sequence[str], rouge_types: Sequence[str] = ROUGE_TYPES
) -> dict[str, float]:
    """
    Mean ROUGE F-measures with `evaluate`'s rouge settings (see module docstring), in [0, 1].

    Args:
        predictions (`Sequence[str]`): Generated texts.
        references (`Sequence[str]`): One reference per prediction.
        rouge_types (`Sequence[str]`): ROUGE variants.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    scorer = rouge_scorer.RougeScorer(rouge_types=list(rouge_types), use_stemmer=False)
    totals = dict.fromkeys(rouge_types, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for key in rouge_types:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}


def extract_label(text: str, labels: Sequence[str] = PUBMEDQA_LABELS) -> str | None:
    """The first of `labels` (case-insensitive, whole word) that occurs in `text`, else `None`."""
    import re

    match = re.search(r"\b(" + "|".join(re.escape(label) for label in labels) + r")\b", text, flags=re.IGNORECASE)
    return match.group(1).lower() if match else None


def macro_f1(predictions: Sequence[str | None], references: Sequence[str], labels: Sequence[str]) -> float:
    """sklearn's macro-F1 over `labels` (unparseable predictions count as wrong for every class)."""
    from sklearn.metrics import f1_score

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references.")
    preds = [p if p is not None else "<none>" for p in predictions]
    return float(f1_score(list(references), preds, labels=list(labels), average="macro", zero_division=0))


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Fraction of exact matches."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    return sum(p == r for p, r in zip(predictions, references)) / len(predictions)


def average_over_runs(per_run: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average metric dicts of several generation runs (ATP averages 3 sampled runs)."""
    if not per_run:
        raise ValueError("No runs to average.")
    keys = per_run[0].keys()
    return {key: sum(run[key] for run in per_run) / len(per_run) for key in keys}
