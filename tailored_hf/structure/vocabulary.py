"""Task vocabulary: keep only the tokens a task's text uses.

A small model spends a large share of its parameters on the vocabulary (SmolLM2-135M: 28.3 M of 134.5 M in the tied
embedding), and a task's text uses a fraction of it. Trimming drops embedding and LM-head rows (a `PruningPlan` with
`tokens`, applied by `apply_plan`) and rewrites the byte-level BPE tokenizer to match, so that:

- a text whose tokens were all kept is tokenized exactly as before (same pieces, new ids);
- any other text is still tokenized, into smaller kept pieces (every base token is kept), never into unknowns.

```python
>>> tokens = select_tokens(tokenizer, train_texts, coverage=0.999)
>>> model, tokenizer = trim_vocabulary(model, tokenizer, tokens)  # or apply_plan + trim_tokenizer
```

Choose the tokens from training text only, so that evaluation text is tokenized as any unseen text would be.
"""

from __future__ import annotations

import json
import tempfile
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id")
TOKENIZE_BATCH = 256


def _bpe_model(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("Vocabulary trimming needs a fast (`tokenizers`) tokenizer; load it with `use_fast=True`.")
    data = json.loads(backend.to_str())
    if data["model"].get("type") != "BPE":
        raise ValueError(
            f"Vocabulary trimming supports BPE tokenizers (GPT-2, LLaMA, SmolLM); this one is {data['model']['type']}."
        )
    return data


def _merge_pair(merge: str | Sequence[str]) -> tuple[str, str]:
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    left, right = merge
    return left, right


def _merge_parents(model: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Every merge that produces a token, by token."""
    parents: dict[str, list[tuple[str, str]]] = {}
    for merge in model["merges"]:
        left, right = _merge_pair(merge)
        parents.setdefault(left + right, []).append((left, right))
    return parents


def token_counts(tokenizer: Any, texts: Iterable[str]) -> Counter[int]:
    """How often each token id occurs when `texts` are tokenized (no special tokens added)."""
    counts: Counter[int] = Counter()
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == TOKENIZE_BATCH:
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                counts.update(ids)
            batch = []
    if batch:
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def select_tokens(
    tokenizer: Any,
    texts: Iterable[str] | None = None,
    coverage: float = 1.0,
    max_tokens: int | None = None,
    counts: Counter[int] | None = None,
) -> list[int]:
    """
    The token ids to keep for a task: the most frequent tokens of `texts`, plus everything the tokenizer needs.

    Always kept: added and special tokens, every base token (one no merge produces: the byte alphabet of byte-level
    BPE, byte-fallback tokens), and the merge ancestors of every kept token (the BPE must be able to build it).

    Args:
        tokenizer: a fast BPE tokenizer.
        texts (`Iterable[str]`, *optional*): the task's text (its train split; not the evaluation text).
        coverage (`float`, defaults to 1.0): keep the most frequent tokens until they make up this share of the
            token occurrences in `texts` (1.0: every token that occurs).
        max_tokens (`int`, *optional*): stop adding frequent tokens before the kept set (base, special tokens and
            ancestors included) would exceed this size.
        counts (`Counter[int]`, *optional*): precomputed `token_counts(tokenizer, texts)` instead of `texts`.

    Returns:
        `list[int]`: sorted token ids.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}.")
    if (texts is None) == (counts is None):
        raise ValueError("Pass exactly one of `texts` and `counts`.")
    model = _bpe_model(tokenizer)["model"]
    counts = token_counts(tokenizer, texts) if counts is None else counts
    vocab: dict[str, int] = model["vocab"]
    id_to_token = {i: t for t, i in vocab.items()}
    parents = _merge_parents(model)

    kept: set[str] = {t for t in vocab if t not in parents}
    kept |= {str(t) for t in tokenizer.all_special_tokens if t in vocab}
    added = {i for t, i in tokenizer.get_added_vocab().items() if t not in vocab}  # special tokens outside the BPE
    if max_tokens is not None and len(kept) + len(added) > max_tokens:
        raise ValueError(
            f"max_tokens={max_tokens} is below the {len(kept) + len(added)} base and special tokens the tokenizer "
            "needs."
        )

    def with_ancestors(token: str) -> set[str]:
        closure, stack = set(), [token]
        while stack:
            current = stack.pop()
            if current in kept or current in closure:
                continue
            closure.add(current)
            for left, right in parents.get(current, ()):
                stack += [left, right]
        return closure

    total = sum(counts.values())
    covered = sum(count for i, count in counts.items() if id_to_token.get(i) in kept)
    for token_id, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if total and covered >= coverage * total:
            break
        token = id_to_token.get(token_id)
        if token is None or token in kept:
            continue
        closure = with_ancestors(token)
        if max_tokens is not None and len(kept) + len(added) + len(closure) > max_tokens:
            break
        kept |= closure
        covered += sum(counts.get(vocab[t], 0) for t in closure)  # ancestors that occur count too
    return sorted({vocab[t] for t in kept} | added)


def kept_share(counts: Counter[int], tokens: Iterable[int]) -> float:
    """The share of the token occurrences in `counts` (`token_counts` of some text) whose token is in `tokens`: how
    much of that text a tokenizer trimmed to `tokens` still tokenizes into the same pieces (1.0 for no text)."""
    kept = set(tokens)
    total = sum(counts.values())
    return sum(count for token, count in counts.items() if token in kept) / total if total else 1.0


def held_out_share(tokenizer: Any, counts: Counter[int], held_out: Counter[int], coverage: float) -> float:
    """`kept_share` of the `held_out` text's token counts under the vocabulary `select_tokens` chooses from `counts` at
    `coverage`: how well a vocabulary carries over to text it was not counted on."""
    return kept_share(held_out, select_tokens(tokenizer, counts=counts, coverage=coverage))


def new_token_id(tokens: Sequence[int], old_id: int) -> int:
    """The id that source token `old_id` has after trimming to `tokens` (sorted kept ids); `ValueError` if dropped."""
    position = bisect_left(tokens, old_id)
    if position == len(tokens) or tokens[position] != old_id:
        raise ValueError(f"Token id {old_id} is used by the config or tokenizer but is not among the kept tokens.")
    return position


def remap_special_token_ids(config: Any, tokens: Sequence[int]) -> None:
    """Rewrite `bos/eos/pad/...` token ids of a model or generation config for a trimmed vocabulary, in place."""
    for name in TOKEN_ID_FIELDS:
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            setattr(config, name, [new_token_id(tokens, v) for v in value])
        else:
            setattr(config, name, new_token_id(tokens, int(value)))


def _remap_ids_in(node: Any, tokens: Sequence[int]) -> Any:
    """Token ids inside a post-processor's JSON (`TemplateProcessing` `ids`, `RobertaProcessing` `sep`/`cls`)."""
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                result[key] = [new_token_id(tokens, v) for v in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                result[key] = [value[0], new_token_id(tokens, value[1])]
            else:
                result[key] = _remap_ids_in(value, tokens)
        return result
    if isinstance(node, list):
        return [_remap_ids_in(value, tokens) for value in node]
    return node


def trim_tokenizer(tokenizer: Any, tokens: Sequence[int]) -> Any:
    """
    A copy of `tokenizer` whose vocabulary is `tokens` (sorted source ids; token `tokens[i]` gets id `i`).

    Merges whose result is dropped are removed, so text is never tokenized into a dropped token; every kept token must
    have its merge ancestors kept (as `select_tokens` ensures). Special tokens, normalizer, pre-tokenizer, decoder
    and chat template are unchanged.
    """
    tokens = list(tokens)
    if tokens != sorted(set(tokens)):
        raise ValueError("tokens must be sorted, unique token ids.")
    data = _bpe_model(tokenizer)
    model = data["model"]
    id_to_token = {i: t for t, i in model["vocab"].items()}
    added_ids = {entry["id"] for entry in data.get("added_tokens", [])}
    missing = [i for i in tokens if i not in id_to_token and i not in added_ids]
    if missing:
        raise ValueError(f"Token ids {missing[:5]} are not in the tokenizer's vocabulary.")
    kept = {id_to_token[i] for i in tokens if i in id_to_token}
    parents = _merge_parents(model)
    orphans = [t for t in kept if t in parents and not any(a in kept and b in kept for a, b in parents[t])]
    if orphans:
        raise ValueError(
            f"Kept tokens {orphans[:5]} cannot be built: none of their merges has both parts kept. Select tokens with "
            "`select_tokens`, which keeps every kept token's merge ancestors."
        )
    model["vocab"] = {id_to_token[old]: new for new, old in enumerate(tokens) if old in id_to_token}
    model["merges"] = [
        merge for merge in model["merges"] if {*_merge_pair(merge), "".join(_merge_pair(merge))} <= kept
    ]
    added, kept_ids = [], set(tokens)
    for entry in data.get("added_tokens", []):
        if entry["id"] not in kept_ids:
            raise ValueError(f"Added token {entry['content']!r} (id {entry['id']}) must be kept.")
        added.append({**entry, "id": new_token_id(tokens, entry["id"])})
    data["added_tokens"] = added
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_ids_in(data["post_processor"], tokens)

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        config_path = Path(directory, "tokenizer_config.json")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {
                str(new_token_id(tokens, int(i))): entry for i, entry in config["added_tokens_decoder"].items()
            }
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        Path(directory, "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        for stale in ("vocab.json", "merges.txt", "added_tokens.json"):  # slow-tokenizer files would disagree
            Path(directory, stale).unlink(missing_ok=True)
        trimmed = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is not None and trimmed.pad_token is None:
        trimmed.pad_token = tokenizer.pad_token
    trimmed.padding_side = tokenizer.padding_side
    return trimmed


def remaining_sparsity(target_sparsity: float, dense_params: int, trimmed_params: int) -> float:
    """The share of a vocabulary-trimmed model (`trimmed_params`) that a structural method must remove so that
    `target_sparsity` of the dense model's parameters (`dense_params`) are gone in all.

    Raises:
        `ValueError`: the trim alone already removes `target_sparsity` or more.
    """
    remaining = (target_sparsity * dense_params - (dense_params - trimmed_params)) / trimmed_params
    if remaining <= 0:
        raise ValueError(
            f"The task vocabulary alone removes {1 - trimmed_params / dense_params:.1%} of the parameters, at least "
            f"target_sparsity={target_sparsity}: raise target_sparsity or keep more of the vocabulary."
        )
    return remaining


def trim_vocabulary(model: nn.Module, tokenizer: Any, tokens: Sequence[int]) -> tuple[nn.Module, Any]:
    """Trim `model` (embedding and LM-head rows, special token ids) and `tokenizer` to `tokens`, returning both.

    The model is pruned in place by `apply_plan` with a vocabulary-only plan, which composes with any structural
    plan applied before or after (the saved `pruning_plan.json` records both).
    """
    from .plan import PruningPlan
    from .prune import apply_plan

    plan = PruningPlan.dense(model)
    plan.tokens = list(tokens)
    plan.metadata = {"vocabulary": {"kept": len(plan.tokens), "source": plan.source.vocab_size}}
    apply_plan(model, plan)
    return model, trim_tokenizer(tokenizer, tokens)
