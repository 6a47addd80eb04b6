"""Where a soft-masked training step's extra activation memory goes: bytes saved for backward, per mask kind.

One LoRA training forward of SmolLM2-135M-Instruct on a real C4 window (NutePrune's training data), with soft
(differentiable) masks on attention heads, FFN channels and hidden dims as L0 / NutePrune trains them, against the same
forward without masks. Saved tensors are counted with `torch.autograd.graph.saved_tensors_hooks` (each storage once,
parameters excluded), so the figures are exact bytes, free of allocator and timing noise. Reference rows keep the
masked RMSNorms' intermediates and the FFN product `act(gate) * up` (what `RuntimeMasks` did before it recomputed them
in backward).

    .venv/bin/python benchmarks/mask_memory.py            # ~1 min; writes benchmarks/results/mask_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, add_model_arguments

RESULTS = RESULTS_DIR / "mask_memory"
# NutePrune's LoRA (scripts/cotrain.sh): rank 8 on the query and value projections, as in benchmarks/nuteprune.py.
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lora-targets", nargs="+", default=list(DEFAULT_LORA_TARGETS))
    parser.add_argument("--out", default=str(RESULTS))
    return parser.parse_args()


def saved_mib(model, input_ids: torch.Tensor, masks) -> float:
    """MiB of activations autograd keeps for backward during one training forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params and pointer not in seen:
            seen.add(pointer)
            total += tensor.untyped_storage().nbytes()
        return tensor

    with masks, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids, labels=input_ids)
    return total / 2**20


def main() -> None:
    args = parse_args()
    from peft import LoraConfig, get_peft_model

    from tailored_hf import load_model
    from tailored_hf.data.calibration import calibration_batches
    from tailored_hf.structure.masks import RuntimeMasks, masked_rms_norm

    class StoredNormMasks(RuntimeMasks):
        """The reference: masked RMSNorms keep every intermediate for backward."""

        def _norm_hook(self, module, hook_args, output):
            if self.hidden is None:
                return None
            return masked_rms_norm(hook_args[0], module.weight, self.hidden, module.variance_epsilon)

    class StoredProductMasks(RuntimeMasks):
        """The reference: a soft FFN mask multiplies the stored product `act(gate) * up` (kept for its gradient)."""

        def _ffn_factor_hook(self, index, name):
            return lambda module, hook_args, output: None

    class StoredBothMasks(StoredNormMasks, StoredProductMasks):
        """Both references at once."""

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=args.lora_targets))
    config = model.get_base_model().config
    input_ids = calibration_batches(tokenizer, "c4", n_samples=1, seq_len=args.seq_len, data_dir=args.data_dir)

    def soft(size: int) -> torch.Tensor:  # a differentiable mask value in (0, 1), as a hard-concrete sample
        return torch.sigmoid(torch.full((size,), 1.0, requires_grad=True))

    layers = range(config.num_hidden_layers)
    setters: dict[str, Callable[[Any], None]] = {
        "heads": lambda m: [m.set_heads(i, soft(config.num_attention_heads)) for i in layers],
        "ffn": lambda m: [m.set_ffn(i, soft(config.intermediate_size)) for i in layers],
        "hidden": lambda m: m.set_hidden(soft(config.hidden_size)),
    }

    def measure(kinds: tuple[str, ...], masks_class: type = RuntimeMasks) -> float:
        masks = masks_class(model)
        for kind in kinds:
            setters[kind](masks)
        return saved_mib(model, input_ids, masks)

    rows = {"plain LoRA": measure(())}
    for kind in setters:
        rows[f"+ {kind} mask"] = measure((kind,))
    rows["+ all three"] = measure(tuple(setters))
    rows["+ ffn mask, storing the product"] = measure(("ffn",), StoredProductMasks)
    rows["+ hidden mask, norms storing intermediates"] = measure(("hidden",), StoredNormMasks)
    rows["+ all three, storing both"] = measure(tuple(setters), StoredBothMasks)
    # What L0 trains with: a hard-concrete sample, whose gates clamped to exactly 0 or 1 pass no gradient, so the
    # hidden-output hooks keep only the unclamped channels (`grad_support`); at initialisation (1% drop rate).
    from tailored_hf.methods.l0 import L0Config, L0Masks
    from tailored_hf.structure import ModelGeometry

    l0 = L0Masks(ModelGeometry.from_config(config), L0Config(target_sparsity=0.2))
    sample = l0.sample(torch.Generator().manual_seed(0))
    setters["hidden, an L0 sample at init"] = lambda m: m.set_hidden(
        sample.hidden, grad_support=sample.hidden_grad_support
    )
    setters["all three, an L0 sample at init"] = sample.install
    for kind in ("hidden, an L0 sample at init", "all three, an L0 sample at init"):
        rows[f"+ {kind}"] = measure((kind,))
    unclamped = sample.hidden_grad_support.numel()
    base = rows["plain LoRA"]
    report = {
        "settings": {**vars(args), "tokens": int(input_ids.numel())},
        "saved_mib": rows,
        "ratio_to_plain": {name: value / base for name, value in rows.items()},
        "l0_sample_unclamped_hidden": unclamped,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Activation bytes saved for backward: soft masks on {args.model}",
        "",
        f"One training forward, 1 x {args.seq_len} C4 tokens, LoRA r=8 on {', '.join(args.lora_targets)}; "
        "saved tensors counted once per storage, parameters excluded (exact bytes, no timing or allocator noise).",
        "",
        "| forward | saved (MiB) | vs plain LoRA |",
        "|---|---|---|",
        *(f"| {name} | {value:.1f} | {value / base:.2f}x |" for name, value in rows.items()),
        "",
        f"The L0 sample rows: {unclamped} of {config.hidden_size} hidden gates strictly between 0 and 1 (the rest "
        "clamped, no gradient), so each masked residual output keeps only those channels for backward.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/mask_memory.py`.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
