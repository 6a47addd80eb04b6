"""Zero-shot multiple-choice scoring that reproduces lm-evaluation-harness 0.4.13 (`HFLM`, causal backend).

Every choice `i` of an item is scored as the summed log-probability of `continuations[i]` given `contexts[i]`:

- `acc` picks the choice with the highest summed log-likelihood,
- `acc_norm` divides each log-likelihood by the length in characters of the choice string first, where the choice
  string is the answer option as `doc_to_choice` returns it, i.e. without lm-eval's target delimiter (this is what
  lm-eval 0.4.13's `ConfigurableTask.process_results` does: `lls / len(choice)`, characters, not bytes),
- `acc_bytes` divides by the choice's length in UTF-8 bytes instead (lm-eval computes it too but does not report it
  for the stock tasks); for ASCII text the two coincide,
- both are averaged over items, with lm-eval's stderr of a mean (sample std with `n - 1`, over `sqrt(n)`).

Tokenization follows `TemplateLM._encode_pair`: trailing whitespace of the context moves onto the continuation, the
pair is encoded as a whole and the continuation tokens are `encode(context + continuation)[len(encode(context)):]`.
`HFLM` leaves `add_bos_token=None` by default, so `tokenizer.encode` uses the tokenizer's own default (for
SmolLM2/LLaMA-3-style tokenizers: no BOS). An empty context is replaced by the prefix token (BOS, else EOS). Inputs
longer than `max_length + 1` tokens are truncated from the left, as `HFLM._loglikelihood_tokens` does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: lm-eval's `HFLM._DEFAULT_MAX_LENGTH`, used when neither config nor tokenizer names a context length.
DEFAULT_MAX_LENGTH = 2048
#: Padded tokens per packed forward. Measured on SmolLM2-135M, 2 CPU cores, BoolQ: 4 rows (~600 tokens) per forward
#: run 3.6x faster than 32 rows; see `benchmarks/eval_dense.py --batch-tokens`.
DEFAULT_MAX_BATCH_TOKENS = 1024
#: Tokenizers without a length limit report this sentinel as `model_max_length` (transformers' VERY_LARGE_INTEGER).
TOKENIZER_INFINITY = int(1e30)
#: Config attributes holding a context length, in lm-eval's lookup order.
SEQLEN_CONFIG_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


@dataclass
class MultipleChoiceItemResult:
    """
    Per-item scores, kept for inspection.

    Args:
        gold (`int`): Index of the correct choice.
        loglikelihoods (`list[float]`): Summed continuation log-probability of each choice.
        char_lengths (`list[int]`): Character length of each choice string (the `acc_norm` denominator).
        byte_lengths (`list[int]`): UTF-8 byte length of each choice string (the `acc_bytes` denominator).
        pred (`int`): Argmax of `loglikelihoods`.
        pred_norm (`int`): Argmax of `loglikelihoods / char_lengths`.
        pred_bytes (`int`): Argmax of `loglikelihoods / byte_lengths`.
    """

    gold: int
    loglikelihoods: list[float]
    char_lengths: list[int]
    byte_lengths: list[int]
    pred: int
    pred_norm: int
    pred_bytes: int

    @property
    def correct(self) -> bool:
        return self.pred == self.gold

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.gold


@dataclass
class MultipleChoiceResult:
    """
    Aggregate multiple-choice scores.

    Args:
        acc (`float`): Mean accuracy of the raw log-likelihood argmax.
        acc_norm (`float`): Mean accuracy of the length-normalised argmax (lm-eval's `acc_norm`, characters).
        acc_bytes (`float`): Mean accuracy of the byte-length-normalised argmax.
        acc_stderr (`float`): Standard error of `acc` (lm-eval's `mean_stderr`).
        acc_norm_stderr (`float`): Standard error of `acc_norm`.
        n (`int`): Number of items.
        items (`list[MultipleChoiceItemResult]`): Per-item details in input order.
    """

    acc: float
    acc_norm: float
    acc_bytes: float
    acc_stderr: float
    acc_norm_stderr: float
    n: int
    items: list[MultipleChoiceItemResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, float]:
        """The aggregate numbers (no per-item details)."""
        return {
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "acc_bytes": self.acc_bytes,
            "acc_stderr": self.acc_stderr,
            "acc_norm_stderr": self.acc_norm_stderr,
            "n": self.n,
        }


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's stderr of a mean: sample standard deviation (`n - 1`) divided by `sqrt(n)`; NaN for `n < 2`."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def resolve_max_length(model, tokenizer) -> int:
    """The context length `HFLM` would use: config `n_positions`/`max_position_embeddings`/`n_ctx`, else the
    tokenizer's `model_max_length` unless unbounded, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in SEQLEN_CONFIG_ATTRS:
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max is not None and tok_max < TOKENIZER_INFINITY:
        return int(tok_max)
    return DEFAULT_MAX_LENGTH


def prefix_token_id(tokenizer) -> int:
    """The token `HFLM` conditions on when the context is empty: BOS if the tokenizer has one, else EOS."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token to condition an empty context on.")
    return tokenizer.eos_token_id


def _tok_encode(tokenizer, text: str, add_bos_token: bool | None, add_special_tokens: bool | None = None) -> list:
    # HFLM.tok_encode: explicit flag wins, then add_bos_token, else the tokenizer's default; a string that already
    # starts with the prefix token's text is encoded without special tokens.
    kwargs: dict[str, bool] = {}
    if add_special_tokens is not None:
        kwargs["add_special_tokens"] = add_special_tokens
    elif add_bos_token is not None:
        kwargs["add_special_tokens"] = add_bos_token
    if add_special_tokens is None:
        prefix_text = tokenizer.decode(prefix_token_id(tokenizer))
        if prefix_text and text.startswith(prefix_text):
            kwargs["add_special_tokens"] = False
    return tokenizer.encode(text, **kwargs)


def encode_pair(
    tokenizer, context: str, continuation: str, add_bos_token: bool | None = None
) -> tuple[list[int], list[int]]:
    """
    Tokenize a `(context, continuation)` request exactly as lm-eval's `TemplateLM.loglikelihood` does.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The tokenizer.
        context (`str`): Conditioning text (may be empty).
        continuation (`str`): Text to score.
        add_bos_token (`bool`, *optional*): HFLM's `add_bos_token` (`None` = the tokenizer's default).

    Returns:
        `tuple[list[int], list[int]]`: Context token ids and continuation token ids.
    """
    if context == "":
        continuation_enc = _tok_encode(tokenizer, continuation, add_bos_token, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if continuation_enc and continuation_enc[0] == prefix:
            return continuation_enc[:1], continuation_enc[1:]
        return [prefix], continuation_enc
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = _tok_encode(tokenizer, context + continuation, add_bos_token)
    context_enc = _tok_encode(tokenizer, context, add_bos_token)
    return context_enc, whole_enc[len(context_enc) :]


#: lm-eval's default `target_delimiter`, which the schema's continuations start with.
TARGET_DELIMITER = " "


def choice_strings(contexts: Sequence[str], continuations: Sequence[str]) -> list[str]:
    """
    The answer strings lm-eval normalises by when an item carries no explicit `choices`.

    For ordinary items these are the continuations without the leading target delimiter. For multiple-input items
    (WinoGrande's partial scoring: different contexts, one shared continuation) lm-eval's `doc_to_choice` returns the
    contexts, so those are used.
    """
    if len(set(continuations)) == 1 and len(set(contexts)) > 1:
        return list(contexts)
    return [c[len(TARGET_DELIMITER) :] if c.startswith(TARGET_DELIMITER) else c for c in continuations]


def _validate_item(item: Mapping[str, Any], index: int) -> tuple[list[str], list[str], int, list[str]]:
    try:
        contexts, continuations, gold = list(item["contexts"]), list(item["continuations"]), int(item["gold"])
    except KeyError as err:
        raise ValueError(f"Item {index} lacks key {err}; expected 'contexts', 'continuations' and 'gold'.") from None
    choices = item.get("choices")
    choices = list(choices) if choices is not None else choice_strings(contexts, continuations)
    if len(choices) != len(continuations):
        raise ValueError(f"Item {index} has {len(choices)} choices for {len(continuations)} continuations.")
    if len(contexts) != len(continuations) or not contexts:
        raise ValueError(
            f"Item {index} needs one context per continuation and at least one choice, got {len(contexts)} contexts "
            f"and {len(continuations)} continuations."
        )
    if not 0 <= gold < len(continuations):
        raise ValueError(f"Item {index} has gold index {gold} outside [0, {len(continuations)}).")
    return contexts, continuations, gold, choices


def _output_head(model):
    """(decoder, head) when logits can be computed on selected positions only, else None.

    PEFT / DDP wrappers are looked through: LoRA layers live inside the base model's modules, so its decoder runs them.
    """
    from ..arch import unwrap_model

    try:
        model = unwrap_model(model)
    except (TypeError, ValueError):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = getattr(model, "model", None)
    config = getattr(model, "config", None)
    # Architectures that post-process logits (soft-capping, scaling) go through the full forward instead.
    if head is None or decoder is None or getattr(config, "final_logit_softcapping", None) is not None:
        return None
    if getattr(config, "logit_scale", None) is not None:
        return None
    return decoder, head


def loglikelihood_tokens(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> list[float]:
    """
    Summed log-probabilities of token continuations, batched like `HFLM._loglikelihood_tokens`.

    Requests are left-truncated to `max_length + 1` tokens, deduplicated (two requests whose model inputs are equal,
    or one a prefix of the other within the sorted order, share one forward pass: e.g. BoolQ's one-token "yes"/"no"),
    sorted by decreasing length, right-padded and run `batch_size` at a time under `torch.inference_mode`. The output
    head is applied to the continuation positions only, which is exact and saves most of the vocabulary projection.

    Args:
        model (`PreTrainedModel`): Causal LM.
        requests (`Sequence[tuple[Sequence[int], Sequence[int]]]`): `(context_ids, continuation_ids)` pairs.
        batch_size (`int`): Sequences per forward pass.
        max_length (`int`): Model context length.

    Returns:
        `list[float]`: One log-likelihood per request, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    inputs: list[tuple[int, ...]] = []
    cont_lens: list[int] = []
    for context_enc, continuation_enc in requests:
        if not context_enc or not continuation_enc:
            raise ValueError("Every request needs at least one context token and one continuation token.")
        if len(continuation_enc) > max_length:
            raise ValueError(f"A continuation of {len(continuation_enc)} tokens exceeds max_length={max_length}.")
        whole = (list(context_enc) + list(continuation_enc))[-(max_length + 1) :]
        inputs.append(tuple(whole))
        cont_lens.append(len(continuation_enc))

    # One forward per distinct model input (the full sequence minus its last token); a request whose full sequence
    # is a prefix of a longer one's input is read from that longer forward.
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), inputs[i]))
    forwards: list[tuple[int, ...]] = []
    owner: dict[int, int] = {}
    by_input: dict[tuple[int, ...], int] = {}
    for i in order:
        full = inputs[i]
        key = full[:-1]
        if key in by_input:
            owner[i] = by_input[key]
            continue
        # Prefix sharing: the previous (longer or equal) forward contains this whole request.
        if forwards and len(forwards[-1]) >= len(full) and forwards[-1][: len(full)] == full:
            owner[i] = len(forwards) - 1
            continue
        by_input[key] = len(forwards)
        owner[i] = len(forwards)
        forwards.append(full)
    users: dict[int, list[int]] = {}
    for i, f in owner.items():
        users.setdefault(f, []).append(i)

    head_parts = _output_head(model)
    device = next(model.parameters()).device
    pad_id = 0
    results: list[float] = [0.0] * len(inputs)
    with torch.inference_mode():
        for start in range(0, len(forwards), batch_size):
            chunk = list(range(start, min(start + batch_size, len(forwards))))
            # A forward's input is its full sequence minus the last token (the longest user defines the sequence).
            seqs = [forwards[f][:-1] for f in chunk]
            width = max(len(s) for s in seqs)
            batch = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            for row, seq in enumerate(seqs):
                batch[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            batch = batch.to(device)
            rows, positions, targets, owners = [], [], [], []
            for row, f in enumerate(chunk):
                for i in users[f]:
                    n_in = len(inputs[i]) - 1
                    n_cont = min(cont_lens[i], n_in + 1)
                    pos = list(range(n_in - n_cont, n_in))
                    rows.extend([row] * n_cont)
                    positions.extend(pos)
                    targets.extend(inputs[i][-n_cont:])
                    owners.extend([i] * n_cont)
            rows_t = torch.tensor(rows, device=device)
            pos_t = torch.tensor(positions, device=device)
            if head_parts is not None:
                decoder, head = head_parts
                hidden = decoder(input_ids=batch).last_hidden_state
                logits = head(hidden[rows_t, pos_t])
            else:
                logits = model(input_ids=batch).logits[rows_t, pos_t]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            token_lp = logprobs.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).cpu()
            sums: dict[int, float] = {}
            for i, lp in zip(owners, token_lp.tolist()):
                sums[i] = sums.get(i, 0.0) + lp
            for i, total in sums.items():
                results[i] = total
    return results


def _normalise(lls: Sequence[float], lengths: Sequence[int]) -> list[float]:
    # numpy semantics of lm-eval's `lls / lengths`: x / 0 is +-inf (nan for 0 / 0).
    return [ll / n if n else (math.copysign(math.inf, ll) if ll else math.nan) for ll, n in zip(lls, lengths)]


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for j in range(n):
        if any(s[j] != first[j] for s in seqs[1:]):
            return j
    return n


def shared_prefix_length(fulls: Sequence[Sequence[int]]) -> int:
    """Tokens the packed scorer feeds once for all of an item's requests (`context + continuation` each): their
    common prefix, short of every request's last token (which must be predicted, not input)."""
    return min(_common_prefix_len(fulls), min(len(f) for f in fulls) - 1)


def packed_input_length(fulls: Sequence[Sequence[int]]) -> int:
    """Input tokens of one item's packed row: the shared prefix once, then each request's remaining tokens minus its
    last."""
    prefix = shared_prefix_length(fulls)
    return prefix + sum(len(f) - 1 - prefix for f in fulls)


def token_budget_chunks(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None) -> list[slice]:
    """Consecutive slices of rows sorted by decreasing length: at most `batch_size` rows, and (beyond the first row)
    at most `max_batch_tokens` padded tokens, i.e. `rows x longest row`."""
    chunks, start = [], 0
    while start < len(lengths):
        end, width = start + 1, lengths[start]
        while end < len(lengths) and end - start < batch_size:
            if max_batch_tokens is not None and (end - start + 1) * width > max_batch_tokens:
                break
            end += 1
        chunks.append(slice(start, end))
        start = end
    return chunks


def packed_loglikelihood_tokens(
    model,
    groups: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]],
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
) -> list[list[float]]:
    """
    Like [`loglikelihood_tokens`] but runs each group of requests (the choices of one item) as ONE packed sequence:
    the shared token prefix once, then every request's remaining tokens, with a 4D attention mask and position ids
    that make each request see exactly `prefix + its own tokens`. Mathematically identical to separate forwards (the
    same tokens at the same positions attend to the same keys); numerically equal up to float summation order
    (~1e-5 in log-likelihood). Saves re-encoding the context once per choice, which dominates multiple-choice cost.

    Groups whose packed length would exceed `max_length` fall back to [`loglikelihood_tokens`]. Batches hold at most
    `batch_size` packed rows and `max_batch_tokens` padded tokens: the 4D mask and attention scores grow with
    rows x width^2, and on CPU a few long rows per forward are faster than many (see `benchmarks/eval_dense.py`).

    Returns:
        `list[list[float]]`: Per group, one log-likelihood per request.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    results: list[list[float]] = [[0.0] * len(group) for group in groups]
    rows: list[tuple[int, list[int], list[int], list[list[int]]]] = []  # (group, tokens, positions, read maps)
    fallback: list[int] = []
    for g, group in enumerate(groups):
        fulls = [list(ctx) + list(cont) for ctx, cont in group]
        if not all(ctx and cont for ctx, cont in group):
            raise ValueError("Every request needs at least one context token and one continuation token.")
        p = shared_prefix_length(fulls)
        # Input tokens: the prefix, then each request's tokens after it minus its last (never fed to the model).
        tokens = fulls[0][:p]
        positions = list(range(p))
        read_maps = []
        for full in fulls:
            offset = len(tokens)
            rest = full[p:-1]
            tokens.extend(rest)
            positions.extend(range(p, p + len(rest)))
            # Row index of the hidden state that feeds full-sequence index q (q < p: shared prefix).
            read_maps.append([q if q < p else offset + q - p for q in range(len(full) - 1)])
        if max(len(f) for f in fulls) > max_length + 1 or len(tokens) > max_length:
            fallback.append(g)
            continue
        rows.append((g, tokens, positions, read_maps, p))
    if fallback:
        flat = [req for g in fallback for req in groups[g]]
        lls = loglikelihood_tokens(model, flat, batch_size=batch_size, max_length=max_length)
        k = 0
        for g in fallback:
            results[g] = lls[k : k + len(groups[g])]
            k += len(groups[g])

    head_parts = _output_head(model)
    device = next(model.parameters()).device
    attn_impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    rows.sort(key=lambda r: -len(r[1]))
    with torch.inference_mode():
        for span in token_budget_chunks([len(r[1]) for r in rows], batch_size, max_batch_tokens):
            chunk = rows[span]
            width = max(len(r[1]) for r in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            pos = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), 1, width, width), dtype=torch.bool)
            sel_rows, sel_pos, targets, owners = [], [], [], []
            for b, (g, tokens, positions, read_maps, p) in enumerate(chunk):
                n = len(tokens)
                ids[b, :n] = torch.tensor(tokens)
                pos[b, :n] = torch.tensor(positions)
                mask[b, 0, :p, :p] = torch.ones((p, p), dtype=torch.bool).tril()
                offset = p
                fulls = [list(ctx) + list(cont) for ctx, cont in groups[g]]
                for r, full in enumerate(fulls):
                    m = len(full) - 1 - p
                    block = slice(offset, offset + m)
                    mask[b, 0, block, :p] = True
                    mask[b, 0, block, block] = torch.ones((m, m), dtype=torch.bool).tril()
                    offset += m
                    n_cont = len(groups[g][r][1])
                    for q in range(len(full) - n_cont, len(full)):
                        sel_rows.append(b)
                        sel_pos.append(read_maps[r][q - 1])
                        targets.append(full[q])
                        owners.append((g, r))
                # Padding queries attend to themselves only (keeps softmax finite); nothing reads them.
                idx = torch.arange(n, width)
                mask[b, 0, idx, idx] = True
            if attn_impl == "eager":
                attention_mask = torch.zeros(mask.shape, dtype=model.dtype).masked_fill(
                    ~mask, torch.finfo(model.dtype).min
                )
            else:
                attention_mask = mask
            ids, pos, attention_mask = ids.to(device), pos.to(device), attention_mask.to(device)
            rows_t = torch.tensor(sel_rows, device=device)
            pos_t = torch.tensor(sel_pos, device=device)
            if head_parts is not None:
                decoder, head = head_parts
                hidden = decoder(input_ids=ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
                logits = head(hidden[rows_t, pos_t])
            else:
                logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=pos).logits[rows_t, pos_t]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            token_lp = logprobs.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).cpu()
            sums: dict[tuple[int, int], float] = {}
            for key, lp in zip(owners, token_lp.tolist()):
                sums[key] = sums.get(key, 0.0) + lp
            for (g, r), total in sums.items():
                results[g][r] = total
    return results


def _argmax(values: Sequence[float]) -> int:
    # numpy.argmax semantics (first maximum), as lm-eval uses.
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def score_multiple_choice(
    model,
    tokenizer,
    items: Iterable[Mapping[str, Any]],
    batch_size: int = 32,
    max_length: int | None = None,
    add_bos_token: bool | None = None,
    packed: bool = False,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
) -> MultipleChoiceResult:
    """
    Score multiple-choice items with lm-evaluation-harness's `acc` and `acc_norm`.

    Args:
        model (`PreTrainedModel`): Causal LM (evaluated in whatever mode it is in; call `model.eval()` first).
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        items (`Iterable[Mapping]`): Rows `{"contexts": list[str], "continuations": list[str], "gold": int}` where
            choice `i` is scored as log p(continuations[i] | contexts[i]) (a `datasets.Dataset` works too). An optional
            `"choices": list[str]` gives the strings `acc_norm` normalises by (default: see [`choice_strings`]).
        batch_size (`int`): Sequences per forward pass.
        max_length (`int`, *optional*): Context length; defaults to the one `HFLM` derives from the config.
        add_bos_token (`bool`, *optional*): HFLM's `add_bos_token`; `None` keeps the tokenizer's default like HFLM.
        packed (`bool`): Score all choices of an item in one packed sequence sharing the context (see
            [`packed_loglikelihood_tokens`]): about twice as fast on 4-way tasks, equal to the default path up to float
            noise. The default (`False`) batches separate `(context, continuation)` sequences exactly like lm-eval.
        max_batch_tokens (`int`, *optional*): With `packed`, cap on padded tokens per forward (`None`: no cap).

    Returns:
        [`MultipleChoiceResult`]
    """
    parsed = [_validate_item(item, i) for i, item in enumerate(items)]
    if not parsed:
        raise ValueError("`items` is empty.")
    if max_length is None:
        max_length = resolve_max_length(model, tokenizer)
    groups = [
        [encode_pair(tokenizer, ctx, cont, add_bos_token) for ctx, cont in zip(contexts, continuations, strict=True)]
        for contexts, continuations, _, _ in parsed
    ]
    if packed:
        packed_lls = packed_loglikelihood_tokens(model, groups, batch_size, max_length, max_batch_tokens)
        lls = [ll for group in packed_lls for ll in group]
    else:
        requests = [req for group in groups for req in group]
        lls = loglikelihood_tokens(model, requests, batch_size=batch_size, max_length=max_length)

    item_results: list[MultipleChoiceItemResult] = []
    offset = 0
    for _, continuations, gold, choices in parsed:
        item_lls = lls[offset : offset + len(continuations)]
        offset += len(continuations)
        char_lengths = [len(c) for c in choices]
        byte_lengths = [len(c.encode("utf-8")) for c in choices]
        item_results.append(
            MultipleChoiceItemResult(
                gold=gold,
                loglikelihoods=item_lls,
                char_lengths=char_lengths,
                byte_lengths=byte_lengths,
                pred=_argmax(item_lls),
                pred_norm=_argmax(_normalise(item_lls, char_lengths)),
                pred_bytes=_argmax(_normalise(item_lls, byte_lengths)),
            )
        )
    acc = [float(r.correct) for r in item_results]
    acc_norm = [float(r.correct_norm) for r in item_results]
    acc_bytes = [float(r.pred_bytes == r.gold) for r in item_results]
    return MultipleChoiceResult(
        acc=sum(acc) / len(acc),
        acc_norm=sum(acc_norm) / len(acc_norm),
        acc_bytes=sum(acc_bytes) / len(acc_bytes),
        acc_stderr=mean_stderr(acc),
        acc_norm_stderr=mean_stderr(acc_norm),
        n=len(item_results),
        items=item_results,
    )
