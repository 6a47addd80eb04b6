"""The contract every pruning method fulfils, and the registry that maps configs to methods.

A method sets itself up on a model, reacts to training events handed over by `PrunerCallback`, may add loss terms,
and ends by producing a `PruningPlan` that the structure engine applies. Methods never slice weights themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..structure import PruningPlan


@dataclass
class MethodConfig:
    """Base class of every method config (a dataclass validated in `__post_init__`)."""

    method_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method_name, **asdict(self)}

    def non_default_fields(self) -> dict[str, Any]:
        defaults = type(self)()
        return {k: v for k, v in asdict(self).items() if getattr(defaults, k) != v}


class PruningMethod:
    """Base class: override the events the method needs. All hooks receive the (possibly PEFT-wrapped) model."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.plan: PruningPlan | None = None
        #: Logged under `pruning/`: floats, or 0-dim tensors left on the device until they are logged or saved, so
        #: that the step producing them does not wait for the device (`metric_values` reads them).
        self.metrics: dict[str, float | torch.Tensor] = {}

    # lifecycle ---------------------------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Raise early (at Trainer construction) when the model is unsupported."""
        from ..arch import get_arch, unwrap_model

        get_arch(unwrap_model(model))

    def on_init_end(self, model: nn.Module, **context: Any) -> None:
        """Called once the Trainer is built, before any optimizer or distributed wrapper exists."""

    def on_train_begin(self, model: nn.Module, **context: Any) -> None: ...

    def on_step_begin(self, model: nn.Module, **context: Any) -> None: ...

    def on_pre_optimizer_step(self, model: nn.Module, **context: Any) -> None:
        """After gradient clipping, before the Trainer's optimizer steps (gradients of the model are intact)."""

    def on_optimizer_step(self, model: nn.Module, **context: Any) -> None:
        """After the Trainer's optimizer step, before `model.zero_grad()`: step method-owned optimizers here."""

    def on_step_end(self, model: nn.Module, **context: Any) -> None: ...

    def on_train_end(self, model: nn.Module, **context: Any) -> None: ...

    # state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state for checkpoints (never pickle)."""
        return {"plan": self.plan.to_dict() if self.plan is not None else None, "metrics": metric_values(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan = PruningPlan.from_dict(state["plan"]) if state.get("plan") else None
        self.metrics = dict(state.get("metrics", {}))

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors of the method's state (masks, snapshots, generator, optimizer moments) saved as safetensors
        next to the JSON state in every checkpoint. Empty by default."""
        return {}

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `tensor_state_dict` returned (called on resume, after `load_state_dict`)."""


METHOD_REGISTRY: dict[str, type[PruningMethod]] = {}


def register_method(name: str):
    """Class decorator registering a `PruningMethod` under `name` (its config's `method_name`)."""

    def wrap(cls: type[PruningMethod]) -> type[PruningMethod]:
        if name in METHOD_REGISTRY and METHOD_REGISTRY[name] is not cls:
            raise ValueError(f"A pruning method named {name!r} is already registered.")
        cls.config_class.method_name = name
        METHOD_REGISTRY[name] = cls
        return cls

    return wrap


def build_method(config: MethodConfig) -> PruningMethod:
    """Instantiate the method registered for `config`'s type."""
    for cls in METHOD_REGISTRY.values():
        if type(config) is cls.config_class:
            return cls(config)
    known = ", ".join(f"{name} ({cls.config_class.__name__})" for name, cls in METHOD_REGISTRY.items())
    raise ValueError(f"No pruning method accepts {type(config).__name__}; known methods: {known}.")


def metric_values(metrics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """`metrics` as floats: the 0-dim tensors among them are read from the device here."""
    return {key: float(value) if torch.is_tensor(value) else value for key, value in metrics.items()}
