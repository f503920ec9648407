"""Reading a data source into a list of row dicts, with errors that name the file and line.

Local files are parsed here (so malformed input gets a line number); Hub ids and
local dataset folders go through `datasets.load_dataset`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SAMPLES = {
    p.stem: p for p in sorted((ASSETS / "samples").glob("*")) if p.suffix in {".jsonl", ".json", ".txt", ".csv"}
}
FILE_TYPES = {".jsonl", ".json", ".csv", ".parquet", ".txt"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVAI2_FIRST_LINE = re.compile(r"^1 (your|partner's) persona:")


@dataclass
class RawData:
    rows: list[dict]
    name: str  # how errors refer to the source: a file name or a hub id
    kind: str = "file"  # file | hub | sample
    hint: str | None = None  # a format the reader already knows (convai2 text)
    meta: dict = field(default_factory=dict)
    labels: list[str] | None = None  # how errors name each row ("line 3", "row 4")

    def label(self, i: int) -> str:
        return self.labels[i] if self.labels else f"row {i + 1}"


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise StudioError(
            f"{path.name}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path, text: str, lines: list[int] | None = None) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise StudioError(f"{path.name} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise StudioError(f"{path.name} line {n}: expected a JSON object per line, got {type(row).__name__}")
        if set(row) == {"_meta"}:
            continue  # the file's own description (how its preference pairs were made), not a row
        rows.append(row)
        if lines is not None:
            lines.append(n)
    return rows


def _read_json(path: Path, text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # A .json file that is really JSON Lines is common; accept it.
        if e.msg.startswith("Extra data"):
            return _read_jsonl(path, text)
        raise StudioError(f"{path.name} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:  # {"data": [...]} or {"train": [...]}
            data = lists[0]
        else:
            data = [data]
    if not isinstance(data, list):
        raise StudioError(f"{path.name}: expected a list of records, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise StudioError(f"{path.name} record {i}: expected an object, got {type(row).__name__}")
    return data


def _read_csv(path: Path, text: str) -> list[dict]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return []
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise StudioError(f"{path.name} row 1: duplicate column names in the header {header}")
    rows = []
    for n, rec in enumerate(reader, 2):
        if not rec:
            continue
        if len(rec) != len(header):
            raise StudioError(f"{path.name} row {n}: {len(rec)} fields, but the header has {len(header)}")
        rows.append(dict(zip(header, rec)))
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a broken file
        raise StudioError(f"{path.name}: not a readable Parquet file ({e})") from None


def read_file(path: str | os.PathLike) -> RawData:
    path = Path(path)
    if not path.exists():
        raise StudioError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise StudioError(f"{path.name}: unsupported file type '{suffix}'; use one of {', '.join(sorted(FILE_TYPES))}")
    if suffix == ".parquet":
        rows = _read_parquet(path)
        hint = None
    else:
        data = path.read_bytes()
        if not data.strip():
            raise StudioError(f"{path.name}: the file is empty")
        text = _decode(path, data)
        hint = None
        if suffix == ".jsonl":
            line_numbers: list[int] = []
            rows = _read_jsonl(path, text, line_numbers)
            labels = [f"line {n}" for n in line_numbers]
        elif suffix == ".json":
            rows = _read_json(path, text)
        elif suffix == ".csv":
            rows = _read_csv(path, text)
        else:  # .txt: ConvAI2's numbered format, or one text per line
            if CONVAI2_FIRST_LINE.match(text.lstrip()):
                from studio.data.persona import parse_convai2_text

                rows, hint = parse_convai2_text(text, path.name), "persona"
            else:
                rows = [{"text": line} for line in text.splitlines() if line.strip()]
    if not rows:
        raise StudioError(f"{path.name}: the file is empty (no records)")
    raw = RawData(rows=rows, name=path.name, hint=hint)
    if suffix == ".jsonl":
        raw.labels = labels
    elif suffix == ".csv":
        raw.labels = [f"row {i + 2}" for i in range(len(rows))]  # the header is row 1
    return raw


def read_hub(dataset_id: str, config: str | None = None, split: str | None = None) -> RawData:
    """Load through `datasets.load_dataset`: a Hub id, or a local dataset folder."""
    import datasets

    name = dataset_id + (f" ({config})" if config else "")
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split or None)
    except Exception as e:  # datasets raises many types; all become one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "offline" in msg.lower() or "connect" in msg.lower() or "couldn't reach" in msg.lower():
            raise StudioError(
                f"{name}: can't reach the Hugging Face Hub and the dataset is not in the local cache; "
                "use a local file or a bundled sample"
            ) from None
        if "gated" in msg.lower() or "401" in msg or "403" in msg:
            raise StudioError(f"{name}: access refused; accept the dataset's terms on the Hub and set HF_TOKEN") from None
        raise StudioError(f"{name}: could not load ({msg})") from None
    if isinstance(ds, datasets.DatasetDict):
        first = "train" if "train" in ds else next(iter(ds))
        ds = ds[first]
        split = first
    rows = ds.to_list()
    if not rows:
        raise StudioError(f"{name}: the dataset is empty")
    return RawData(rows=rows, name=name, kind="hub", meta={"split": split})


def read_source(source: str, config: str | None = None, split: str | None = None) -> RawData:
    """One entry point: a bundled sample name, a file path, a folder, or a Hub id."""
    source = str(source).strip()
    if not source:
        raise StudioError("no data source given: pick a bundled sample, a file, or a Hub dataset id")
    if source in SAMPLES or source.startswith("sample:"):
        key = source.removeprefix("sample:")
        if key not in SAMPLES:
            raise StudioError(f"no bundled sample '{key}'; available: {', '.join(SAMPLES)}")
        raw = read_file(SAMPLES[key])
        raw.kind = "sample"
        return raw
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path)
    if path.is_dir():
        return read_hub(str(path), config, split)
    if path.suffix.lower() in FILE_TYPES or os.sep in source and not _HUB_ID.match(source):
        raise StudioError(f"{source}: no such file")
    if _HUB_ID.match(source):
        return read_hub(source, config, split)
    raise StudioError(f"{source}: not a file, a folder, a bundled sample or a Hub dataset id (owner/name)")
