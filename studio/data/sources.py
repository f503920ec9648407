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
MAX_COLUMNS = 1000  # a data file with more columns than this is refused (no training format needs them)
MAX_FIELD_CHARS = 1 << 20  # a CSV header line longer than this is refused
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


MAX_DEPTH = 64  # JSON nested deeper than this is refused (Python's parser would hit its recursion limit)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _depth_ok(value, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _loads(text: str, where: str):
    """json.loads with one-line errors: malformed, too deep, a number too long, a lone surrogate escape."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StudioError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise StudioError(f"{where}: JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise StudioError(f"{where}: unreadable JSON value ({str(e).splitlines()[0][:120]})") from None
    if not _depth_ok(value):
        raise StudioError(f"{where}: JSON nested too deeply (more than {MAX_DEPTH} levels)")
    if "\\u" in text and _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
        raise StudioError(f"{where}: a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                          "which is not text; fix the escape")
    return value


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
            row = _loads(line, f"{path.name} line {n}")
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
        json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):  # a .json file that is really JSON Lines is common; accept it
            return _scan_jsonl(path)
        raise StudioError(f"{path.name} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except (RecursionError, ValueError):
        pass  # _loads names it
    data = _loads(text, path.name)
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
        first = _decode(path, f.readline(MAX_FIELD_CHARS + 1))
    try:
        header = [h.strip() for h in next(csv.reader(io.StringIO(first)), [])]
    except csv.Error as e:
        raise StudioError(f"{path.name} row 1: unreadable header ({e})") from None
    if len(header) > MAX_COLUMNS:
        raise StudioError(f"{path.name} row 1: {len(header)} columns; at most {MAX_COLUMNS} are read")
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
        n = 1
        try:
            next(reader, None)
            for n, rec in enumerate(reader, 2):
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise StudioError(f"{path.name} row {n}: {len(rec)} fields, but the header has {len(header)}")
                rows.append(dict(zip(header, rec)))
        except csv.Error as e:  # a field over csv's size limit, a NUL byte, an unbalanced quote at the end
            raise StudioError(f"{path.name} row {n + 1}: unreadable CSV ({e})") from None
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


def _native_table(path: str, suffix: str):
    """A small .parquet/.csv/.jsonl parsed by pyarrow alone (run in the child process: studio.data.isolate)."""
    import pyarrow as pa

    path = Path(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = _read_parquet(path)
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        header = _csv_header(path)
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=header, skip_rows=1,
                                                                   block_size=max(1 << 20, path.stat().st_size + 1)),
                              convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                                  strings_can_be_null=False))
    else:
        import pyarrow.json as pjson

        _check_json_depth(path, per_line=True)
        table = pjson.read_json(path, read_options=pjson.ReadOptions(block_size=max(1 << 20, path.stat().st_size + 1)))
    _check_schema(table.schema, path.name)
    table.validate(full=True)  # pyarrow's JSON reader lets invalid UTF-8 through
    return table


def _read_parquet(path: Path, keep: bool = True):
    """A Parquet file decoded batch by batch within the decode limits (studio.budgets), refused before its
    rows are touched when its footer already says too many. `keep=False` only counts (a file `datasets`
    reads next). A batch counts what its rows expand to (studio.budgets.decoded_bytes): a column the file
    stores as an Arrow dictionary comes back as one, a few MB of indices that may stand for gigabytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from studio.budgets import decoded_bytes
    from studio.data.isolate import decode_limits

    limits = decode_limits()
    pf = pq.ParquetFile(path)
    _check_schema(pf.schema_arrow, path.name)  # before reading any data
    limits.check_rows(path.name, pf.metadata.num_rows, " in its footer")
    batches, rows, nbytes = [], 0, 0
    for batch in pf.iter_batches(batch_size=16_384):
        rows, nbytes = rows + batch.num_rows, nbytes + decoded_bytes(batch)
        limits.check_rows(path.name, rows)
        limits.check_bytes(path.name, nbytes, rows)
        if keep:
            batches.append(batch)
    return pa.Table.from_batches(batches, schema=pf.schema_arrow) if keep else None


def _type_depth(t) -> int:
    import pyarrow as pa

    if pa.types.is_struct(t):
        return 1 + max((_type_depth(t.field(i).type) for i in range(t.num_fields)), default=0)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return 1 + _type_depth(t.value_type)
    if pa.types.is_map(t):
        return 1 + max(_type_depth(t.key_type), _type_depth(t.item_type))
    return 0


def _check_schema(schema, name: str) -> None:
    """Columns no training format uses, refused before the rows are touched: too many, binary, too deep."""
    import pyarrow as pa

    if len(schema) > MAX_COLUMNS:
        raise StudioError(f"{name}: {len(schema)} columns; at most {MAX_COLUMNS} are read")
    for f in schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_fixed_size_binary(f.type):
            raise StudioError(f"{name}: column '{f.name[:80]}' holds binary data, not text")
        if _type_depth(f.type) > MAX_DEPTH:
            raise StudioError(f"{name}: column '{f.name[:80]}' is nested more than {MAX_DEPTH} levels deep")


_JSON_STRING = re.compile(rb'"(?:[^"\\\n]|\\.)*"')


_NOT_OPEN_OR_NEWLINE = bytes(b for b in range(256) if b not in b"{[\n")
_TOO_MANY_OPENS = re.compile(rb"[{\[]{%d}" % (MAX_DEPTH + 1))


def _check_json_depth(path: Path, per_line: bool) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH before pyarrow sees it: its JSON reader takes time quadratic
    in the depth (a 9,000-level line of 18 KB: 45 s). Strings are blanked first, so brackets in text don't
    count; JSON strings never span lines. Read in blocks of whole lines. In JSON Lines a line can only be too
    deep if it holds more than MAX_DEPTH opening brackets: one C pass (`bytes.translate`) keeps only the
    opening brackets and line ends of a block, a regex finds a line with that many, and only such a line gets
    the exact check (honest data: none, so the check reads at memory speed). A JSON document
    (`per_line=False`) carries its depth from line to line and is checked whole."""
    line_no, depth = 1, 0
    for buf, cut in _line_blocks(path):
        if per_line:  # buf[:cut] is whole lines and nothing after it is a line end: translate all of it
            brackets, checked = buf.translate(None, _NOT_OPEN_OR_NEWLINE), -1
            brackets = brackets[:brackets.rfind(b"\n") + 1]
            for m in _TOO_MANY_OPENS.finditer(brackets):
                i = brackets.count(b"\n", 0, m.start())  # the block's i-th line
                if i == checked:
                    continue
                checked = i
                start = _nth_line_start(buf, i)
                if _max_depth(bytes(buf[start:buf.find(b"\n", start)]), 0)[0] > MAX_DEPTH:
                    raise StudioError(f"{path.name} line {line_no + i}: JSON nested too deeply "
                                      f"(more than {MAX_DEPTH} levels)")
            line_no += brackets.count(b"\n")  # the line ends are all kept: count them in the short copy
        else:
            block = bytes(buf[:cut])
            deepest, at, depth = _max_depth(block, depth)
            if deepest > MAX_DEPTH:
                line = line_no + block.count(b"\n", 0, at)
                raise StudioError(f"{path.name} line {line}: JSON nested too deeply (more than {MAX_DEPTH} levels)")
            line_no += block.count(b"\n")


def _nth_line_start(block, i: int) -> int:
    import numpy as np

    return int(np.flatnonzero(np.frombuffer(block, np.uint8) == 10)[i - 1]) + 1 if i else 0


def _max_depth(text: bytes, depth: int) -> tuple[int, int, int]:
    """(deepest nesting, the first position past MAX_DEPTH (else the deepest), depth at the end) of JSON text
    (whole lines) starting at `depth`, brackets inside strings not counted."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub(lambda m: b"_" * len(m.group()), text), np.uint8)
    steps = np.isin(codes, (91, 123)).astype(np.int64) - np.isin(codes, (93, 125))
    if not len(steps):
        return depth, 0, depth
    run = np.cumsum(steps) + depth
    at = int(np.argmax(run > MAX_DEPTH)) if run.max() > MAX_DEPTH else int(np.argmax(run))
    return int(run.max()), at, int(run[-1])


def _line_blocks(path: Path, size: int = 8 << 20):
    """(buffer, cut) for the file in blocks of about `size` bytes: buffer[:cut] is whole lines (the last one
    may lack its line end at the end of the file) and buffer[cut:] holds no line end. One buffer is reused
    (a fresh 8 MB per block costs more in page faults than the scan itself); a longer line grows it."""
    buf, held = bytearray(size), 0
    with open(path, "rb", buffering=0) as f:
        while True:
            view = memoryview(buf)
            n = f.readinto(view[held:])
            view.release()
            if not n:
                break
            end = held + n
            if end < len(buf):  # short read (the end of the file, or a pipe): nothing stale may follow
                del buf[end:]
            cut = buf.rfind(b"\n", 0, end) + 1
            if not cut:  # no line end yet: a line longer than the buffer
                held = end
                if end == len(buf):
                    buf.extend(bytes(len(buf)))
                continue
            yield buf, cut
            rest = bytes(buf[cut:end])
            buf[:len(rest)] = rest
            held = len(rest)
            if len(buf) < size:
                buf.extend(bytes(size - len(buf)))
    if held:
        del buf[held:]
        buf.extend(b"\n")
        yield buf, held + 1


def _native_large(path: str, suffix: str) -> list[str]:
    """A large file through `datasets` in the child: a crash stays there. Returns the Arrow cache files it
    wrote, which the caller memory-maps (no second parse, no second `load_dataset`)."""
    from studio.data.isolate import decode_limits

    if suffix in (".json", ".jsonl"):
        _check_json_depth(Path(path), per_line=suffix == ".jsonl")
    if suffix == ".parquet":
        _read_parquet(Path(path), keep=False)
    ds = _load_large(Path(path), suffix)
    decode_limits().check_table(Path(path).name, ds.data)  # on disk already, but nothing reached the server
    return [f["filename"] for f in ds.cache_files]


def _load_large(path: Path, suffix: str):
    import datasets

    if suffix == ".csv":
        features = datasets.Features({h: datasets.Value("string") for h in _csv_header(path)})
        return _load_with_datasets("csv", path, features=features, keep_default_na=False)
    return _load_with_datasets("parquet" if suffix == ".parquet" else "json", path)


def _from_cache_files(files: list[str], path: Path, suffix: str):
    """The dataset over the Arrow files the child's `load_dataset` wrote, memory-mapped; if there are none
    (or they are gone), `load_dataset` here, which finds the child's cache or parses again."""
    import datasets

    if files and all(str(f).endswith(".arrow") and Path(f).is_file() for f in files):
        parts = [datasets.Dataset.from_file(str(f)) for f in files]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return _load_large(path, suffix)


def _arrow_read(path: Path, suffix: str, large: bool):
    """pyarrow (small) or datasets (large) parse; raises whatever they raise. Native parsing of the file's
    bytes happens in a child process, so a reader that crashes can't take this one down."""
    import datasets

    from studio.data.isolate import run_isolated

    if suffix == ".txt":
        ds = _load_with_datasets("text", path) if large else datasets.Dataset(_text_table(path))
        return ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True, batch_size=10_000)
    if large:
        from studio.access import shared_mode
        from studio.budgets import DecodeLimits

        # a large file goes to `datasets`' memory-mapped cache, not into memory: locally its size is the owner's
        # business; on a shared studio the decode limits bound the disk it takes too
        limits = None if shared_mode() else DecodeLimits(rows=2**62, bytes=2**62)
        files = run_isolated(_native_large, str(path.absolute()), suffix, name=path.name, limits=limits)
        ds = _from_cache_files(files, path, suffix)
        return _without_meta(ds) if suffix in (".json", ".jsonl") else ds
    if suffix == ".json":  # a JSON array, or {"data": [...]}: one document, parsed whole
        return datasets.Dataset.from_list(_scan_json(path))
    table = run_isolated(_native_table, str(path.absolute()), suffix, name=path.name)
    if suffix in (".parquet", ".csv"):
        return _in_memory(table, path)
    if table.num_rows and not table.num_columns:
        raise StudioError(f"{path.name}: the records have no fields (every line is {{}})")
    return _without_meta(_in_memory(table, path))


def _in_memory(table, path: Path):
    """A `datasets.Dataset` over a table the child handed back, fingerprinted by the file's bytes (xxh3, GB/s):
    left to itself `datasets` fingerprints an in-memory table by pickling all of it, a full copy."""
    import datasets
    import xxhash

    h = xxhash.xxh3_128(path.suffix.lower().encode())
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return datasets.Dataset(table, fingerprint=h.hexdigest())


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
    from studio.data.isolate import warm

    warm()  # the parse helper starts its imports now, beside this process's own
    raw = RawData(dataset=None, name=path.name, path=path)
    if suffix == ".parquet":
        try:
            raw.dataset = _arrow_read(path, suffix, path.stat().st_size > IN_MEMORY_BYTES)
        except StudioError:
            raise
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
    if len(raw.columns) > MAX_COLUMNS:
        raise StudioError(f"{path.name}: {len(raw.columns)} columns; at most {MAX_COLUMNS} are read")
    return raw


def _hub_error(name: str, e: Exception) -> StudioError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "offline" in msg.lower() or "connect" in msg.lower() or "couldn't reach" in msg.lower():
        return StudioError(f"{name}: can't reach the Hugging Face Hub and the dataset is not in the local cache; "
                           "use a local file or a bundled sample")
    if "gated" in msg.lower() or "401" in msg or "403" in msg:
        return StudioError(f"{name}: access refused; accept the dataset's terms on the Hub and set HF_TOKEN")
    from studio.access import shared_mode

    if shared_mode():  # the library's own words may carry addresses, ports or the server's folders
        return StudioError(f"{name}: could not load ({type(e).__name__})")
    return StudioError(f"{name}: could not load ({msg})")


def _outside_repo(value) -> bool:
    """A card's data_files/data_dir entry that is not a file of the repo itself: a URL (http://, hf://, s3://…),
    an fsspec chain (zip://…::…), an absolute or home path, or one that climbs out with '..'."""
    if isinstance(value, dict):
        return any(_outside_repo(v) for k, v in value.items() if k != "split")
    if isinstance(value, (list, tuple)):
        return any(_outside_repo(v) for v in value)
    text = str(value).strip()
    return ("://" in text or "::" in text or text.startswith(("/", "~", "\\")) or ":" in text.split("/")[0]
            or ".." in Path(text).parts)


def check_card_files(card: dict | None, name: str) -> None:
    """Refuse a dataset card whose configs read anything but the repo's own files: `load_dataset` would fetch a
    URL in `data_files` from this server (an internal address, say). The line names no address or folder."""
    for config in (card or {}).get("configs") or []:
        if not isinstance(config, dict):
            continue
        if any(_outside_repo(config[k]) for k in ("data_files", "data_dir") if k in config):
            raise StudioError(f"{name}: its dataset card reads data from outside the repository (a URL or a path); "
                              "on a shared studio only the repository's own files are read")


def hub_dataset_preflight(dataset_id: str, name: str) -> str | None:
    """One bounded request (HF_HUB_ETAG_TIMEOUT, 10 s by default) before loading a Hub dataset, as for models.

    Left to itself `load_dataset` on a stalled Hub retries for minutes; here a Hub that stalls, fails or
    refuses gives one line within the timeout. Locally a dataset already in the local Hub cache is left to
    `load_dataset` (it can still load it while the Hub is down); so are folders and offline mode.

    On a shared studio the Hub itself decides, every time, with the visitor's own token (or none): a cached copy
    (the owner's private dataset, read once with HF_TOKEN) is no answer, offline is a refusal, and the card may
    read only the repo's own files. Returns the commit the Hub confirmed (load exactly that), or None.
    """
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from studio.access import hub_token, shared_mode

    shared = shared_mode()
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not shared:
        if Path(dataset_id).exists() or offline:
            return None
        if (Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}").is_dir():
            return None
    elif offline:
        raise StudioError(f"{name}: the Hub is out of reach, and on a shared studio a Hub dataset is read only when "
                          "the Hub confirms you may; use a bundled sample or upload a file")
    try:
        info = HfApi().dataset_info(dataset_id, timeout=constants.HF_HUB_ETAG_TIMEOUT, token=hub_token())
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
    else:
        if not shared:
            return None
        card = info.card_data.to_dict() if info.card_data is not None else {}
        check_card_files(card, name)
        return info.sha
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
    revision = hub_dataset_preflight(dataset_id, name)  # on a shared studio: the commit the Hub just confirmed
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split or None, streaming=bool(streaming_rows),
                                   token=hub_token(), revision=revision)
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
    if source.startswith("upload:"):  # the Data tab's handle for the visitor's own upload (studio.access)
        from studio.access import resolve

        source = resolve("data", source)
    if source in SAMPLES or source.startswith("sample:"):
        key = source.removeprefix("sample:")
        if key not in SAMPLES:
            raise StudioError(f"no bundled sample '{key}'; available: {', '.join(SAMPLES)}")
        raw = read_file(SAMPLES[key])
        raw.kind = "sample"
        return raw
    from studio.access import in_runs, shared_mode, shown_path

    path = Path(in_runs(source)).expanduser()  # runs/pairs/NAME.jsonl as a shared page shows it
    if shared_mode() and path.is_dir():  # a visitor names no server folder (studio.access.resolve("data"))
        raise StudioError(f"{shown_path(source)}: on a shared studio a folder is not a data source")
    if path.is_file():
        return read_file(path)
    if path.is_dir():
        return read_hub(str(path), config, split, streaming_rows)
    if path.suffix.lower() in FILE_TYPES or os.sep in source and not _HUB_ID.match(source):
        raise StudioError(f"{source}: no such file")
    if _HUB_ID.match(source):
        return read_hub(source, config, split, streaming_rows)
    raise StudioError(f"{source}: not a file, a folder, a bundled sample or a Hub dataset id (owner/name)")
