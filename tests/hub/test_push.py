"""`push_to_hub` against a local Hub-compatible server with the real `huggingface_hub` client.

The round trip goes through a fresh interpreter whose `HF_ENDPOINT` points at the server: `from_pretrained(repo_id)`
must give the same logits as the local model. The real Hub is never contacted.
"""

from __future__ import annotations

import json
import logging
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tailored_hf.hub import HubPushError, push_to_hub
from tailored_hf.hub.card import SECTION_RE
from tailored_hf.structure import PLAN_FILENAME, PruningPlan, save_pruned

from ..conftest import input_batch, make_tiny_model
from .conftest import SECRET_TOKEN, pruned_tiny, run_python, tiny_tokenizer
from .hub_server import Repo


def _repo_text(hub, repo_id: str, path: str) -> str:
    return hub.state.repos[repo_id].files[path].decode()


def test_push_pull_round_trip_gives_identical_logits(local_hub, tmp_path):
    uniform, _ = pruned_tiny(uniform=True)
    hetero, _ = pruned_tiny(uniform=False)
    save_pruned(uniform, tmp_path / "u" / "model", tiny_tokenizer(), extra_metadata={"method": "magnitude"})
    save_pruned(hetero, tmp_path / "h" / "model", tiny_tokenizer(), extra_metadata={"method": "depgraph"})
    push_to_hub(tmp_path / "u", "org/uniform", token=SECRET_TOKEN, endpoint=local_hub.url)
    push_to_hub(tmp_path / "h" / "model", "org/hetero", token=SECRET_TOKEN, endpoint=local_hub.url)

    files = set(local_hub.state.repos["org/uniform"].files)
    assert {"model.safetensors", "config.json", PLAN_FILENAME, "README.md", "per_layer_sizes.png"} <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    assert json.loads(_repo_text(local_hub, "org/uniform", "config.json"))["model_type"] == "llama"
    assert json.loads(_repo_text(local_hub, "org/hetero", "config.json"))["model_type"] == "tailored_llama"

    ids = input_batch()
    out = tmp_path / "remote_logits.safetensors"
    card = _repo_text(local_hub, "org/hetero", "README.md")
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]  # the card's "How to load" block
    assert 'from_pretrained("org/hetero")' in snippet and "import tailored_hf" in snippet
    code = textwrap.dedent(
        f"""
        import sys, torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
        ids = torch.tensor({ids.tolist()})
        uniform = AutoModelForCausalLM.from_pretrained("org/uniform")  # plain transformers, no tailored_hf import
        assert "tailored_hf" not in sys.modules, "a uniform model must load without tailored_hf"
        AutoTokenizer.from_pretrained("org/uniform")
        import tailored_hf  # registers tailored_llama for the heterogeneous one
        hetero = AutoModelForCausalLM.from_pretrained("org/hetero")
        with torch.no_grad():
            save_file({{"uniform": uniform(ids).logits, "hetero": hetero(ids).logits}}, {str(out)!r})
        exec({snippet!r})  # the card's loading snippet runs as written
        print("SNIPPET_OK", type(model).__name__)
        """
    )
    result = run_python(code, local_hub.url, tmp_path / "hf_home")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SNIPPET_OK TailoredLlamaForCausalLM" in result.stdout, result.stdout[-2000:]
    remote = load_file(str(out))
    with torch.no_grad():
        assert torch.equal(remote["uniform"], uniform.eval()(ids).logits)
        assert torch.equal(remote["hetero"], hetero.eval()(ids).logits)
    downloads = [path for method, path in local_hub.state.requests if method == "GET" and "/resolve/" in path]
    assert any(p.startswith("/org/hetero/resolve/") and p.endswith("/model.safetensors") for p in downloads)


def test_pushed_card_parses_and_metadata_round_trips(local_hub, tiny_run_dir, tmp_path):
    info = push_to_hub(
        tiny_run_dir,
        "org/tiny-boolq",
        token=SECRET_TOKEN,
        endpoint=local_hub.url,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert info.oid == local_hub.state.repos["org/tiny-boolq"].sha
    path = hf_hub_download("org/tiny-boolq", "README.md", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    card = ModelCard.load(path)
    report = json.loads((tiny_run_dir / "report.json").read_text())
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values["acc (this model)"] == pytest.approx(report["tuned"]["acc"], abs=1e-4)
    assert values["acc (dense baseline)"] == pytest.approx(report["dense"]["acc"], abs=1e-4)
    assert 'from_pretrained("org/tiny-boolq")' in card.text
    # the pushed plan is the saved one, and the weights are the pruned ones (never the dense original)
    pushed_plan = PruningPlan.from_dict(json.loads(_repo_text(local_hub, "org/tiny-boolq", PLAN_FILENAME)))
    assert pushed_plan.num_parameters()["pruned"] == report["params"]["pruned"]
    # model_info sees what the card declares
    from huggingface_hub import HfApi

    info = HfApi(endpoint=local_hub.url).model_info("org/tiny-boolq")
    assert "tailored_hf" in info.tags and {s.rfilename for s in info.siblings} >= {"README.md", PLAN_FILENAME}


def test_repush_updates_only_our_sections(local_hub, tiny_run_dir):
    push_to_hub(tiny_run_dir, "org/edited", token=SECRET_TOKEN, endpoint=local_hub.url)
    repo = local_hub.state.repos["org/edited"]
    card = repo.files["README.md"].decode()
    meta_end = card.index("---", 3) + 3
    user_card = (
        card[:3] + "\nlanguage:\n- en" + card[3:meta_end] + "\n\nIntro written by the user.\n" + card[meta_end:]
    )
    user_card = user_card.replace("## How to load", "## How to load (user edit inside a generated section)")
    user_card += "\n## Limitations (user)\n\nDo not use for medical advice.\n"
    repo.files["README.md"] = user_card.encode()

    push_to_hub(tiny_run_dir, "org/edited", token=SECRET_TOKEN, endpoint=local_hub.url, commit_message="again")
    updated = ModelCard(repo.files["README.md"].decode())
    assert "Intro written by the user." in updated.text
    assert "## Limitations (user)\n\nDo not use for medical advice." in updated.text
    assert "user edit inside a generated section" not in updated.text
    assert updated.data.to_dict()["language"] == ["en"]
    assert len(SECTION_RE.findall(updated.text)) == 6
    assert len(repo.commits) == 3  # creation + two pushes


def test_refuses_unpruned_models_and_dirs_without_plan(local_hub, tmp_path):
    dense = make_tiny_model("llama")
    with pytest.raises(ValueError, match="not pruned"):
        push_to_hub(dense, "org/dense", token=SECRET_TOKEN, endpoint=local_hub.url)
    dense.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="no pruning_plan.json"):
        push_to_hub(tmp_path / "dense", "org/dense", token=SECRET_TOKEN, endpoint=local_hub.url)
    # a plan copied next to dense weights is caught too
    _, plan = pruned_tiny(uniform=True)
    plan.save(tmp_path / "dense" / PLAN_FILENAME)
    with pytest.raises(ValueError, match="does not describe the saved weights"):
        push_to_hub(tmp_path / "dense", "org/dense", token=SECRET_TOKEN, endpoint=local_hub.url)
    assert local_hub.state.requests == []  # refused before any Hub request


def test_in_memory_model_push(local_hub):
    model, plan = pruned_tiny(uniform=True)
    push_to_hub(model, "org/from-memory", tokenizer=tiny_tokenizer(), token=SECRET_TOKEN, endpoint=local_hub.url)
    files = local_hub.state.repos["org/from-memory"].files
    assert PruningPlan.from_dict(json.loads(files[PLAN_FILENAME])).to_dict()["layers"] == plan.to_dict()["layers"]
    assert "tokenizer.json" in files and "README.md" in files


def test_hub_errors_name_repo_and_status(local_hub, pruned_dir):
    local_hub.state.fail["commit"] = 403
    with pytest.raises(HubPushError, match=r"'org/forbidden'.*HTTP 403") as info:
        push_to_hub(pruned_dir, "org/forbidden", token=SECRET_TOKEN, endpoint=local_hub.url)
    assert info.value.status == 403 and info.value.repo_id == "org/forbidden"
    local_hub.state.fail.clear()
    with pytest.raises(HubPushError, match=r"'org/no-auth'.*HTTP 401"):
        push_to_hub(pruned_dir, "org/no-auth", token="hf_wrong", endpoint=local_hub.url)


def test_token_never_written_or_logged(local_hub, tiny_run_dir, caplog, capfd):
    with caplog.at_level(logging.DEBUG):
        push_to_hub(tiny_run_dir, "org/secret", token=SECRET_TOKEN, endpoint=local_hub.url)
    for path, data in local_hub.state.repos["org/secret"].files.items():
        assert SECRET_TOKEN.encode() not in data, path
    for file in tiny_run_dir.rglob("*"):
        if file.is_file():
            assert SECRET_TOKEN.encode() not in file.read_bytes(), file
    captured = capfd.readouterr()
    assert SECRET_TOKEN not in caplog.text + captured.out + captured.err


def test_non_main_process_pushes_nothing(local_hub, pruned_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert push_to_hub(pruned_dir, "org/rank1", token=SECRET_TOKEN, endpoint=local_hub.url) is None
    assert local_hub.state.requests == []


def test_cli_push(local_hub, tiny_run_dir, monkeypatch, capsys):
    import huggingface_hub.constants

    from tailored_hf.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", local_hub.url)
    assert main(["push", str(tiny_run_dir), "org/cli", "--token", SECRET_TOKEN]) == 0
    assert "Pushed" in capsys.readouterr().out
    assert PLAN_FILENAME in local_hub.state.repos["org/cli"].files
    assert main(["push", str(tiny_run_dir / "report.json"), "org/cli", "--token", SECRET_TOKEN]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_trainer_push_to_hub_pushes_the_pruned_model(local_hub, tmp_path):
    """`trainer.push_to_hub()` with PrunerCallback uploads the pruned weights, the plan and our card (fresh process).

    The repository already holds a card a user edited: the push keeps the user's text and replaces only our sections.
    """
    user_card = "---\nlanguage:\n- en\n---\n\nNotes the user wrote on the Hub.\n"
    local_hub.state.repos["org/trained"] = Repo(
        "org/trained", files={"README.md": user_card.encode()}, commits=["1" * 40]
    )
    code = textwrap.dedent(
        f"""
        import json, sys, torch
        sys.path.insert(0, ".")
        from datasets import Dataset
        from transformers import Trainer, TrainingArguments
        from tailored_hf import PrunerCallback
        from tailored_hf.methods import MagnitudeConfig
        from tests.conftest import make_tiny_model
        model = make_tiny_model("llama", num_hidden_layers=2, intermediate_size=64)
        ids = torch.randint(0, 90, (8, 10), generator=torch.Generator().manual_seed(0)).tolist()
        rows = Dataset.from_dict({{"input_ids": ids, "labels": ids, "attention_mask": [[1] * 10] * 8}})
        args = TrainingArguments(
            output_dir={str(tmp_path / "run")!r}, max_steps=1, per_device_train_batch_size=4, report_to=[],
            save_strategy="no", use_cpu=True, disable_tqdm=True, push_to_hub=True, hub_model_id="org/trained",
            hub_token={SECRET_TOKEN!r},
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          callbacks=[PrunerCallback(MagnitudeConfig(target_sparsity=0.3))])
        trainer.train()
        trainer.push_to_hub()
        print(json.dumps({{"intermediate": trainer.model.config.intermediate_size}}))
        """
    )
    result = run_python(code, local_hub.url, tmp_path / "hf_home")
    assert result.returncode == 0, result.stderr[-3000:]
    files = local_hub.state.repos["org/trained"].files
    assert PLAN_FILENAME in files
    config = json.loads(files["config.json"])
    plan = PruningPlan.from_dict(json.loads(files[PLAN_FILENAME]))
    assert not plan.is_identity
    assert config["intermediate_size"] < 64  # pruned weights, not the dense original
    assert config["intermediate_size"] == json.loads(result.stdout.strip().splitlines()[-1])["intermediate"]
    assert not any(name.startswith("checkpoint-") for name in files)
    card = ModelCard(files["README.md"].decode())
    assert len(SECTION_RE.findall(card.text)) == 6  # the tailored_hf card, not the Trainer's generic draft
    assert "Notes the user wrote on the Hub." in card.text
    assert card.data.to_dict()["language"] == ["en"]
    assert {"tailored_hf", "pruned", "magnitude"} <= set(card.data.tags)
    assert "per_layer_sizes.png" in files


def test_pulled_model_is_stock_loadable(local_hub, pruned_dir, tmp_path):
    """Saved uniform models are stock llama configs; the local copy loads without tailored_hf's classes."""
    model = AutoModelForCausalLM.from_pretrained(pruned_dir)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_push_a_trainer_uses_the_pruned_save_and_our_card(local_hub, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from tailored_hf import PrunerCallback
    from tailored_hf.methods import MagnitudeConfig

    ids = torch.randint(0, 90, (8, 10), generator=torch.Generator().manual_seed(0)).tolist()
    rows = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * 10] * 8})
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    dense = Trainer(model=make_tiny_model("llama"), args=args, train_dataset=rows, processing_class=tiny_tokenizer())
    with pytest.raises(ValueError, match="not pruned"):
        push_to_hub(dense, "org/dense-trainer", token=SECRET_TOKEN, endpoint=local_hub.url)
    trainer = Trainer(
        model=make_tiny_model("llama", num_hidden_layers=2, intermediate_size=64),
        args=args,
        train_dataset=rows,
        processing_class=tiny_tokenizer(),
        callbacks=[PrunerCallback(MagnitudeConfig(target_sparsity=0.3))],
    )
    trainer.train()
    push_to_hub(trainer, "org/from-trainer", token=SECRET_TOKEN, endpoint=local_hub.url)
    files = local_hub.state.repos["org/from-trainer"].files
    assert {PLAN_FILENAME, "tokenizer.json", "model.safetensors", "per_layer_sizes.png"} <= set(files)
    assert json.loads(files["config.json"])["intermediate_size"] == trainer.model.config.intermediate_size < 64
    assert len(SECTION_RE.findall(files["README.md"].decode())) == 6
