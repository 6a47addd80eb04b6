"""Loading task splits from the Hub, from local files, from a data directory or from the packaged subset."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from .tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

DATA_DIR_ENV_VAR = "TAILORED_HF_DATA_DIR"
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "packaged"
HUB_SOURCE = "hub"
LOCAL_SUFFIXES: tuple[str, ...] = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".csv", ".parquet")
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
    "train": ("train",),
}
MEDNLI_HELP = (
    "MedNLI is not shipped: its PhysioNet credentialed license forbids redistribution. Download it from "
    "https://physionet.org/content/mednli/ and pass your own files, e.g. "
    "`load_task_split('mednli', 'train', source='path/to/mli_train_v1.jsonl')` (official jsonl with "
    "sentence1, sentence2, gold_label), a directory holding `mli_{train,dev,test}_v1.jsonl`, or put them under "
    "`<data_dir>/domain/mednli/`."
)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """
    Returns the data directory: `data_dir` if given, else `$TAILORED_HF_DATA_DIR`, else the packaged subset.

    Raises:
        `ValueError`: If an explicitly given directory (argument or environment variable) does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise ValueError(f"data_dir {str(path)!r} is not a directory. Pass an existing data directory.")
        return path
    env = os.environ.get(DATA_DIR_ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"${DATA_DIR_ENV_VAR}={env!r} is not a directory. "
                "Fix or unset the variable to use the packaged subset."
            )
        return path
    logger.info("No data directory given; using the packaged subset at %s", PACKAGED_DATA_DIR)
    return PACKAGED_DATA_DIR


def _read_json_records(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    name = path.name.removesuffix(".gz")
    with opener(path, "rt", encoding="utf-8") as handle:
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in handle if line.strip()]
        text = handle.read()
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] != "[" and stripped[0] != "{":
        raise ValueError(f"{path} is not JSON or JSON Lines.")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        # A `.json` file that is really JSON Lines.
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(payload, dict):
        if "data" in payload and isinstance(payload["data"], list):
            payload = payload["data"]
        elif payload and all(isinstance(v, list) for v in payload.values()):
            keys = list(payload)
            payload = [dict(zip(keys, values)) for values in zip(*payload.values())]
        else:
            raise ValueError(f"{path}: expected a list of records, a dict of columns or {{'data': [...]}}.")
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise ValueError(f"{path}: expected a list of JSON objects (one per example).")
    return payload


def load_local_file(path: str | os.PathLike) -> datasets.Dataset:
    """
    Loads one local file (json, jsonl, json(l).gz, csv or parquet) into an in-memory `datasets.Dataset`.

    Raises:
        `ValueError`: If the file does not exist or has an unsupported extension.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file.")
    name = path.name.lower()
    if name.endswith((".jsonl.gz", ".json.gz", ".jsonl", ".json")):
        return datasets.Dataset.from_list(_read_json_records(path))
    if name.endswith(".csv"):
        return datasets.Dataset.from_csv(str(path), keep_in_memory=True)
    if name.endswith(".parquet"):
        return datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    raise ValueError(f"Unsupported file type {path.name!r}; use one of {LOCAL_SUFFIXES}.")


def _find_split_file(directory: Path, split: str, spec: TaskSpec) -> Path:
    names = SPLIT_ALIASES.get(split, (split,))
    candidates: list[Path] = []
    for alias in names:
        for suffix in LOCAL_SUFFIXES:
            candidates.append(directory / f"{alias}{suffix}")
            candidates.append(directory / f"mli_{alias}_v1{suffix}")  # official MedNLI names
    if split in spec.local_files:
        candidates.append(directory / Path(spec.local_files[split]).name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    # Fall back to any `{split}*.ext` (e.g. `train_2000.jsonl`).
    matches = sorted(
        p for alias in names for p in directory.glob(f"{alias}*") if p.name.lower().endswith(LOCAL_SUFFIXES)
    )
    if len(matches) == 1:
        return matches[0]
    found = sorted(p.name for p in directory.iterdir())
    hint = f" {MEDNLI_HELP}" if spec.name == "mednli" else ""
    raise ValueError(
        f"No file for split {split!r} in directory {str(directory)!r} (found {found}). Name it `{split}.jsonl` "
        f"(or .json/.jsonl.gz/.csv/.parquet) or pass the file path as `source`.{hint}"
    )


def _from_hub(hub_id: str, split: str, config: str | None, **load_kwargs: Any) -> datasets.Dataset:
    logger.info("Loading %s (config=%s, split=%s) from the Hugging Face Hub", hub_id, config, split)
    return datasets.load_dataset(hub_id, config, split=split, **load_kwargs)


def _normalize_columns(dataset: datasets.Dataset, spec: TaskSpec) -> datasets.Dataset:
    renames = {
        src: dst
        for src, dst in spec.column_aliases.items()
        if src in dataset.column_names and dst not in dataset.column_names
    }
    return dataset.rename_columns(renames) if renames else dataset


def validate_columns(dataset: datasets.Dataset, task: str | TaskSpec, origin: str = "dataset") -> None:
    """
    Checks that `dataset` has every column `task` requires and at least one row.

    Raises:
        `ValueError`: Naming the missing column and the expected schema, or saying the dataset is empty.
    """
    spec = get_task(task)
    if len(dataset) == 0:
        raise ValueError(f"{origin} is empty; task {spec.name!r} needs at least one example.")
    missing = [c for c in spec.required_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{origin} is missing column(s) {missing} required by task {spec.name!r}. Expected schema: {spec.schema}; "
            f"got columns {dataset.column_names}. Rename the columns (`dataset.rename_column`) or pick the right task."
        )


def load_task_split(
    task: str | TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    *,
    hub_config: str | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """
    Loads one split of a task as a `datasets.Dataset` with validated columns.

    Resolution order:
    1. `source` is an existing local path: a file (json, jsonl, json(l).gz, csv, parquet) or a directory holding
       `{split}.*` (also `dev`/`val` for validation, and official MedNLI names).
    2. `source` is `"hub"` (the task's registered Hub id) or any other string (taken as a Hub dataset id):
       `datasets.load_dataset(source, hub_config, split=split, **load_kwargs)`.
    3. No `source`: the file `task.local_files[split]` inside `data_dir`, else `$TAILORED_HF_DATA_DIR`, else the small
       subset packaged with the library.

    Args:
        task (`str` or [`TaskSpec`]): Task name or spec.
        split (`str`): Split name, e.g. `"train"`, `"validation"`, `"test"`.
        data_dir (`str` or `os.PathLike`, *optional*): Data directory with the layout of `TaskSpec.local_files`.
        source (`str` or `os.PathLike`, *optional*): Local path, `"hub"`, or a Hub dataset id.
        hub_config (`str`, *optional*): Hub configuration; defaults to the task's when `source` is its Hub id.
        load_kwargs: Extra keyword arguments for `datasets.load_dataset` (Hub sources only).

    Returns:
        `datasets.Dataset`: The split, with the task's canonical column names.

    Raises:
        `ValueError`: Unknown task, missing file, missing required column, or empty split.
    """
    spec = get_task(task)
    if source is not None:
        source_path = Path(source).expanduser()
        if source_path.is_file():
            dataset, origin = load_local_file(source_path), str(source_path)
        elif source_path.is_dir():
            file = _find_split_file(source_path, split, spec)
            dataset, origin = load_local_file(file), str(file)
        else:
            source = str(source)
            if source == HUB_SOURCE:
                if spec.hub_id is None:
                    hint = MEDNLI_HELP if spec.name == "mednli" else "Pass a Hub id or a local path as `source`."
                    raise ValueError(f"Task {spec.name!r} has no registered Hub dataset. {hint}")
                source = spec.hub_id
            if hub_config is None and source == spec.hub_id:
                hub_config = spec.hub_config
            dataset, origin = _from_hub(source, split, hub_config, **load_kwargs), f"Hub dataset {source!r}"
    else:
        directory = resolve_data_dir(data_dir)
        relative = spec.local_files.get(split)
        if relative is None:
            hint = f" {MEDNLI_HELP}" if spec.name == "mednli" else ""
            raise ValueError(
                f"Task {spec.name!r} has no local split {split!r}; local splits: {list(spec.splits)}. "
                f"Pick one of those, or pass `source` (a file, directory or Hub id).{hint}"
            )
        file = directory / relative
        if not file.is_file():
            if spec.name == "mednli":
                raise ValueError(f"{str(file)!r} not found. {MEDNLI_HELP}")
            where = "the packaged subset" if directory == PACKAGED_DATA_DIR else f"data_dir {str(directory)!r}"
            raise ValueError(
                f"{where} has no file {relative!r} for task {spec.name!r} split {split!r}. Pass `data_dir` (or set "
                f"${DATA_DIR_ENV_VAR}) to a full data directory, or pass `source` (a file, directory or Hub id)."
            )
        dataset, origin = load_local_file(file), str(file)
    dataset = _normalize_columns(dataset, spec)
    validate_columns(dataset, spec, origin=origin)
    return dataset
