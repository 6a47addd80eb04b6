"""Recipes: flat YAML files (alignment-handbook style) resolved into a [`PipelineConfig`].

A recipe's keys are, in one flat mapping:

1. fields of [`~tailored_hf.pipeline.PipelineConfig`] (model, task, method, target_sparsity, k_shots, prompt, ...),
2. fields of the selected method's config dataclass (e.g. `DepGraphConfig.importance`, `round_to`), collected into
   `PipelineConfig.method_kwargs`,
3. fields of `trl.SFTConfig` / `transformers.TrainingArguments` (e.g. `gradient_accumulation_steps`, `max_steps`,
   `save_strategy`), collected into `PipelineConfig.training_kwargs`.

A key that several of these share goes to the pipeline field, which forwards it (`target_sparsity` and `seed` to the
method config; `learning_rate`, `num_train_epochs`, `warmup_ratio`, `max_length` and `seed` to `SFTConfig`).

This module is the only place that reads YAML (with `yaml.safe_load`); the CLI calls it, nothing below it does.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .methods import METHOD_REGISTRY
from .pipeline import PipelineConfig

#: Keys every recipe must state (the rest have defaults).
REQUIRED_KEYS = ("model", "task", "method", "target_sparsity")
#: Pipeline fields a recipe does not set directly (they are filled from the flat keys).
_NESTED_FIELDS = ("method_kwargs", "training_kwargs")


class RecipeError(ValueError):
    """A recipe or a `--set` override is invalid; the message names the key and the fix."""


# ------------------------------------------------------------------------------------------------ field tables
def _field_table(cls: type) -> dict[str, tuple[Any, str]]:
    """`name -> (resolved type, help)` of a dataclass."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolved forward references: fall back to the raw annotations
        hints = {}
    return {
        f.name: (hints.get(f.name, f.type), f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)
        if f.init and not f.name.startswith("_")
    }


def pipeline_fields() -> dict[str, tuple[Any, str]]:
    return {k: v for k, v in _field_table(PipelineConfig).items() if k not in _NESTED_FIELDS}


def method_fields(method: str) -> dict[str, tuple[Any, str]]:
    if method not in METHOD_REGISTRY:
        close = difflib.get_close_matches(str(method), list(METHOD_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"Unknown method {method!r}; registered methods: {sorted(METHOD_REGISTRY)}.{hint}")
    return _field_table(METHOD_REGISTRY[method].config_class)


def training_fields() -> dict[str, tuple[Any, str]]:
    from trl import SFTConfig

    return _field_table(SFTConfig)


def valid_keys(method: str) -> list[str]:
    """Every key a recipe for `method` may use."""
    return sorted(set(pipeline_fields()) | set(method_fields(method)) | set(training_fields()))


# ------------------------------------------------------------------------------------------------ type checks
def type_label(tp: Any) -> str:
    """A readable name of an annotation (`float`, `str | None`, `tuple[int, int] | None`)."""
    if isinstance(tp, str):
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_label(a) for a in args)}]" if args else name
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, raw: str | None) -> Any:
    if tp is Any or tp is object or isinstance(tp, str):
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # Prefer the member that matches the parsed value itself (an int stays an int in `int | str`).
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, member, raw)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:  # an int is a valid float (and TrainingArguments' `save_steps: float` means steps when > 1)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()):
            return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if raw is not None and value is not None and not isinstance(value, (list, dict)):
            return raw  # `--set model=1234`: the text as typed
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value if isinstance(value, str) else tp(value)
        except ValueError as err:
            raise _Mismatch from err
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, None) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, None) for v in value]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    return value  # anything else: the dataclass validates it


def coerce(key: str, value: Any, tp: Any, raw: str | None = None, source: str = "recipe") -> Any:
    """Check `value` against the field type `tp`; raise `RecipeError` naming the field's type otherwise."""
    try:
        return _coerce(value, tp, raw)
    except _Mismatch:
        shown = raw if raw is not None else repr(value)
        prefix = f"--set {key}={raw}" if source == "--set" else f"{source}: {key}: {value!r}"
        raise RecipeError(
            f"{prefix}: {key} expects {type_label(tp)}, got {shown!r} ({type(value).__name__})."
        ) from None


# ------------------------------------------------------------------------------------------------ loading
def read_recipe(path: str | Path) -> dict[str, Any]:
    """The flat mapping of a recipe file (`yaml.safe_load`)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe {path} not found; recipes live under recipes/<method>/<task>-<ratio>.yaml.")
    data = yaml.safe_load(path.read_text())
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise RecipeError(f"Recipe {path} must be a flat YAML mapping of field names to values.")
    return data


def parse_set(items: Iterable[str]) -> list[tuple[str, Any, str]]:
    """`["k=v", ...]` -> `[(key, parsed value, raw text)]`; values are parsed as YAML scalars / flow lists."""
    parsed = []
    for item in items:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key=value (e.g. --set eval_limit=20).")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key, value, raw))
    return parsed


def resolve(
    values: Mapping[str, Any],
    overrides: Iterable[tuple[str, Any, str]] = (),
    output_dir: str | None = None,
    source: str = "recipe",
    **extra: Any,
) -> PipelineConfig:
    """Turn a flat recipe mapping plus `--set` overrides into a validated `PipelineConfig`.

    Args:
        values: the recipe's keys.
        overrides: `parse_set` output; applied after the recipe.
        output_dir: overrides the recipe's `output_dir`.
        source: name used in error messages (the recipe path).
        **extra: further `PipelineConfig` fields set by the caller (e.g. `resume`, `progress`).

    Raises:
        `RecipeError`: an unknown key (with the closest valid one), a missing required key, a value of the wrong
            type (with the field's type), or a config that fails validation.
    """
    merged: dict[str, tuple[Any, str | None, str]] = {k: (v, None, source) for k, v in values.items()}
    for key, value, raw in overrides:
        merged[key] = (value, raw, "--set")
    missing = [k for k in REQUIRED_KEYS if k not in merged]
    if missing:
        raise RecipeError(f"{source}: missing required key {missing[0]!r} (every recipe sets {list(REQUIRED_KEYS)}).")
    method = merged["method"][0]
    pipe, meth, train = pipeline_fields(), method_fields(method), training_fields()
    kwargs: dict[str, Any] = {}
    method_kwargs: dict[str, Any] = {}
    training_kwargs: dict[str, Any] = {}
    for key, (value, raw, origin) in merged.items():
        if key in pipe:
            kwargs[key] = coerce(key, value, pipe[key][0], raw, origin)
        elif key in meth:
            method_kwargs[key] = coerce(key, value, meth[key][0], raw, origin)
        elif key in train:
            training_kwargs[key] = coerce(key, value, train[key][0], raw, origin)
        else:
            close = difflib.get_close_matches(key, valid_keys(method), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f"--set {key}" if origin == "--set" else f"{origin}: key {key!r}"
            raise RecipeError(
                f"{where}: unknown key {key!r} (not a pipeline, {method} method or SFTConfig field).{hint} "
                "See `tailored-hf run --help` for every valid key."
            )
    if output_dir is not None:
        kwargs["output_dir"] = output_dir
    kwargs.update(extra)
    try:
        return PipelineConfig(**kwargs, method_kwargs=method_kwargs, training_kwargs=training_kwargs)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{source}: {err}") from err


def load_recipe(
    path: str | Path, overrides: Iterable[str] = (), output_dir: str | None = None, **extra: Any
) -> PipelineConfig:
    """Read a recipe file, apply `key=value` overrides and return the `PipelineConfig`.

    Without an `output_dir` in the recipe or the arguments, outputs go to `outputs/<recipe-dir>/<recipe-name>`.
    """
    path = Path(path)
    values = read_recipe(path)
    if output_dir is None and "output_dir" not in values:
        output_dir = str(Path("outputs") / path.parent.name / path.stem)
    return resolve(values, parse_set(overrides), output_dir=output_dir, source=str(path), **extra)


def fields_help(width: int = 119) -> str:
    """Every recipe key with its type and help text, grouped (pipeline, each method, SFTConfig)."""
    import textwrap

    def block(title: str, table: dict[str, tuple[Any, str]]) -> list[str]:
        lines = [title]
        for name, (tp, help_text) in table.items():
            head = f"  {name} ({type_label(tp)})"
            body = " ".join((help_text or "").split())
            lines.append(head)
            if body:
                lines += textwrap.wrap(body, width, initial_indent="      ", subsequent_indent="      ")
        return lines + [""]

    out = block("Pipeline keys (tailored_hf.pipeline.PipelineConfig):", pipeline_fields())
    for name, cls in sorted(METHOD_REGISTRY.items()):
        out += block(f"Method keys, method: {name} ({cls.config_class.__name__}):", method_fields(name))
    out += block("Training keys (trl.SFTConfig / transformers.TrainingArguments):", training_fields())
    return "\n".join(out)
