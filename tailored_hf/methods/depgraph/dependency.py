"""The dependency pass: find the coupled parameter slices of a LLaMA-family model from its autograd graph.

This follows LLM-Pruner / DepGraph (and Tailored-LLaMA, arXiv 2410.19185, Eq. 1-2): a parameter dimension whose
only input is another module's output is coupled to it (inter-layer, out -> in), and dimensions joined by
element-wise operations (residual adds, the SwiGLU product) or normalised channel-wise (RMSNorm) are coupled
too (intra-layer). Coupling is closed by union-find over `(module, side)` and `(parameter, dim)` nodes.

How it is found, not hand-listed:

1. one forward pass on a few tokens with hooks on every parameter-owning leaf module (a PEFT LoRA layer counts as
   one leaf: its base weight and adapters) records the `grad_fn` of each module's input and output;
2. from every module input the autograd graph is walked back (`grad_fn.next_functions`) to the module outputs that
   produce it, remembering the operations on the way;
3. paths made only of channel-preserving operations (`AddBackward` residual joins, `MulBackward` gating, SiLU,
   views, dtype casts) couple the consumer's input dimension 1:1 with the producer's output dimension; paths through
   an attention operation (SDPA, or bmm/softmax for eager attention) join q/k/v outputs and the o_proj input into
   one attention block whose units are heads (head granularity and GQA grouping come from the config through
   `tailored_hf.arch`); a parameter shared by two modules (tied embeddings) couples them through that parameter.

Every closed component becomes a `GroupFamily`: `hidden` (the residual stream: embedding column, every norm weight,
every projection's input column, o_proj / down_proj output rows and biases, the lm_head column), `ffn` (gate/up rows
and the down_proj column of one channel), `kv_group` (one KV head's k/v rows, the q rows and o_proj columns of its
query heads) and, inside it, `head` (one query head's q rows and o_proj columns). Components that nothing can prune
(the vocabulary) are listed as `other`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ... import arch as A
from ...structure import ModelGeometry

KINDS = ("hidden", "kv_group", "head", "ffn")
TRACE_TOKENS = 8

# Operation names (without the `Backward<N>` suffix) that keep a channel where it is.
CHANNEL_PRESERVING_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Silu",
        "Gelu",
        "Sigmoid",
        "Tanh",
        "Relu",
        "ToCopy",
        "Clone",
        "Alias",
        "View",
        "UnsafeView",
        "Reshape",
        "ReshapeAlias",
        "Slice",
        "Select",
        "Expand",
        "Unsqueeze",
        "Squeeze",
        "NativeDropout",
        "Dropout",
        "Identity",
        "AsStrided",
    }
)
ATTENTION_OPS = frozenset({"Bmm", "Mm", "Softmax", "Baddbmm", "Matmul", "SafeSoftmax"})
VIEW_OPS = frozenset({"View", "Alias", "UnsafeView", "Reshape", "ReshapeAlias", "Slice", "Select", "ToCopy", "Clone"})
ROTARY_OPS = frozenset({"Cat", "Neg", "Mul", "Add"})
OP_DESCRIPTIONS = {
    "Add": "residual add",
    "Mul": "elementwise mul (gating)",
    "Silu": "silu",
    "Gelu": "gelu",
    "Cat": "rotary cat",
    "Neg": "rotary neg",
    "Transpose": "transpose",
    "View": "view",
    "Alias": "view",
    "ReshapeAlias": "reshape",
    "UnsafeView": "view",
    "Expand": "repeat_kv expand",
    "Bmm": "bmm",
    "Softmax": "softmax",
}


def _op_name(fn: Any) -> str:
    return re.sub(r"Backward\d*$", "", type(fn).__name__)


def _is_attention_op(op: str) -> bool:
    return op in ATTENTION_OPS or "ScaledDotProduct" in op or "Attention" in op


# ---------------------------------------------------------------------------------------------------- public types
@dataclass(frozen=True)
class MemberSpec:
    """One parameter dimension of a family: unit `u` covers indices `[u * width, (u + 1) * width)` along `dim`."""

    name: str
    dim: int
    width: int
    is_lora: bool = False
    ndim: int = 2

    def describe(self) -> str:
        """`q_proj.weight[8 rows]`, `o_proj.weight[:, 8 cols]`, `down_proj.weight[:, c]`, `norm.weight[c]`."""
        if self.ndim == 1:
            return f"{self.name}[{'c' if self.width == 1 else self.width}]"
        if self.width == 1:
            return f"{self.name}[c, :]" if self.dim == 0 else f"{self.name}[:, c]"
        return f"{self.name}[{self.width} rows]" if self.dim == 0 else f"{self.name}[:, {self.width} cols]"


@dataclass(frozen=True)
class GroupMember:
    """A concrete slice `[start, stop)` along `dim` of the parameter called `name` (relative to the causal LM)."""

    name: str
    dim: int
    start: int
    stop: int
    is_lora: bool = False

    def slice_of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.narrow(self.dim, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Group:
    """One prunable unit: every parameter slice that must go when it goes."""

    kind: str
    layer: int | None
    index: int
    members: tuple[GroupMember, ...]

    def zero_(self, model: nn.Module) -> None:
        """Zero exactly this group's parameter slices in `model` (plain or PEFT-wrapped)."""
        params = dict(A.unwrap_model(model).named_parameters())
        with torch.no_grad():
            for member in self.members:
                member.slice_of(params[member.name]).zero_()


@dataclass(frozen=True)
class GroupFamily:
    """All units of one coupled component (e.g. the FFN channels of layer 3), sharing one member layout."""

    kind: str
    layer: int | None
    num_units: int
    members: tuple[MemberSpec, ...]
    couplings: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.kind, self.layer)

    def group(self, index: int) -> Group:
        if not 0 <= index < self.num_units:
            raise IndexError(f"{self.kind} family of layer {self.layer} has {self.num_units} units; got {index}.")
        members = tuple(
            GroupMember(m.name, m.dim, index * m.width, (index + 1) * m.width, m.is_lora) for m in self.members
        )
        return Group(self.kind, self.layer, index, members)

    def groups(self) -> Iterator[Group]:
        for index in range(self.num_units):
            yield self.group(index)


# ---------------------------------------------------------------------------------------------------- tracing
@dataclass
class _Unit:
    """A parameter-owning leaf module (a LoRA layer counts as one) and the parameter dims on each of its sides."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "embedding" | "norm"
    in_members: list[tuple[str, int, bool]] = field(default_factory=list)
    out_members: list[tuple[str, int, bool]] = field(default_factory=list)
    in_fns: list[Any] = field(default_factory=list)
    out_fns: list[Any] = field(default_factory=list)
    in_size: int | None = None
    out_size: int | None = None


@dataclass(frozen=True)
class Edge:
    """A traced dependency: the input of `consumer` is (partly) computed from the output of `producer`."""

    consumer: str
    producer: str
    ops: tuple[str, ...]
    kind: str  # "identity" | "attention"


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and (hasattr(module, "lora_A") or hasattr(module, "lora_embedding_A"))


def _collect_units(lm: nn.Module) -> dict[str, _Unit]:
    canonical = {id(p): n for n, p in lm.named_parameters()}
    units: dict[str, _Unit] = {}
    wrapped: list[str] = []
    for name, module in lm.named_modules():
        if any(name.startswith(prefix + ".") for prefix in wrapped):
            continue
        if _is_lora_layer(module):
            wrapped.append(name)
            base = module.base_layer
            unit = _unit_for(name, module, base, canonical)
            for adapter in getattr(module, "lora_A", {}).values():
                unit.in_members.append((canonical[id(adapter.weight)], 1, True))
            for adapter in getattr(module, "lora_B", {}).values():
                unit.out_members.append((canonical[id(adapter.weight)], 0, True))
            for weight in getattr(module, "lora_embedding_B", {}).values():
                unit.out_members.append((canonical[id(weight)], 0, True))
            units[name] = unit
        elif next(module.parameters(recurse=False), None) is not None:
            units[name] = _unit_for(name, module, module, canonical)
    return units


def _unit_for(name: str, hooked: nn.Module, base: nn.Module, canonical: dict[int, str]) -> _Unit:
    params = dict(base.named_parameters(recurse=False))
    if isinstance(base, nn.Linear):
        unit = _Unit(name, hooked, "linear")
        unit.out_members.append((canonical[id(base.weight)], 0, False))
        if base.bias is not None:
            unit.out_members.append((canonical[id(base.bias)], 0, False))
        unit.in_members.append((canonical[id(base.weight)], 1, False))
        return unit
    if isinstance(base, nn.Embedding):
        unit = _Unit(name, hooked, "embedding")
        unit.out_members.append((canonical[id(base.weight)], 1, False))
        return unit
    if params and all(p.dim() == 1 for p in params.values()) and len({p.numel() for p in params.values()}) == 1:
        unit = _Unit(name, hooked, "norm")  # channel-wise: input and output channels are the same
        members = [(canonical[id(p)], 0, False) for p in params.values()]
        unit.in_members, unit.out_members = list(members), list(members)
        return unit
    raise A.UnsupportedArchitectureError(
        f"The dependency pass cannot handle module {name!r} ({type(base).__name__}) with parameters "
        f"{sorted(params)}; only Linear, Embedding, channel-wise norms and LoRA layers around them are supported."
    )


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value):
            return value
    return None


def _trace(lm: nn.Module, units: dict[str, _Unit], example_input: torch.Tensor) -> list[Edge]:
    """One forward with hooks, then a memoised backward walk from every module input to producing outputs."""
    out_owner: dict[Any, str] = {}

    def make_hook(unit: _Unit):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = _first_tensor(args, kwargs)
            y = output if torch.is_tensor(output) else _first_tensor(tuple(output), {})
            if x is not None and x.grad_fn is not None:
                unit.in_fns.append(x.grad_fn)
                unit.in_size = x.shape[-1]
            if y is not None and y.grad_fn is not None:
                unit.out_fns.append(y.grad_fn)
                out_owner[y.grad_fn] = unit.name
                unit.out_size = y.shape[-1]

        return hook

    params = list(lm.parameters())
    flags = [p.requires_grad for p in params]
    was_training = lm.training
    handles = [u.module.register_forward_hook(make_hook(u), with_kwargs=True) for u in units.values()]
    try:
        for p in params:
            p.requires_grad_(True)
        lm.eval()
        with torch.enable_grad():
            device = next(iter(params)).device
            logits = lm(input_ids=example_input.to(device), use_cache=False).logits
        edges = _walk(units, out_owner)
        del logits
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        lm.train(was_training)
    return edges


def _walk(units: dict[str, _Unit], out_owner: dict[Any, str]) -> list[Edge]:
    memo: dict[Any, dict[str, frozenset[str]]] = {}

    def reach(root: Any) -> dict[str, frozenset[str]]:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in memo:
                continue
            if node in out_owner:
                memo[node] = {out_owner[node]: frozenset()}
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in children if child not in memo)
                continue
            op = _op_name(node)
            merged: dict[str, set[str]] = defaultdict(set)
            for child in children:
                for producer, ops in memo[child].items():
                    merged[producer].update(ops)
                    merged[producer].add(op)
            memo[node] = {producer: frozenset(ops) for producer, ops in merged.items()}
        return memo[root]

    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for unit in units.values():
        for fn in unit.in_fns:
            for producer, ops in reach(fn).items():
                edges[(unit.name, producer)].update(ops)
    result = []
    for (consumer, producer), ops in edges.items():
        if any(_is_attention_op(op) for op in ops):
            kind = "attention"
        elif ops <= CHANNEL_PRESERVING_OPS and units[consumer].in_size == units[producer].out_size:
            kind = "identity"
        else:
            raise A.UnsupportedArchitectureError(
                f"Cannot derive the coupling between the output of {producer!r} and the input of {consumer!r}: the "
                f"path goes through {sorted(ops)} (channel sizes {units[producer].out_size} -> "
                f"{units[consumer].in_size}), which is neither channel-preserving nor attention."
            )
        result.append(Edge(consumer, producer, tuple(sorted(ops)), kind))
    return result


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, key: Any) -> Any:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def classes(self) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = defaultdict(list)
        for key in list(self.parent):
            out[self.find(key)].append(key)
        return out


# ---------------------------------------------------------------------------------------------------- the graph
class DependencyGraph:
    """The coupled groups of a model, found by tracing. Build with `DependencyGraph.build(model)`."""

    def __init__(
        self, families: list[GroupFamily], edges: list[Edge], geometry: ModelGeometry, model_type: str
    ) -> None:
        self._families = families
        self.edges = edges
        self.geometry = geometry
        self.model_type = model_type
        self._by_key = {f.key: f for f in families}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, model: nn.Module, example_input: torch.Tensor | None = None) -> DependencyGraph:
        """Trace `model` (plain or PEFT-wrapped; the causal LM underneath is traced) and close the coupling.

        Args:
            model: a LLaMA-family causal LM.
            example_input: token ids for the tracing forward (`[batch, length]`); a few tokens suffice.
        """
        lm = A.unwrap_model(model)
        arch = A.get_arch(lm)
        geometry = ModelGeometry.from_config(lm.config)
        if example_input is None:
            example_input = (torch.arange(TRACE_TOKENS) % geometry.vocab_size)[None]
        example_input = torch.as_tensor(example_input)
        if example_input.dim() == 1:
            example_input = example_input[None]
        units = _collect_units(lm)
        edges = _trace(lm, units, example_input[:1, :TRACE_TOKENS])
        roles = _roles(lm, arch, units)
        ndims = {name: p.dim() for name, p in lm.named_parameters()}
        families = _close(units, edges, roles, geometry, ndims)
        return cls(families, edges, geometry, arch.model_type)

    # ------------------------------------------------------------------ queries
    def families(self, kind: str | None = None) -> list[GroupFamily]:
        """Families of one kind (`hidden`, `kv_group`, `head`, `ffn`, `other`), or all of them."""
        return [f for f in self._families if kind is None or f.kind == kind]

    def family(self, kind: str, layer: int | None = None) -> GroupFamily:
        try:
            return self._by_key[(kind, layer)]
        except KeyError:
            raise KeyError(f"No {kind!r} family for layer {layer}; found {sorted(self._by_key, key=str)}.") from None

    def groups(self, kind: str | None = None, layer: int | None = None) -> list[Group]:
        """Every concrete group of `kind` (optionally of one layer)."""
        return [g for f in self.families(kind) if layer is None or f.layer == layer for g in f.groups()]

    def summary(self) -> str:
        """A table: group kind, count, member parameters with their slice dims, and what couples them."""
        geo = self.geometry
        first = geo.layers[0] if geo.layers else None
        lines = [
            f"DependencyGraph ({self.model_type}): {geo.num_layers} layers, hidden {geo.hidden_size}"
            + (
                f", {first.num_heads} query heads in {first.num_kv_heads} KV groups x head_dim {first.head_dim}, "
                f"FFN {first.intermediate_size}"
                if first
                else ""
            )
            + f", tied embeddings: {geo.tied_embeddings}",
            f"{len(self.edges)} traced dependencies "
            f"({sum(e.kind == 'attention' for e in self.edges)} through attention).",
        ]
        header = f"{'kind':<9} {'families':>8} {'groups':>7}  members (parameter[slice], x = count)  | coupled through"
        lines += [header, "-" * len(header)]
        for kind in (*KINDS, "other"):
            families = self.families(kind)
            if not families:
                continue
            count = sum(f.num_units for f in families)
            members: dict[str, int] = defaultdict(int)
            couplings: set[str] = set()
            for f in families:
                for m in f.members:
                    members[re.sub(r"\.layers\.\d+\.", ".layers.{i}.", m.describe())] += 1
                couplings.update(f.couplings)
            per = [f"{name}" + (f" x{n}" if n > 1 else "") for name, n in members.items()]
            lines.append(f"{kind:<9} {len(families):>8} {count:>7}  {per[0]}")
            lines.extend(f"{'':<27}{item}" for item in per[1:])
            lines.append(f"{'':<27}| {', '.join(sorted(couplings)) or '-'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = {k: sum(f.num_units for f in self.families(k)) for k in KINDS}
        return f"DependencyGraph({self.model_type}, {counts})"


# ---------------------------------------------------------------------------------------------------- closure
def _roles(lm: nn.Module, arch: A.ArchSpec, units: dict[str, _Unit]) -> dict[str, tuple[str, int | None]]:
    """Unit name -> (role, layer) through the architecture table (used to name families, never to couple)."""
    by_id = {id(u.module): name for name, u in units.items()}
    roles: dict[str, tuple[str, int | None]] = {}
    for index, layer in enumerate(A.decoder_layers(lm)):
        attn, mlp = A.attention(layer, arch), A.mlp(layer, arch)
        for role in ("q_proj", "k_proj", "v_proj", "o_proj"):
            roles[by_id[id(getattr(attn, getattr(arch, role)))]] = (role, index)
        for role in ("gate_proj", "up_proj", "down_proj"):
            roles[by_id[id(getattr(mlp, getattr(arch, role)))]] = (role, index)
    roles[by_id[id(A.embedding(lm))]] = ("embedding", None)
    return roles


def _close(
    units: dict[str, _Unit],
    edges: list[Edge],
    roles: dict[str, tuple[str, int | None]],
    geometry: ModelGeometry,
    ndims: dict[str, int],
) -> list[GroupFamily]:
    uf = _UnionFind()
    owners: dict[tuple[str, int], set[str]] = defaultdict(set)
    for name, unit in units.items():
        if not unit.in_fns and not unit.out_fns:
            continue  # never ran in the traced forward (e.g. an inactive PEFT `modules_to_save` copy)
        for side, members in (("in", unit.in_members), ("out", unit.out_members)):
            uf.find((side, name))
            for param, dim, _ in members:
                uf.union((side, name), ("param", param, dim))
                owners[(param, dim)].add(name)
        if unit.kind == "norm":
            uf.union(("in", name), ("out", name))
    for edge in edges:
        if edge.kind == "identity":
            uf.union(("in", edge.consumer), ("out", edge.producer))
    classes = uf.classes()
    lora = {(p, d): is_lora for u in units.values() for p, d, is_lora in (*u.in_members, *u.out_members)}

    def spec(param: str, dim: int, width: int) -> MemberSpec:
        return MemberSpec(param, dim, width, lora[(param, dim)], ndims[param])

    def class_members(root: Any) -> list[tuple[str, int]]:
        return sorted((k[1], k[2]) for k in classes[root] if k[0] == "param")

    # Attention blocks: identity classes joined by attention edges.
    blocks = _UnionFind()
    for edge in edges:
        if edge.kind == "attention":
            blocks.union(uf.find(("in", edge.consumer)), uf.find(("out", edge.producer)))
    block_of = {root: blocks.find(root) for root in classes if root in blocks.parent}
    consumers_of_attention = {uf.find(("in", e.consumer)) for e in edges if e.kind == "attention"}

    def couplings(root: Any) -> tuple[str, ...]:
        nodes = {k[1] for k in classes[root] if k[0] in ("in", "out")}
        inputs = {k[1] for k in classes[root] if k[0] == "in"}
        found = set()
        for edge in edges:
            if edge.kind == "identity" and edge.consumer in inputs:
                found.update(OP_DESCRIPTIONS.get(op, op.lower()) for op in edge.ops if op not in VIEW_OPS)
        if any(units[n].kind == "norm" for n in nodes):
            found.add("norm (channel-wise)")
        if any(len(owners[pd]) > 1 for pd in class_members(root)):
            found.add("shared parameter (tied)")
        return tuple(sorted(found))

    families: list[GroupFamily] = []
    done_blocks = set()
    for root in classes:
        members = class_members(root)
        if not members:
            continue
        size = _class_size(units, classes[root], root)
        if root in block_of:
            block = block_of[root]
            if block not in done_blocks:
                done_blocks.add(block)
                families.extend(
                    _attention_families(
                        block,
                        block_of,
                        classes,
                        consumers_of_attention,
                        units,
                        edges,
                        roles,
                        geometry,
                        class_members,
                        spec,
                    )
                )
            continue
        nodes = [k for k in classes[root] if k[0] in ("in", "out")]
        embed = [n for side, n in nodes if side == "out" and roles.get(n, ("",))[0] == "embedding"]
        downs = [roles[n] for side, n in nodes if side == "in" and roles.get(n, ("",))[0] == "down_proj"]
        specs = tuple(spec(p, d, 1) for p, d in members)
        if embed:
            families.append(GroupFamily("hidden", None, size, specs, couplings(root)))
        elif downs:
            families.append(GroupFamily("ffn", downs[0][1], size, specs, couplings(root)))
        else:
            families.append(GroupFamily("other", None, size, specs, couplings(root)))
    order = {kind: i for i, kind in enumerate((*KINDS, "other"))}
    families.sort(key=lambda f: (f.layer is not None, f.layer or 0, order[f.kind]))
    return families


def _class_size(units: dict[str, _Unit], keys: list[Any], root: Any) -> int:
    sizes = set()
    for key in keys:
        if key[0] == "in" and units[key[1]].in_size is not None:
            sizes.add(units[key[1]].in_size)
        elif key[0] == "out" and units[key[1]].out_size is not None:
            sizes.add(units[key[1]].out_size)
    if len(sizes) != 1:
        names = sorted({k[1] for k in keys if k[0] in ("in", "out")})
        raise A.UnsupportedArchitectureError(
            f"Coupled dimensions of {names[:6]} have different sizes {sorted(sizes)}; cannot form channel groups."
        )
    return sizes.pop()


def _attention_families(
    block: Any,
    block_of: dict[Any, Any],
    classes: dict[Any, list[Any]],
    consumers: set[Any],
    units: dict[str, _Unit],
    edges: list[Edge],
    roles: dict[str, tuple[str, int | None]],
    geometry: ModelGeometry,
    class_members,
    spec,
) -> list[GroupFamily]:
    roots = [r for r, b in block_of.items() if b == block]
    layer_ids = {roles[k[1]][1] for r in roots for k in classes[r] if k[0] in ("in", "out") and k[1] in roles}
    if len(layer_ids) != 1 or None in layer_ids:
        raise A.UnsupportedArchitectureError(f"An attention block spans layers {sorted(map(str, layer_ids))}.")
    layer = layer_ids.pop()
    geo = geometry.layers[layer]
    hd, per_group = geo.head_dim, geo.heads_per_group
    q_size, kv_size = geo.num_heads * hd, geo.num_kv_heads * hd
    ops = sorted(
        {op for e in edges if e.kind == "attention" and roles.get(e.consumer, ("", -1))[1] == layer for op in e.ops}
    )
    couplings = (_describe_attention(ops),)
    head_specs, kv_specs = [], []
    for root in roots:
        size = _class_size(units, classes[root], root)
        query_side = root in consumers or size == q_size and size != kv_size
        if size not in (q_size, kv_size) or (root in consumers and size != q_size):
            raise A.UnsupportedArchitectureError(
                f"Layer {layer}: an attention dimension of size {size} matches neither {geo.num_heads} query heads "
                f"nor {geo.num_kv_heads} KV heads of head_dim {hd} (config: {geometry.model_type})."
            )
        for p, d in class_members(root):
            if query_side or per_group == 1:
                head_specs.append(spec(p, d, hd))
            kv_specs.append(spec(p, d, hd * per_group if query_side else hd))
    return [
        GroupFamily("kv_group", layer, geo.num_kv_heads, tuple(sorted(kv_specs, key=_spec_order)), couplings),
        GroupFamily("head", layer, geo.num_heads, tuple(sorted(head_specs, key=_spec_order)), couplings),
    ]


def _describe_attention(ops: list[str]) -> str:
    parts = [op for op in ops if _is_attention_op(op)]
    if set(ops) & ROTARY_OPS:
        parts.append("rotary")
    if set(ops) & (VIEW_OPS | {"Transpose"}):
        parts.append("head split/merge views")
    if "Expand" in ops:
        parts.append("repeat_kv")
    return f"attention: {', '.join(parts)}"


def _spec_order(spec: MemberSpec) -> tuple:
    return (spec.is_lora, spec.name, spec.dim)
