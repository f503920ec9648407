"""Reading a data source into an Arrow table (a `datasets.Dataset`), with errors that name the file and line.

Rows stay in Arrow from file to trainer. Local files are parsed by pyarrow (small files, in memory) or by
`datasets`' own json/csv/parquet/text builders (large files, memory-mapped from its cache). Only when that
fast parse fails is the file rescanned line by line, to name the line that broke it. Hub ids and local
dataset folders go through `datasets.load_dataset` (or its streaming mode with a row limit).
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
# Below this size a file is parsed straight into memory by pyarrow; above it, `datasets` writes an Arrow
# file once and memory-maps it, so memory stays flat however large the file is.
IN_MEMORY_BYTES = int(os.environ.get("STUDIO_IN_MEMORY_MB", 64)) * 2**20
META_KEY = "_meta"
_META_LINE = b'{"_meta"'
# Magic numbers of files that are not text, whatever their name says.
_ARCHIVES = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ": "xz",
             b"7z\xbc\xaf": "7z", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass
class RawData:
    dataset: object | None  # datasets.Dataset: the rows, in Arrow
    name: str  # how errors refer to the source: a file name or a hub id
    kind: str = "file"  # file | hub | sample
    hint: str | None = None  # a format the reader already knows (convai2 text)
    meta: dict = field(default_factory=dict)
    path: Path | None = None  # a local file: rescanned to name the line of a bad row
    rows: list[dict] | None = None  # only for a small file whose values Arrow can't type (mixed kinds in a column)

    @property
    def columns(self) -> list[str]:
        if self.rows is not None:
            return list(dict.fromkeys(k for row in self.rows[:50] for k in row))
        return list(self.dataset.column_names)

    def label(self, i: int) -> str:
        return row_label(self.path, i)

    def records(self, columns: list[str] | None = None, limit: int | None = None):
        """Row dicts, in order, streamed from Arrow in batches (for callers that need Python rows, e.g. a
        story corpus or a DPO pairs check); `columns` reads only those."""
        if self.rows is not None:
            rows = self.rows[:limit] if limit else self.rows
            yield from ({k: r.get(k) for k in columns} if columns else r for r in rows)
            return
        ds = self.dataset
        if columns:
            ds = ds.select_columns([c for c in columns if c in ds.column_names])
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        for batch in ds.iter(batch_size=1000):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield dict(zip(keys, values))


def row_label(path: Path | None, i: int) -> str:
    """How an error names row `i` (0-based): the line of a .jsonl, the row of a .csv (header = row 1)."""
    suffix = path.suffix.lower() if path else ""
    if suffix == ".csv":
        return f"row {i + 2}"
    if suffix == ".jsonl":  # blank lines hold no record: count records to find the line (only on an error)
        with open(path, "rb") as f:
            seen = -1
            for n, line in enumerate(f, 1):
                if line.strip() and not line.lstrip().startswith(_META_LINE):
                    seen += 1
                    if seen == i:
                        return f"line {n}"
    return f"row {i + 1}"


# ---- the slow, exact path: find the line that broke the fast parse --------------------------------------
def _decode(path: Path, data: bytes, offset: int = 0) -> str:
    try:
        return data.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        raise StudioError(
            f"{path.name}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {offset + e.start}); re-save the file as UTF-8"
        ) from None


def iter_jsonl(path: Path):
    """(line number, object) for each non-blank line, read line by line (memory bounded); the first line
    that is not valid UTF-8 JSON holding an object raises a StudioError naming the file and the line."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode(path, raw, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise StudioError(f"{path.name} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise StudioError(f"{path.name} line {n}: expected a JSON object per line, got {type(row).__name__}")
            yield n, row


def _scan_jsonl(path: Path) -> list[dict]:
    """Line by line: raise on the first bad line, else return the rows."""
    # a {"_meta": …} line is the file's own description (how its preference pairs were made), not a row
    return [row for _, row in iter_jsonl(path) if set(row) != {META_KEY}]


def _scan_json(path: Path) -> list[dict]:
    text = _decode(path, path.read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):  # a .json file that is really JSON Lines is common; accept it
            return _scan_jsonl(path)
        raise StudioError(f"{path.name} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]  # {"data": [...]} or one record
    if not isinstance(data, list):
        raise StudioError(f"{path.name}: expected a list of records, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise StudioError(f"{path.name} record {i}: expected an object, got {type(row).__name__}")
    return data


def _csv_header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        first = _decode(path, f.readline())
    header = [h.strip() for h in next(csv.reader(io.StringIO(first)), [])]
    if len(set(header)) != len(header):
        raise StudioError(f"{path.name} row 1: duplicate column names in the header {header}")
    if not header or not any(header):
        raise StudioError(f"{path.name} row 1: no header row (the first row must name the columns)")
    return header


def _scan_csv(path: Path) -> list[dict]:
    header = _csv_header(path)
    rows = []
    with open(path, "rb") as f:
        reader = csv.reader(io.StringIO(_decode(path, f.read())))
        next(reader, None)
        for n, rec in enumerate(reader, 2):
            if not rec:
                continue
            if len(rec) != len(header):
                raise StudioError(f"{path.name} row {n}: {len(rec)} fields, but the header has {len(header)}")
            rows.append(dict(zip(header, rec)))
    return rows


# ---- the fast path: Arrow all the way ----------------------------------------------------------------------
def _sniff(path: Path) -> bytes:
    """The first bytes, refusing what is plainly not a text data file."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.strip():
        if path.stat().st_size <= len(head):
            raise StudioError(f"{path.name}: the file is empty")
    for magic, kind in _ARCHIVES.items():
        if head.startswith(magic):
            raise StudioError(f"{path.name}: this is a {kind} archive, not {path.suffix} text; extract it first")
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StudioError(f"{path.name}: binary data (NUL bytes in the first 8 KB), not a {path.suffix} text file")
    return head


def _load_with_datasets(builder: str, path: Path, **kwargs):
    import datasets

    return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)


def _arrow_read(path: Path, suffix: str, large: bool):
    """pyarrow (small) or datasets (large) parse; raises whatever they raise."""
    import datasets

    if suffix == ".parquet":
        if large:
            return _load_with_datasets("parquet", path)
        import pyarrow.parquet as pq

        return datasets.Dataset(pq.read_table(path))
    if suffix == ".csv":
        header = _csv_header(path)
        if large:
            features = datasets.Features({h: datasets.Value("string") for h in header})
            return _load_with_datasets("csv", path, features=features, keep_default_na=False)
        import pyarrow as pa
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=header, skip_rows=1),
                              convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                                  strings_can_be_null=False))
        return datasets.Dataset(table)
    if suffix == ".txt":
        ds = _load_with_datasets("text", path) if large else datasets.Dataset(_text_table(path))
        return ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True, batch_size=10_000)
    if suffix == ".json" and not large:  # a JSON array, or {"data": [...]}: one document, parsed whole
        return datasets.Dataset.from_list(_scan_json(path))
    if large:
        return _without_meta(_load_with_datasets("json", path))
    import pyarrow.json as pjson

    table = pjson.read_json(path, read_options=pjson.ReadOptions(block_size=max(1 << 20, path.stat().st_size + 1)))
    if table.num_rows and not table.num_columns:
        raise StudioError(f"{path.name}: the records have no fields (every line is {{}})")
    return _without_meta(datasets.Dataset(table))


def _without_meta(ds):
    """A `{"_meta": …}` line describes the file (how its pairs were made, studio.pairs): not a row."""
    if META_KEY not in ds.column_names:
        return ds
    keep = ds.filter(lambda b: [m is None for m in b[META_KEY]], batched=True, batch_size=10_000)
    return keep.remove_columns(META_KEY)


def _text_table(path: Path):
    import pyarrow as pa

    text = _decode(path, path.read_bytes())
    return pa.table({"text": text.splitlines()})


def _rescan(path: Path, suffix: str) -> list[dict]:
    return {".jsonl": _scan_jsonl, ".json": _scan_json, ".csv": _scan_csv}.get(suffix, lambda p: [])(path)


def read_file(path: str | os.PathLike) -> RawData:
    path = Path(path)
    if path.is_dir():
        raise StudioError(f"{path}: a folder, not a data file")
    if not path.exists():
        raise StudioError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise StudioError(f"{path.name}: unsupported file type '{suffix}'; use one of {', '.join(sorted(FILE_TYPES))}")
    if path.stat().st_size == 0:
        raise StudioError(f"{path.name}: the file is empty")
    raw = RawData(dataset=None, name=path.name, path=path)
    if suffix == ".parquet":
        try:
            raw.dataset = _arrow_read(path, suffix, path.stat().st_size > IN_MEMORY_BYTES)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise StudioError(f"{path.name}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
    else:
        head = _sniff(path)
        if suffix == ".txt" and CONVAI2_FIRST_LINE.match(head[:200].decode("utf-8", "ignore").lstrip()):
            import datasets

            from studio.data.persona import parse_convai2_text

            rows = parse_convai2_text(_decode(path, path.read_bytes()), path.name)
            raw.dataset, raw.hint = (datasets.Dataset.from_list(rows) if rows else None), "persona"
        else:
            try:
                raw.dataset = _arrow_read(path, suffix, path.stat().st_size > IN_MEMORY_BYTES)
                raw.dataset.data.table.validate(full=True)  # pyarrow's JSON reader lets invalid UTF-8 through
            except StudioError:
                raise
            except Exception as e:  # the fast parse failed: rescan to name the line, or keep Python rows
                rows = _rescan(path, suffix)  # raises the exact line's error if there is one
                if not rows or path.stat().st_size > IN_MEMORY_BYTES:
                    if suffix == ".txt":
                        _decode(path, path.read_bytes())
                    raise StudioError(f"{path.name}: could not be read ({str(e).splitlines()[0][:200]})") from None
                raw.rows = rows  # valid JSON whose values Arrow can't type (a column mixing kinds): small, keep it
    if raw.rows is None and (raw.dataset is None or len(raw.dataset) == 0):
        raise StudioError(f"{path.name}: the file is empty (no records)")
    return raw


def _hub_error(name: str, e: Exception) -> StudioError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "offline" in msg.lower() or "connect" in msg.lower() or "couldn't reach" in msg.lower():
        return StudioError(f"{name}: can't reach the Hugging Face Hub and the dataset is not in the local cache; "
                           "use a local file or a bundled sample")
    if "gated" in msg.lower() or "401" in msg or "403" in msg:
        return StudioError(f"{name}: access refused; accept the dataset's terms on the Hub and set HF_TOKEN")
    return StudioError(f"{name}: could not load ({msg})")


def hub_dataset_preflight(dataset_id: str, name: str) -> None:
    """One bounded request (HF_HUB_ETAG_TIMEOUT, 10 s by default) before loading a Hub dataset, as for models.

    Left to itself `load_dataset` on a stalled Hub retries for minutes; here a Hub that stalls, fails or
    refuses gives one line within the timeout. A dataset already in the local Hub cache is left to
    `load_dataset` (it can still load it while the Hub is down); so are folders and offline mode.
    """
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from studio.access import hub_token

    if Path(dataset_id).exists() or constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return
    if (Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}").is_dir():
        return
    try:
        HfApi().dataset_info(dataset_id, timeout=constants.HF_HUB_ETAG_TIMEOUT, token=hub_token())
        return
    except GatedRepoError:
        raise StudioError(f"{name}: access refused; accept the dataset's terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise StudioError(f"{name}: not found on the Hub (if it is private, set HF_TOKEN)") from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise StudioError(f"{name}: the Hub refused access ({status}); check HF_TOKEN") from None
        why = f"the Hub answered {status}"
    except (httpx2.HTTPError, OSError) as e:
        why = (f"no answer from the Hub within {constants.HF_HUB_ETAG_TIMEOUT:g} s"
               if isinstance(e, httpx2.TimeoutException) else "the Hub can't be reached")
    raise StudioError(f"{name}: {why} and the dataset is not in the local cache; try again later, "
                      "or use a local file or a bundled sample")


def read_hub(dataset_id: str, config: str | None = None, split: str | None = None,
             streaming_rows: int | None = None) -> RawData:
    """Load through `datasets.load_dataset`: a Hub id, or a local dataset folder. Never copied into Python.

    `streaming_rows`: read in datasets' streaming mode and keep only the first N rows (datasets larger than
    the disk); the N rows are written to Arrow as they stream in.
    """
    import datasets

    from studio.access import hub_token

    name = dataset_id + (f" ({config})" if config else "")
    hub_dataset_preflight(dataset_id, name)
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split or None, streaming=bool(streaming_rows),
                                   token=hub_token())
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        if streaming_rows:
            head = ds.take(int(streaming_rows))
            ds = datasets.Dataset.from_generator(lambda: iter(head), features=head.features)
    except StudioError:
        raise
    except Exception as e:  # datasets raises many types; all become one line
        raise _hub_error(name, e) from None
    if len(ds) == 0:
        raise StudioError(f"{name}: the dataset is empty")
    return RawData(dataset=ds, name=name, kind="hub", meta={"split": split, "streaming": bool(streaming_rows)})


def read_source(source: str, config: str | None = None, split: str | None = None,
                streaming_rows: int | None = None) -> RawData:
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
        return read_hub(str(path), config, split, streaming_rows)
    if path.suffix.lower() in FILE_TYPES or os.sep in source and not _HUB_ID.match(source):
        raise StudioError(f"{source}: no such file")
    if _HUB_ID.match(source):
        return read_hub(source, config, split, streaming_rows)
    raise StudioError(f"{source}: not a file, a folder, a bundled sample or a Hub dataset id (owner/name)")
