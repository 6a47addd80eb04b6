"""Sparsity-aware PEFT plumbing shared by the training-time methods (L0 masks, ATP).

`add_loss_term` lets a method add its regulariser / distillation terms to the loss that `Trainer.compute_loss`
(and TRL's `SFTTrainer`) back-propagates, without users subclassing the trainer: a forward hook on the model the
Trainer calls adds the term to `output.loss` while the model is in training mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

LossTerm = Callable[[nn.Module, dict[str, Any], Any], torch.Tensor | None]


def add_loss_term(model: nn.Module, term: LossTerm, request_hidden_states: bool = False) -> list[RemovableHandle]:
    """Add `term(model, forward_kwargs, output)` to `output.loss` on every training-mode forward of `model`.

    Args:
        model (`nn.Module`): the module the Trainer calls (a `PeftModel` or a plain causal LM).
        term (`Callable`): returns a scalar tensor to add, or `None` to add nothing for this forward.
        request_hidden_states (`bool`, defaults to `False`): also ask the model for `output_hidden_states=True` on
            training forwards (e.g. for layer-wise distillation).

    Returns:
        The hook handles; call `.remove()` on each to detach the term.
    """
    handles = []
    if request_hidden_states:

        def ask_for_hidden_states(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if not module.training:
                return None
            return args, {**kwargs, "output_hidden_states": True}

        handles.append(model.register_forward_pre_hook(ask_for_hidden_states, with_kwargs=True))

    def add(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not module.training or getattr(output, "loss", None) is None:
            return None
        extra = term(module, kwargs, output)
        if extra is None:
            return None
        output.loss = output.loss + extra
        return output

    handles.append(model.register_forward_hook(add, with_kwargs=True))
    return handles
