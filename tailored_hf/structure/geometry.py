"""Model geometry: the sizes that pruning changes, read from a (stock or tailored) config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PretrainedConfig

from ..arch import get_arch


@dataclass(frozen=True)
class LayerGeometry:
    """Sizes of one decoder layer."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0


@dataclass(frozen=True)
class ModelGeometry:
    """Everything needed to count parameters and validate a plan, independent of the weights."""

    model_type: str
    hidden_size: int
    vocab_size: int
    layers: tuple[LayerGeometry, ...]
    tied_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.layers)) <= 1

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelGeometry:
        arch = get_arch(config)
        num_layers = getattr(config, arch.layers_field)
        heads = _per_layer(config, "layer_num_attention_heads", getattr(config, arch.heads_field), num_layers)
        kv = _per_layer(config, "layer_num_key_value_heads", getattr(config, arch.kv_heads_field), num_layers)
        ffn = _per_layer(config, "layer_intermediate_sizes", getattr(config, arch.intermediate_field), num_layers)
        hidden = getattr(config, arch.hidden_field)
        head_dim = getattr(config, arch.head_dim_field, None) or hidden // getattr(config, arch.heads_field)
        layers = tuple(LayerGeometry(h, k, head_dim, f) for h, k, f in zip(heads, kv, ffn))
        return cls(
            model_type=arch.model_type,
            hidden_size=hidden,
            vocab_size=config.vocab_size,
            layers=layers,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=arch.has_qkv_bias(config),
            o_bias=arch.has_o_bias(config),
            mlp_bias=arch.has_mlp_bias(config),
        )

    def layer_params(self, index: int, hidden: int | None = None) -> int:
        """Parameters of decoder layer `index` (two norms included)."""
        hidden = self.hidden_size if hidden is None else hidden
        layer = self.layers[index]
        q_out = layer.num_heads * layer.head_dim
        kv_out = layer.num_kv_heads * layer.head_dim
        attn = hidden * (q_out + 2 * kv_out) + q_out * hidden
        if self.qkv_bias:
            attn += q_out + 2 * kv_out
        if self.o_bias:
            attn += hidden
        mlp = 3 * hidden * layer.intermediate_size
        if self.mlp_bias:
            mlp += 2 * layer.intermediate_size + hidden
        return attn + mlp + 2 * hidden

    def embedding_params(self) -> int:
        """Embedding, final norm and (untied) lm_head."""
        heads = 1 if self.tied_embeddings else 2
        return heads * self.vocab_size * self.hidden_size + self.hidden_size

    def num_parameters(self) -> int:
        return self.embedding_params() + sum(self.layer_params(i) for i in range(self.num_layers))

    def to_dict(self) -> dict:
        return asdict(self)


def _per_layer(config: PretrainedConfig, field: str, default: int, num_layers: int) -> list[int]:
    values = getattr(config, field, None)
    if values is None:
        return [int(default)] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"config.{field} has {len(values)} entries but the model has {num_layers} layers.")
    return [int(v) for v in values]
