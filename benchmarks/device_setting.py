"""Device, memory and model-loading helpers shared by the cost benchmarks (CPU here, CUDA on a lent GPU).

Speed and memory depend on a model's shapes, not on its weights. On a lent GPU machine only 64 MiB of files travel,
less than SmolLM2-135M's weights, so the cost benchmarks there build the model from its configuration with seeded
random weights (`--random-weights`, from a folder written by `export_shapes`: configuration and tokenizer, no
weights). Heterogeneous pruned shapes, which do depend on the real weights, are computed here and travel as their
configurations (`benchmarks/performance.py --save-shapes`). Quality is never measured on random weights.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import torch
from common import add_model_arguments


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="'auto': cuda if available")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build `--model` (a folder with a config and a tokenizer) with seeded random weights: for speed and "
        "memory only, where the real weights cannot travel",
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Waits for queued kernels, so that wall-clock intervals cover the work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """The peak so far: tensors allocated on the GPU, or the process's peak RSS on the CPU (a high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_memory_mib(device: torch.device) -> float:
    """Memory held now: allocated GPU tensors, or (on the CPU) the peak RSS so far, the baseline of an increase."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return peak_memory_mib(device)


def load_benchmark_model(name: str, random_weights: bool = False, seed: int = 0):
    """`(model, tokenizer)`: `tailored_hf.load_model(name)`, or the model built from `name`'s config with random
    weights drawn under `seed` (fp32, like the loaded model)."""
    if not random_weights:
        from tailored_hf import load_model

        return load_model(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import tailored_hf  # noqa: F401  (registers the `tailored_llama` Auto classes for pruned shapes)

    config = AutoConfig.from_pretrained(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def export_shapes(name: str, out_dir: str | Path) -> Path:
    """Writes `name`'s configuration, generation config and tokenizer (no weights) to `out_dir`."""
    from tailored_hf import load_model

    model, tokenizer = load_model(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Export a model's configuration and tokenizer, without weights.")
    add_model_arguments(parser, data_dir=False)
    parser.add_argument("out_dir")
    cli = parser.parse_args()
    print(export_shapes(cli.model, cli.out_dir))
