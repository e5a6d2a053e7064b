"""Reading records from JSONL, JSON, Parquet and CSV files or a `datasets` hub name.

Every record keeps where it came from (`source`, `line`), so a later validation error can say
`file:line: field: problem`. `line` is the line number for JSONL and CSV (header = line 1; a
CSV record whose quoted cell spans lines has the line it starts on) and the 1-based record number
for JSON and Parquet. What cannot be read is an error, never a dropped record: bytes that are not
UTF-8, a JSON key given twice, a CSV row with more or fewer cells than its header, a corrupt
Parquet file. A file without records reads as an empty list (optional files may be empty); the
loaders of `rlhfkit.data.datasets` refuse it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.atomic_dirs import blocking_file
from rlhfkit.errors import ConfigError, DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# "utf-8-sig" reads UTF-8 and drops a leading byte-order mark (Excel's "CSV UTF-8" writes one).
UTF8 = "utf-8-sig"
# CSV columns whose cells are JSON (a list or an object), whatever they hold.
STRUCTURED_CELLS = frozenset({"messages", "responses", "ranking", "criteria"})


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
        if path.is_dir():
            raise DataError(spec, None, None, "is a directory (name a data file)")
        if not path.is_file():
            raise DataError(spec, None, None, "file not found")
        return list(_read_file(path))
    return list(_read_hub(spec, split))


def _read_file(path: Path) -> Iterator[Record]:
    source, suffix = str(path), path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, source)
    elif suffix == ".json":
        yield from _read_json(path, source)
    elif suffix == ".parquet":
        yield from _read_parquet(path, source)
    elif suffix == ".csv":
        yield from _read_csv(path, source)
    else:
        raise DataError(source, None, None, f"unknown format (use one of {', '.join(SUFFIXES)})")


def _read_jsonl(path: Path, source: str) -> Iterator[Record]:
    """One record per non-blank line; `line` is the line number."""
    with path.open(encoding=UTF8, errors="surrogateescape") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            _check_utf8(text, source, number)
            yield _as_record(_parse_json(text, source, number), source, number)


def _read_json(path: Path, source: str) -> Iterator[Record]:
    """A JSON list of records (or `{"data": [...]}`); `line` is the 1-based record number."""
    text = path.read_text(encoding=UTF8, errors="surrogateescape")
    _check_utf8(text, source, 1)
    value = _parse_json(text, source, None)
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(source, None, None, "expected a JSON list of records")
    for number, item in enumerate(value, start=1):
        yield _as_record(item, source, number)


def _read_parquet(path: Path, source: str) -> Iterator[Record]:
    """The rows of a Parquet file; `line` is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(source, None, None, f"not a readable Parquet file ({first_line})") from None
    for number, row in enumerate(rows, start=1):
        yield _as_record(row, source, number)


def _read_csv(path: Path, source: str) -> Iterator[Record]:
    """Rows under a header row; `line` is the line where the row starts (the header is line 1).

    A quoted cell may span lines, so the start is taken from the reader's line count before
    the row, not from the row's index."""
    with path.open(encoding=UTF8, errors="surrogateescape", newline="") as handle:
        text = handle.read()
    _check_utf8(text, source, 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(source, start, None, f"invalid CSV ({err})") from None
        if not row:
            continue  # a blank line, skipped as csv.DictReader does
        if header is None:
            header = _csv_header(row, source, start)
            continue
        if len(row) != len(header):
            raise DataError(source, start, None, f"{len(row)} cells, the header has {len(header)}")
        data = {name: _decode_cell(name, cell) for name, cell in zip(header, row, strict=True)}
        yield _as_record(data, source, start)


def _csv_header(row: list[str], source: str, line: int) -> list[str]:
    """The column names of a CSV header row; a name given twice is an error."""
    seen: set[str] = set()
    for name in row:
        if name in seen:
            raise DataError(source, line, name, "column given more than once in the header")
        seen.add(name)
    return row


def _decode_cell(name: str, value: str | None) -> Any:
    """A CSV cell as a record field: JSON for the fields that hold lists or objects
    (`STRUCTURED_CELLS`) and for conversations (a JSON list of `{"role", ...}` messages) in any
    field; everything else stays text, so a completion that reads `[1, 2, 3]` is that text."""
    if not value or value[:1] not in "[{":
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    conversation = isinstance(decoded, list) and all(
        isinstance(message, dict) and "role" in message for message in decoded
    )
    return decoded if name in STRUCTURED_CELLS or (decoded and conversation) else value


# Bytes that are not UTF-8, as the "surrogateescape" error handler decodes them (U+DC80..U+DCFF).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _check_utf8(text: str, source: str, first_line: int) -> None:
    """Raise `file:line: not valid UTF-8` if `text` (read with "surrogateescape") holds a byte that
    is not UTF-8; `first_line` is the line `text` starts on."""
    found = _UNDECODABLE.search(text)
    if found is None:
        return
    line = first_line + text.count("\n", 0, found.start())
    column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    byte = ord(found.group()) - 0xDC00
    raise DataError(
        source, line, None, f"not valid UTF-8 (byte 0x{byte:02x} at column {column}; save as UTF-8)"
    )


class _DuplicateKeys(dict):
    """A JSON object that gave a key more than once (the last value kept, as `json` does)."""

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: list[str]):
        super().__init__(pairs)
        self.duplicates = duplicates


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook`: a dict, marked as `_DuplicateKeys` when a key repeats."""
    seen: set[str] = set()
    duplicates = []
    for key, _ in pairs:
        if key in seen:
            duplicates.append(key)
        seen.add(key)
    return _DuplicateKeys(pairs, duplicates) if duplicates else dict(pairs)


def _parse_json(text: str, source: str, line: int | None) -> Any:
    """Parse JSON text; an error names `line`, or the error's own line when `line` is None."""
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as err:
        where = err.lineno if line is None else line
        raise DataError(source, where, None, f"invalid JSON ({err.msg})") from None


def _duplicate_key(value: Any, path: str = "") -> str | None:
    """The path (`messages[0].content`) of the first key given twice in `value`, or None."""
    if isinstance(value, _DuplicateKeys):
        return f"{path}.{value.duplicates[0]}" if path else value.duplicates[0]
    if isinstance(value, dict):
        children = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_path, child in children:
        found = _duplicate_key(child, child_path)
        if found is not None:
            return found
    return None


def _as_record(value: Any, source: str, line: int) -> Record:
    if not isinstance(value, dict):
        raise DataError(source, line, None, f"expected a JSON object, got {type(value).__name__}")
    duplicate = _duplicate_key(value)
    if duplicate is not None:
        raise DataError(source, line, duplicate, "key given more than once")
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


def check_output_file(path: str | os.PathLike, key: str, inputs: dict[str, str]) -> None:
    """Refuse, before any work, an output file that cannot be written or would destroy an
    input: `path` is a directory, lies under a file, or is one of `inputs` (key -> path) of the
    same run (generate's `output=` on its own prompt file replaced the prompts by samples)."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{key}: {path} is a directory; give a file (e.g. {path}/out.jsonl)")
    if (blocking := blocking_file(target.parent)) is not None:
        raise ConfigError(f"{key}: {blocking} is a file, so {path} cannot be made")
    for name, given in inputs.items():
        if given and Path(given).exists() and target.exists() and target.samefile(given):
            raise ConfigError(f"{key}: {path} is the {name} file this run reads; give another")


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL atomically (a temporary file renamed into place; removed if the
    write fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def strict_json(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """`value` with every NaN or infinite float replaced by None (JSON null), and the dotted
    paths of what was replaced, so that `json.dumps(..., allow_nan=False)` accepts it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "value"]
    if isinstance(value, dict):
        out, replaced = {}, []
        for key, item in value.items():
            out[key], inner = strict_json(item, f"{where}.{key}" if where else str(key))
            replaced += inner
        return out, replaced
    if isinstance(value, (list, tuple)):
        out_list, replaced = [], []
        for index, item in enumerate(value):
            clean, inner = strict_json(item, f"{where}[{index}]")
            out_list.append(clean)
            replaced += inner
        return out_list, replaced
    return value, []


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write one JSON document atomically, as strict JSON: NaN and infinities (a reward that
    returned NaN) become null, which every JSON reader accepts (bare `NaN` is Python's own)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(strict_json(value)[0], indent=2, ensure_ascii=False, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_log(path: Path | str) -> list[dict]:
    """The rows of an append-only JSONL log (metrics.jsonl, samples.jsonl). A line that does not
    parse (the last one, torn by a kill mid-write) or is not an object is left out: a log is
    read for curves and diagnostics, which a torn line must not stop."""
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_work_log(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of an append-only JSONL work file a rerun continues (`label`'s
    judgments, `cai`'s chains). Lines end at "\\n" only (`str.splitlines` also splits at
    U+2028 and U+0085, which text may hold raw). A last line cut short by a crash (no final
    newline) is removed from the file, so what is appended next starts a line of its own and
    that work is done again; any other line that is not a JSON object is a `DataError`."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"not valid JSON ({err.msg}); delete the line or pass overwrite=true"
            raise DataError(str(path), number, None, problem) from None
        if not isinstance(row, dict):
            raise DataError(str(path), number, None, "expected a JSON object")
        rows.append((number, row))
    return rows
