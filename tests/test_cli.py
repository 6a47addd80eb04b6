"""`tailored-hf` CLI: `run` a shipped recipe offline (tiny local base model), resume it, `eval`, errors, help."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, ClassVar

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from tailored_hf import arch as A
from tailored_hf.cli import main
from tailored_hf.hub.plot import PLOT_FILENAME
from tailored_hf.methods import METHOD_REGISTRY, MethodConfig, PruningMethod
from tailored_hf.pipeline import PipelineConfig, run
from tailored_hf.structure import PLAN_FILENAME, PruningPlan, apply_plan, count_parameters
from tailored_hf.structure.simple import magnitude_plan

from .conftest import REPO_ROOT, train_bpe_tokenizer
from .hub.conftest import TINY_OVERRIDES, save_tiny_base

BOOLQ_20 = REPO_ROOT / "recipes" / "tailored-llama" / "boolq-20.yaml"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny")


def _set(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_run_boolq_recipe_offline_and_resume(tiny_base, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(BOOLQ_20), "--output-dir", str(out), "--quiet", *_set(f"model={tiny_base}", *TINY_OVERRIDES)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| pruned + task LoRA |" in printed and "Card:" in printed

    model_dir = out / "model"
    for name in ("model.safetensors", "config.json", PLAN_FILENAME, "README.md", PLOT_FILENAME, "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / PLOT_FILENAME).read_bytes().startswith(b"\x89PNG")
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# tailored_hf:")
    assert report["config"]["task"] == "boolq" and report["config"]["method"] == "depgraph"
    assert report["method_non_default"] == {"num_calibration_samples": 2, "calibration_seq_len": 32}
    assert report["training"]["steps"] == 2 and report["training"]["resumed_from"] is None
    assert 0.1 < report["achieved_sparsity"] < 0.3
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir)
    assert count_parameters(reloaded) == report["params"]["pruned"]
    card = ModelCard.load(model_dir / "README.md")
    assert any(r.metric_name == "acc (dense baseline)" for r in card.data.eval_results)
    assert "tailored-hf run" in card.text and "boolq-20.yaml" in card.text
    assert sorted(p.name for p in (out / "trainer").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    # Resume: the saved plan is re-applied to the dense base (the pruned-shape LoRA checkpoint would not load onto
    # a dense model otherwise), the recorded evaluations are reused, and training continues at step 2 -> 3.
    assert main([*argv, "--resume", "--set", "max_steps=3"]) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["training"]["resumed_from"].endswith("checkpoint-2")
    assert resumed["training"]["steps"] == 3
    assert resumed["dense"] == report["dense"] and resumed["pruned_no_tune"] == report["pruned_no_tune"]
    assert resumed["per_layer"] == report["per_layer"]
    assert PruningPlan.load(model_dir / PLAN_FILENAME).per_layer_sizes() == report["per_layer"]

    # A checkpoint without the pipeline's recorded state cannot be resumed: clear message, exit status 2.
    (out / "trainer" / "pipeline_state.json").unlink()
    assert main([*argv, "--resume"]) == 2
    assert "pipeline_state.json is missing" in capsys.readouterr().err


def test_run_with_dense_teacher_kd_and_resume_from_the_distilled_model(tiny_base, tmp_path, capsys):
    """`teacher_kd_steps`: the pruned model distils from the dense one before task recovery (a report row of its
    own), and a resumed run recovers from the distilled weights, not from the plan re-applied to the dense model."""
    import torch

    texts = tmp_path / "texts.json"
    g = torch.Generator().manual_seed(0)
    texts.write_text(json.dumps([" ".join(f"w{int(i)}" for i in torch.randint(0, 90, (60,), generator=g))] * 4))
    out = tmp_path / "out"
    kd = [f"teacher_kd_source={texts}", "teacher_kd_steps=2", "teacher_kd_seq_len=16", "teacher_kd_batch_size=2"]
    argv = ["run", str(BOOLQ_20), "--output-dir", str(out), "--quiet", *_set(f"model={tiny_base}", *TINY_OVERRIDES)]
    assert main([*argv, *_set(*kd)]) == 0
    assert "| pruned + dense-teacher KD, no tune |" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["teacher_kd"]["steps"] == 2 and report["teacher_kd"]["tokens"] == 2 * 2 * 16
    assert report["distilled_no_tune"]["n"] == report["pruned_no_tune"]["n"]
    assert report["recovery_rate"]["distilled_no_tune"] is not None
    assert "Dense-teacher KD before task recovery: 2 steps" in (out / "report.md").read_text()
    card = ModelCard.load(out / "model" / "README.md")
    assert "Dense-teacher distillation after pruning: every weight trained for 2 steps (64 tokens" in card.text
    assert any(r.metric_name == "acc (pruned + dense-teacher KD, before recovery)" for r in card.data.eval_results)
    assert "pruned + dense-teacher KD, no task recovery" in card.text
    distilled = AutoModelForCausalLM.from_pretrained(out / "trainer" / "distilled")
    final = AutoModelForCausalLM.from_pretrained(out / "model")
    # The task LoRA does not touch the norms: the final model carries the distilled ones.
    norm = A.final_norm(distilled).weight
    assert torch.equal(A.final_norm(final).weight, norm)

    assert main([*argv, *_set(*kd), "--resume", "--set", "max_steps=3"]) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["training"]["steps"] == 3 and resumed["teacher_kd"] == report["teacher_kd"]
    assert resumed["distilled_no_tune"] == report["distilled_no_tune"]
    assert torch.equal(A.final_norm(AutoModelForCausalLM.from_pretrained(out / "model")).weight, norm)
    dense_norm = A.final_norm(AutoModelForCausalLM.from_pretrained(tiny_base)).weight
    assert not torch.equal(norm, dense_norm)  # the distillation trained them


def test_teacher_kd_on_the_tasks_label_free_train_text(tiny_base, tmp_path):
    """`teacher_kd_source: task`: the windows are the task's train rows outside the dev slice, every choice."""
    out = tmp_path / "out"
    overrides = [f"model={tiny_base}", *TINY_OVERRIDES, "teacher_kd_steps=1", "teacher_kd_source=task"]
    overrides += ["teacher_kd_seq_len=32", "teacher_kd_batch_size=2", "save_strategy=no"]
    assert main(["run", str(BOOLQ_20), "--output-dir", str(out), "--quiet", *_set(*overrides)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["teacher_kd"]["tokens"] == 2 * 32 and report["config"]["teacher_kd_source"] == "task"
    # Only the windows the steps take are packed (the pool holds many more), not the whole pool tokenized.
    assert report["teacher_kd"]["windows"] == 1 * 2


def test_teacher_kd_settings_are_checked():
    with pytest.raises(ValueError, match="prunes during recovery"):
        PipelineConfig(method="l0", teacher_kd_steps=10)
    with pytest.raises(ValueError, match="teacher_kd_steps must be >= 0"):
        PipelineConfig(teacher_kd_steps=-1)
    with pytest.raises(ValueError, match="teacher_kd_batch_size must be positive"):
        PipelineConfig(teacher_kd_steps=1, teacher_kd_batch_size=0)


def test_cli_errors_exit_2_with_the_fix(capsys):
    assert main(["run", str(BOOLQ_20), *_set("eval_limt=3")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'eval_limt'" in err and "Did you mean 'eval_limit'?" in err
    assert main(["run", str(BOOLQ_20), *_set("k_shots=many")]) == 2
    assert "k_shots expects int" in capsys.readouterr().err
    assert main(["run", "recipes/none.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_eval_command(tiny_base, tmp_path, capsys):
    output = tmp_path / "eval.json"
    argv = ["eval", str(tiny_base), "--tasks", "boolq,piqa", "--limit", "3", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| boolq | acc |" in printed and "| piqa | acc |" in printed
    results = json.loads(output.read_text())["results"]
    assert set(results) == {"boolq", "piqa"} and results["boolq"]["n"] == 3


@dataclass
class _PruneAtTrainEndConfig(MethodConfig):
    """A training-time method for the test: prunes by magnitude when training ends."""

    target_sparsity: float = field(default=0.2, metadata={"help": "Fraction removed."})
    seed: int = field(default=0, metadata={"help": "Unused."})


class _PruneAtTrainEnd(PruningMethod):
    config_class: ClassVar[type[MethodConfig]] = _PruneAtTrainEndConfig
    prunes_at_init = False
    events: ClassVar[list[str]] = []

    def on_init_end(self, model, **context: Any) -> None:
        self.events.append("init_end:" + ("peft" if A.unwrap_model(model) is not model else "plain"))

    def on_train_end(self, model, **context: Any) -> None:
        self.events.append("train_end")
        self.plan = magnitude_plan(A.unwrap_model(model), self.config.target_sparsity, prune_heads=False)
        apply_plan(model, self.plan)


def train_end_config(base, tmp_path, monkeypatch, **overrides) -> PipelineConfig:
    """A two-step PIQA run of `_PruneAtTrainEnd` (registered for the test) on the tiny `base`."""
    monkeypatch.setitem(METHOD_REGISTRY, "test_train_end", _PruneAtTrainEnd)
    monkeypatch.setattr(_PruneAtTrainEndConfig, "method_name", "test_train_end")
    settings = dict(k_shots=8, dev_size=6, eval_limit=4, ppl_windows=2, max_length=64, prompt="lm_eval")
    return PipelineConfig(
        model=str(base),
        task="piqa",
        method="test_train_end",
        target_sparsity=0.3,
        output_dir=str(tmp_path / "out"),
        training_kwargs={"max_steps": 2},
        **settings | overrides,
    )


def test_training_time_method_prunes_through_the_callback(tiny_base, tmp_path, monkeypatch):
    _PruneAtTrainEnd.events.clear()
    cfg = train_end_config(tiny_base, tmp_path, monkeypatch)
    assert not cfg.prunes_before_training
    report = run(cfg)
    assert _PruneAtTrainEnd.events == ["init_end:peft", "train_end"]  # via PrunerCallback in the SFTTrainer
    assert report["pruned_no_tune"] is None and report["recovery_rate"]["pruned_no_tune"] is None
    assert report["params"]["pruned"] < report["params"]["dense"]
    assert "| pruned, no tune | - |" in (tmp_path / "out" / "report.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert count_parameters(reloaded) == report["params"]["pruned"]


def test_console_script_and_module_help():
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("tailored-hf") == "tailored_hf.cli:main"
    result = subprocess.run(
        [sys.executable, "-m", "tailored_hf", "run", "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    for line in ("k_shots (int)", "importance (str)", "gradient_accumulation_steps (int)", "prune_heads (bool)"):
        assert line in result.stdout
    assert "Training shots for recovery" in result.stdout
    assert "Number of update steps to accumulate" in result.stdout


@dataclass
class _CalibratedConfig(MethodConfig):
    calibration_source: str = field(default="c4", metadata={"help": "Source."})
    num_calibration_samples: int = field(default=2, metadata={"help": "Windows."})
    calibration_seq_len: int = field(default=16, metadata={"help": "Tokens."})
    seed: int = field(default=0, metadata={"help": "Seed."})


def test_training_time_methods_get_calibration_from_the_recipes_data_dir(shared_data_dir):
    from tailored_hf.pipeline import method_calibration

    from .hub.conftest import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    ids = method_calibration(_CalibratedConfig(), tokenizer, PipelineConfig(data_dir=str(shared_data_dir)))
    assert tuple(ids.shape) == (2, 16)
    with pytest.raises(ValueError, match="c4"):  # the packaged subset has no C4: data_dir is what made it work
        method_calibration(_CalibratedConfig(), tokenizer, PipelineConfig())
    assert method_calibration(_PruneAtTrainEndConfig(), tokenizer, PipelineConfig()) is None


@pytest.mark.slow
def test_run_recipe_on_real_smollm2(tmp_path):
    """The piqa-20 recipe on the real SmolLM2-135M (cached offline alias), tiny settings: card names the base model."""
    out = tmp_path / "smol"
    overrides = ("importance=l2", "eval_limit=4", "ppl_windows=1", "dev_size=4", "k_shots=4", "max_steps=1")
    overrides += ("save_strategy=no", "max_length=64", "prompt=lm_eval")
    recipe = REPO_ROOT / "recipes" / "tailored-llama" / "piqa-20.yaml"
    assert main(["run", str(recipe), "--quiet", "--output-dir", str(out), *_set(*overrides)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["dense"] == 134_515_008
    assert report["achieved_sparsity"] == pytest.approx(0.2, abs=0.01)
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "2502.02737" in card.text and "`importance`: `l2`" in card.text


DOMAIN_RECIPES = [
    "atp/pubmedqa-40.yaml",
    "atp/casehold-40.yaml",
    "nuteprune/pubmedqa-20.yaml",
    "nuteprune/casehold-20.yaml",
]


@pytest.mark.parametrize("recipe", DOMAIN_RECIPES)
def test_domain_recipes_run_on_the_shared_data(recipe, tiny_base, shared_data_dir, tmp_path, capsys):
    """HealthCare / legal recipes run end to end on the real domain files (tiny base model, tiny budget)."""
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("calibration_seq_len")]
    if recipe.startswith("nuteprune"):  # completion-only loss: the answer must survive truncation (long abstracts)
        overrides = [o for o in overrides if not o.startswith(("num_calibration_samples", "max_length"))]
    else:  # the generator starts from "keep all" (gumbel_offset): a larger step size reaches the target in 10 steps
        overrides = [o for o in overrides if not o.startswith("max_steps")]
        overrides += ["calibration_seq_len=64", "max_steps=10", "generator_lr=0.05"]
    out = tmp_path / "out"
    argv = ["run", str(REPO_ROOT / "recipes" / recipe), "--output-dir", str(out), "--quiet"]
    argv += _set(f"model={tiny_base}", f"data_dir={shared_data_dir}", "save_strategy=no", *overrides)
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["pruned"] < report["params"]["dense"]
    assert report["tuned"]["n"] == 6 and report["tuned"]["task"] == report["config"]["task"]
    assert (out / "model" / PLAN_FILENAME).is_file()
    if recipe == "nuteprune/pubmedqa-20.yaml":
        assert main([*argv, "--output-dir", str(tmp_path / "short"), "--set", "max_length=64"]) == 2
        assert "No training example keeps a completion token within max_length=64" in capsys.readouterr().err


def test_tasks_with_a_train_split_only_hold_evaluation_rows_out(shared_data_dir):
    """CaseHOLD's local file is train only: the scored rows never reach the dev slice or the shots."""
    from tailored_hf.pipeline import evaluation_and_train_splits, scored_task_train_rows

    cfg = PipelineConfig(task="casehold", prompt="lm_eval", data_dir=str(shared_data_dir), eval_limit=300)
    evaluation, train = evaluation_and_train_splits(cfg)
    assert len(evaluation) == 300 and len(evaluation) + len(train) == 2000
    assert not {r["citing_prompt"] for r in evaluation} & {r["citing_prompt"] for r in train}
    assert evaluation["citing_prompt"] == evaluation_and_train_splits(cfg)[0]["citing_prompt"]  # seeded
    cfg = PipelineConfig(task="pubmedqa", prompt="lm_eval", data_dir=str(shared_data_dir), eval_limit=50)
    evaluation, train = evaluation_and_train_splits(cfg)  # PubMedQA: its test split, the whole train split
    assert len(evaluation) == 50 and len(train) == 500
    with pytest.raises(ValueError, match="no local split 'validation'"):
        evaluation_and_train_splits(PipelineConfig(task="pubmedqa", eval_split="validation", prompt="lm_eval"))
    # Scored on CaseHOLD, trained on PIQA: CaseHOLD's train rows that are not scored (a task vocabulary counts them).
    cfg = PipelineConfig(
        task="piqa", eval_task="casehold", prompt="lm_eval", data_dir=str(shared_data_dir), eval_limit=300
    )
    evaluation, _ = evaluation_and_train_splits(cfg)
    rest = scored_task_train_rows(cfg)
    assert len(evaluation) + len(rest) == 2000
    assert not {r["citing_prompt"] for r in evaluation} & {r["citing_prompt"] for r in rest}
    assert scored_task_train_rows(replace(cfg, eval_task=None)) is None
    assert scored_task_train_rows(replace(cfg, eval_task="arc_easy", eval_split="train")) is None  # all scored


@pytest.fixture(scope="module")
def tiny_bpe_base(tmp_path_factory):
    """A tiny random llama with a byte-level BPE tokenizer (trained on ARC-Easy text), saved as a local base."""
    from tailored_hf.data import label_free_texts, load_task_split

    tokenizer = train_bpe_tokenizer(label_free_texts(load_task_split("arc_easy", "train"), "arc_easy"))
    return save_tiny_base(tmp_path_factory.mktemp("bpe-base") / "tiny", tokenizer=tokenizer)


def test_task_vocabulary_trims_before_pruning_and_resumes(tiny_bpe_base, tmp_path, capsys):
    """`task_vocabulary`: the tokenizer and the embedding keep the task's tokens, the method removes the rest of the
    target (which still counts the dense model), the saved plan and tokenizer agree, a resumed run rebuilds both."""
    from tailored_hf import load_model

    out = tmp_path / "out"
    overrides = [f"model={tiny_bpe_base}", *TINY_OVERRIDES, "task=piqa", "prompt=lm_eval", "target_sparsity=0.3"]
    argv = ["run", str(BOOLQ_20), "--output-dir", str(out), "--quiet", *_set(*overrides, "task_vocabulary=0.9")]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    vocabulary = report["task_vocabulary"]
    assert vocabulary["source"] == 600 and 256 < vocabulary["kept"] < 600 and vocabulary["removed_share"] > 0
    assert 0 < vocabulary["held_out_share"] <= 1
    assert "of that slice's tokens (text it was not counted on)" in (out / "report.md").read_text()
    assert report["achieved_sparsity"] == pytest.approx(0.3, abs=0.05)
    assert report["dense"]["wikitext2_ppl"] is not None and report["tuned"]["wikitext2_ppl"] is None
    assert "n/a (task vocabulary)" in (out / "report.md").read_text()
    assert f"Task vocabulary: {vocabulary['kept']:,} of 600 tokens kept" in (out / "report.md").read_text()
    plan = PruningPlan.load(out / "model" / PLAN_FILENAME)
    assert plan.source.vocab_size == 600 and len(plan.tokens) == vocabulary["kept"]
    assert plan.num_parameters()["pruned"] == report["params"]["pruned"]
    model, tokenizer = load_model(str(out / "model"))
    assert model.config.vocab_size == len(tokenizer) == vocabulary["kept"]
    assert count_parameters(model) == report["params"]["pruned"]
    card = ModelCard.load(out / "model" / "README.md")
    assert f"**Task vocabulary**: {vocabulary['kept']:,} of the base model's 600 tokens are kept" in card.text
    assert f"the vocabulary keeps {vocabulary['held_out_share']:.1%} of that slice's tokens" in card.text
    assert not any(r.metric_type == "perplexity" and "this model" in r.metric_name for r in card.data.eval_results)

    assert main([*argv, "--resume", "--set", "max_steps=3"]) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["training"]["steps"] == 3 and resumed["task_vocabulary"] == vocabulary
    assert PruningPlan.load(out / "model" / PLAN_FILENAME).tokens == plan.tokens

    with pytest.raises(ValueError, match="task_vocabulary"):
        PipelineConfig(task_vocabulary=1.5)
    small = [*_set(*overrides, "task_vocabulary=0.9", "target_sparsity=0.01")]
    assert main(["run", str(BOOLQ_20), "--output-dir", str(tmp_path / "small"), "--quiet", *small]) == 2
    assert "The task vocabulary alone removes" in capsys.readouterr().err


def test_task_vocabulary_with_a_method_that_prunes_during_training(tiny_bpe_base, tmp_path, monkeypatch):
    cfg = train_end_config(tiny_bpe_base, tmp_path, monkeypatch, task_vocabulary=0.9)
    report = run(cfg)
    plan = PruningPlan.load(tmp_path / "out" / "model" / PLAN_FILENAME)
    assert plan.tokens is not None and plan.source.vocab_size == 600  # vocabulary and structure in one plan
    assert report["params"]["pruned"] == plan.num_parameters()["pruned"]
    assert report["achieved_sparsity"] == pytest.approx(0.3, abs=0.05)

    # A method that never prunes is still caught: the vocabulary's plan on the model is not the method's.
    monkeypatch.setattr(_PruneAtTrainEnd, "on_train_end", lambda self, model, **context: None)
    with pytest.raises(ValueError, match="without producing a pruning plan"):
        run(cfg)


def test_task_vocabulary_covers_every_prompt_that_selection_may_pick(tiny_bpe_base):
    """With the prompt left to selection, the vocabulary covers every candidate variant's text (their templates
    too), not only the scored format; with a fixed prompt, that prompt's and the scored format's."""
    from tailored_hf import load_model
    from tailored_hf.data import load_task_split
    from tailored_hf.pipeline import trim_to_task_vocabulary

    train = load_task_split("piqa", "train").select(range(50))
    sizes = {}
    for prompt in (None, "lm_eval"):
        model, tokenizer = load_model(str(tiny_bpe_base))
        cfg = PipelineConfig(model=str(tiny_bpe_base), task="piqa", prompt=prompt, task_vocabulary=1.0)
        _, trimmed, target, _ = trim_to_task_vocabulary(model, tokenizer, cfg, train)
        assert 0 < target < cfg.target_sparsity
        sizes[prompt] = len(trimmed)
    assert sizes[None] > sizes["lm_eval"]


def test_task_vocabulary_covers_the_eval_task(tiny_bpe_base):
    """With an `eval_task`, the vocabulary also keeps the tokens of its train text: every token of that text."""
    from tailored_hf import load_model
    from tailored_hf.data import label_free_texts, load_task_split
    from tailored_hf.pipeline import trim_to_task_vocabulary

    train = load_task_split("piqa", "train").select(range(20))
    arc = label_free_texts(load_task_split("arc_easy", "train"), "arc_easy")
    trimmed = {}
    for eval_task in (None, "arc_easy"):
        model, tokenizer = load_model(str(tiny_bpe_base))
        cfg = PipelineConfig(
            model=str(tiny_bpe_base), task="piqa", eval_task=eval_task, prompt="lm_eval", task_vocabulary=1.0
        )
        trimmed[eval_task] = trim_to_task_vocabulary(model, tokenizer, cfg, train)[1]
    assert len(trimmed["arc_easy"]) > len(trimmed[None])
    ids = {text: tokenizer(text).input_ids for text in arc[:200]}
    assert all(len(trimmed["arc_easy"](text).input_ids) == len(dense) for text, dense in ids.items())
    assert any(len(trimmed[None](text).input_ids) > len(dense) for text, dense in ids.items())


def test_task_vocabulary_held_out_share_warns_on_a_small_train_split(tiny_bpe_base, caplog):
    """The vocabulary is also counted without the dev slice and checked on it: a split of many rows carries over,
    one of few rows does not and is warned about; with no more rows than the dev slice there is no check."""
    from tailored_hf import load_model
    from tailored_hf.data import load_task_split
    from tailored_hf.pipeline import trim_to_task_vocabulary

    train = load_task_split("piqa", "train")
    shares = {}
    for rows in (500, 130, 50):
        model, tokenizer = load_model(str(tiny_bpe_base))
        cfg = PipelineConfig(model=str(tiny_bpe_base), task="piqa", prompt="lm_eval", task_vocabulary=0.99)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tailored_hf.pipeline"):
            shares[rows] = trim_to_task_vocabulary(model, tokenizer, cfg, train.select(range(rows)))[3]
        warned = any("carries over poorly" in record.getMessage() for record in caplog.records)
        assert warned == (rows == 130), rows
    assert 0.97 <= shares[500] <= 1.0 and shares[130] < 0.97 and shares[50] is None
