"""PrunerCallback in a plain Trainer and in TRL's SFTTrainer, with and without a peft_config (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
)

from tailored_hf import PrunerCallback, UnsupportedArchitectureError
from tailored_hf.methods import DepGraphConfig, MagnitudeConfig
from tailored_hf.structure import PLAN_FILENAME, PruningPlan, count_parameters

from .conftest import make_tiny_model, prompt_rows, token_rows, training_args

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def method_config(name: str, target: float):
    """The two prune-at-init methods under test: magnitude and the dependency-group pass (Taylor)."""
    if name == "magnitude":
        return MagnitudeConfig(target_sparsity=target)
    return DepGraphConfig(target_sparsity=target, num_calibration_samples=4, calibration_seq_len=8)


def calibration_ids() -> torch.Tensor:
    return torch.randint(0, 90, (4, 8), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["magnitude", "depgraph"])
@pytest.mark.parametrize("with_lora", [False, True])
def test_callback_in_plain_trainer(tmp_path, with_lora, method):
    from peft import get_peft_model

    model = make_tiny_model("llama", tied=True, num_hidden_layers=4, intermediate_size=96)
    if with_lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS))
    dense = model.num_parameters() if not with_lora else model.get_base_model().num_parameters()
    callback = PrunerCallback(method_config(method, 0.3), calibration=calibration_ids())
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=token_rows(), callbacks=[callback])
    assert count_parameters(trainer.model) < dense  # pruned at construction, before any optimizer exists
    assert trainer.optimizer is None
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "pruning/sparsity" in entry]
    assert logged and abs(logged[0]["pruning/sparsity"] - 0.3) < 0.03
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / PLAN_FILENAME).is_file()
    assert not (tmp_path / "final" / "adapter_config.json").exists()  # merged, not an adapter
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    ids = torch.randint(0, 90, (2, 8))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("method", ["magnitude", "depgraph"])
def test_callback_in_sft_trainer_with_peft_config(tmp_path, tokenizer, method):
    from trl import SFTConfig, SFTTrainer

    model = make_tiny_model("qwen2", tied=False, num_hidden_layers=4, intermediate_size=96)
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_length=32,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=prompt_rows(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS),
        callbacks=[PrunerCallback(method_config(method, 0.25), calibration=calibration_ids())],
    )
    base = trainer.model.get_base_model()
    plan = base.tailored_hf_plan
    assert count_parameters(base) == plan.num_parameters()["pruned"]  # LoRA weights not counted
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    trainer.save_model(str(tmp_path / "final"))
    saved = PruningPlan.load(tmp_path / "final")
    assert saved.to_dict()["layers"] == plan.to_dict()["layers"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").num_parameters() == plan.num_parameters()["pruned"]


def test_adapter_kept_on_pruned_base(tmp_path):
    from peft import PeftModel, get_peft_model

    model = get_peft_model(
        make_tiny_model("llama", num_hidden_layers=4, intermediate_size=96),
        LoraConfig(r=4, target_modules=LORA_TARGETS),
    )
    callback = PrunerCallback(MagnitudeConfig(0.3), merge_adapters_on_save=False)
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=token_rows(), callbacks=[callback])
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    restored = PeftModel.from_pretrained(base, tmp_path / "final" / "adapter").eval()
    ids = torch.randint(0, 90, (2, 8))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            restored(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def test_checkpoints_carry_json_state(tmp_path):
    model = make_tiny_model("llama", num_hidden_layers=4, intermediate_size=96)
    args = training_args(tmp_path, save_strategy="steps", save_steps=2)
    trainer = Trainer(
        model=model, args=args, train_dataset=token_rows(), callbacks=[PrunerCallback(MagnitudeConfig(0.3))]
    )
    trainer.train()
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "tailored_hf_state.json").read_text())
    assert state["plan"]["layers"] == model.tailored_hf_plan.to_dict()["layers"]
    assert (tmp_path / "run" / "checkpoint-2" / PLAN_FILENAME).is_file()


def test_unsupported_model_fails_at_trainer_construction(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96))
    with pytest.raises(UnsupportedArchitectureError, match="LLaMA family"):
        Trainer(
            model=gpt2,
            args=training_args(tmp_path),
            train_dataset=token_rows(),
            callbacks=[PrunerCallback(MagnitudeConfig(0.2))],
        )


def test_unknown_config_type_is_rejected():
    with pytest.raises(ValueError, match="No pruning method accepts"):
        PrunerCallback(object())  # type: ignore[arg-type]


def test_metrics_set_at_train_end_reach_the_log_history(tmp_path):
    from dataclasses import dataclass

    from tailored_hf.methods.base import MethodConfig, PruningMethod, register_method

    @dataclass
    class TrainEndConfig(MethodConfig):
        target_sparsity: float = 0.3

    @register_method("test_train_end_metrics")
    class TrainEndMethod(PruningMethod):
        config_class = TrainEndConfig

        def on_train_end(self, model, **context):
            self.metrics["removal_loss_delta"] = 0.125

    model = make_tiny_model("llama")
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=token_rows(),
        callbacks=[PrunerCallback(TrainEndConfig())],
    )
    trainer.train()
    last = trainer.state.log_history[-1]
    assert last["pruning/removal_loss_delta"] == 0.125 and last["step"] == trainer.state.global_step


def test_training_time_methods_refuse_sharded_parameters():
    """ZeRO-3 parameters (`ds_id`) and FSDP1 flat parameters are detected; init-time plans are not refused."""
    from tailored_hf.distributed import sharded_parameter_kind
    from tailored_hf.methods import L0Config
    from tailored_hf.structure.simple import magnitude_plan

    model = make_tiny_model("llama", num_hidden_layers=2)
    assert sharded_parameter_kind(model) is None
    PrunerCallback(L0Config(target_sparsity=0.3)).check_unsharded(model)  # whole parameters: fine
    model.model.embed_tokens.weight.ds_id = 0  # what DeepSpeed ZeRO-3 attaches to partitioned parameters
    assert sharded_parameter_kind(model) == "DeepSpeed ZeRO-3"
    with pytest.raises(ValueError, match="sharded by DeepSpeed ZeRO-3.*DDP"):
        PrunerCallback(L0Config(target_sparsity=0.3)).check_unsharded(model)
    pruned_at_init = PrunerCallback(MagnitudeConfig(target_sparsity=0.3))
    pruned_at_init.method.plan = magnitude_plan(model, 0.3)
    pruned_at_init.check_unsharded(model)  # already pruned before the wrapper: trains sharded like any model
