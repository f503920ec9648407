"""Every limit a file or a visitor can't pass, in one place: its default, the variable that changes it, and
the accounting that checks it (docs/budgets.md lists them all).

A shared studio is one machine for everyone who reaches it. Each budget here bounds what one parsed file or
one visitor can take from it (memory while a file is read, disk for uploads, runs, pairs and results), so a
stranger can use the studio but can't take it away from the others. A refusal is one line that names the
limit and the variable that changes it; the app's owner (a Space's author) tunes them with those variables.

Values are read from the environment when they are checked, so a running app follows its environment and a
test can turn them low. This module sits below `studio.access`: it knows nothing of visitors; the caller
hands it the visitor's own things (what `access` says they own) and it counts them.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError


@dataclass(frozen=True)
class Budget:
    env: str  # the variable that changes it
    default: float
    unit: str  # how a value is shown: "rows", "MB", "files", "s", …
    what: str  # what it bounds, as a refusal says it: "decoded rows per file"

    def value(self) -> float:
        """The limit now: the variable if it holds a number ≥ 0, else the default."""
        text = os.environ.get(self.env, "").strip().lower().removesuffix(self.unit.lower()).strip()
        try:
            value = float(text)
        except ValueError:
            return float(self.default)
        return value if value >= 0 else float(self.default)

    def shown(self, value: float | None = None) -> str:
        value = self.value() if value is None else value
        return f"{value:,.0f} {self.unit}" if float(value).is_integer() else f"{value:,g} {self.unit}"

    def refuse(self, subject: str, amount: str | None = None, value: float | None = None) -> StudioError:
        """The one line for `subject` over this budget: what, the limit, and the variable that changes it."""
        over = f" ({amount})" if amount else ""
        return StudioError(f"{subject}{over}: over the limit of {self.shown(value)} {self.what} "
                           f"(the app's owner sets it with {self.env})")


MB = 2**20

BUDGETS: dict[str, Budget] = {
    # ---- a parsed file (checked in the parse child, before anything reaches the server) ----
    "decoded_rows": Budget("STUDIO_MAX_ROWS", 10_000_000, "rows", "decoded rows per file"),
    "decoded_mb": Budget("STUDIO_MAX_DECODED_MB", 1024, "MB", "decoded size per file"),
    # ---- a visitor on a shared studio ----
    "uploads": Budget("STUDIO_VISITOR_UPLOADS", 50, "files", "uploads kept per visitor"),
    "upload_mb": Budget("STUDIO_VISITOR_UPLOAD_MB", 1024, "MB", "of uploads kept per visitor"),
    "uploads_total_mb": Budget("STUDIO_UPLOADS_TOTAL_MB", 10240, "MB",
                               "of uploads kept for all visitors together"),
    "upload_ttl": Budget("STUDIO_UPLOAD_TTL", 6 * 3600, "s", "an upload is kept after its last use"),
    "raw_upload_ttl": Budget("STUDIO_RAW_UPLOAD_TTL", 600, "s",
                             "a raw upload nobody handed to the studio is kept on Gradio's route"),
    "runs": Budget("STUDIO_VISITOR_RUNS", 20, "runs", "per visitor"),
    "run_mb": Budget("STUDIO_VISITOR_RUN_MB", 5120, "MB", "of runs on disk per visitor"),
    "labelling": Budget("STUDIO_VISITOR_PAIRS", 20, "pairs files",
                        "(labelling sessions and built pairs) per visitor"),
    "results": Budget("STUDIO_VISITOR_RESULTS", 100, "results", "saved evaluations per visitor"),
    # ---- heavy work outside the training slot (studio.work: story embedding, evaluation, exports, pairs) ----
    "heavy_running": Budget("STUDIO_HEAVY_RUNNING", 1, "calls", "of heavy work running at once"),
    "heavy_waiting_per_payer": Budget("STUDIO_HEAVY_WAITING_PER_PAYER", 1, "calls",
                                      "of heavy work waiting per visitor (all anonymous visitors count as one)"),
    "heavy_waiting": Budget("STUDIO_HEAVY_WAITING", 20, "calls", "of heavy work waiting, all visitors together"),
    "visitor_cpu": Budget("STUDIO_VISITOR_CPU_S", 1800, "CPU-s",
                          "of heavy work per visitor per hour (all anonymous visitors count as one)"),
    "visitor_stories": Budget("STUDIO_VISITOR_STORIES", 50_000, "stories",
                              "per story corpus a visitor embeds (the app's owner: STUDIO_MAX_STORIES)"),
}


def limit(name: str) -> float:
    return BUDGETS[name].value()


def _mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


# ---- a parsed file -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeLimits:
    """What one parse may decode; handed to the parse child (its environment may be older than the app's)."""
    rows: int
    bytes: int

    @classmethod
    def now(cls) -> DecodeLimits:
        return cls(int(limit("decoded_rows")), int(limit("decoded_mb") * MB))

    def check_rows(self, name: str, rows: int, counted: str = "") -> None:
        if rows > self.rows:
            raise BUDGETS["decoded_rows"].refuse(name, f"{rows:,} rows{counted}", self.rows)

    def check_bytes(self, name: str, nbytes: int, rows: int | None = None) -> None:
        if nbytes > self.bytes:
            where = f"{_mb(nbytes)} decoded" + (f" by row {rows:,}" if rows is not None else "")
            raise BUDGETS["decoded_mb"].refuse(name, where, self.bytes / MB)

    def check_table(self, name: str, table) -> None:
        """A decoded Arrow table (or dataset's table) against both limits, by what its rows expand to."""
        self.check_rows(name, table.num_rows)
        self.check_bytes(name, decoded_bytes(table))


# What a column decodes to. Arrow's `nbytes` counts a column's buffers: for a dictionary column, its indices and
# its dictionary once, so a million indices into one 2,000-character string count 4 MB and expand to 1.9 GB
# (issue 31). The decoded size counts every value as it takes once materialised (what a cast to the plain type
# takes: offsets, values, validity), computed from lengths and offsets, never by materialising.
def _expands(t) -> bool:
    """Whether a column of type `t` can take more once materialised than its buffers hold: a dictionary, a
    run-end-encoded array, string/binary views and list views (their values may be shared), or a nesting of one."""
    import pyarrow as pa

    if (pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t) or pa.types.is_string_view(t)
            or pa.types.is_binary_view(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        return True
    if isinstance(t, pa.ExtensionType):
        return _expands(t.storage_type)
    return any(_expands(t.field(i).type) for i in range(t.num_fields))


def _prefix(sizes):
    import numpy as np

    return np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes, dtype=np.int64)])


def _offsets(arr, large: bool):
    """A string/binary array's n + 1 value offsets (its own slice of the offsets buffer), as int64."""
    import numpy as np

    return np.frombuffer(arr.buffers()[1], np.int64 if large else np.int32)[arr.offset:arr.offset + len(arr) + 1] \
        .astype(np.int64)


def _cum(arr, pos):
    """For each position p in `pos` (numpy int64, 0 ≤ p ≤ len(arr)): the bytes arr[:p] takes materialised."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    t, n = arr.type, len(arr)
    if isinstance(arr, pa.ExtensionArray):
        return _cum(arr.storage, pos)
    if pa.types.is_null(t):
        return np.zeros(len(pos), np.int64)
    bits = pos // 8 if arr.null_count else 0  # the validity bitmap
    if pa.types.is_dictionary(t):  # each index takes its dictionary value's size
        per = pc.fill_null(pc.take(pa.array(_sizes(arr.dictionary)), arr.indices), 0)
        return bits + _prefix(per.to_numpy(zero_copy_only=False))[pos]
    if pa.types.is_run_end_encoded(t):  # each run takes its value's size times its length
        ends = arr.run_ends.to_numpy(zero_copy_only=False).astype(np.int64)
        if not len(ends):
            return np.zeros(len(pos), np.int64)
        starts, value = np.concatenate([[0], ends[:-1]]), _sizes(arr.values)[:len(ends)]
        runs = _prefix((ends - starts) * value)

        def at(q):
            r = np.searchsorted(ends, q, side="right")
            inside = np.minimum(r, len(ends) - 1)
            return np.where(r < len(ends), runs[inside] + (q - starts[inside]) * value[inside], runs[-1])

        return at(arr.offset + pos) - at(np.array([arr.offset]))
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):  # a 16-byte view, and its value past 12 bytes
        lengths = np.frombuffer(arr.buffers()[1], np.int32).reshape(-1, 4)[arr.offset:arr.offset + n, 0]
        return bits + _prefix(16 + np.maximum(lengths.astype(np.int64), 0))[pos]
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        large = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
        offsets = _offsets(arr, large)
        return bits + (8 if large else 4) * pos + offsets[pos] - offsets[0]
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):  # each view takes its elements' sizes
        width = 8 if pa.types.is_large_list_view(t) else 4
        starts = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        ends = starts + arr.sizes.to_numpy(zero_copy_only=False).astype(np.int64)
        inner = _cum(arr.values, np.concatenate([starts, ends]))
        return bits + _prefix(2 * width + inner[n:] - inner[:n])[pos]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        width = 8 if pa.types.is_large_list(t) else 4
        offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        inner = _cum(arr.values, np.concatenate([offsets[pos], offsets[:1]]))
        return bits + width * pos + inner[:-1] - inner[-1]
    if pa.types.is_fixed_size_list(t):
        k, base = t.list_size, arr.offset * t.list_size  # `values` is the whole child, not this slice of it
        inner = _cum(arr.values, np.concatenate([base + pos * k, [base]]))
        return bits + inner[:-1] - inner[-1]
    if pa.types.is_struct(t):
        return bits + sum((_cum(arr.field(i), pos) for i in range(t.num_fields)), np.zeros(len(pos), np.int64))
    try:
        return bits + pos * t.bit_width // 8
    except ValueError:  # no fixed width (a union): all of its children materialised, shared out by position
        total = sum(decoded_bytes(arr.field(i)) for i in range(t.num_fields)) + arr.nbytes
        return pos * total // max(n, 1)


def _sizes(arr):
    """The bytes each element of `arr` takes materialised (numpy int64, one per element)."""
    import numpy as np

    return np.diff(_cum(arr, np.arange(len(arr) + 1, dtype=np.int64)))


def decoded_bytes(data) -> int:
    """The bytes an Arrow Table, RecordBatch, ChunkedArray or Array (or a `datasets` table) takes with every
    value materialised. Columns that can't expand count their buffers (`nbytes`, what they decode to already);
    a dictionary column counts each index as its value's size (the values' lengths from the dictionary's
    offsets, gathered by the indices), a run-end-encoded one each run's value times its length, and so on
    through lists, structs and maps. Costs a pass over the indices and offsets, never a copy of the values."""
    import numpy as np
    import pyarrow as pa

    if not isinstance(data, (pa.Table, pa.RecordBatch, pa.ChunkedArray, pa.Array)):
        data = data.table  # a `datasets` table wraps its Arrow table
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        if not any(_expands(f.type) for f in data.schema):
            return data.nbytes
        return sum(decoded_bytes(column) for column in data.columns)
    if not _expands(data.type):
        return data.nbytes
    chunks = data.chunks if isinstance(data, pa.ChunkedArray) else [data]
    return sum(int(_cum(c, np.array([len(c)], np.int64))[0]) for c in chunks)


# ---- a visitor's disk --------------------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    except OSError:
        return []


def disk_bytes(path: Path) -> int:
    """Bytes of a file or of every file under a folder (links not followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in _files(path):
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def check_upload(folder: Path, incoming: Path, everyone_root: Path) -> None:
    """Before a visitor's upload is copied into their payer's folder: the payer's count and bytes (every
    anonymous visitor pays from one folder), and the bytes all visitors' kept copies hold together (what the
    studio keeps; raw uploads nobody handed over are not counted: they leave after `raw_upload_ttl`)."""
    folder, size = Path(folder), Path(incoming).stat().st_size
    kept = _files(folder)
    if len(kept) + 1 > limit("uploads"):
        raise BUDGETS["uploads"].refuse(f"{Path(incoming).name}: you have {len(kept)} uploads kept here",
                                        "older ones are removed after a while")
    held = sum(p.stat().st_size for p in kept)
    if held + size > limit("upload_mb") * MB:
        raise BUDGETS["upload_mb"].refuse(f"{Path(incoming).name}", f"{_mb(held)} kept + {_mb(size)}")
    everyone = disk_bytes(everyone_root) if Path(everyone_root).is_dir() else 0
    if everyone + size > limit("uploads_total_mb") * MB:
        sweep_uploads(everyone_root, force=True)
        everyone = disk_bytes(everyone_root)
        if everyone + size > limit("uploads_total_mb") * MB:
            raise BUDGETS["uploads_total_mb"].refuse(f"{Path(incoming).name}", "try again later")


def kind_of(path: Path, runs_root: Path) -> str | None:
    """What a newly claimed path counts against: a run, a pairs file, a saved result; None for anything else."""
    path, root = Path(path), Path(runs_root)
    try:
        rel = path.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return None
    if len(rel) == 1 and rel[0] not in ("pairs", "evals"):
        return "runs"
    if len(rel) == 2 and rel[0] == "pairs" and path.suffix == ".jsonl":
        return "labelling"
    if path.suffix == ".json" and ((len(rel) == 2 and rel[0] == "evals") or (len(rel) == 3 and rel[1] == "eval")
                                   or (len(rel) == 5 and rel[0] == ".visitors" and rel[2] == "results")):
        return "results"  # the last: a visitor's own results folder (studio.access.visitor_folder)
    return None


def _candidates(kind: str, root: Path) -> list[Path]:
    if kind == "runs":
        return [p for p in root.iterdir() if p.is_dir() and p.name not in ("pairs", "evals")
                and not p.name.startswith(".")] if root.is_dir() else []
    if kind == "labelling":
        return sorted((root / "pairs").glob("*.jsonl"))
    return [*root.glob("*/eval/*.json"), *root.glob("evals/*.json"), *root.glob(".visitors/*/results/*/*.json")]


def check_new(path: Path, runs_root: Path, owned) -> None:
    """Before `path` becomes a visitor's: are they within their budget for its kind? `owned(p)` says whether
    `p` is already theirs (studio.access answers it). A refused new run folder that is still empty is removed."""
    path = Path(path)
    kind = kind_of(path, runs_root)
    if kind is None:
        return
    mine = [p for p in _candidates(kind, Path(runs_root)) if p.resolve() != path.resolve() and owned(p)]
    budget = BUDGETS[kind]
    try:
        if len(mine) + 1 > budget.value():
            raise budget.refuse(f"{path.name}: you have {len(mine)} here", "remove or reuse one")
        if kind == "runs":
            used = sum(disk_bytes(p) for p in mine)
            if used > limit("run_mb") * MB:
                raise BUDGETS["run_mb"].refuse(f"{path.name}: your runs hold {_mb(used)}")
    except StudioError:
        if kind == "runs" and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


# ---- uploads of ended sessions -----------------------------------------------------------------------------
_sweep_lock = threading.Lock()
_last_sweep = 0.0


def cache_schedule() -> tuple[int, int]:
    """Gradio's `delete_cache=(every, age)`: its own raw uploads (and files it hands out) leave after the TTL."""
    ttl = max(1, int(limit("upload_ttl")))
    return max(1, min(ttl, 600)), ttl


def sweep_uploads(folder: Path, force: bool = False) -> int:
    """Remove visitors' kept uploads (<runs>/.uploads/<payer>/<home>/…) not used for the TTL, then, while all of
    them together are over the total budget, the least recently used; returns the files removed. At most once per
    sweep period unless `force`."""
    global _last_sweep
    every, ttl = cache_schedule()
    now = time.time()
    if not force and now - _last_sweep < every:
        return 0
    with _sweep_lock:
        _last_sweep = now
        files = []
        for p in _files(Path(folder)):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((max(st.st_mtime, st.st_atime), st.st_size, p))
        files.sort()
        total, cap, removed = sum(f[1] for f in files), limit("uploads_total_mb") * MB, 0
        for used, size, p in files:
            if now - used <= ttl and total <= cap:
                break
            try:
                p.unlink()
                total -= size
                removed += 1
            except OSError:
                pass
        for d in sorted(Path(folder).glob("**/"), key=lambda d: len(d.parts), reverse=True):
            if d != Path(folder):
                try:
                    d.rmdir()  # only empty ones go
                except OSError:
                    pass
        return removed


def sweep_raw_uploads(raw: set, now: float | None = None) -> int:
    """Remove raw uploads (paths Gradio's upload route wrote, `raw`: its own record of them) that nobody handed
    to the studio within `raw_upload_ttl`: whatever a stranger sends without using it blocks nobody for long.
    Files Gradio made for pages (downloads) are not in that record and are left to Gradio's own cache TTL."""
    now = time.time() if now is None else now
    ttl, removed = limit("raw_upload_ttl"), 0
    for name in list(raw):
        p = Path(name)
        try:
            if now - p.stat().st_mtime <= ttl:
                continue
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:
            continue
        raw.discard(name)
        try:
            p.parent.rmdir()
        except OSError:
            pass
    return removed


def start_sweeper(folder: Path, raw: set | None = None) -> None:
    """A daemon thread sweeping `folder` (kept uploads) every sweep period, and `raw` (Gradio's record of its raw
    uploads) every minute at most (started once by the app)."""
    def loop():
        last = 0.0
        while True:
            time.sleep(max(1.0, min(60.0, limit("raw_upload_ttl") / 4)))
            try:
                if raw is not None:
                    sweep_raw_uploads(raw)
                if time.time() - last >= cache_schedule()[0]:
                    last = time.time()
                    sweep_uploads(folder, force=True)
            except Exception:  # noqa: BLE001 - a failed sweep is retried next period
                pass

    if not getattr(start_sweeper, "started", False):
        start_sweeper.started = True
        threading.Thread(target=loop, name="upload-sweeper", daemon=True).start()
