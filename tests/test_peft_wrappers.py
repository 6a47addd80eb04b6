"""`add_loss_term`: extra loss terms reach `output.loss` on training forwards only, and detach cleanly."""

from __future__ import annotations

import torch

from tailored_hf.peft_wrappers import add_loss_term
from tests.conftest import make_tiny_model


def test_term_added_in_training_mode_only_and_removable():
    model = make_tiny_model()
    ids = torch.randint(0, 96, (2, 7))
    base = model(input_ids=ids, labels=ids).loss
    handles = add_loss_term(model, lambda module, kwargs, output: torch.tensor(1.5))
    assert torch.allclose(model(input_ids=ids, labels=ids).loss, base)  # eval mode: untouched
    model.train()
    torch.manual_seed(0)
    assert torch.allclose(model(input_ids=ids, labels=ids).loss, base + 1.5)
    for handle in handles:
        handle.remove()
    assert torch.allclose(model(input_ids=ids, labels=ids).loss, base)


def test_term_sees_hidden_states_when_requested_and_gets_gradients():
    model = make_tiny_model().train()
    ids = torch.randint(0, 96, (2, 7))
    seen = {}

    def term(module, kwargs, output):
        seen["n_hidden"] = len(output.hidden_states)
        return output.hidden_states[-1].pow(2).mean()

    add_loss_term(model, term, request_hidden_states=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert seen["n_hidden"] == model.config.num_hidden_layers + 1
    assert model.model.norm.weight.grad is not None


def test_none_term_adds_nothing():
    model = make_tiny_model().train()
    ids = torch.randint(0, 96, (2, 7))
    add_loss_term(model, lambda *a: None)
    assert model(input_ids=ids, labels=ids).loss.isfinite()
