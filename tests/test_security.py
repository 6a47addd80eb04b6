"""Security guarantees: no remote code, no pickled weights, no eval/exec, YAML safe loading, `torch.load` only with
`weights_only=True` (a static scan of the package and the benchmarks, plus behaviour checks)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tailored_hf import load_model

from .conftest import REPO_ROOT, make_tiny_model

SOURCES = sorted((REPO_ROOT / "tailored_hf").rglob("*.py")) + sorted((REPO_ROOT / "benchmarks").rglob("*.py"))


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            yield name, owner, node


def test_no_eval_exec_pickle_unsafe_yaml_or_remote_code():
    problems = []
    for path in SOURCES:
        for name, owner, node in calls(path):
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec") and isinstance(node.func, ast.Name):
                problems.append(f"{where}: {name}()")
            if owner == "pickle" or (owner == "torch" and name == "save"):  # models go through safetensors only
                problems.append(f"{where}: {owner}.{name}")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                problems.append(f"{where}: yaml.{name} (use yaml.safe_load)")
            if owner == "torch" and name == "load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            flag = keywords.get("trust_remote_code")
            if isinstance(flag, ast.Constant) and flag.value is True:
                problems.append(f"{where}: trust_remote_code=True")
    assert not problems, "\n".join(problems)


def test_load_model_refuses_remote_code_and_pickled_weights(tmp_path):
    with pytest.raises(ValueError, match="remote code"):
        load_model(str(tmp_path), trust_remote_code=True)
    with pytest.raises(ValueError, match="safetensors"):
        load_model(str(tmp_path), use_safetensors=False)
    model = make_tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickled checkpoint, as old repos ship
    with pytest.raises(OSError, match="safetensors"):
        load_model(str(tmp_path))
