"""Model classes with per-layer sizes, registered with the Auto classes on import."""

from .tailored import (
    FAMILIES,
    StockConfigUnavailableError,
    TailoredLlamaConfig,
    TailoredLlamaForCausalLM,
    TailoredMistralConfig,
    TailoredMistralForCausalLM,
    TailoredQwen2Config,
    TailoredQwen2ForCausalLM,
    is_tailored,
    pruned_config,
    register_auto_classes,
)

register_auto_classes()

__all__ = [
    "FAMILIES",
    "StockConfigUnavailableError",
    "TailoredLlamaConfig",
    "TailoredLlamaForCausalLM",
    "TailoredMistralConfig",
    "TailoredMistralForCausalLM",
    "TailoredQwen2Config",
    "TailoredQwen2ForCausalLM",
    "is_tailored",
    "pruned_config",
    "register_auto_classes",
]
