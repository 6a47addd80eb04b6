"""The one table of architecture facts for the LLaMA family.

Every other module reaches into a model only through the accessors here: module names, GQA fields,
biases and embedding tying live in `ARCHITECTURES` and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class UnsupportedArchitectureError(ValueError):
    """Raised for a model outside the LLaMA family that tailored_hf supports."""


@dataclass(frozen=True)
class ArchSpec:
    """Where the prunable pieces of one architecture live and which of them carry biases."""

    model_type: str
    decoder_path: str = "model"
    layers_attr: str = "layers"
    embed_attr: str = "embed_tokens"
    final_norm_attr: str = "norm"
    lm_head_attr: str = "lm_head"
    attention_attr: str = "self_attn"
    mlp_attr: str = "mlp"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    act_fn: str = "act_fn"  # the MLP's activation module: down_proj(act_fn(gate_proj(x)) * up_proj(x))
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # Biases: `None` means "read the config flag named in *_bias_flag"; a bool is fixed by the modeling code.
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    qkv_bias_flag: str = "attention_bias"
    o_bias_flag: str = "attention_bias"
    mlp_bias_flag: str = "mlp_bias"
    # Config field names (GQA and sizes).
    heads_field: str = "num_attention_heads"
    kv_heads_field: str = "num_key_value_heads"
    head_dim_field: str = "head_dim"
    hidden_field: str = "hidden_size"
    intermediate_field: str = "intermediate_size"
    layers_field: str = "num_hidden_layers"

    @property
    def attention_projections(self) -> tuple[str, str, str, str]:
        return (self.q_proj, self.k_proj, self.v_proj, self.o_proj)

    @property
    def mlp_projections(self) -> tuple[str, str, str]:
        return (self.gate_proj, self.up_proj, self.down_proj)

    def has_qkv_bias(self, config: PretrainedConfig) -> bool:
        return self.qkv_bias if self.qkv_bias is not None else bool(getattr(config, self.qkv_bias_flag, False))

    def has_o_bias(self, config: PretrainedConfig) -> bool:
        return self.o_bias if self.o_bias is not None else bool(getattr(config, self.o_bias_flag, False))

    def has_mlp_bias(self, config: PretrainedConfig) -> bool:
        return bool(getattr(config, self.mlp_bias_flag, False))


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(model_type="llama"),
    "mistral": ArchSpec(model_type="mistral", qkv_bias=False, o_bias=False),
    # Qwen2 hard-codes q/k/v biases and a bias-free o_proj / MLP.
    "qwen2": ArchSpec(model_type="qwen2", qkv_bias=True, o_bias=False, mlp_bias_flag="__qwen2_has_no_mlp_bias__"),
}

TAILORED_PREFIX = "tailored_"


def base_model_type(model_type: str) -> str:
    """`tailored_llama` -> `llama`; stock types map to themselves."""
    return model_type[len(TAILORED_PREFIX) :] if model_type.startswith(TAILORED_PREFIX) else model_type


def get_arch(model_or_config: PreTrainedModel | PretrainedConfig | nn.Module) -> ArchSpec:
    """Look up the architecture facts for a model or config, with an error naming the supported ones."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else _config_of(model_or_config)
    model_type = base_model_type(getattr(config, "model_type", "") or "")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"tailored_hf supports the LLaMA family ({', '.join(sorted(ARCHITECTURES))}); got model_type "
            f"{model_type!r}. Load a supported model or add an `ArchSpec` to `tailored_hf.arch.ARCHITECTURES`."
        )
    return ARCHITECTURES[model_type]


def _config_of(model: nn.Module) -> PretrainedConfig:
    config = getattr(model, "config", None)
    if isinstance(config, PretrainedConfig):
        return config
    raise UnsupportedArchitectureError(f"{type(model).__name__} has no transformers config; pass a PreTrainedModel.")


def unwrap_model(model: nn.Module) -> PreTrainedModel:
    """Return the causal LM under PEFT / DDP / accelerate wrappers (the module that owns `lm_head`)."""
    seen = 0
    while True:
        seen += 1
        if seen > 8:
            break
        if hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "config"):
            model = model.module  # DDP / DataParallel
            continue
        get_base = getattr(model, "get_base_model", None)
        if callable(get_base) and type(model).__name__.startswith("Peft"):
            model = get_base()
            continue
        break
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedArchitectureError(f"Expected a transformers PreTrainedModel, got {type(model).__name__}.")
    return model


def _get_path(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split(".") if path else []:
        module = getattr(module, part)
    return module


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (`LlamaModel` and friends) that owns the embedding, layers and final norm."""
    lm = unwrap_model(model)
    return _get_path(lm, get_arch(lm).decoder_path)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    lm = unwrap_model(model)
    return getattr(decoder(lm), get_arch(lm).layers_attr)


def embedding(model: nn.Module) -> nn.Module:
    lm = unwrap_model(model)
    return getattr(decoder(lm), get_arch(lm).embed_attr)


def final_norm(model: nn.Module) -> nn.Module:
    lm = unwrap_model(model)
    return getattr(decoder(lm), get_arch(lm).final_norm_attr)


def lm_head(model: nn.Module) -> nn.Module:
    lm = unwrap_model(model)
    return getattr(lm, get_arch(lm).lm_head_attr)


def attention(layer: nn.Module, arch: ArchSpec) -> nn.Module:
    return getattr(layer, arch.attention_attr)


def mlp(layer: nn.Module, arch: ArchSpec) -> nn.Module:
    return getattr(layer, arch.mlp_attr)


def layer_norms(layer: nn.Module, arch: ArchSpec) -> list[nn.Module]:
    return [getattr(layer, name) for name in arch.layer_norms]


def is_tied(model: nn.Module) -> bool:
    lm = unwrap_model(model)
    return bool(getattr(lm.config, "tie_word_embeddings", False))


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)
