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
    "runs": Budget("STUDIO_VISITOR_RUNS", 20, "runs", "per visitor"),
    "run_mb": Budget("STUDIO_VISITOR_RUN_MB", 5120, "MB", "of runs on disk per visitor"),
    "labelling": Budget("STUDIO_VISITOR_PAIRS", 20, "pairs files",
                        "(labelling sessions and built pairs) per visitor"),
    "results": Budget("STUDIO_VISITOR_RESULTS", 100, "results", "saved evaluations per visitor"),
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
        """A decoded Arrow table (or dataset's table) against both limits."""
        self.check_rows(name, table.num_rows)
        self.check_bytes(name, table.nbytes)


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


def check_upload(folder: Path, incoming: Path) -> None:
    """Before a visitor's upload is copied into their folder: their count and bytes, and everyone's bytes."""
    folder, size = Path(folder), Path(incoming).stat().st_size
    kept = _files(folder)
    if len(kept) + 1 > limit("uploads"):
        raise BUDGETS["uploads"].refuse(f"{Path(incoming).name}: you have {len(kept)} uploads kept here",
                                        "older ones are removed after a while")
    held = sum(p.stat().st_size for p in kept)
    if held + size > limit("upload_mb") * MB:
        raise BUDGETS["upload_mb"].refuse(f"{Path(incoming).name}", f"{_mb(held)} kept + {_mb(size)}")
    everyone = disk_bytes(folder.parent) if folder.parent.is_dir() else 0
    if everyone + size > limit("uploads_total_mb") * MB:
        sweep_uploads(folder.parent, force=True)
        everyone = disk_bytes(folder.parent)
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
    """Remove visitors' uploads (uploads/visitor-*/…) not used for the TTL, then, while all of them together
    are over the total budget, the least recently used; returns the files removed. At most once per sweep
    period unless `force`."""
    global _last_sweep
    every, ttl = cache_schedule()
    now = time.time()
    if not force and now - _last_sweep < every:
        return 0
    with _sweep_lock:
        _last_sweep = now
        files = []
        for visitor in Path(folder).glob("visitor-*"):
            for p in _files(visitor):
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
        for d in sorted(Path(folder).glob("visitor-*/**/"), key=lambda d: len(d.parts), reverse=True):
            try:
                d.rmdir()  # only empty ones go
            except OSError:
                pass
        return removed


def start_sweeper(folder: Path) -> None:
    """A daemon thread sweeping `folder` every sweep period (started once by the app)."""
    def loop():
        while True:
            time.sleep(cache_schedule()[0])
            try:
                sweep_uploads(folder, force=True)
            except Exception:  # noqa: BLE001 - a failed sweep is retried next period
                pass

    if not getattr(start_sweeper, "started", False):
        start_sweeper.started = True
        threading.Thread(target=loop, name="upload-sweeper", daemon=True).start()
