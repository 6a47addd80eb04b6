"""`tailored_<base>` configs and models: stock LLaMA-family layers built with per-layer sizes.

A pruned model whose layers all have the same size is saved with the stock config of its base `model_type` and
loads with plain transformers. One whose layers differ is saved as `tailored_llama` (or `tailored_mistral`,
`tailored_qwen2`): the same modules and state-dict keys as the base model, built layer by layer from per-layer
head / KV-head / FFN sizes and, where head dimensions were pruned (ATP), per-layer query/key and value head dims
and kept rotary frequencies (`layer_qk_head_dims`, `layer_v_head_dims`, `layer_rotary_indices`). Those layers use
a `Tailored*Attention` whose q/k/v/o projections have the layer's own widths and whose RoPE uses only the kept
frequencies, so the pruned attention runs without masks and equals the masked source exactly. Importing
`tailored_hf` registers these with `AutoConfig` and `AutoModelForCausalLM`, so `from_pretrained` needs no
`trust_remote_code`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
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
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer
from transformers.models.mistral import modeling_mistral
from transformers.models.mistral.modeling_mistral import MistralAttention, MistralDecoderLayer
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2DecoderLayer

from ..arch import TAILORED_PREFIX, base_model_type, get_arch
from ..structure.geometry import LayerGeometry, ModelGeometry

PER_LAYER_FIELDS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes")
HEAD_DIM_CONFIG_FIELDS = ("layer_qk_head_dims", "layer_v_head_dims", "layer_rotary_indices")


@dataclass(repr=False, kw_only=True)
class TailoredConfigMixin:
    """Per-layer sizes on top of a stock LLaMA-family config (`None`: the stock config's global value)."""

    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None
    layer_qk_head_dims: list[int] | None = None
    layer_v_head_dims: list[int] | None = None
    layer_rotary_indices: list[list[int]] | None = None

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
        for name in HEAD_DIM_CONFIG_FIELDS:
            values = getattr(self, name, None)
            if values is not None and len(values) != num_layers:
                raise ValueError(f"`{name}` has {len(values)} entries; the model has {num_layers} layers.")
        if self.layer_qk_head_dims is not None or self.layer_rotary_indices is not None:
            for index in range(num_layers):
                pairs = len(self.rotary_indices_in_layer(index))
                if self.qk_head_dim_in_layer(index) != 2 * pairs:
                    raise ValueError(
                        f"Layer {index}: qk head dim {self.qk_head_dim_in_layer(index)} must be twice its {pairs} "
                        "kept rotary frequencies (query/key dims are kept in rotate-half pairs)."
                    )
        if self.layer_v_head_dims is not None and any(v <= 0 for v in self.layer_v_head_dims):
            raise ValueError(f"`layer_v_head_dims` must be positive in every layer, got {self.layer_v_head_dims}.")

    def qk_head_dim_in_layer(self, index: int) -> int:
        values = getattr(self, "layer_qk_head_dims", None)
        if values is not None:
            return values[index]
        rotary = getattr(self, "layer_rotary_indices", None)
        return 2 * len(rotary[index]) if rotary is not None else self.head_dim

    def v_head_dim_in_layer(self, index: int) -> int:
        values = getattr(self, "layer_v_head_dims", None)
        return values[index] if values is not None else self.head_dim

    def rotary_indices_in_layer(self, index: int) -> list[int]:
        values = getattr(self, "layer_rotary_indices", None)
        return list(values[index]) if values is not None else list(range(self.head_dim // 2))

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
    layers = []
    geometry = ModelGeometry.from_config(config)
    for index in range(config.num_hidden_layers):
        layer_config = config.layer_config(index)
        layer = layer_cls(layer_config, index)
        if geometry.layers[index].has_pruned_head_dims:
            _rebuild_head_dim_attention(layer, layer_config, geometry.layers[index])
        layers.append(layer)
    self.layers = nn.ModuleList(layers)
    self.post_init()


# --------------------------------------------------------------------------- per-layer head dims
class HeadDimAttentionMixin:
    """Attention with its own query/key and value head dims and a subset of the rotary frequencies.

    Query/key heads are `qk_head_dim` wide and hold the kept rotate-half pairs in RoPE order
    (`[f..., f + head_dim // 2...]` for the kept frequencies `f`), so applying `cos` / `sin` restricted to those
    dims is exactly RoPE on the source head with the other pairs zeroed. Value heads are `v_head_dim` wide and
    `o_proj` reads `num_heads * v_head_dim` inputs. Softmax scaling stays the source's `head_dim ** -0.5`.
    Works with the eager and SDPA attention kernels and the dynamic KV cache (caches that preallocate per-layer
    shapes from the config, and kernels needing equal q/v head dims, are not supported).
    """

    tailored_head_dims = True
    _eager_attention: Callable | None = None
    _rotary_fn: Callable | None = None
    _sliding_window_in_config: bool = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, -1, self.qk_head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(*input_shape, -1, self.qk_head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        dims = self._rotary_dims(cos.device)
        if dims is not None:
            cos, sin = cos.index_select(-1, dims), sin.index_select(-1, dims)
        query, key = type(self)._rotary_fn(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        implementation = self.config._attn_implementation
        if "flash" in (implementation or "") and self.qk_head_dim != self.v_head_dim:
            raise NotImplementedError(
                f"Layer {self.layer_idx} has query/key head dim {self.qk_head_dim} but value head dim "
                f"{self.v_head_dim}; {implementation} needs equal dims. Load with attn_implementation='sdpa' or "
                "'eager'."
            )
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, self._eager_attention)
        extra = {}
        if hasattr(self, "sliding_window"):
            extra["sliding_window"] = self.sliding_window
        elif self._sliding_window_in_config:
            extra["sliding_window"] = getattr(self.config, "sliding_window", None)
        output, weights = interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **extra,
            **kwargs,
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(output), weights

    def _rotary_dims(self, device: torch.device) -> torch.Tensor | None:
        if self.rotary_indices is None:
            return None
        cache = self.__dict__.setdefault("_rotary_dims_cache", {})
        if device not in cache:
            half = self.rotary_head_dim // 2
            kept = list(self.rotary_indices)
            cache[device] = torch.as_tensor(kept + [i + half for i in kept], dtype=torch.long, device=device)
        return cache[device]


class TailoredLlamaAttention(HeadDimAttentionMixin, LlamaAttention):
    _eager_attention = staticmethod(modeling_llama.eager_attention_forward)
    _rotary_fn = staticmethod(modeling_llama.apply_rotary_pos_emb)


class TailoredMistralAttention(HeadDimAttentionMixin, MistralAttention):
    _eager_attention = staticmethod(modeling_mistral.eager_attention_forward)
    _rotary_fn = staticmethod(modeling_mistral.apply_rotary_pos_emb)
    _sliding_window_in_config = True


class TailoredQwen2Attention(HeadDimAttentionMixin, Qwen2Attention):
    _eager_attention = staticmethod(modeling_qwen2.eager_attention_forward)
    _rotary_fn = staticmethod(modeling_qwen2.apply_rotary_pos_emb)


ATTENTION_CLASSES: dict[str, tuple[type, type]] = {
    "llama": (LlamaAttention, TailoredLlamaAttention),
    "mistral": (MistralAttention, TailoredMistralAttention),
    "qwen2": (Qwen2Attention, TailoredQwen2Attention),
}


def set_attention_head_dims(attn: nn.Module, model_type: str, geo: LayerGeometry) -> None:
    """Turn an attention module whose projections already have `geo`'s widths into a per-layer head-dim one.

    Used by `apply_plan` after slicing (the stock class is swapped for its `Tailored*Attention` subclass; a layer
    whose head dims are back to the source's keeps the subclass, which then behaves like the stock one).
    """
    stock, tailored = ATTENTION_CLASSES[model_type]
    if type(attn) is stock:
        attn.__class__ = tailored
    elif not isinstance(attn, HeadDimAttentionMixin):
        raise TypeError(f"Cannot give {type(attn).__name__} per-layer head dims; expected {stock.__name__}.")
    attn.rotary_head_dim = geo.head_dim
    attn.scaling = geo.head_dim**-0.5
    attn.qk_head_dim, attn.v_head_dim = geo.qk_dim, geo.v_dim
    attn.head_dim = geo.qk_dim
    attn.rotary_indices = None if geo.rotary_indices is None else tuple(geo.rotary_indices)
    attn.__dict__.pop("_rotary_dims_cache", None)


def _rebuild_head_dim_attention(layer: nn.Module, config: PretrainedConfig, geo: LayerGeometry) -> None:
    """Replace the freshly built stock projections of `layer` by ones with the layer's head dims."""
    arch = get_arch(config)
    attn = getattr(layer, arch.attention_attr)
    hidden = config.hidden_size
    qkv_bias, o_bias = arch.has_qkv_bias(config), arch.has_o_bias(config)
    heads, kv = geo.num_heads, geo.num_kv_heads
    setattr(attn, arch.q_proj, nn.Linear(hidden, heads * geo.qk_dim, bias=qkv_bias))
    setattr(attn, arch.k_proj, nn.Linear(hidden, kv * geo.qk_dim, bias=qkv_bias))
    setattr(attn, arch.v_proj, nn.Linear(hidden, kv * geo.v_dim, bias=qkv_bias))
    setattr(attn, arch.o_proj, nn.Linear(heads * geo.v_dim, hidden, bias=o_bias))
    set_attention_head_dims(attn, arch.model_type, geo)


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
    data = {k: v for k, v in config.to_dict().items() if k not in PER_LAYER_FIELDS + HEAD_DIM_CONFIG_FIELDS}
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        data.pop(key, None)
    layer_types = data.get("layer_types")
    if layer_types is not None:
        data["layer_types"] = [layer_types[i] for i in kept_layers]
    data.update(
        hidden_size=geometry.hidden_size,
        vocab_size=geometry.vocab_size,
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
    if any(layer.has_pruned_head_dims for layer in geometry.layers):
        data.update(
            layer_qk_head_dims=[layer.qk_dim for layer in geometry.layers],
            layer_v_head_dims=[layer.v_dim for layer in geometry.layers],
            layer_rotary_indices=[layer.rotary_index_list for layer in geometry.layers],
        )
    return family.config(**data)


def _stock_blocker(geometry: ModelGeometry) -> str | None:
    if any(layer.has_pruned_head_dims for layer in geometry.layers):
        return "attention head dims (query/key pairs or value dims) are pruned"
    if not geometry.is_uniform:
        return "layers have different sizes"
    heads = geometry.layers[0].num_heads
    if geometry.hidden_size % heads:
        return f"hidden_size {geometry.hidden_size} is not a multiple of {heads} heads (LlamaConfig rejects it)"
    return None


def is_tailored(config: PretrainedConfig) -> bool:
    return config.model_type.startswith(TAILORED_PREFIX)
