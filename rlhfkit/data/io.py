"""Reading records from JSONL, JSON, Parquet and CSV files or a `datasets` hub name.

Every record keeps where it came from (`source`, `line`), so a later validation error can say
`file:line: field: problem`. `line` is the line number for JSONL and CSV (header = line 1) and
the 1-based record number for JSON and Parquet.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Record:
    data: dict[str, Any]
    source: str
    line: int

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(self.source, self.line, field, problem)


def read_records(spec: str, *, split: str = "train") -> list[Record]:
    """Read every record of a file or hub dataset (`name` or `name:split`)."""
    if not spec:
        raise DataError("<config>", None, None, "no data file given")
    path = Path(spec)
    if path.suffix.lower() in SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(spec, None, None, "file not found")
        return list(_read_file(path))
    return list(_read_hub(spec, split))


def _read_file(path: Path) -> Iterator[Record]:
    source, suffix = str(path), path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    raise DataError(source, number, None, f"invalid JSON ({err.msg})") from None
                yield _as_record(value, source, number)
    elif suffix == ".json":
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(source, err.lineno, None, f"invalid JSON ({err.msg})") from None
        if isinstance(value, dict) and isinstance(value.get("data"), list):
            value = value["data"]
        if not isinstance(value, list):
            raise DataError(source, None, None, "expected a JSON list of records")
        for number, item in enumerate(value, start=1):
            yield _as_record(item, source, number)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield _as_record(row, source, number)
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield _as_record({k: _decode_cell(v) for k, v in row.items()}, source, number)
    else:
        raise DataError(source, None, None, f"unknown format (use one of {', '.join(SUFFIXES)})")


def _decode_cell(value: str | None) -> Any:
    """Decode cells holding JSON lists or objects (responses, messages); others stay text."""
    if value and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _as_record(value: Any, source: str, line: int) -> Record:
    if not isinstance(value, dict):
        raise DataError(source, line, None, f"expected a JSON object, got {type(value).__name__}")
    return Record(value, source, line)


def _read_hub(name: str, split: str) -> Iterator[Record]:
    if ":" in name:
        name, split = name.rsplit(":", 1)
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - any failure here is the user's to fix
        raise DataError(
            name, None, None, f"cannot load hub dataset (split {split!r}): {err}"
        ) from None
    for number, row in enumerate(dataset, start=1):
        yield Record(dict(row), f"{name}[{split}]", number)


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write one JSON document atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
