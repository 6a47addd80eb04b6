"""Loading task splits from the data directory, local paths and the packaged subset."""

from __future__ import annotations

import gzip
import json
import shutil

import datasets
import pytest

from tailored_hf.data import (
    DATA_DIR_ENV_VAR,
    PACKAGED_DATA_DIR,
    TASKS,
    get_task,
    load_task_split,
    resolve_data_dir,
)

# Row counts from /work/shared/data/README.md.
EXPECTED_ROWS = {
    ("boolq", "validation"): 3270,
    ("piqa", "validation"): 1838,
    ("hellaswag", "validation"): 10042,
    ("winogrande", "validation"): 1267,
    ("arc_easy", "validation"): 570,
    ("arc_challenge", "validation"): 299,
    ("openbookqa", "validation"): 500,
    ("alpaca", "train"): 1000,
    ("pubmedqa", "test"): 500,
    ("hqs", "train"): 1000,
    ("hqs", "test"): 100,
    ("casehold", "train"): 2000,
    ("billsum", "test"): 200,
}


@pytest.mark.parametrize("task,split", sorted(EXPECTED_ROWS))
def test_load_real_splits(data_dir, task, split):
    dataset = load_task_split(task, split, data_dir=data_dir)
    assert isinstance(dataset, datasets.Dataset)
    assert len(dataset) == EXPECTED_ROWS[(task, split)]
    assert set(get_task(task).required_columns) <= set(dataset.column_names)


def test_source_file_and_directory(data_dir, tmp_path):
    file = data_dir / "commonsense" / "arc_easy" / "validation.jsonl.gz"
    from_file = load_task_split("arc_easy", "validation", source=file)
    from_dir = load_task_split("arc_easy", "validation", source=file.parent)
    assert from_file[:5] == from_dir[:5]
    # Uncompressed jsonl, csv and parquet copies of real rows.
    rows = [json.loads(line) for line in gzip.open(data_dir / "commonsense/piqa/validation.jsonl.gz", "rt")][:20]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "rows.csv", index=False)
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "rows.parquet")
    for source in (tmp_path, tmp_path / "validation.jsonl", tmp_path / "rows.csv", tmp_path / "rows.parquet"):
        loaded = load_task_split("piqa", "validation", source=source)
        assert loaded["goal"] == [r["goal"] for r in rows]
        assert loaded["label"] == [r["label"] for r in rows]


def test_directory_with_dev_and_prefixed_names(data_dir, tmp_path):
    shutil.copy(data_dir / "domain/casehold/train_2000.jsonl", tmp_path / "train_2000.jsonl")
    assert len(load_task_split("casehold", "train", source=tmp_path)) == 2000
    shutil.copy(data_dir / "commonsense/boolq/validation.jsonl.gz", tmp_path / "dev.jsonl.gz")
    assert len(load_task_split("boolq", "validation", source=tmp_path)) == 3270
    with pytest.raises(ValueError, match="No file for split 'test'"):
        load_task_split("boolq", "test", source=tmp_path)


def test_missing_column_names_column_and_schema(data_dir, tmp_path):
    rows = [json.loads(line) for line in gzip.open(data_dir / "commonsense/boolq/validation.jsonl.gz", "rt")][:5]
    for row in rows:
        del row["passage"]
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['passage'\].*Expected schema: boolq"):
        load_task_split("boolq", "validation", source=path)


def test_wrong_task_schema(data_dir):
    with pytest.raises(ValueError, match="missing column"):
        load_task_split("piqa", "validation", source=data_dir / "commonsense/boolq/validation.jsonl.gz")


def test_empty_file(tmp_path):
    path = tmp_path / "validation.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_task_split("boolq", "validation", source=path)


def test_billsum_hub_column_alias(data_dir, tmp_path):
    rows = [json.loads(line) for line in open(data_dir / "domain/billsum/test_200.jsonl")][:3]
    renamed = [{"text": r["source"], "summary": r["summary"]} for r in rows]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in renamed))
    loaded = load_task_split("billsum", "test", source=path)
    assert loaded["source"] == [r["source"] for r in rows]


def test_mednli_not_shipped_message(data_dir):
    with pytest.raises(ValueError, match="MedNLI is not shipped.*pass your own files"):
        load_task_split("mednli", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match="MedNLI is not shipped"):
        load_task_split("mednli", "train", source="hub")


def test_unknown_split(data_dir):
    with pytest.raises(ValueError, match="no local split 'test'.*local splits: \\['train', 'validation'\\]"):
        load_task_split("piqa", "test", data_dir=data_dir)


def test_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_task_split("piqa", "validation", data_dir=tmp_path / "missing")


def test_packaged_subset_without_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV_VAR, raising=False)
    assert resolve_data_dir() == PACKAGED_DATA_DIR
    sizes = {"boolq": (500, 300), "piqa": (500, 300)}
    for task in ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"):
        train = load_task_split(task, "train")
        validation = load_task_split(task, "validation")
        assert (len(train), len(validation)) == sizes.get(task, (100, 200))
    assert len(load_task_split("pubmedqa", "test")) == 100
    with pytest.raises(ValueError, match="packaged subset has no file"):
        load_task_split("casehold", "train")


def test_packaged_rows_are_real_prefixes(data_dir):
    for task in ("boolq", "hellaswag"):
        packaged = load_task_split(task, "validation", data_dir=PACKAGED_DATA_DIR)
        full = load_task_split(task, "validation", data_dir=data_dir)
        assert packaged[:] == full.select(range(len(packaged)))[:]


def test_env_var(monkeypatch, data_dir):
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(data_dir))
    assert resolve_data_dir() == data_dir
    assert len(load_task_split("boolq", "validation")) == 3270
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(data_dir / "nope"))
    with pytest.raises(ValueError, match=DATA_DIR_ENV_VAR):
        resolve_data_dir()


def test_local_layout_matches_shared_data(data_dir):
    for spec in TASKS.values():
        if spec.name == "mednli":
            continue
        for relative in spec.local_files.values():
            assert (data_dir / relative).is_file(), relative
