import math

import pytest
import torch

from tailored_hf.eval import encode_pair, loglikelihood_tokens, score_multiple_choice
from tailored_hf.eval.multiple_choice import (
    choice_strings,
    mean_stderr,
    packed_input_length,
    packed_loglikelihood_tokens,
    token_budget_chunks,
)

ITEMS = [
    {
        "contexts": ["Question: How do you open a jar?\nAnswer:"] * 2,
        "continuations": [" Twist the lid.", " Eat it."],
        "gold": 0,
    },
    {
        "contexts": ["A man is sitting on a roof. He"] * 4,
        "continuations": [" starts pulling up roofing.", " flows.", " is blue.", " naïve café"],
        "gold": 0,
    },
    {"contexts": ["The river flows to the sea. ", "The sky"], "continuations": ["yes", " no"], "gold": 1},
    {
        "contexts": ["Is the sky blue? The fox", "Is the sky blue? The dog"],
        "continuations": [" jumps."] * 2,
        "gold": 1,
    },
    {"contexts": ["", "x"], "continuations": ["maybe", " maybe"], "gold": 0},
]


def _reference_ll(model, ctx, cont):
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def test_encode_pair_moves_trailing_space(tiny_tokenizer):
    ctx, cont = encode_pair(tiny_tokenizer, "The river flows ", "to the sea")
    whole = tiny_tokenizer.encode("The river flows to the sea")
    assert ctx == tiny_tokenizer.encode("The river flows")
    assert ctx + cont == whole


def test_encode_pair_empty_context_uses_bos(tiny_tokenizer):
    ctx, cont = encode_pair(tiny_tokenizer, "", "maybe")
    assert ctx == [tiny_tokenizer.bos_token_id]
    assert cont == tiny_tokenizer.encode("maybe", add_special_tokens=False)


def test_loglikelihoods_match_unbatched_reference(tiny_model, tiny_tokenizer):
    requests = [
        encode_pair(tiny_tokenizer, c, x) for item in ITEMS for c, x in zip(item["contexts"], item["continuations"])
    ]
    lls = loglikelihood_tokens(tiny_model, requests, batch_size=3, max_length=256)
    for (ctx, cont), ll in zip(requests, lls):
        assert ll == pytest.approx(_reference_ll(tiny_model, ctx, cont), abs=1e-4)


@pytest.mark.parametrize("packed", [False, True])
def test_batching_invariance(tiny_model, tiny_tokenizer, packed):
    a = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS, batch_size=1, packed=packed)
    b = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS, batch_size=16, packed=packed)
    for x, y in zip(a.items, b.items):
        assert x.loglikelihoods == pytest.approx(y.loglikelihoods, abs=1e-5)


def test_token_budget_chunks():
    lengths = [300, 250, 240, 100, 90, 10, 10, 10]
    spans = token_budget_chunks(lengths, batch_size=4, max_batch_tokens=600)
    assert [(s.start, s.stop) for s in spans] == [(0, 2), (2, 4), (4, 8)]  # rows x first (longest) row <= 600
    assert [(s.start, s.stop) for s in token_budget_chunks([900, 5], 4, 600)] == [(0, 1), (1, 2)]  # over budget alone
    assert len(token_budget_chunks(lengths, batch_size=3, max_batch_tokens=None)) == 3
    assert token_budget_chunks([], 4, 600) == []


@pytest.mark.parametrize("budget", [1, 20, None])
def test_token_budget_does_not_change_scores(tiny_model, tiny_tokenizer, budget):
    a = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS, packed=True, max_batch_tokens=budget)
    b = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS, batch_size=1, packed=True)
    for x, y in zip(a.items, b.items):
        assert x.loglikelihoods == pytest.approx(y.loglikelihoods, abs=1e-5)


def test_packed_input_length_is_what_the_packed_scorer_feeds(tiny_model, tiny_tokenizer):
    """One packed row per forward: its width is the shared prefix once plus every choice's rest minus its last."""
    groups = [
        [encode_pair(tiny_tokenizer, c, x, None) for c, x in zip(i["contexts"], i["continuations"])] for i in ITEMS
    ]
    widths = []
    handle = tiny_model.model.register_forward_pre_hook(  # the scorer runs the decoder, then the head on selected rows
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        packed_loglikelihood_tokens(tiny_model, groups, batch_size=1, max_batch_tokens=None)
    finally:
        handle.remove()
    expected = [packed_input_length([list(c) + list(x) for c, x in group]) for group in groups]
    assert sorted(widths) == sorted(expected)
    assert packed_input_length([[1, 2, 3, 4], [1, 2, 5]]) == 2 + 1 + 0  # prefix [1, 2]; rests [3] and []


def test_packed_equals_plain(tiny_model, tiny_tokenizer):
    a = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS, packed=True)
    b = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS, packed=False)
    for x, y in zip(a.items, b.items):
        assert x.loglikelihoods == pytest.approx(y.loglikelihoods, abs=1e-4)


def test_left_truncation(tiny_model, tiny_tokenizer):
    ctx, cont = encode_pair(tiny_tokenizer, "The quick brown fox jumps over the lazy dog.", " The river")
    ll = loglikelihood_tokens(tiny_model, [(ctx, cont)], max_length=len(cont) + 2)[0]
    kept = (ctx + cont)[-(len(cont) + 3) :]
    assert ll == pytest.approx(_reference_ll(tiny_model, kept[: -len(cont)], cont), abs=1e-4)


def test_acc_norm_uses_choice_length(tiny_model, tiny_tokenizer):
    result = score_multiple_choice(tiny_model, tiny_tokenizer, ITEMS)
    item = result.items[1]
    assert item.char_lengths == [len(c) - 1 for c in ITEMS[1]["continuations"]]  # target delimiter stripped
    assert item.byte_lengths[3] == len("naïve café".encode()) > item.char_lengths[3]
    normed = [ll / n for ll, n in zip(item.loglikelihoods, item.char_lengths)]
    assert item.pred_norm == max(range(4), key=lambda i: (normed[i], -i))
    # WinoGrande-style partial scoring normalises by the contexts (lm-eval's doc_to_choice).
    assert choice_strings(ITEMS[3]["contexts"], ITEMS[3]["continuations"]) == ITEMS[3]["contexts"]
    assert result.acc == pytest.approx(sum(i.correct for i in result.items) / len(ITEMS))


def test_stderr_and_validation(tiny_model, tiny_tokenizer):
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    with pytest.raises(ValueError, match="gold"):
        score_multiple_choice(tiny_model, tiny_tokenizer, [{"contexts": ["a"], "continuations": [" b"], "gold": 3}])
    with pytest.raises(ValueError, match="contexts"):
        score_multiple_choice(tiny_model, tiny_tokenizer, [{"continuations": [" b"], "gold": 0}])


def test_packed_scoring_of_a_peft_model_runs_its_lora(tiny_model, tiny_tokenizer):
    import copy

    from peft import LoraConfig, get_peft_model

    items = [
        {"contexts": ["The river"] * 2, "continuations": [" flows", " sings"], "gold": 0},
        {"contexts": ["Is the sky blue?"] * 3, "continuations": [" yes", " no", " maybe"], "gold": 1},
    ]
    peft_model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a non-zero adapter, so a scorer that skipped LoRA would disagree
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for packed in (False, True):
        lora = score_multiple_choice(peft_model, tiny_tokenizer, items, packed=packed)
        reference = score_multiple_choice(merged, tiny_tokenizer, items, packed=packed)
        for a, b in zip(lora.items, reference.items):
            assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-4)
