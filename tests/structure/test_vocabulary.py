"""Task vocabulary: token selection, BPE tokenizer trimming, embedding / LM-head rows, plans, saving, optimizers."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tailored_hf import apply_plan, load_model, save_pruned
from tailored_hf.data import label_free_texts, load_task_split
from tailored_hf.structure import PLAN_ATTRIBUTE, PruningPlan, count_parameters
from tailored_hf.structure.vocabulary import (
    kept_share,
    new_token_id,
    select_tokens,
    token_counts,
    trim_tokenizer,
    trim_vocabulary,
)

from ..conftest import BPE_SPECIAL_TOKENS as SPECIAL
from ..conftest import make_tiny_model, train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Real PIQA text (the packaged subset): the train rows a vocabulary is chosen from, validation rows unseen."""
    return {split: label_free_texts(load_task_split("piqa", split), "piqa") for split in ("train", "validation")}


@pytest.fixture(scope="module")
def bpe(texts):
    """A byte-level BPE trained on other text (ARC-Easy), so PIQA uses only part of its vocabulary."""
    return train_bpe_tokenizer(
        label_free_texts(load_task_split("arc_easy", "train"), "arc_easy") + texts["train"][:20]
    )


def model_for(tokenizer, tied: bool = True):
    model = make_tiny_model("llama", tied=tied, vocab_size=len(tokenizer))
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def bpe_model(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]


def test_selection_keeps_base_special_and_merge_ancestors(bpe, texts):
    tokens = select_tokens(bpe, texts["train"][:40], coverage=0.9)
    vocab = bpe_model(bpe)["vocab"]
    id_to_token = {i: t for t, i in vocab.items()}
    kept = {id_to_token[i] for i in tokens}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in bpe_model(bpe)["merges"]]
    produced = {a + b: (a, b) for a, b in merges}
    assert tokens == sorted(tokens) and len(tokens) < len(vocab)
    assert set(SPECIAL) <= kept
    assert {t for t in vocab if t not in produced} <= kept  # the byte alphabet: any text stays tokenizable
    for token in kept & set(produced):
        assert set(produced[token]) <= kept, token


def test_coverage_and_max_tokens(bpe, texts):
    counts = token_counts(bpe, texts["train"])
    everything = select_tokens(bpe, counts=counts)
    assert {i for i in counts} <= set(everything)
    smaller = select_tokens(bpe, counts=counts, coverage=0.8)
    assert set(smaller) < set(everything)
    capped = select_tokens(bpe, counts=counts, max_tokens=len(smaller) - 5)
    assert len(capped) <= len(smaller) - 5
    with pytest.raises(ValueError, match="coverage"):
        select_tokens(bpe, counts=counts, coverage=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        select_tokens(bpe)
    with pytest.raises(ValueError, match="max_tokens"):
        select_tokens(bpe, counts=counts, max_tokens=10)


def test_kept_share_counts_occurrences(bpe, texts):
    """`kept_share`: the share of token occurrences kept; at least the coverage on the counted text itself."""
    assert kept_share(Counter({1: 3, 2: 1}), [1]) == 0.75
    assert kept_share(Counter(), [1]) == 1.0
    counts = token_counts(bpe, texts["train"])
    assert kept_share(counts, select_tokens(bpe, counts=counts, coverage=0.8)) >= 0.8
    assert kept_share(counts, select_tokens(bpe, counts=counts)) == 1.0


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_trimmed_model_and_tokenizer_match_the_original(bpe, texts, tied):
    model = model_for(bpe, tied)
    tokens = select_tokens(bpe, texts["train"], coverage=0.95)
    kept = set(tokens)
    originals = {text: bpe(text, add_special_tokens=False)["input_ids"] for text in texts["validation"]}
    with torch.no_grad():
        reference = {text: model(torch.tensor([ids])).logits[0] for text, ids in list(originals.items())[:8]}

    model, trimmed = trim_vocabulary(model, bpe, tokens)

    assert len(trimmed) == len(tokens) == model.config.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == len(tokens)
    assert model.get_output_embeddings().weight.shape[0] == len(tokens)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert model.config.eos_token_id == new_token_id(tokens, bpe.eos_token_id) == trimmed.eos_token_id
    assert model.config.pad_token_id == trimmed.pad_token_id
    assert model.generation_config.eos_token_id == trimmed.eos_token_id
    assert trimmed.convert_ids_to_tokens(trimmed.eos_token_id) == SPECIAL[0]
    same = 0
    for text, ids in originals.items():
        new_ids = trimmed(text, add_special_tokens=False)["input_ids"]
        assert max(new_ids) < len(tokens)
        assert trimmed.decode(new_ids) == bpe.decode(ids)  # nothing is lost, whatever the vocabulary
        if set(ids) <= kept:  # every piece kept: the very same pieces
            assert [tokens[i] for i in new_ids] == ids
            same += 1
        else:
            assert len(new_ids) >= len(ids)  # dropped tokens come back as kept pieces, none longer
    assert 0 < same < len(originals)
    columns = torch.tensor(tokens)
    with torch.no_grad():
        for text, logits in reference.items():
            if set(originals[text]) <= kept:
                new_ids = torch.tensor([[new_token_id(tokens, i) for i in originals[text]]])
                torch.testing.assert_close(model(new_ids).logits[0], logits[:, columns])


def test_save_reload_records_the_vocabulary_in_the_plan(bpe, texts, tmp_path):
    model = model_for(bpe)
    dense_params = count_parameters(model)
    tokens = select_tokens(bpe, texts["train"][:40])
    model, trimmed = trim_vocabulary(model, bpe, tokens)
    save_pruned(model, tmp_path / "out", tokenizer=trimmed)

    reloaded, tokenizer = load_model(str(tmp_path / "out"))
    plan = getattr(reloaded, PLAN_ATTRIBUTE)
    assert plan.tokens == tokens and plan.prunes_vocabulary
    assert plan.source.vocab_size == len(bpe) and plan.pruned_geometry().vocab_size == len(tokens)
    assert plan.num_parameters()["dense"] == dense_params
    assert plan.num_parameters()["pruned"] == count_parameters(reloaded) < dense_params
    assert reloaded.config.vocab_size == len(tokens)
    text = texts["validation"][0]
    assert tokenizer(text)["input_ids"] == trimmed(text)["input_ids"]
    ids = torch.tensor([trimmed(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert PruningPlan.load(tmp_path / "out").tokens == tokens


def structural_plan(model) -> PruningPlan:
    """Drop one query head per KV group in layer 0 and half the FFN channels of layer 1."""
    plan = PruningPlan.dense(model)
    plan.layers[0].heads = [0, 1, 3, 4]
    plan.layers[1].ffn = plan.layers[1].ffn[::2]
    return plan


@pytest.mark.parametrize("vocabulary_first", [True, False], ids=["vocabulary-first", "structure-first"])
def test_vocabulary_composes_with_structural_pruning(bpe, texts, tmp_path, vocabulary_first):
    model = model_for(bpe)
    dense_params = count_parameters(model)
    tokens = select_tokens(bpe, texts["train"][:40])
    if vocabulary_first:
        model, trimmed = trim_vocabulary(model, bpe, tokens)
        apply_plan(model, structural_plan(model))
    else:
        apply_plan(model, structural_plan(model))
        model, trimmed = trim_vocabulary(model, bpe, tokens)
    plan = getattr(model, PLAN_ATTRIBUTE)
    assert plan.tokens == tokens and plan.layers[0].heads == [0, 1, 3, 4]
    assert plan.source.vocab_size == len(bpe)
    assert plan.num_parameters() == {
        "dense": dense_params,
        "pruned": count_parameters(model),
        "removed": dense_params - count_parameters(model),
        "sparsity": 1 - count_parameters(model) / dense_params,
    }
    save_pruned(model, tmp_path / "out", tokenizer=trimmed)
    reloaded, _ = load_model(str(tmp_path / "out"))
    ids = torch.tensor([trimmed(texts["validation"][1])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_optimizer_follows_hidden_and_vocabulary_slices_of_one_tensor(bpe, texts):
    """The tied embedding is sliced twice by one plan (hidden channels, then rows); the optimizer must end up with
    the model's final parameter and state of its final shape, not an intermediate copy."""
    model = model_for(bpe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([bpe(texts["train"][0])["input_ids"]])
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    plan = PruningPlan.dense(model)
    plan.hidden = plan.hidden[::2]
    plan.tokens = select_tokens(bpe, texts["train"][:40])
    apply_plan(model, plan, optimizer=optimizer)
    params = {id(p): p for p in model.parameters()}
    listed = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(id(p) in params for p in listed)
    embedding = model.get_input_embeddings().weight
    assert optimizer.state[embedding]["exp_avg"].shape == embedding.shape == (len(plan.tokens), len(plan.hidden))
    optimizer.zero_grad()
    new_ids = torch.tensor([[1, 2, 3, 4]])
    model(new_ids, labels=new_ids).loss.backward()
    optimizer.step()  # shapes agree: the step runs


def test_special_tokens_added_outside_the_bpe_vocabulary_are_kept(texts):
    """Added tokens may live outside the BPE model's vocabulary (LLaMA-3's specials do): kept, renumbered, usable."""
    tokenizer = train_bpe_tokenizer(texts["train"][:200], vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    extra = tokenizer.convert_tokens_to_ids("<|extra|>")
    assert extra == 400 and "<|extra|>" not in bpe_model(tokenizer)["vocab"]
    model = model_for(tokenizer)
    tokens = select_tokens(tokenizer, texts["train"][:20], coverage=0.8)
    assert extra in tokens
    model, trimmed = trim_vocabulary(model, tokenizer, tokens)
    text = "<|extra|>" + texts["train"][0]
    ids = trimmed(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == len(tokens) - 1 == trimmed.convert_tokens_to_ids("<|extra|>")
    assert model.config.vocab_size == len(trimmed) == len(tokens)
    assert trimmed.decode(ids) == text


def test_errors_name_the_problem(bpe, texts, tokenizer):
    with pytest.raises(ValueError, match="BPE"):
        select_tokens(tokenizer, ["w1 w2"])  # the word-level fixture
    vocab = bpe_model(bpe)["vocab"]
    merged = max((t for t in vocab if t not in SPECIAL), key=len)  # a merged token, its ancestors not kept
    tokens = sorted({vocab[t] for t in vocab if len(t) == 1} | {vocab[t] for t in SPECIAL} | {vocab[merged]})
    with pytest.raises(ValueError, match="cannot be built"):
        trim_tokenizer(bpe, tokens)
    without_eos = [i for i in select_tokens(bpe, texts["train"][:10]) if i != bpe.eos_token_id]
    with pytest.raises(ValueError, match="not among the kept tokens"):
        trim_vocabulary(model_for(bpe), bpe, without_eos)
    with pytest.raises(ValueError, match="sorted"):
        trim_tokenizer(bpe, [5, 3])


@pytest.mark.slow
def test_smollm2_task_vocabulary(smollm2, texts, tmp_path):
    """The real tokenizer (49,152 tokens, 48,900 merges): PIQA's vocabulary, exact logits, save and reload."""
    import copy

    model, tokenizer = copy.deepcopy(smollm2[0]), smollm2[1]
    tokens = select_tokens(tokenizer, texts["train"])
    kept = set(tokens)
    text = next(t for t in texts["validation"] if set(tokenizer(t)["input_ids"]) <= kept)
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0][:, torch.tensor(tokens)]
    model, trimmed = trim_vocabulary(model, tokenizer, tokens)
    assert [tokens[i] for i in trimmed(text)["input_ids"]] == ids
    assert count_parameters(model) == 134_515_008 - (49_152 - len(tokens)) * 576
    assert trimmed.apply_chat_template([{"role": "user", "content": text}], tokenize=False) == (
        tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([trimmed(text)["input_ids"]])).logits[0], reference)
    save_pruned(model, tmp_path / "piqa", tokenizer=trimmed)
    reloaded, reloaded_tokenizer = load_model(str(tmp_path / "piqa"))
    assert reloaded.config.vocab_size == len(tokens) and type(reloaded).__name__ == "LlamaForCausalLM"
    assert reloaded_tokenizer(text)["input_ids"] == trimmed(text)["input_ids"]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_lora_on_the_lm_head_loses_the_same_rows(tied):
    """A LoRA on `lm_head` (tied or not): its B rows are vocabulary rows, sliced with the head's."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        make_tiny_model("llama", tied=tied), LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    ids = [1, 5, 9, 20]
    tokens = sorted(set(range(0, 96, 2)) | set(ids))
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0][:, torch.tensor(tokens)]
    plan = PruningPlan.dense(model)
    plan.tokens = tokens
    apply_plan(model, plan)
    with torch.no_grad():
        logits = model(torch.tensor([[new_token_id(tokens, i) for i in ids]])).logits[0]
    torch.testing.assert_close(logits, reference)
