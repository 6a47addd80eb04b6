"""`tailored_<base>` configs and models: stock LLaMA-family layers built with per-layer sizes.

A pruned model whose layers all have the same size is saved with the stock config of its base `model_type` and
loads with plain transformers. One whose layers differ is saved as `tailored_llama` (or `tailored_mistral`,
`tailored_qwen2`): the same modules and state-dict keys as the base model, built layer by layer from per-layer
head / KV-head / FFN sizes. Importing `tailored_hf` registers these with `AutoConfig` and `AutoModelForCausalLM`,
so `from_pretrained` needs no `trust_remote_code`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from ..arch import TAILORED_PREFIX, base_model_type, get_arch
from ..structure.geometry import ModelGeometry

PER_LAYER_FIELDS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes")


class TailoredConfigMixin:
    """Per-layer sizes on top of a stock LLaMA-family config."""

    def validate_architecture(self) -> None:
        # Heads carry an explicit head_dim, so hidden_size need not be a multiple of the head count.
        num_layers = self.num_hidden_layers
        for name in PER_LAYER_FIELDS:
            values = getattr(self, name)
            if values is not None and len(values) != num_layers:
                raise ValueError(f"`{name}` has {len(values)} entries; the model has {num_layers} layers.")
            if values is not None and any(v <= 0 for v in values):
                raise ValueError(f"`{name}` must be positive in every layer, got {values}.")
        for index in range(num_layers):
            heads, kv = self.heads_in_layer(index), self.kv_heads_in_layer(index)
            if heads % kv:
                raise ValueError(f"Layer {index}: {heads} query heads are not a multiple of {kv} KV heads.")
        if self.head_dim is None:
            raise ValueError("tailored configs need an explicit `head_dim`.")

    def heads_in_layer(self, index: int) -> int:
        values = self.layer_num_attention_heads
        return values[index] if values is not None else self.num_attention_heads

    def kv_heads_in_layer(self, index: int) -> int:
        values = self.layer_num_key_value_heads
        return values[index] if values is not None else self.num_key_value_heads

    def intermediate_in_layer(self, index: int) -> int:
        values = self.layer_intermediate_sizes
        return values[index] if values is not None else self.intermediate_size

    def layer_config(self, index: int) -> PretrainedConfig:
        """A shallow copy of this config carrying layer `index`'s sizes (what the stock layer classes read)."""
        layer_config = copy.copy(self)
        layer_config.num_attention_heads = self.heads_in_layer(index)
        layer_config.num_key_value_heads = self.kv_heads_in_layer(index)
        layer_config.intermediate_size = self.intermediate_in_layer(index)
        return layer_config


def _tailored_model_init(self: nn.Module, config: PretrainedConfig, base_model_cls: type, layer_cls: type) -> None:
    base_model_cls.__init__(self, config)
    # Rebuilt with per-layer sizes; under `from_pretrained` the stock layers above live on the meta device.
    self.layers = nn.ModuleList(
        [layer_cls(config.layer_config(index), index) for index in range(config.num_hidden_layers)]
    )
    self.post_init()


def _tailored_causal_init(self: nn.Module, config: PretrainedConfig, model_cls: type, causal_cls: type) -> None:
    super(causal_cls, self).__init__(config)  # the PreTrainedModel base, skipping the stock decoder
    self.model = model_cls(config)
    self.vocab_size = config.vocab_size
    self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    self.post_init()


# --------------------------------------------------------------------------- llama
@strict
class TailoredLlamaConfig(TailoredConfigMixin, LlamaConfig):
    model_type = "tailored_llama"
    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None


class TailoredLlamaModel(LlamaModel):
    config_class = TailoredLlamaConfig

    def __init__(self, config: TailoredLlamaConfig) -> None:
        _tailored_model_init(self, config, LlamaModel, LlamaDecoderLayer)


class TailoredLlamaForCausalLM(LlamaForCausalLM):
    config_class = TailoredLlamaConfig

    def __init__(self, config: TailoredLlamaConfig) -> None:
        _tailored_causal_init(self, config, TailoredLlamaModel, LlamaForCausalLM)


# --------------------------------------------------------------------------- mistral
@strict
class TailoredMistralConfig(TailoredConfigMixin, MistralConfig):
    model_type = "tailored_mistral"
    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None


class TailoredMistralModel(MistralModel):
    config_class = TailoredMistralConfig

    def __init__(self, config: TailoredMistralConfig) -> None:
        _tailored_model_init(self, config, MistralModel, MistralDecoderLayer)


class TailoredMistralForCausalLM(MistralForCausalLM):
    config_class = TailoredMistralConfig

    def __init__(self, config: TailoredMistralConfig) -> None:
        _tailored_causal_init(self, config, TailoredMistralModel, MistralForCausalLM)


# --------------------------------------------------------------------------- qwen2
@strict
class TailoredQwen2Config(TailoredConfigMixin, Qwen2Config):
    model_type = "tailored_qwen2"
    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None


class TailoredQwen2Model(Qwen2Model):
    config_class = TailoredQwen2Config

    def __init__(self, config: TailoredQwen2Config) -> None:
        _tailored_model_init(self, config, Qwen2Model, Qwen2DecoderLayer)


class TailoredQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = TailoredQwen2Config

    def __init__(self, config: TailoredQwen2Config) -> None:
        _tailored_causal_init(self, config, TailoredQwen2Model, Qwen2ForCausalLM)


@dataclass(frozen=True)
class Family:
    """The stock and tailored classes of one base architecture."""

    stock_config: type
    stock_model: type
    stock_causal_lm: type
    config: type
    model: type
    causal_lm: type


FAMILIES: dict[str, Family] = {
    "llama": Family(
        LlamaConfig, LlamaModel, LlamaForCausalLM, TailoredLlamaConfig, TailoredLlamaModel, TailoredLlamaForCausalLM
    ),
    "mistral": Family(
        MistralConfig,
        MistralModel,
        MistralForCausalLM,
        TailoredMistralConfig,
        TailoredMistralModel,
        TailoredMistralForCausalLM,
    ),
    "qwen2": Family(
        Qwen2Config, Qwen2Model, Qwen2ForCausalLM, TailoredQwen2Config, TailoredQwen2Model, TailoredQwen2ForCausalLM
    ),
}


def register_auto_classes() -> None:
    """Register every tailored family with the Auto classes (idempotent)."""
    for family in FAMILIES.values():
        model_type = family.config.model_type
        try:
            AutoConfig.register(model_type, family.config)
        except ValueError:
            pass  # already registered
        for auto, cls in ((AutoModel, family.model), (AutoModelForCausalLM, family.causal_lm)):
            try:
                auto.register(family.config, cls)
            except ValueError:
                pass


class StockConfigUnavailableError(ValueError):
    """The pruned model cannot be described by its base architecture's stock config."""


def pruned_config(config: PretrainedConfig, geometry: ModelGeometry, kept_layers: list[int], stock: bool | None):
    """The config describing a model of `geometry`, derived from the source `config`.

    Args:
        stock: `True` forces the base architecture's stock config (error when not representable), `False` forces a
            tailored config, `None` picks stock when every layer has the same size and the stock config accepts it.
    """
    base = base_model_type(config.model_type)
    family = FAMILIES[get_arch(config).model_type]
    data = {k: v for k, v in config.to_dict().items() if k not in PER_LAYER_FIELDS}
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        data.pop(key, None)
    layer_types = data.get("layer_types")
    if layer_types is not None:
        data["layer_types"] = [layer_types[i] for i in kept_layers]
    data.update(
        hidden_size=geometry.hidden_size,
        num_hidden_layers=geometry.num_layers,
        head_dim=geometry.layers[0].head_dim,
        num_attention_heads=max(layer.num_heads for layer in geometry.layers),
        num_key_value_heads=max(layer.num_kv_heads for layer in geometry.layers),
        intermediate_size=max(layer.intermediate_size for layer in geometry.layers),
    )
    reason = _stock_blocker(geometry)
    if stock and reason:
        raise StockConfigUnavailableError(
            f"A stock `{base}` config cannot describe this pruned model: {reason}. Save with a tailored config "
            "(config_format='auto' or 'tailored'; loads after `import tailored_hf`), or prune uniformly and keep "
            "hidden_size a multiple of the head count."
        )
    if stock is True or (stock is None and reason is None):
        return family.stock_config(**data)
    data.update(
        layer_num_attention_heads=[layer.num_heads for layer in geometry.layers],
        layer_num_key_value_heads=[layer.num_kv_heads for layer in geometry.layers],
        layer_intermediate_sizes=[layer.intermediate_size for layer in geometry.layers],
    )
    return family.config(**data)


def _stock_blocker(geometry: ModelGeometry) -> str | None:
    if not geometry.is_uniform:
        return "layers have different sizes"
    heads = geometry.layers[0].num_heads
    if geometry.hidden_size % heads:
        return f"hidden_size {geometry.hidden_size} is not a multiple of {heads} heads (LlamaConfig rejects it)"
    return None


def is_tailored(config: PretrainedConfig) -> bool:
    return config.model_type.startswith(TAILORED_PREFIX)
