from .config import MagnitudeConfig
from .pruner import MagnitudePruner

__all__ = ["MagnitudeConfig", "MagnitudePruner"]
