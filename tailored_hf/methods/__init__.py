"""Pruning methods: one package per method (`config.py` + `pruner.py`), registered here at import."""

from .base import METHOD_REGISTRY, MethodConfig, PruningMethod, build_method, register_method
from .depgraph import DepGraphConfig
from .magnitude import MagnitudeConfig

__all__ = [
    "METHOD_REGISTRY",
    "DepGraphConfig",
    "MagnitudeConfig",
    "MethodConfig",
    "PruningMethod",
    "build_method",
    "register_method",
]
