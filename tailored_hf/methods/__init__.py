"""Pruning methods: one package per method (`config.py` + `pruner.py`), registered here at import."""

from .atp import ATPConfig
from .base import METHOD_REGISTRY, MethodConfig, PruningMethod, build_method, register_method
from .depgraph import DepGraphConfig
from .l0 import L0Config
from .magnitude import MagnitudeConfig

__all__ = [
    "ATPConfig",
    "METHOD_REGISTRY",
    "DepGraphConfig",
    "L0Config",
    "MagnitudeConfig",
    "MethodConfig",
    "PruningMethod",
    "build_method",
    "register_method",
]
