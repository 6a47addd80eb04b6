"""Generated model cards: template filling, metadata (model-index with the dense baseline), plot, merging."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from tailored_hf.hub import PLOT_FILENAME, build_card, merge_cards, plot_per_layer, write_card
from tailored_hf.hub.card import CITATIONS, SECTION_RE, resolve_base_model
from tailored_hf.structure import PLAN_FILENAME, PruningPlan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_card_from_a_real_run_has_every_section(tiny_run_dir):
    report = json.loads((tiny_run_dir / "report.json").read_text())
    model_dir = tiny_run_dir / "model"
    path = write_card(model_dir, report=report, repo_id="org/tiny-boolq-20", recipe="recipes/x.yaml")
    card = ModelCard.load(path)
    data = card.data.to_dict()

    assert {"tailored_hf", "pruned", "depgraph", "boolq"} <= set(data["tags"])
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "base_model" not in data  # a local random base has no Hub id to name
    assert data["datasets"] == ["google/boolq"]  # the training data
    # model-index: this model and the dense baseline (and the pruned-untuned model) side by side
    names = {r.metric_name for r in card.data.eval_results}
    assert {"acc (this model)", "acc (dense baseline)", "acc (pruned, before recovery)"} <= names
    assert {"perplexity (this model)", "perplexity (dense baseline)"} <= names
    tuned = next(r for r in card.data.eval_results if r.metric_name == "acc (this model)")
    assert tuned.metric_value == pytest.approx(report["tuned"]["acc"], abs=1e-4)
    assert tuned.dataset_type == "google/boolq" and tuned.dataset_split == "validation"

    text = card.text
    assert set(m.group("name") for m in SECTION_RE.finditer(text)) == {
        "summary",
        "usage",
        "results",
        "architecture",
        "training",
        "citation",
    }
    assert f"{report['params']['dense']:,}" in text and f"{report['params']['pruned']:,}" in text
    assert f"{100 * report['achieved_sparsity']:.2f}%" in text
    assert f"![kept heads and FFN channels per layer]({PLOT_FILENAME})" in text
    for row in PruningPlan.load(model_dir / PLAN_FILENAME).per_layer_sizes():
        assert f"| {row['layer']} | {row['heads']} / {row['source_heads']} |" in text
    assert f"K = {report['config']['k_shots']}" in text
    assert f"Prompt template: `{report['prompt_selection']['selected']}`" in text
    assert report["training"]["example"].splitlines()[0] in text  # the rendered prompt as the model saw it
    assert 'from_pretrained("org/tiny-boolq-20")' in text
    assert "transformers 5." in text and "torch " in text
    for key in ("2410.19185", "2402.09773", "2412.14426"):
        assert key in text
    assert set(CITATIONS) == {"tailored_llama", "nuteprune", "atp"}
    # non-default hyperparameters come from the method config (the run overrode the calibration settings)
    assert "`num_calibration_samples`: `2`" in text and "`calibration_seq_len`: `32`" in text
    assert (model_dir / PLOT_FILENAME).read_bytes().startswith(PNG_MAGIC)


def test_card_metadata_passes_yaml_round_trip(tiny_run_dir):
    report = json.loads((tiny_run_dir / "report.json").read_text())
    card = build_card(tiny_run_dir / "model", report=report, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    reloaded = ModelCard(card.content)
    assert reloaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert reloaded.data.license == "apache-2.0"  # inherited from the base model
    assert [r.metric_value for r in reloaded.data.eval_results] == [r.metric_value for r in card.data.eval_results]
    meta = yaml.safe_load(card.content.split("---")[1])
    assert meta["model-index"][0]["name"]
    assert "2502.02737" in card.text  # the base model's BibTeX
    named = build_card(tiny_run_dir / "model", report=report, model_name="smol-boolq")
    assert named.data.model_name == "smol-boolq" and "# smol-boolq" in named.text


def test_base_model_resolution(tmp_path):
    assert resolve_base_model("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_base_model("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert resolve_base_model(str(tmp_path)) is None
    assert resolve_base_model(None) is None


def test_card_without_report_and_refusal_without_plan(pruned_dir, tmp_path):
    card = build_card(pruned_dir)
    assert card.data.eval_results is None
    assert "No evaluation was recorded" in card.text
    assert "`magnitude`" in card.text  # method from the plan's metadata
    with pytest.raises(ValueError, match=PLAN_FILENAME):
        build_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="template"):
        build_card(pruned_dir, template_path=tmp_path / "missing.md")


def test_merge_keeps_user_edits_outside_markers(tiny_run_dir):
    report = json.loads((tiny_run_dir / "report.json").read_text())
    first = build_card(tiny_run_dir / "model", report=report, repo_id="org/m")
    meta, body = first.content.split("---\n", 2)[1:]
    user_meta = yaml.safe_load(meta) | {"language": ["en"], "tags": yaml.safe_load(meta)["tags"] + ["my-tag"]}
    edited_body = "My own introduction.\n\n" + body.replace("## How to load", "## How to load (edited by us)")
    edited_body += "\n## Notes by the user\n\nKeep me.\n"
    edited = "---\n" + yaml.safe_dump(user_meta, sort_keys=False) + "---\n" + edited_body

    report["tuned"]["acc"] = 0.987654
    second = build_card(tiny_run_dir / "model", report=report, repo_id="org/m")
    merged = merge_cards(edited, second)

    assert merged.text.startswith("My own introduction.")
    assert "## Notes by the user\n\nKeep me." in merged.text
    assert "(edited by us)" not in merged.text  # our sections are regenerated
    assert "0.9877" in merged.text
    data = merged.data.to_dict()
    assert data["language"] == ["en"]
    assert "my-tag" in data["tags"] and "tailored_hf" in data["tags"]
    assert any(r.metric_value == 0.9877 for r in merged.data.eval_results)
    # a card without our markers gets the sections appended
    appended = merge_cards("---\nlicense: mit\n---\n# Hand-written\n", second)
    assert appended.text.startswith("# Hand-written")
    assert len(SECTION_RE.findall(appended.text)) == 6


def test_plot_writes_png(tmp_path):
    rows = [
        {"layer": i, "heads": 4, "source_heads": 6, "ffn": 30 - i, "source_ffn": 40, "kv_heads": 2} for i in range(3)
    ]
    path = plot_per_layer(rows, tmp_path / "p.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="per_layer is empty"):
        plot_per_layer([], tmp_path / "q.png")


def test_card_warns_when_the_dense_baseline_is_below_chance(tiny_run_dir):
    report = json.loads((tiny_run_dir / "report.json").read_text())
    report["dense_near_chance"] = False
    report["dense"]["acc"] = 0.2
    assert "scores below chance" in build_card(tiny_run_dir / "model", report=report).text
    report["dense"]["acc"] = 0.9
    assert "scores below chance" not in build_card(tiny_run_dir / "model", report=report).text


def test_template_ships_inside_the_wheel(tmp_path):
    """A non-editable install finds the card template: the wheel holds `model_cards/`'s file under the package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from tailored_hf.hub.card import TEMPLATE_PATH

    from ..conftest import REPO_ROOT

    pytest.importorskip("setuptools")
    source = REPO_ROOT / "model_cards" / "tailored_model_card.md"
    assert TEMPLATE_PATH.read_bytes() == source.read_bytes()  # one template: the package's copy is a link
    source_tree = tmp_path / "src"  # build from a copy: setuptools leaves build/ and egg-info behind
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "examples")
    shutil.copytree(REPO_ROOT / "tailored_hf", source_tree / "tailored_hf", symlinks=True, ignore=ignore)
    shutil.copytree(REPO_ROOT / "model_cards", source_tree / "model_cards", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source_tree / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source_tree,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("tailored_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("tailored_hf/hub/tailored_model_card.md") == source.read_bytes()
