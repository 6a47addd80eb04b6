"""Model geometry: the sizes that pruning changes, read from a (stock or tailored) config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers import PretrainedConfig

from ..arch import get_arch

HEAD_DIM_FIELDS = ("qk_head_dim", "v_head_dim", "rotary_indices")


@dataclass(frozen=True)
class LayerGeometry:
    """Sizes of one decoder layer.

    `head_dim` is the rotary (and softmax-scaling) dimension of the source architecture. Layers whose head
    dimensions were pruned carry `qk_head_dim` (query/key width per head, `2 * len(rotary_indices)`),
    `v_head_dim` (value width per head, also the per-head width of `o_proj`'s input) and `rotary_indices` (the
    kept rotary frequencies, indices into `range(head_dim // 2)`; kept query/key dims are the rotate-half pairs
    `(i, i + head_dim // 2)`). The three are `None` when unpruned, so geometries of stock models compare equal to
    those of plans saved before per-layer head dims existed.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    qk_head_dim: int | None = None
    v_head_dim: int | None = None
    rotary_indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Canonical form: an unpruned field is None (equality with older geometries relies on it).
        rotary = self.rotary_indices
        if rotary is not None:
            rotary = tuple(int(i) for i in rotary)
            if rotary == tuple(range(self.head_dim // 2)):
                rotary = None
        object.__setattr__(self, "rotary_indices", rotary)
        qk = self.qk_head_dim
        if qk is None and rotary is not None:
            qk = 2 * len(rotary)
        object.__setattr__(self, "qk_head_dim", None if qk is None or qk == self.head_dim else int(qk))
        v = self.v_head_dim
        object.__setattr__(self, "v_head_dim", None if v is None or v == self.head_dim else int(v))
        if rotary is not None and (
            list(rotary) != sorted(set(rotary)) or not rotary or rotary[0] < 0 or rotary[-1] >= self.head_dim // 2
        ):
            raise ValueError(
                f"rotary_indices must be sorted, unique, non-empty indices into range({self.head_dim // 2}), got "
                f"{list(rotary)}."
            )
        if self.v_head_dim is not None and self.v_head_dim <= 0:
            raise ValueError(f"v_head_dim must be positive, got {self.v_head_dim}.")
        if self.qk_head_dim is not None and self.qk_head_dim != 2 * len(self.rotary_index_list):
            raise ValueError(
                f"qk_head_dim={self.qk_head_dim} must be twice the number of kept rotary frequencies "
                f"({len(self.rotary_index_list)}): query/key dims are kept in rotate-half pairs."
            )

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0

    @property
    def qk_dim(self) -> int:
        """Query/key width per head (the source `head_dim` unless pruned)."""
        return self.head_dim if self.qk_head_dim is None else self.qk_head_dim

    @property
    def v_dim(self) -> int:
        """Value width per head (the source `head_dim` unless pruned)."""
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def num_rotary_pairs(self) -> int:
        """Rotate-half pairs per query/key head (`qk_dim // 2`)."""
        return self.qk_dim // 2

    @property
    def rotary_index_list(self) -> list[int]:
        """Kept rotary frequencies as indices into the source's `range(head_dim // 2)`."""
        return list(range(self.head_dim // 2)) if self.rotary_indices is None else list(self.rotary_indices)

    @property
    def has_pruned_head_dims(self) -> bool:
        return self.qk_head_dim is not None or self.v_head_dim is not None or self.rotary_indices is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; the head-dim fields appear only when pruned (plans stay byte-compatible otherwise)."""
        data = asdict(self)
        for name in HEAD_DIM_FIELDS:
            if data[name] is None:
                del data[name]
        if "rotary_indices" in data:
            data["rotary_indices"] = list(data["rotary_indices"])
        return data


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
        qk_dims = _optional_per_layer(config, "layer_qk_head_dims", num_layers)
        v_dims = _optional_per_layer(config, "layer_v_head_dims", num_layers)
        rotary = _optional_per_layer(config, "layer_rotary_indices", num_layers)
        layers = tuple(
            LayerGeometry(h, k, head_dim, f, qk_head_dim=q, v_head_dim=v, rotary_indices=r)
            for h, k, f, q, v, r in zip(heads, kv, ffn, qk_dims, v_dims, rotary)
        )
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
        q_out = layer.num_heads * layer.qk_dim
        k_out = layer.num_kv_heads * layer.qk_dim
        v_out = layer.num_kv_heads * layer.v_dim
        o_in = layer.num_heads * layer.v_dim
        attn = hidden * (q_out + k_out + v_out) + o_in * hidden
        if self.qkv_bias:
            attn += q_out + k_out + v_out
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
        data = asdict(self)
        data["layers"] = [layer.to_dict() for layer in self.layers]
        return data


def require_uniform_head_dims(geometry: ModelGeometry, who: str) -> None:
    """Raise `ValueError` when some layer already has pruned q/k or v head dims (an ATP-pruned model), for methods
    whose scoring assumes one head dim per model."""
    pruned = [i for i, layer in enumerate(geometry.layers) if layer.has_pruned_head_dims]
    if pruned:
        raise ValueError(
            f"{who} assumes every attention head has the model's head dim, but layers {pruned} have pruned q/k or v "
            "head dims (an ATP-pruned model). Prune the original model instead, or use the `atp` / `l0` methods."
        )


def _per_layer(config: PretrainedConfig, field: str, default: int, num_layers: int) -> list[int]:
    values = getattr(config, field, None)
    if values is None:
        return [int(default)] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"config.{field} has {len(values)} entries but the model has {num_layers} layers.")
    return [int(v) for v in values]


def _optional_per_layer(config: PretrainedConfig, field: str, num_layers: int) -> list[Any]:
    """Per-layer head-dim entries (`None` per layer when the config has none)."""
    values = getattr(config, field, None)
    if values is None:
        return [None] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"config.{field} has {len(values)} entries but the model has {num_layers} layers.")
    return list(values)
