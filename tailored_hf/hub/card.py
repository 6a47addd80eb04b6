"""Model cards for pruned models: filled from `model_cards/tailored_model_card.md` with `ModelCard.from_template`.

The generated body is split into sections wrapped in `<!-- tailored_hf:begin NAME -->` / `<!-- tailored_hf:end NAME
-->` markers. `merge_cards` replaces only those sections (and our metadata keys) in a card that already exists on the
Hub, so text a user added outside the markers, and metadata keys we do not write, survive a re-push.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..structure import PLAN_FILENAME, PruningPlan
from .plot import PLOT_FILENAME, plot_per_layer

logger = logging.getLogger(__name__)

CARD_FILENAME = "README.md"
#: Packaged with the wheel; in the repository a link to `model_cards/tailored_model_card.md` (the file to edit).
TEMPLATE_PATH = Path(__file__).resolve().parent / "tailored_model_card.md"
MARKER_BEGIN = "<!-- tailored_hf:begin {name} -->"
MARKER_END = "<!-- tailored_hf:end {name} -->"
SECTION_RE = re.compile(r"<!-- tailored_hf:begin (?P<name>[\w-]+) -->.*?<!-- tailored_hf:end (?P=name) -->", re.S)
#: Metadata keys the generator owns; every other key in an existing card is kept as the user left it.
OWNED_METADATA = ("base_model", "library_name", "pipeline_tag", "license", "model-index", "tags", "datasets")

#: Licenses of known base models (the Hub is not queried: cards are generated offline).
KNOWN_BASE_LICENSES: dict[str, str] = {
    "HuggingFaceTB/SmolLM2-135M": "apache-2.0",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-360M": "apache-2.0",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-1.7B": "apache-2.0",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "apache-2.0",
    "meta-llama/Llama-2-7b-hf": "llama2",
    "meta-llama/Llama-2-13b-hf": "llama2",
    "meta-llama/Meta-Llama-3-8B": "llama3",
    "meta-llama/Llama-3.1-8B": "llama3.1",
    "mistralai/Mistral-7B-v0.1": "apache-2.0",
    "Qwen/Qwen2-0.5B": "apache-2.0",
    "Qwen/Qwen2-1.5B": "apache-2.0",
    "Qwen/Qwen2-7B": "apache-2.0",
}

CITATIONS: dict[str, str] = {
    "tailored_llama": """@article{aftab2024tailoredllama,
  title   = {Tailored-LLaMA: Optimizing Few-Shot Learning in Pruned LLaMA Models with Task-Specific Prompts},
  author  = {Aftab, Danyal and Davy, Steven},
  journal = {arXiv preprint arXiv:2410.19185},
  year    = {2024}
}""",
    "nuteprune": """@article{li2024nuteprune,
  title   = {NutePrune: Efficient Progressive Pruning with Numerous Teachers for Large Language Models},
  author  = {Li, Shengrui and Chen, Junzhe and Han, Xueting and Bai, Jing},
  journal = {arXiv preprint arXiv:2402.09773},
  year    = {2024}
}""",
    "atp": """@article{lu2024atp,
  title   = {All-in-One Tuning and Structural Pruning for Domain-Specific LLMs},
  author  = {Lu, Lei and Wang, Zhepeng and Bao, Runxue and Wang, Mengbing and Li, Fangyi and Wu, Yawen and
             Jiang, Weiwen and Xu, Jie and Wang, Yanzhi and Gao, Shangqian},
  journal = {arXiv preprint arXiv:2412.14426},
  year    = {2024}
}""",
}
BASE_MODEL_CITATIONS: dict[str, str] = {
    "HuggingFaceTB/SmolLM2": """@article{allal2025smollm2,
  title   = {SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small Language Model},
  author  = {Ben Allal, Loubna and Lozhkov, Anton and Bakouch, Elie and Mart{\\'\\i}n Bl{\\'a}zquez, Gabriel and
             Penedo, Guilherme and Tunstall, Lewis and others},
  journal = {arXiv preprint arXiv:2502.02737},
  year    = {2025}
}""",
}
FRAMEWORKS = ("tailored-hf", "torch", "transformers", "peft", "trl", "datasets", "huggingface_hub")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------------------ helpers
def framework_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in FRAMEWORKS:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def resolve_base_model(name_or_path: str | None) -> str | None:
    """The Hub id of the base model: offline aliases map to their Hub id; local dirs use their `_name_or_path`."""
    if not name_or_path:
        return None
    from ..loading import OFFLINE_ALIASES

    if name_or_path in OFFLINE_ALIASES:
        return OFFLINE_ALIASES[name_or_path].hub_id
    path = Path(name_or_path)
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            inner = json.loads(config.read_text()).get("_name_or_path")
            if inner and inner != name_or_path and HUB_ID_RE.match(str(inner)) and not Path(inner).exists():
                return inner
        return None
    return name_or_path if HUB_ID_RE.match(name_or_path) else None


def base_license(base_model: str | None, name_or_path: str | None = None) -> str | None:
    """License inherited from the base model: the known table, else the base's local README metadata."""
    if base_model in KNOWN_BASE_LICENSES:
        return KNOWN_BASE_LICENSES[base_model]
    if name_or_path and (Path(name_or_path) / CARD_FILENAME).is_file():
        try:
            return ModelCard.load(Path(name_or_path) / CARD_FILENAME).data.license
        except Exception:  # an unparsable README gives no license, not a failed card
            return None
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _prompt_example(report: dict[str, Any]) -> str | None:
    training = report.get("training") or {}
    if training.get("example"):
        return training["example"]
    cfg = report["config"]
    try:  # reports written before the example was recorded: render one training row now
        from ..data import load_task_split, map_for_training

        split = load_task_split(cfg["task"], "train", data_dir=cfg.get("data_dir"))
        row = map_for_training(split.select(range(1)), cfg["task"], prompt=report["prompt_selection"]["selected"])[0]
        return row["prompt"] + row["completion"]
    except Exception as err:  # the card stays valid without the example
        logger.info("No prompt example for the card: %s", err)
        return None


def _eval_results(report: dict[str, Any]) -> list[EvalResult]:
    from ..data import get_task

    task_name = report["dense"]["task"]
    spec = get_task(task_name)
    dataset_type = spec.hub_id or task_name
    results = []
    for key, label in (
        ("tuned", "this model"),
        ("pruned_no_tune", "pruned, before recovery"),
        ("distilled_no_tune", "pruned + dense-teacher KD, before recovery"),
        ("dense", "dense baseline"),
    ):
        row = report.get(key)
        if not row:
            continue
        for metric in ("acc", "acc_norm"):
            results.append(
                EvalResult(
                    task_type="multiple-choice",
                    task_name="Multiple choice (zero-shot)",
                    dataset_type=dataset_type,
                    dataset_name=task_name,
                    dataset_split="validation",
                    metric_type="accuracy",
                    metric_name=f"{metric} ({label})",
                    metric_value=round(float(row[metric]), 4),
                )
            )
        if row.get("wikitext2_ppl") is None:  # not comparable on a trimmed vocabulary: not reported
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Language modeling",
                dataset_type="wikitext",
                dataset_name="WikiText-2",
                dataset_config="wikitext-2-raw-v1",
                dataset_split="test",
                metric_type="perplexity",
                metric_name=f"perplexity ({label})",
                metric_value=round(float(row["wikitext2_ppl"]), 3),
            )
        )
    return results


def _result_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    dense_acc = report["dense"]["acc"]
    rows = []
    for key, label in (
        ("dense", "dense baseline"),
        ("pruned_no_tune", "pruned, no recovery"),
        ("distilled_no_tune", "pruned + dense-teacher KD, no task recovery"),
        ("tuned", "**this model** (pruned + LoRA recovery)"),
    ):
        row = report.get(key)
        if row is None:
            continue
        rows.append(
            {
                "label": label,
                "acc": _fmt(row["acc"]),
                "acc_norm": _fmt(row["acc_norm"]),
                "recovery": _fmt(row["acc"] / dense_acc if dense_acc else None, 3),
                "ppl": _fmt(row["wikitext2_ppl"], 2),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ building
def build_card(
    model_dir: str | os.PathLike,
    report: dict[str, Any] | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    recipe: str | None = None,
    template_path: str | os.PathLike | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """Render the model card of a saved pruned model.

    Args:
        model_dir: directory written by `save_pruned` (config, safetensors, `pruning_plan.json`).
        report: the pipeline's `report.json` content (evaluation, training, prompt); without it the card has the
            structure, parameters and method but no results.
        repo_id: Hub id used in the loading snippet (default: the local `model_dir`).
        base_model: Hub id of the base model (default: from the report's `model`).
        license: license id (default: inherited from the base model, see `KNOWN_BASE_LICENSES`).
        recipe: recipe path shown in the "reproduce" line.
        template_path: Jinja template (default: `model_cards/tailored_model_card.md`).
        model_name: card title and model-index name (default: the repo name, else the output directory's name).

    Raises:
        `ValueError`: `model_dir` has no `pruning_plan.json`.
    """
    model_dir = Path(model_dir)
    template_path = Path(template_path or TEMPLATE_PATH)
    if not template_path.is_file():
        raise FileNotFoundError(
            f"Model card template {template_path} not found: pass `template_path=` a Jinja template (the default "
            "ships inside the tailored_hf package as hub/tailored_model_card.md)."
        )
    plan_path = model_dir / PLAN_FILENAME
    if not plan_path.is_file():
        raise ValueError(f"{model_dir} has no {PLAN_FILENAME}: build cards for models saved with `save_pruned`.")
    plan = PruningPlan.load(plan_path)
    config = json.loads((model_dir / "config.json").read_text())
    counts = plan.num_parameters()
    meta = plan.metadata
    cfg = (report or {}).get("config", {})
    method = cfg.get("method") or meta.get("method") or "unknown"
    task = cfg.get("task") or meta.get("task")
    base_source = cfg.get("model")
    base_model = base_model or resolve_base_model(base_source)
    license = license or base_license(base_model, base_source)
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else model_dir.resolve().parent.name)
    eval_results = _eval_results(report) if report else None
    tags = ["tailored_hf", "pruned", "structured-pruning", method] + ([task] if task else [])
    datasets = None
    if report is not None and task:
        from ..data import get_task

        hub_id = get_task(task).hub_id
        datasets = [hub_id] if hub_id else None
    card_data = ModelCardData(
        datasets=datasets,
        base_model=base_model,
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(tags)),
        model_name=model_name,
        eval_results=eval_results,
    )
    if report is not None:
        params_dense, params_pruned = report["params"]["dense"], report["params"]["pruned"]
        achieved = report["achieved_sparsity"]
    else:
        params_dense, params_pruned, achieved = counts["dense"], counts["pruned"], counts["sparsity"]
    training = None
    if report is not None:
        training = {
            "task": cfg.get("task"),
            "k_shots": cfg.get("k_shots"),
            "lora_r": cfg.get("lora_r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "learning_rate": cfg.get("learning_rate"),
            "steps": (report.get("training") or {}).get("steps"),
            "teacher_kd": report.get("teacher_kd"),
            "teacher_kd_source": cfg.get("teacher_kd_source"),
        }
    non_default = (report or {}).get("method_non_default")
    if non_default is None and report is not None:
        non_default = {k: v for k, v in (("target_sparsity", cfg.get("target_sparsity")),) if v is not None}
    model_type = config.get("model_type", "llama")
    text_config_needs_import = model_type.startswith("tailored_")
    plot_per_layer(plan.per_layer_sizes(), model_dir / PLOT_FILENAME, title=f"{model_name}: kept structure per layer")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        base_model=base_model,
        base_name=base_source or config.get("_name_or_path") or "the base model",
        method=method,
        task=task,
        params_dense=params_dense,
        params_pruned=params_pruned,
        achieved_sparsity=achieved,
        target_sparsity=cfg.get("target_sparsity", meta.get("target_sparsity")),
        needs_import=text_config_needs_import,
        model_type=model_type,
        repo_or_path=repo_id or str(model_dir),
        example_input="The capital of France is",
        results=_result_rows(report) if report else [],
        eval_task=(report or {}).get("dense", {}).get("task"),
        eval_split="validation",
        eval_n=(report or {}).get("dense", {}).get("n"),
        chance=(report or {}).get("chance"),
        dense_near_chance=(report or {}).get("dense_near_chance", False),
        dense_below_chance=bool(report and report.get("chance") and report["dense"]["acc"] < report["chance"]),
        ppl_windows=cfg.get("ppl_windows"),
        plot_filename=PLOT_FILENAME,
        per_layer=plan.per_layer_sizes(),
        vocabulary=None
        if plan.tokens is None
        else {
            "kept": len(plan.tokens),
            "source": plan.source.vocab_size,
            "held_out_share": ((report or {}).get("task_vocabulary") or {}).get("held_out_share"),
        },
        non_default=non_default or {},
        training=training,
        prompt_name=(report or {}).get("prompt_selection", {}).get("selected"),
        prompt_example=_prompt_example(report) if report else None,
        recipe=recipe,
        versions=framework_versions(),
        citations=citations_for(base_model),
    )


def citations_for(base_model: str | None) -> list[str]:
    """BibTeX of the three method papers, plus the base model's when known."""
    entries = list(CITATIONS.values())
    for prefix, entry in BASE_MODEL_CITATIONS.items():
        if base_model and base_model.startswith(prefix):
            entries.append(entry)
    return entries


def write_card(model_dir: str | os.PathLike, report: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """Write `README.md` (and the per-layer PNG) into `model_dir`; `kwargs` go to `build_card`."""
    model_dir = Path(model_dir)
    card = build_card(model_dir, report=report, **kwargs)
    path = model_dir / CARD_FILENAME
    card.save(path)
    return path


def load_report(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`report.json` of a pipeline output directory (or of the parent of its `model/`), if there is one."""
    output_dir = Path(output_dir)
    for candidate in (output_dir / "report.json", output_dir.parent / "report.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


# ------------------------------------------------------------------------------------------------ merging
def sections(text: str) -> dict[str, str]:
    """`name -> marked block` of every generated section in a card's text."""
    return {m.group("name"): m.group(0) for m in SECTION_RE.finditer(text)}


def merge_cards(existing: str, new: ModelCard) -> ModelCard:
    """Update an existing card with a newly generated one, keeping the user's edits.

    Generated sections replace the sections of the same name (new sections are appended); everything outside the
    markers stays. Metadata keys in `OWNED_METADATA` come from the new card (tags are the union); other keys stay.
    """
    old = ModelCard(existing, ignore_metadata_errors=True)
    text = old.text
    for name, block in sections(new.text).items():
        pattern = re.compile(
            re.escape(MARKER_BEGIN.format(name=name)) + r".*?" + re.escape(MARKER_END.format(name=name)), re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda _m, block=block: block, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    merged = {k: v for k, v in old.data.to_dict().items() if k not in OWNED_METADATA}
    new_meta = new.data.to_dict()
    merged.update({k: v for k, v in new_meta.items() if k in OWNED_METADATA})
    old_tags = old.data.to_dict().get("tags") or []
    merged["tags"] = list(dict.fromkeys([*(new_meta.get("tags") or []), *old_tags]))
    card = ModelCard(new.content)  # a fresh card object; metadata and text are replaced below
    card.data = ModelCardData(**merged)
    card.text = text
    return card
