"""Run by test_resume.py: train a tiny LoRA-wrapped llama with `PrunerCallback`, checkpoint every 2 steps.

    python resume_script.py OUT METHOD [--die-at STEP] [--resume]

`--die-at` SIGKILLs the process at the end of that step (after the checkpoint of the step before was written);
`--resume` continues from the newest checkpoint in OUT/run. Writes OUT/result.json (plan + weight checksums).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tailored_hf import PrunerCallback  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402
from tests.distributed.train_script import METHODS  # noqa: E402


class DieAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("method")
    parser.add_argument("--die-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()
    torch.manual_seed(0)
    model = make_tiny_model("llama", num_hidden_layers=3, intermediate_size=64)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (24, 10), generator=g).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * 10] * 24})
    calibration = torch.randint(0, 96, (6, 8), generator=torch.Generator().manual_seed(1))
    args = TrainingArguments(
        output_dir=str(Path(cli.out) / "run"),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        optim="adamw_torch",
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callbacks = [PrunerCallback(METHODS[cli.method](), calibration=calibration)]
    if cli.die_at is not None:
        callbacks.append(DieAt(cli.die_at))
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=cli.resume or None)
    trainer.save_model(str(Path(cli.out) / "model"))
    state = {k: v.double().sum().item() for k, v in trainer.model.state_dict().items()}
    plan = {k: v for k, v in callbacks[0].method.plan.to_dict().items() if k != "metadata"}
    (Path(cli.out) / "result.json").write_text(json.dumps({"plan": plan, "weights": state}))


if __name__ == "__main__":
    main()
