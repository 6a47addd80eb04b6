"""ATP (arXiv 2412.14426): generator, LoRA-aware forwards, group lasso, budget, Trainer / SFTTrainer runs, resume."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from tailored_hf import PrunerCallback
from tailored_hf.methods.atp import (
    ATPConfig,
    ATPForwards,
    ATPMethod,
    CalibrationStream,
    DecisionGenerator,
    EmptyCalibrationError,
    LayerDecision,
    ParameterBudget,
    decision_lengths,
    expanded_masks,
    group_lasso,
    sparsity_loss,
    straight_through,
)
from tailored_hf.structure import (
    PLAN_FILENAME,
    ModelGeometry,
    PruningPlan,
    RuntimeMasks,
    apply_plan,
    count_parameters,
)

from ..conftest import input_batch, make_tiny_model, token_rows
from ..conftest import training_args as shared_training_args

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = 1e-5


def lora_model(kind: str = "llama", tied: bool = False, seed: int = 0, **sizes):
    model = get_peft_model(
        make_tiny_model(kind, tied=tied, seed=seed, **sizes), LoraConfig(r=4, target_modules=LORA_TARGETS)
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero B so that LoRA branches matter in every check
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return model.eval()


def random_decisions(model, seed: int = 0, config: ATPConfig | None = None) -> list[LayerDecision]:
    geometry = ModelGeometry.from_config(
        model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    )
    g = torch.Generator().manual_seed(seed)
    out = []
    for row in decision_lengths(geometry, config or ATPConfig()):
        values = {}
        for kind, n in row.items():
            d = (torch.rand(n, generator=g) > 0.4).float()
            d[0] = 1.0
            d[-1] = 0.0
            values[kind] = d
        out.append(LayerDecision(values.get("qk"), values.get("v"), values.get("ffn")))
    return out


def plan_for(method_like_geometry, decisions) -> PruningPlan:
    method = ATPMethod(ATPConfig())
    method.geometry = method_like_geometry
    method.budget = ParameterBudget(method_like_geometry, "decoder")
    return method.plan_from_decisions(decisions)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target_sparsity": 0.0}, "target_sparsity"),
        ({"target_sparsity": True}, "number"),
        ({"sparsity_scope": "layers"}, "sparsity_scope"),
        ({"group_lasso_reduction": "max"}, "group_lasso_reduction"),
        ({"alpha": -1.0}, "alpha"),
        ({"gumbel_temperature": 0.0}, "gumbel_temperature"),
        ({"generator_end_fraction": 0.0}, "generator_end_fraction"),
        ({"min_qk_pairs": 0}, "min_qk_pairs"),
        ({"generator_hidden_size": 30}, "multiple"),
        ({"calibration_seq_len": 1}, "at least 2"),
        ({"prune_qk": False, "prune_v": False, "prune_ffn": False}, "Nothing to prune"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ATPConfig(**kwargs)


def test_config_defaults_are_the_papers():
    cfg = ATPConfig()
    assert (cfg.alpha, cfg.beta, cfg.beta_final_factor, cfg.generator_lr) == (5.0, 0.3, 100.0, 5e-4)
    assert (cfg.gumbel_temperature, cfg.gumbel_offset, cfg.generator_hidden_size) == (0.4, 3.0, 64)
    assert (cfg.generator_num_layers, cfg.generator_num_heads, cfg.generator_ffn_size) == (2, 4, 256)
    assert cfg.end_step(100) == 50 and cfg.full_sequence_loss


# ------------------------------------------------------------------------------------------------ generator
def test_generator_shapes_initial_ones_and_straight_through_gradients():
    geometry = ModelGeometry.from_config(make_tiny_model("llama").config)
    cfg = ATPConfig()
    lengths = decision_lengths(geometry, cfg)
    assert lengths == [{"qk": 4, "v": 8, "ffn": 40}] * 3
    generator = DecisionGenerator(lengths, cfg)
    assert generator.inputs.shape == (3, 64) and not generator.inputs.requires_grad
    torch.testing.assert_close(generator.inputs @ generator.inputs.T, torch.eye(3), atol=1e-5, rtol=0)  # orthogonal
    hard, soft, clamps = generator(sample=False)
    assert all(torch.equal(d.get(k), torch.ones(n)) for d, row in zip(hard, lengths) for k, n in row.items())
    assert not clamps
    hard, soft, _ = generator(sample=True, noise=torch.Generator().manual_seed(0))
    for d, s, row in zip(hard, soft, lengths):
        for kind, n in row.items():
            assert d.get(kind).shape == (n,) and set(d.get(kind).unique().tolist()) <= {0.0, 1.0}
            assert ((s.get(kind) >= 0.5).float() == d.get(kind)).all()
    # Straight-through: forward is 0/1, backward is the sigmoid's gradient.
    loss = sum(d.ffn.sum() for d in hard)
    loss.backward()
    assert generator.projections[0].weight.grad.abs().sum() > 0
    assert generator.encoder.layers[0].linear1.weight.grad is not None
    soft_value = torch.tensor([0.2, 0.7, 0.49], requires_grad=True)
    decided, kept = straight_through(soft_value)
    assert decided.tolist() == [0.0, 1.0, 0.0] and kept == 1
    (decided * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert soft_value.grad.tolist() == [1.0, 2.0, 3.0]


def test_decisions_emptying_a_group_are_clamped_and_reported():
    geometry = ModelGeometry.from_config(make_tiny_model("llama").config)
    cfg = ATPConfig(min_qk_pairs=2, min_v_dims=3, min_ffn_channels=5)
    generator = DecisionGenerator(decision_lengths(geometry, cfg), cfg)
    with torch.no_grad():
        for projection in generator.projections:
            projection.bias.fill_(-100.0)  # every decision 0
    hard, _, clamps = generator(sample=False)
    assert [int(d.qk.sum()) for d in hard] == [2, 2, 2]
    assert [int(d.v.sum()) for d in hard] == [3, 3, 3]
    assert [int(d.ffn.sum()) for d in hard] == [5, 5, 5]
    assert {(c.layer, c.kind, c.kept, c.minimum) for c in clamps} >= {(0, "qk", 0, 2), (2, "ffn", 0, 5)}
    assert len(clamps) == 9


# ------------------------------------------------------------------------------------------------ forwards
def test_generator_forward_reads_the_device_once(host_reads):
    """The straight-through rounding and its clamp to the minimums run on the device; the kept counts behind the clamp
    report come back in one read per forward, not one per layer and kind."""
    geometry = ModelGeometry.from_config(make_tiny_model("llama").config)
    cfg = ATPConfig(min_qk_pairs=2, min_v_dims=2, min_ffn_channels=2)
    generator = DecisionGenerator(decision_lengths(geometry, cfg), cfg)
    with host_reads.counting("forward"):
        generator(sample=True, noise=torch.Generator().manual_seed(0))
    assert host_reads.counts["forward"] == 1
    soft = torch.tensor([0.9, 0.2, 0.7, 0.1])
    for minimum, expected in ((0, [1.0, 0.0, 1.0, 0.0]), (2, [1.0, 0.0, 1.0, 0.0]), (3, [1.0, 1.0, 1.0, 0.0])):
        decided, kept = straight_through(soft, minimum)  # the clamp changes nothing until it must
        assert decided.tolist() == expected and int(kept) == 2


def _lora_parts(module):
    name = next(iter(module.lora_A))
    return module.base_layer, module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]


def test_f_G_and_f_L_equal_their_definitions():
    model = lora_model("qwen2", tied=True)  # q/k/v biases
    decisions = random_decisions(model, 3)
    attn = model.get_base_model().model.layers[1].self_attn
    mlp = model.get_base_model().model.layers[1].mlp
    masks = expanded_masks(decisions[1], 6, 2)
    x = torch.randn(2, 5, 48)
    forwards = ATPForwards(model).attach()
    cases = [(attn.q_proj, "q_out", "out"), (attn.v_proj, "v_out", "out"), (mlp.up_proj, "ffn", "out")]
    cases += [(attn.o_proj, "o_in", "in"), (mlp.down_proj, "ffn", "in")]
    with torch.no_grad():
        for module, key, side in cases:
            base, a, b, scale = _lora_parts(module)
            d = masks[key]
            inp = torch.randn(2, 5, module.in_features)
            lora = scale * inp @ a.T @ b.T
            forwards.set("G", decisions)
            got_g = module(inp)
            forwards.set("L", decisions)
            got_l = module(inp)
            forwards.set(None, decisions)  # references computed without any mask
            if side == "out":  # f_G = X (W + W_a W_b) D ; f_L = X (W D + W_a W_b)
                torch.testing.assert_close(got_g, (base(inp) + lora) * d, atol=TOL, rtol=TOL)
                torch.testing.assert_close(got_l, base(inp) * d + lora, atol=TOL, rtol=TOL)
            else:  # o/down: the input side. f_G leaves it to the masked producer; f_L = X (D_prev W + W_a W_b)
                torch.testing.assert_close(got_g, base(inp) + lora, atol=TOL, rtol=TOL)
                torch.testing.assert_close(got_l, base(inp * d) + lora, atol=TOL, rtol=TOL)
        forwards.set(None, decisions)
        torch.testing.assert_close(attn.q_proj(x), _dense(attn.q_proj, x), atol=TOL, rtol=TOL)
    forwards.detach()


def _dense(module, x):
    base, a, b, scale = _lora_parts(module)
    return base(x) + scale * x @ a.T @ b.T


def test_f_G_is_the_physically_pruned_model():
    """Under f_G the whole layer (LoRA included) is masked: logits equal the pruned, merged model's."""
    model = lora_model("llama", tied=True)
    decisions = random_decisions(model, 4)
    plan = plan_for(ModelGeometry.from_config(model.get_base_model().config), decisions)
    ids = input_batch()
    with torch.no_grad(), ATPForwards(model) as forwards:
        forwards.set("G", decisions)
        f_g = model(input_ids=ids).logits
    with torch.no_grad():
        with RuntimeMasks(model) as masks:
            masks.set_from_plan(plan)
            masked = model(input_ids=ids).logits
        apply_plan(model, plan)
        pruned = model(input_ids=ids).logits
    torch.testing.assert_close(f_g, masked, atol=TOL, rtol=TOL)
    torch.testing.assert_close(f_g, pruned, atol=TOL, rtol=TOL)


# ------------------------------------------------------------------------------------------------ group lasso
def test_group_lasso_touches_exactly_the_pruned_rows_and_columns():
    model = lora_model("llama")
    decisions = random_decisions(model, 5)
    value = group_lasso(model, decisions)
    value.backward()
    expected = torch.zeros(())
    layers = model.get_base_model().model.layers
    for index, layer in enumerate(layers):
        masks = expanded_masks(decisions[index], 6, 2)
        attn, mlp = layer.self_attn, layer.mlp
        for module, key, side in [
            (attn.q_proj, "q_out", "out"),
            (attn.k_proj, "k_out", "out"),
            (attn.v_proj, "v_out", "out"),
            (mlp.gate_proj, "ffn", "out"),
            (mlp.up_proj, "ffn", "out"),
            (attn.o_proj, "o_in", "in"),
            (mlp.down_proj, "ffn", "in"),
        ]:
            _, a, b, _ = _lora_parts(module)
            pruned = masks[key] == 0
            if side == "out":  # rows of lora_B.weight = columns of W_b in the paper's X W_a W_b
                touched = b.grad.abs().sum(dim=1) > 0
                assert torch.equal(touched, pruned), (index, key)
                assert a.grad is None or a.grad.abs().sum() == 0
                expected = expected + b.detach()[pruned].norm(dim=1).sum()
            else:  # columns of lora_A.weight = rows of (I - D_prev) W_a
                touched = a.grad.abs().sum(dim=0) > 0
                assert torch.equal(touched, pruned), (index, key)
                assert b.grad is None or b.grad.abs().sum() == 0
                expected = expected + a.detach()[:, pruned].norm(dim=0).sum()
    torch.testing.assert_close(value.detach(), expected)
    groups = sum(m.numel() for d in decisions for m in expanded_masks(d, 6, 2).values()) + sum(
        d.ffn.numel() * 2 for d in decisions
    )  # ffn masks gate, up and down
    torch.testing.assert_close(group_lasso(model, decisions, "mean").detach(), expected / groups)
    base_grads = [p.grad for n, p in model.named_parameters() if "lora_" not in n]
    assert all(g is None for g in base_grads)
    assert group_lasso(make_tiny_model("llama"), decisions) is None  # no LoRA, no term


# ------------------------------------------------------------------------------------------------ R(d), L_s
@pytest.mark.parametrize("kind,tied", [("llama", False), ("qwen2", True)])
def test_parameter_budget_is_exact(kind, tied):
    model = make_tiny_model(kind, tied=tied)
    geometry = ModelGeometry.from_config(model.config)
    decisions = random_decisions(model, 6)
    plan = plan_for(geometry, decisions)
    total = ParameterBudget(geometry, "total")
    assert round(total.total * float(total.remaining_ratio(decisions))) == plan.num_parameters()["pruned"]
    decoder = ParameterBudget(geometry, "decoder")
    removed = plan.num_parameters()["removed"]
    assert abs(float(decoder.removed(decisions)) - removed) < 1e-3
    apply_plan(model, plan)
    assert model.num_parameters() == plan.num_parameters()["pruned"]


def test_sparsity_loss_matches_definition():
    ratio = torch.tensor(0.8, requires_grad=True)
    loss = sparsity_loss(ratio, 0.6)
    torch.testing.assert_close(loss, torch.log(torch.tensor(0.8 / 0.6)))
    loss.backward()
    assert ratio.grad > 0
    assert float(sparsity_loss(torch.tensor(0.5), 0.6)) == pytest.approx(float(torch.log(torch.tensor(1.2))))
    assert float(sparsity_loss(torch.tensor(0.6), 0.6)) == 0.0


# ------------------------------------------------------------------------------------------------ calibration
def test_calibration_stream_cycles_deterministically_and_rejects_empty():
    rows = [list(range(i, i + 3 + i % 2)) for i in range(5)]
    stream = CalibrationStream(rows, batch_size=2, seed=1)
    batches = [stream.next_batch() for _ in range(7)]
    assert len(stream) == 3 and batches[0]["input_ids"].shape[0] == 2
    assert (batches[0]["labels"][batches[0]["attention_mask"] == 0] == -100).all()
    again = CalibrationStream(rows, batch_size=2, seed=1)
    again.seek(5)
    assert torch.equal(again.next_batch()["input_ids"], batches[5]["input_ids"])
    with pytest.raises(EmptyCalibrationError, match="empty"):
        CalibrationStream([], batch_size=2)
    with pytest.raises(EmptyCalibrationError, match="empty"):
        CalibrationStream(torch.utils.data.DataLoader([], batch_size=2), batch_size=2)
    loader = torch.utils.data.DataLoader(
        Dataset.from_dict({"input_ids": [[1, 2, 3]] * 3}).with_format("torch"), batch_size=2
    )
    from_loader = CalibrationStream(loader, batch_size=2)
    assert [from_loader.next_batch()["input_ids"].shape[0] for _ in range(3)] == [2, 1, 2]


# ------------------------------------------------------------------------------------------------ trainers
def calibration(n: int = 8, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 90, (n, length), generator=torch.Generator().manual_seed(7))


def training_args(tmp_path, **overrides) -> TrainingArguments:
    """The shared tiny-run arguments with 6 steps (so T_end = T/2 = 3 generator steps) and a fixed seed."""
    return shared_training_args(tmp_path, **{"max_steps": 6, "seed": 0, **overrides})


FAST = dict(target_sparsity=0.3, generator_lr=0.05, calibration_batch_size=4, removal_eval_batches=2)


def test_end_to_end_in_plain_trainer(tmp_path):
    model = lora_model("llama", tied=True, num_hidden_layers=3)
    dense = model.get_base_model().num_parameters()
    callback = PrunerCallback(ATPConfig(**FAST), calibration=calibration())
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=token_rows(), callbacks=[callback])
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    method = callback.method
    assert method.generator_steps == 3 and method.generator_frozen  # T_end = T/2
    plan = model.get_base_model().tailored_hf_plan
    assert plan.prunes_head_dims or any(len(lp.ffn) < 40 for lp in plan.layers)
    assert model.get_base_model().num_parameters() < dense
    assert any(not torch.equal(lora_before[n], p) for n, p in model.named_parameters() if n in lora_before)
    logs = {k for entry in trainer.state.log_history for k in entry}
    assert {"pruning/generator_loss", "pruning/sparsity_loss", "pruning/group_lasso", "pruning/beta"} <= logs
    assert {"removal_loss_before", "removal_loss_after", "removal_loss_delta", "sparsity"} <= set(method.metrics)
    assert set(plan.metadata["removal_loss"]) == {"before", "after", "delta"}
    assert len(plan.metadata["layer_pruning_ratios"]) == 3
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / PLAN_FILENAME).is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    ids = input_batch(90)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=TOL, rtol=TOL)
    assert reloaded.generate(ids[:1, :4], max_new_tokens=4, do_sample=False).shape == (1, 8)


def test_group_lasso_term_leaves_its_value_on_the_device_until_logged(tmp_path, monkeypatch, host_reads):
    """The group-lasso loss term makes no host read in the forward (a GPU synchronisation per micro-batch); its
    value is read when the callback logs it, and the history holds floats."""
    model = lora_model("llama", num_hidden_layers=2)
    callback = PrunerCallback(ATPConfig(**FAST), calibration=calibration())
    method = callback.method
    monkeypatch.setattr(method, "_loss_term", host_reads.wrap("loss_term", method._loss_term))
    args = training_args(tmp_path, logging_steps=2)
    trainer = Trainer(model=model, args=args, train_dataset=token_rows(), callbacks=[callback])
    trainer.train()
    values = [e["pruning/group_lasso"] for e in trainer.state.log_history if "pruning/group_lasso" in e]
    assert host_reads.counts["loss_term"] == 0
    assert len(values) == 3 and all(type(v) is float and v > 0 for v in values)  # one per log (steps 2, 4, 6)
    assert all(not torch.is_tensor(v) for v in method.state_dict()["metrics"].values())


def test_generator_reaches_the_target_and_leaves_lora_grads_alone(tmp_path):
    model = lora_model("mistral", num_hidden_layers=2)
    cfg = ATPConfig(target_sparsity=0.4, generator_lr=0.05, alpha=20.0, removal_eval_batches=1)
    callback = PrunerCallback(cfg, calibration=calibration())
    args = training_args(tmp_path, max_steps=40, learning_rate=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=token_rows(), callbacks=[callback])
    method = callback.method
    method.on_train_begin(model, state=type("S", (), {"max_steps": 40})())
    model.train()
    for step in range(20):
        method.on_step_begin(model, state=type("S", (), {"global_step": step})())
        assert all(p.grad is None for n, p in model.named_parameters() if "lora_" in n)
    assert abs(method.metrics["decided_sparsity"] - 0.4) < 0.1, method.metrics
    trainer.state.max_steps = 40
    method.on_train_end(model)
    assert abs(method.plan.metadata["decided_sparsity"] - 0.4) < 0.1


def test_end_to_end_in_sft_trainer_with_peft_config(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    vocab = {f"w{i}": i for i in range(90)} | {"[UNK]": 90, "[PAD]": 91, "[EOS]": 92}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")
    g = torch.Generator().manual_seed(0)
    words = lambda k: " ".join(f"w{int(i)}" for i in torch.randint(0, 90, (k,), generator=g))  # noqa: E731
    rows = Dataset.from_dict(
        {"prompt": [words(6) for _ in range(16)], "completion": [" " + words(3) for _ in range(16)]}
    )
    calib = [tokenizer(words(10))["input_ids"] for _ in range(6)]  # tokenized rows of different lengths
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        completion_only_loss=False,  # ATP: LM loss over instruction + response
        max_length=32,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=make_tiny_model("qwen2", tied=False),
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS),
        callbacks=[PrunerCallback(ATPConfig(**FAST), calibration=calib)],
    )
    trainer.train()
    base = trainer.model.get_base_model()
    plan = base.tailored_hf_plan
    assert count_parameters(base) == plan.num_parameters()["pruned"]  # LoRA weights not counted
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert reloaded.num_parameters() == plan.num_parameters()["pruned"]
    assert json.loads((tmp_path / "final" / PLAN_FILENAME).read_text())["metadata"]["method"] == "atp"


def _run(tmp_path, name, **overrides):
    model = lora_model("llama", num_hidden_layers=2, seed=2)
    callback = PrunerCallback(ATPConfig(**FAST), calibration=calibration())
    args = training_args(tmp_path / name, max_steps=6, **overrides)
    return Trainer(model=model, args=args, train_dataset=token_rows(), callbacks=[callback]), callback


def test_resume_restores_generator_optimizer_decisions_and_stream(tmp_path):
    full, full_cb = _run(tmp_path, "full")
    full.train()
    first, first_cb = _run(tmp_path, "resumed", save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = tmp_path / "resumed" / "run" / "checkpoint-2"
    assert (checkpoint / "tailored_hf_state.safetensors").is_file()
    state = json.loads((checkpoint / "tailored_hf_state.json").read_text())
    assert state["generator_steps"] == 2 and state["batches_drawn"] == 2
    second, second_cb = _run(tmp_path, "resumed", save_strategy="steps", save_steps=2)
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second_cb.method.generator_steps == 3
    for a, b in zip(full_cb.method.generator.parameters(), second_cb.method.generator.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert second_cb.method.plan.to_dict()["layers"] == full_cb.method.plan.to_dict()["layers"]


# ------------------------------------------------------------------------------------------------ bad input
def test_unreachable_target_fails_before_training(tmp_path):
    model = lora_model("llama")
    cfg = ATPConfig(target_sparsity=0.9, prune_qk=False, prune_v=False)  # FFN alone cannot remove 90%
    with pytest.raises(ValueError, match="unreachable"):
        Trainer(
            model=model,
            args=training_args(tmp_path),
            train_dataset=token_rows(),
            callbacks=[PrunerCallback(cfg, calibration=calibration())],
        )


def test_empty_or_missing_calibration_fails_before_training(tmp_path):
    for calib, error, match in [
        ([], EmptyCalibrationError, "empty"),
        (torch.utils.data.DataLoader([], batch_size=1), EmptyCalibrationError, "empty"),
        (None, ValueError, "calibration data"),
    ]:
        with pytest.raises(error, match=match):
            Trainer(
                model=lora_model("llama"),
                args=training_args(tmp_path),
                train_dataset=token_rows(),
                callbacks=[PrunerCallback(ATPConfig(), calibration=calib)],
            )


def test_clamped_decisions_are_reported_and_still_give_a_working_model(caplog):
    model = lora_model("llama")
    method = ATPMethod(ATPConfig(target_sparsity=0.5, min_qk_pairs=1, min_v_dims=2, removal_eval_batches=1))
    method.on_init_end(model, calibration=calibration())
    with torch.no_grad():
        for projection in method.generator.projections:
            projection.bias.fill_(-100.0)  # the generator wants to remove everything
    method.on_train_begin(model, state=type("S", (), {"max_steps": 2})())
    with caplog.at_level("WARNING"):
        method.on_train_end(model)
    assert method.metrics["clamped_groups"] == 9
    assert "clamped to the minimum" in caplog.text
    assert {(c["layer"], c["kind"]) for c in method.plan.metadata["clamped"]} == {
        (i, k) for i in range(3) for k in ("qk", "v", "ffn")
    }
    config = model.get_base_model().config
    assert config.layer_qk_head_dims == [2, 2, 2] and config.layer_v_head_dims == [2, 2, 2]
    assert torch.isfinite(model(input_ids=input_batch(90)).logits).all()


def test_recipe_resolves_to_an_atp_config():
    from tailored_hf.recipes import load_recipe

    from ..conftest import REPO_ROOT

    cfg = load_recipe(REPO_ROOT / "recipes" / "atp" / "pubmedqa-40.yaml")
    method_config = cfg.method_config()
    assert isinstance(method_config, ATPConfig) and method_config.target_sparsity == 0.4
    assert cfg.training_kwargs["completion_only_loss"] is False
