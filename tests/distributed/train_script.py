"""Run by `accelerate launch --cpu --num_processes N` (and by plain python for N = 1) from test_ddp.py.

A tiny llama, `PrunerCallback(<method>)` in a plain Trainer for a few steps, then `trainer.save_model()`.
Writes, per rank, the plan JSON and the final weights' checksum to OUT/rank{r}.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tailored_hf import PrunerCallback  # noqa: E402
from tailored_hf.methods import ATPConfig, DepGraphConfig, L0Config, MagnitudeConfig  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

METHODS = {
    "depgraph": lambda: DepGraphConfig(target_sparsity=0.3, num_calibration_samples=6, calibration_seq_len=8),
    "magnitude": lambda: MagnitudeConfig(target_sparsity=0.3),
    "l0": lambda: L0Config(target_sparsity=0.3, sparsity_warmup_steps=2, snapshot_interval=0.001),
    "atp": lambda: ATPConfig(target_sparsity=0.3, generator_lr=0.05, calibration_batch_size=2, removal_eval_batches=1),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def main(out: str, method: str, per_device_batch: int) -> None:
    torch.manual_seed(0)
    model = make_tiny_model("llama", num_hidden_layers=3, intermediate_size=64)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (16, 10), generator=g).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * 10] * 16})
    calibration = torch.randint(0, 96, (6, 8), generator=torch.Generator().manual_seed(1))
    args = TrainingArguments(
        output_dir=str(Path(out) / "run"),
        per_device_train_batch_size=per_device_batch,
        max_steps=3,
        learning_rate=1e-3,
        optim="adamw_torch",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    callback = PrunerCallback(METHODS[method](), calibration=calibration)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    trainer.save_model(str(Path(out) / "model"))
    rank = trainer.args.process_index
    state = {k: v.double().sum().item() for k, v in trainer.model.state_dict().items()}
    plan = {k: v for k, v in callback.method.plan.to_dict().items() if k != "metadata"}
    record = {"plan": plan, "weights": state, "world_size": trainer.args.world_size}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():  # leave together, as `Accelerator.end_training` does: a rank that exits
        torch.distributed.barrier()  # while another still saves can abort in gloo's teardown (seen once in CI)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
