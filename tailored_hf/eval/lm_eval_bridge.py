"""Run lm-evaluation-harness itself as the evaluation engine, on an in-memory model and local data files.

The stock lm-eval task definitions (prompt templates, choices, targets, metrics) are reused unchanged: for every
requested task a small YAML is generated in a temporary directory that `include`s the stock task YAML by absolute
path and only swaps the dataset for the local files (`dataset_path: json` + `dataset_kwargs.data_files`). Nothing is
downloaded: `HF_DATASETS_OFFLINE` and `HF_HUB_OFFLINE` are set while lm-eval runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

#: Prefix of the generated task names (they must not collide with the stock task names).
LOCAL_TASK_PREFIX = "tailored_local_"
#: lm-eval's default; the stderr of a mean is closed-form (no resampling), only perplexities are bootstrapped.
DEFAULT_BOOTSTRAP_ITERS = 100_000
OFFLINE_ENV_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class LocalTaskSource:
    """
    Where a stock lm-eval task lives and which local files replace its Hub dataset.

    Args:
        stock_yaml (`str`): Path of the stock task YAML relative to the `lm_eval/tasks` directory.
        data_files (`dict[str, str]`): lm-eval split name -> file path relative to the data directory.
        overrides (`dict[str, Any]`): Extra YAML keys, e.g. a `doc_to_target` adapted to the local schema.
    """

    stock_yaml: str
    data_files: dict[str, str]
    overrides: tuple[tuple[str, Any], ...] = ()


def _commonsense(name: str) -> dict[str, str]:
    # Only the evaluation split: evaluation is zero-shot, and some local train files have a different schema
    # (HellaSwag train is preprocessed), which one `json` builder cannot load next to validation.
    return {"validation": f"commonsense/{name}/validation.jsonl.gz"}


#: The commonsense tasks lm-eval implements, mapped onto the local files of `/work/shared/data`-style directories.
LOCAL_TASKS: dict[str, LocalTaskSource] = {
    "piqa": LocalTaskSource("piqa/piqa.yaml", _commonsense("piqa")),
    "arc_easy": LocalTaskSource("arc/arc_easy.yaml", _commonsense("arc_easy")),
    # arc_challenge.yaml only includes arc_easy.yaml and renames the dataset, which we replace anyway.
    "arc_challenge": LocalTaskSource("arc/arc_easy.yaml", _commonsense("arc_challenge")),
    "hellaswag": LocalTaskSource("hellaswag/hellaswag.yaml", _commonsense("hellaswag")),
    "winogrande": LocalTaskSource("winogrande/default.yaml", _commonsense("winogrande")),
    "openbookqa": LocalTaskSource("openbookqa/openbookqa.yaml", _commonsense("openbookqa")),
    # The local BoolQ files have the `google/boolq` schema (`answer: bool`) instead of super_glue's `label: int`.
    "boolq": LocalTaskSource(
        "super_glue/boolq/default.yaml",
        _commonsense("boolq"),
        overrides=(("doc_to_target", "{{ 1 if answer else 0 }}"),),
    ),
}
WIKITEXT_TASK = "wikitext"
WIKITEXT_ROWS_FILE = "lm/wikitext2/wikitext-2-raw-v1.test.rows.json"


def _stock_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """Set `HF_DATASETS_OFFLINE=1` and `HF_HUB_OFFLINE=1` for the duration of the block."""
    saved = {name: os.environ.get(name) for name in OFFLINE_ENV_VARS}
    os.environ.update(dict.fromkeys(OFFLINE_ENV_VARS, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _is_wikitext_title(line: str) -> bool:
    stripped = line.replace("= = =", "===").replace("= =", "==").strip()
    return stripped.startswith("= ") and stripped.endswith(" =")


def wikitext_documents(rows: Sequence[str]) -> list[str]:
    """
    Rebuild the `page` column of `EleutherAI/wikitext_document_level` (wikitext-2-raw-v1) from the line rows of
    `wikitext`/`wikitext-2-raw-v1`.

    The document-level dataset splits the raw file (`wiki.*.raw`, whose blank lines are a single space) at top-level
    `= Title =` headings and joins each article's lines with `"\\n"`. The rows of the line-level dataset are the raw
    lines with their newline kept and blank lines mapped to `""`, which is what this function undoes.

    Args:
        rows (`Sequence[str]`): The `text` column of the line-level dataset.

    Returns:
        `list[str]`: One string per article.
    """
    lines = [row[:-1] if row.endswith("\n") else (row if row else " ") for row in rows]
    pages: list[str] = []
    current: list[str] = []
    for line in lines:
        if _is_wikitext_title(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    page = "\n".join(current)
    if page.strip():
        pages.append(page)
    return pages


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise ValueError("`data_dir` is required: pass the directory that holds `commonsense/`, `lm/`, ...")
    path = Path(data_dir)
    if not path.is_dir():
        raise ValueError(f"`data_dir` {path} is not a directory.")
    return path


def write_local_task_configs(tasks: Sequence[str], data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """
    Write one lm-eval task YAML per task into `out_dir`, pointing the stock task definition at local files.

    Args:
        tasks (`Sequence[str]`): Names among `LOCAL_TASKS` and `"wikitext"`.
        data_dir (`str` or `os.PathLike`): Local data directory (layout of `/work/shared/data`).
        out_dir (`str` or `os.PathLike`): Directory to write the YAMLs (and, for wikitext, the document file) into.

    Returns:
        `dict[str, str]`: Our task name -> generated lm-eval task name.
    """
    data_dir = _resolve_data_dir(data_dir)
    out_dir = Path(out_dir)
    stock = _stock_tasks_dir()
    names: dict[str, str] = {}
    for task in tasks:
        local_name = f"{LOCAL_TASK_PREFIX}{task}"
        if task == WIKITEXT_TASK:
            rows = json.loads((data_dir / WIKITEXT_ROWS_FILE).read_text(encoding="utf-8"))
            docs_file = out_dir / "wikitext_test_pages.jsonl"
            with docs_file.open("w", encoding="utf-8") as f:
                for page in wikitext_documents(rows):
                    f.write(json.dumps({"page": page}) + "\n")
            config: dict[str, Any] = {
                "include": str(stock / "wikitext" / "wikitext.yaml"),
                "data_files": {"test": str(docs_file)},
                "splits": {"training_split": None, "validation_split": None, "test_split": "test"},
            }
        elif task in LOCAL_TASKS:
            source = LOCAL_TASKS[task]
            files = {split: data_dir / rel for split, rel in source.data_files.items()}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise ValueError(f"Missing local data files for task {task!r}: {missing}")
            config = {
                "include": str(stock / source.stock_yaml),
                "data_files": {split: str(p) for split, p in files.items()},
                "splits": {"training_split": None, "validation_split": "validation", "test_split": None},
                **dict(source.overrides),
            }
        else:
            raise ValueError(f"Unknown task {task!r}; supported: {sorted([*LOCAL_TASKS, WIKITEXT_TASK])}")
        yaml_config = {
            "include": config.pop("include"),
            "task": local_name,
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": config.pop("data_files")},
            **config.pop("splits"),
            **config,
        }
        (out_dir / f"{local_name}.yaml").write_text(yaml.safe_dump(yaml_config, sort_keys=False), encoding="utf-8")
        names[task] = local_name
    return names


def make_hflm(model, tokenizer, batch_size: int = 32, max_length: int | None = None):
    """
    Wrap an in-memory causal LM and its tokenizer in lm-eval's `HFLM` (no BOS override: HFLM's default).

    Args:
        model (`PreTrainedModel`): The model, already on its device.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        batch_size (`int`): Requests per forward pass.
        max_length (`int`, *optional*): Override the context length lm-eval derives from the config.
    """
    from lm_eval.models.huggingface import HFLM

    kwargs: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size}
    if max_length is not None:
        kwargs["max_length"] = max_length
    return HFLM(**kwargs)


_METRIC_KEY = re.compile(r"^(?P<metric>[^,]+),(?P<filter>.+)$")


def _flatten_metrics(task_results: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in task_results.items():
        match = _METRIC_KEY.match(key)
        if match and isinstance(value, (int, float)):
            metrics[match["metric"]] = float(value)
    return metrics


def evaluate_with_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    data_dir: str | os.PathLike,
    limit: int | float | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    log_samples: bool = False,
    lm=None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
) -> dict[str, dict[str, Any]]:
    """
    Evaluate with lm-evaluation-harness on local data files (zero-shot, no download).

    Args:
        model (`PreTrainedModel`): Causal LM in memory.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        tasks (`Sequence[str]`): Task names (keys of `LOCAL_TASKS` or `"wikitext"`).
        data_dir (`str` or `os.PathLike`): Local data directory.
        limit (`int` or `float`, *optional*): lm-eval's `limit` (first N documents, or a fraction).
        batch_size (`int`): HFLM batch size.
        max_length (`int`, *optional*): Override HFLM's maximum length.
        log_samples (`bool`): Also return lm-eval's per-document records under `"samples"`.
        lm (`HFLM`, *optional*): A ready HFLM to reuse instead of wrapping `model` again.
        bootstrap_iters (`int`): lm-eval's stderr bootstrap iterations (0 disables all stderrs).

    Returns:
        `dict[str, dict]`: task -> `{metric: value}` with lm-eval's metric names (`acc`, `acc_stderr`, `acc_norm`,
        `word_perplexity`, ...) plus `"n"` (documents evaluated) and, if requested, `"samples"`.
    """
    if not tasks:
        raise ValueError("`tasks` must name at least one task.")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if lm is None:
        lm = make_hflm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    with tempfile.TemporaryDirectory(prefix="tailored_hf_lm_eval_") as tmp, offline_env():
        names = write_local_task_configs(tasks, data_dir, tmp)
        task_manager = TaskManager(include_path=tmp, include_defaults=False)
        out = simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            task_manager=task_manager,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            num_fewshot=0,
        )
    results: dict[str, dict[str, Any]] = {}
    for task, local_name in names.items():
        entry: dict[str, Any] = _flatten_metrics(out["results"][local_name])
        n_samples = out.get("n-samples", {}).get(local_name, {})
        entry["n"] = int(n_samples.get("effective", n_samples.get("original", 0)))
        if log_samples:
            entry["samples"] = out["samples"][local_name]
        results[task] = entry
    return results


def lm_eval_requests(
    tasks: Sequence[str], data_dir: str | os.PathLike, limit: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """
    Build lm-eval's own zero-shot multiple-choice requests and return them in the scorer's item schema.

    The contexts and continuations are exactly the `(context, continuation)` arguments lm-eval sends to
    `loglikelihood` (target delimiter included), so `score_multiple_choice` on these items reproduces lm-eval.

    Args:
        tasks (`Sequence[str]`): Multiple-choice task names (keys of `LOCAL_TASKS`).
        data_dir (`str` or `os.PathLike`): Local data directory.
        limit (`int`, *optional*): First N evaluation documents.

    Returns:
        `dict[str, list[dict]]`: task -> items `{"contexts", "continuations", "gold", "choices", "doc_id"}` in document
        order.
    """
    from lm_eval.tasks import TaskManager, get_task_dict

    for task in tasks:
        if task not in LOCAL_TASKS:
            raise ValueError(f"{task!r} is not a multiple-choice task known to the bridge: {sorted(LOCAL_TASKS)}")
    items: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="tailored_hf_lm_eval_") as tmp, offline_env():
        names = write_local_task_configs(tasks, data_dir, tmp)
        task_dict = get_task_dict(list(names.values()), TaskManager(include_path=tmp, include_defaults=False))
        for task, local_name in names.items():
            task_obj = task_dict[local_name]
            task_obj.set_config(key="num_fewshot", value=0)
            task_obj.build_all_requests(limit=limit, rank=0, world_size=1)
            by_doc: dict[int, list] = {}
            for inst in task_obj.instances:
                by_doc.setdefault(inst.doc_id, []).append(inst)
            task_items = []
            for doc_id in sorted(by_doc):
                insts = sorted(by_doc[doc_id], key=lambda inst: inst.idx)
                doc = insts[0].doc
                # Multiple-input tasks (WinoGrande) vary the context; lm-eval then reads the gold from doc_to_text.
                gold = task_obj.doc_to_text(doc) if task_obj.multiple_input else task_obj.doc_to_target(doc)
                task_items.append(
                    {
                        "contexts": [inst.args[0] for inst in insts],
                        "continuations": [inst.args[1] for inst in insts],
                        "gold": int(gold),
                        "choices": list(task_obj.doc_to_choice(doc)),
                        "doc_id": doc_id,
                    }
                )
            items[task] = task_items
    return items
