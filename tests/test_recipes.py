"""Recipes: every shipped YAML resolves; unknown keys, missing keys and `--set` type errors are reported clearly."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from tailored_hf.methods import METHOD_REGISTRY
from tailored_hf.pipeline import PipelineConfig, prunes_before_training, training_arguments
from tailored_hf.recipes import (
    RecipeError,
    coerce,
    fields_help,
    load_recipe,
    parse_set,
    read_recipe,
    resolve,
    training_fields,
)

from .conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").rglob("*.yaml"))
BOOLQ_20 = REPO_ROOT / "recipes" / "tailored-llama" / "boolq-20.yaml"
TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def test_the_required_recipes_exist():
    names = {p.relative_to(REPO_ROOT / "recipes").as_posix() for p in RECIPES}
    expected = {f"tailored-llama/{t}-{r}.yaml" for t in TASKS for r in (20, 50)} | {"tailored-llama/alpaca-20.yaml"}
    assert expected <= names
    assert (REPO_ROOT / "recipes" / "README.md").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO_ROOT / "recipes").as_posix())
def test_every_recipe_resolves(path, tmp_path):
    """Every recipe under recipes/ (any method): keys resolve, the method config and the SFTConfig build."""
    cfg = load_recipe(path)
    assert cfg.output_dir == str(Path("outputs") / path.parent.name / path.stem)
    ratio = int(path.stem.rsplit("-", 1)[1])
    assert cfg.target_sparsity == pytest.approx(ratio / 100)
    assert cfg.method_config().to_dict()["target_sparsity"] == cfg.target_sparsity
    args = training_arguments(cfg, tmp_path)  # the SFTConfig really accepts the recipe's training keys
    for key, value in cfg.training_kwargs.items():
        assert getattr(args, key) == value or str(getattr(args, key)).endswith(str(value)), key


TAILORED_RECIPES = sorted((REPO_ROOT / "recipes" / "tailored-llama").glob("*.yaml"))


@pytest.mark.parametrize("path", TAILORED_RECIPES, ids=lambda p: p.stem)
def test_tailored_llama_arithmetic_comments_match_the_keys(path):
    raw = read_recipe(path)
    text = path.read_text()
    assert raw["task"] in path.stem and raw["method"] == "depgraph"
    effective = raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"]
    assert re.search(rf"effective batch = .*= {effective}\b", text)
    steps_per_epoch = math.ceil(raw["k_shots"] / effective)
    assert re.search(rf"steps per epoch = .*= {steps_per_epoch}\b", text)
    total = steps_per_epoch * raw["num_train_epochs"]
    assert re.search(rf"\b{total} optimizer steps|optimizer steps = .*= {total}\b", text)
    assert raw["save_steps"] == steps_per_epoch  # one checkpoint per epoch, as the comments say


def test_keys_are_routed_to_pipeline_method_and_training():
    cfg = load_recipe(BOOLQ_20, ["importance=l2", "gradient_accumulation_steps=2", "learning_rate=3e-4"])
    assert cfg.method_kwargs["importance"] == "l2"
    assert cfg.method_config().importance == "l2"
    assert cfg.training_kwargs["gradient_accumulation_steps"] == 2
    assert cfg.learning_rate == 3e-4 and "learning_rate" not in cfg.training_kwargs
    assert cfg.method_kwargs["num_calibration_samples"] == 20
    assert cfg.output_dir == "outputs/tailored-llama/boolq-20"
    assert load_recipe(BOOLQ_20, output_dir="elsewhere").output_dir == "elsewhere"


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BOOLQ_20.read_text() + "\nimportanse: taylor\n")
    with pytest.raises(RecipeError, match=r"unknown key 'importanse'.*Did you mean 'importance'\?"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match=r"--set k_shot.*Did you mean 'k_shots'\?"):
        load_recipe(BOOLQ_20, ["k_shot=5"])
    with pytest.raises(RecipeError, match=r"gradient_accumulation_step.*Did you mean 'gradient_accumulation_steps'"):
        load_recipe(BOOLQ_20, ["gradient_accumulation_step=5"])
    # method fields depend on the recipe's method: magnitude has no `importance`
    with pytest.raises(RecipeError, match=r"unknown key 'importance'"):
        load_recipe(BOOLQ_20, ["method=magnitude"])


def test_missing_required_key(tmp_path):
    data = yaml.safe_load(BOOLQ_20.read_text())
    del data["task"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"missing required key 'task'"):
        load_recipe(recipe)
    recipe.write_text("- not\n- a mapping\n")
    with pytest.raises(RecipeError, match="flat YAML mapping"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_set_type_errors_name_the_field_type():
    with pytest.raises(RecipeError, match=r"--set eval_limit=abc: eval_limit expects int"):
        load_recipe(BOOLQ_20, ["eval_limit=abc"])
    with pytest.raises(RecipeError, match=r"target_sparsity expects float"):
        load_recipe(BOOLQ_20, ["target_sparsity=half"])
    with pytest.raises(RecipeError, match=r"global_ranking expects bool"):
        load_recipe(BOOLQ_20, ["global_ranking=maybe"])
    with pytest.raises(RecipeError, match=r"layer_range expects tuple\[int, int\] \| None"):
        load_recipe(BOOLQ_20, ["layer_range=[1, 2, 3]"])
    with pytest.raises(RecipeError, match=r"per_device_train_batch_size expects int"):
        load_recipe(BOOLQ_20, ["per_device_train_batch_size=2.5"])
    with pytest.raises(RecipeError, match=r"--set 'oops': expected key=value"):
        load_recipe(BOOLQ_20, ["oops"])
    # values that fail the config's own validation are reported with the recipe name
    with pytest.raises(RecipeError, match=r"boolq-20.yaml: target_sparsity must be in \(0, 0.9\]"):
        load_recipe(BOOLQ_20, ["target_sparsity=0.95"])


def test_set_values_are_parsed_and_coerced():
    cfg = load_recipe(
        BOOLQ_20,
        [
            "layer_range=[1, 3]",
            "prompt=null",
            "global_ranking=true",
            "model=1234",
            "lora_target_modules=[q_proj, v_proj]",
            "save_strategy=epoch",
            "eval-limit=7",
        ],
    )
    assert cfg.method_kwargs["layer_range"] == (1, 3)
    assert cfg.prompt is None and cfg.method_kwargs["global_ranking"] is True
    assert cfg.model == "1234"  # str field: the text as typed
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.training_kwargs["save_strategy"] == "epoch" and cfg.eval_limit == 7
    assert parse_set(["a=1", "b=x=y", "c="]) == [("a", 1, "1"), ("b", "x=y", "x=y"), ("c", "", "")]
    assert coerce("x", 3, float) == 3 and coerce("x", None, int | None) is None
    assert coerce("x", "1e-4", float) == 1e-4  # YAML 1.1 leaves `1e-4` a string


def test_batch_size_alias_conflict():
    with pytest.raises(RecipeError, match="set only one"):
        resolve(read_recipe(BOOLQ_20) | {"batch_size": 4})


def test_help_lists_every_field_with_its_help():
    text = fields_help()
    from dataclasses import fields

    for f in fields(PipelineConfig):
        if f.name not in ("method_kwargs", "training_kwargs"):
            assert f"  {f.name} (" in text
    for cls in METHOD_REGISTRY.values():
        for f in fields(cls.config_class):
            assert f"  {f.name} (" in text
            if f.metadata.get("help"):
                assert " ".join(f.metadata["help"].split())[:40] in " ".join(text.split())
    assert all(f"  {name} (" in text for name in training_fields())


def test_method_kinds():
    assert prunes_before_training("depgraph") and prunes_before_training("magnitude")
    with pytest.raises(ValueError, match=r"Unknown method 'depgrph'.*Did you mean 'depgraph'"):
        PipelineConfig(method="depgrph")
    with pytest.raises(ValueError, match=r"DepGraphConfig has no field 'round'.*Did you mean 'round_to'"):
        PipelineConfig(method_kwargs={"round": 8})
    with pytest.raises(ValueError, match=r"SFTConfig has no field 'max_step'.*'max_steps'"):
        training_arguments(PipelineConfig(training_kwargs={"max_step": 3}), Path("/tmp"))


def test_generation_task_needs_a_prompt():
    with pytest.raises(RecipeError, match=r"generation task.*set `prompt`"):
        load_recipe(REPO_ROOT / "recipes" / "tailored-llama" / "alpaca-20.yaml", ["prompt=null"])
    cfg = load_recipe(REPO_ROOT / "recipes" / "tailored-llama" / "alpaca-20.yaml")
    assert cfg.task == "alpaca" and cfg.scored_task == "piqa" and cfg.prompt == "alpaca"
