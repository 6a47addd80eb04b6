"""Perplexity on WikiText-2 and PTB under two protocols.

(a) LLM-Pruner's token perplexity (`LLMPruner/evaluator/ppl.py::PPLMetric` with `LLMPruner/datasets/ppl_dataset.py`,
    the same protocol Wanda/SparseGPT use): the evaluation texts are joined with `"\\n\\n"` and tokenized once (with
    the tokenizer's default special tokens), cut into non-overlapping windows of `seq_len` tokens (the remainder is
    dropped), every window is run on its own, and the perplexity is `exp(mean NLL)` over all predicted tokens
    (`seq_len - 1` per window). WikiText-2 uses the `text` rows of `wikitext-2-raw-v1` test; PTB uses
    `ptb_text_only`'s validation `sentence` column, i.e. each line of `ptb.valid.txt` stripped, joined with
    `"\\n\\n"` too (LLM-Pruner's `process_data(test_data, tokenizer, seq_len, 'sentence')`).
(b) lm-evaluation-harness's `wikitext` task (rolling log-likelihood per document, `word_perplexity`,
    `byte_perplexity`, `bits_per_byte`), run through lm-eval itself via [`evaluate_with_lm_eval`].
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .lm_eval_bridge import WIKITEXT_ROWS_FILE, WIKITEXT_TASK, evaluate_with_lm_eval

logger = logging.getLogger(__name__)

#: LLM-Pruner's default evaluation window (`--max_seq_len 128`).
DEFAULT_SEQ_LEN = 128
PTB_VALID_FILE = "lm/ptb/ptb.valid.txt"
#: LLM-Pruner joins evaluation rows with a blank line.
JOIN_SEPARATOR = "\n\n"
PPL_DATASETS = ("wikitext2", "ptb")


@dataclass
class PerplexityResult:
    """
    Token perplexity under LLM-Pruner's protocol.

    Args:
        perplexity (`float`): `exp(mean NLL)` over all predicted tokens.
        nll (`float`): Mean negative log-likelihood (nats per token).
        n_windows (`int`): Windows evaluated.
        n_tokens (`int`): Predicted tokens (`n_windows * (seq_len - 1)`).
        seq_len (`int`): Window length.
    """

    perplexity: float
    nll: float
    n_windows: int
    n_tokens: int
    seq_len: int


def load_ppl_text(dataset: str, data_dir: str | os.PathLike) -> str:
    """
    The evaluation text LLM-Pruner tokenizes for `dataset` (`"wikitext2"` or `"ptb"`), from local files.

    Args:
        dataset (`str`): `"wikitext2"` (wikitext-2-raw-v1 test rows) or `"ptb"` (Mikolov PTB validation).
        data_dir (`str` or `os.PathLike`): Local data directory holding `lm/wikitext2/` and `lm/ptb/`.
    """
    data_dir = Path(data_dir)
    if dataset == "wikitext2":
        rows = json.loads((data_dir / WIKITEXT_ROWS_FILE).read_text(encoding="utf-8"))
        return JOIN_SEPARATOR.join(rows)
    if dataset == "ptb":
        lines = (data_dir / PTB_VALID_FILE).read_text(encoding="utf-8").splitlines()
        # ptb_text_only yields `line.strip()` per line as `sentence`.
        return JOIN_SEPARATOR.join(line.strip() for line in lines)
    raise ValueError(f"Unknown perplexity dataset {dataset!r}; expected one of {PPL_DATASETS}.")


def token_perplexity(
    model,
    input_ids: torch.Tensor,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> PerplexityResult:
    """
    LLM-Pruner's `PPLMetric` on an already tokenized stream: non-overlapping `seq_len` windows, exp(mean NLL).

    Args:
        model (`PreTrainedModel`): Causal LM.
        input_ids (`torch.Tensor`): 1-D token stream.
        seq_len (`int`): Window length.
        batch_size (`int`): Windows per forward pass.
        max_windows (`int`, *optional*): Evaluate only the first windows (for speed).
    """
    if seq_len < 2:
        raise ValueError(f"`seq_len` must be >= 2, got {seq_len}.")
    input_ids = input_ids.reshape(-1)
    n_windows = input_ids.numel() // seq_len
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"The text has {input_ids.numel()} tokens, fewer than one window of {seq_len}.")
    windows = input_ids[: n_windows * seq_len].reshape(n_windows, seq_len)
    device = next(model.parameters()).device
    total_nll = 0.0
    with torch.inference_mode():
        for start in range(0, n_windows, batch_size):
            batch = windows[start : start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += nll.item()
    n_tokens = n_windows * (seq_len - 1)
    mean_nll = total_nll / n_tokens
    return PerplexityResult(
        perplexity=math.exp(mean_nll), nll=mean_nll, n_windows=n_windows, n_tokens=n_tokens, seq_len=seq_len
    )


def llm_pruner_perplexity(
    model,
    tokenizer,
    data_dir: str | os.PathLike,
    datasets: tuple[str, ...] = PPL_DATASETS,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> dict[str, PerplexityResult]:
    """
    WikiText-2 / PTB perplexity exactly as LLM-Pruner computes it (see the module docstring).

    Args:
        model (`PreTrainedModel`): Causal LM.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer (encoded with its default special tokens, as
            LLM-Pruner's `tokenizer(text, return_tensors="pt")` does).
        data_dir (`str` or `os.PathLike`): Local data directory.
        datasets (`tuple[str, ...]`): Subset of `("wikitext2", "ptb")`.
        seq_len (`int`): Window length (LLM-Pruner's default 128).
        batch_size (`int`): Windows per forward pass.
        max_windows (`int`, *optional*): Cap on windows per dataset (for speed; the full sets have ~2.3k/~0.9k).

    Returns:
        `dict[str, PerplexityResult]`
    """
    results = {}
    for name in datasets:
        text = load_ppl_text(name, data_dir)
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        results[name] = token_perplexity(model, ids, seq_len=seq_len, batch_size=batch_size, max_windows=max_windows)
        logger.info("%s perplexity %.3f over %d windows", name, results[name].perplexity, results[name].n_windows)
    return results


def lm_eval_wikitext_perplexity(
    model,
    tokenizer,
    data_dir: str | os.PathLike,
    limit: int | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
) -> dict[str, float]:
    """
    lm-evaluation-harness's `wikitext` task (document-level wikitext-2-raw-v1 test, rolling log-likelihood) run by
    lm-eval itself on the local rows (documents rebuilt by [`wikitext_documents`]).

    Args:
        model (`PreTrainedModel`): Causal LM.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        data_dir (`str` or `os.PathLike`): Local data directory.
        limit (`int`, *optional*): First N documents (62 in total).
        batch_size (`int`): Rolling windows per forward pass.
        max_length (`int`, *optional*): Rolling window length (default: the model's context length).

    Returns:
        `dict[str, float]`: `word_perplexity`, `byte_perplexity`, `bits_per_byte` and `n` (documents).
    """
    out = evaluate_with_lm_eval(
        model,
        tokenizer,
        [WIKITEXT_TASK],
        data_dir,
        limit=limit,
        batch_size=batch_size,
        max_length=max_length,
        bootstrap_iters=0,
    )[WIKITEXT_TASK]
    return {key: out[key] for key in ("word_perplexity", "byte_perplexity", "bits_per_byte", "n")}
