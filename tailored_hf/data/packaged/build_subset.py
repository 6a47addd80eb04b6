"""Builds the small data subset packaged with `tailored_hf` for the offline demo.

Usage: `python tailored_hf/data/packaged/build_subset.py /path/to/shared/data [--out tailored_hf/data/packaged]`

Rows are the *first* rows of each source file, copied byte for byte (JSON lines are not re-serialized), so the subset
is reproducible. The output mirrors the layout of the full data directory, so `load_task_split` reads it unchanged.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

COMMONSENSE_ROWS: dict[str, dict[str, int]] = {
    "boolq": {"train": 500, "validation": 300},
    "piqa": {"train": 500, "validation": 300},
    "hellaswag": {"train": 100, "validation": 200},
    "winogrande": {"train": 100, "validation": 200},
    "arc_easy": {"train": 100, "validation": 200},
    "arc_challenge": {"train": 100, "validation": 200},
    "openbookqa": {"train": 100, "validation": 200},
}
DOMAIN_ROWS: dict[str, int] = {"domain/pubmedqa/train.jsonl": 100, "domain/pubmedqa/test.jsonl": 100}
"""Plain JSON Lines domain files (MIT-licensed PubMedQA only), copied uncompressed like the originals."""
BOOK_CHARS_PER_DOCUMENT = 20_000
"""Characters kept from the start of each of the two book-sample documents (~40k in total)."""
WIKITEXT_MIN_CHARS = 60_000
"""Joined WikiText-2 test characters to keep: enough for ~60 windows of 128 tokens with LLaMA-style tokenizers."""
WIKITEXT_ROWS_FILE = "lm/wikitext2/wikitext-2-raw-v1.test.rows.json"
BOOK_FILE = "calibration/book_sample.jsonl"
GZIP_MTIME = 0  # reproducible gzip output


def _head_lines(path: Path, n: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    lines: list[str] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                lines.append(line if line.endswith("\n") else line + "\n")
            if len(lines) == n:
                break
    return lines


def _write_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=GZIP_MTIME) as handle:
        handle.write("".join(lines).encode("utf-8"))


def build(source: Path, out: Path) -> list[Path]:
    """Writes the subset from data directory `source` into `out` and returns the written files."""
    written: list[Path] = []
    for task, splits in COMMONSENSE_ROWS.items():
        for split, n in splits.items():
            rel = Path("commonsense") / task / f"{split}.jsonl.gz"
            _write_gz(out / rel, _head_lines(source / rel, n))
            written.append(out / rel)

    for rel, n in DOMAIN_ROWS.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(_head_lines(source / rel, n)), encoding="utf-8")
        written.append(target)

    book = [json.loads(line) for line in _head_lines(source / BOOK_FILE, n=-1)]
    book_out = out / BOOK_FILE
    book_out.parent.mkdir(parents=True, exist_ok=True)
    with open(book_out, "w", encoding="utf-8") as handle:
        for record in book:
            handle.write(json.dumps({"text": record["text"][:BOOK_CHARS_PER_DOCUMENT]}, ensure_ascii=False) + "\n")
    written.append(book_out)

    rows = json.loads((source / WIKITEXT_ROWS_FILE).read_text(encoding="utf-8"))
    kept: list[str] = []
    total = 0
    for row in rows:
        kept.append(row)
        total += len(row)
        if total >= WIKITEXT_MIN_CHARS and row == "":
            break
    wiki_out = out / WIKITEXT_ROWS_FILE
    wiki_out.parent.mkdir(parents=True, exist_ok=True)
    wiki_out.write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
    written.append(wiki_out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Full data directory (e.g. ../shared/data).")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="Output directory.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in build(args.source, args.out):
        logger.info("%8d bytes  %s", path.stat().st_size, path.relative_to(args.out))


if __name__ == "__main__":
    main()
