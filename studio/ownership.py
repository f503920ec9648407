"""Who is who and who owns what on a shared studio, kept in the runs folder.

- The server's secret (`<runs>/.studio-secret`, made once, mode 0600): it signs the browser ids the server
  issues and seals the page's `gr.BrowserState`, so both outlive a restart of the app.
- Browser ids: the server hands each new page a random id with its signature (`issue_browser_id`); a value
  sent back is believed only if the signature holds (`verify_browser_id`). Nobody can pick or guess one.
- Ownership records (`<runs>/.owners.sqlite`): which visitor marks own a path. SQLite in WAL mode, keyed
  by a primary-key index, so a check costs one indexed lookup whether there are 10 records or 100,000, and
  readers never wait for a writer. The old `<runs>/.owners.json` is imported once.

Only `studio.access` calls the store; this module knows nothing of visitors beyond their marks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from pathlib import Path

SECRET_FILE = ".studio-secret"
DB_FILE = ".owners.sqlite"
OLD_JSON = ".owners.json"

_lock = threading.Lock()
_secrets: dict[str, bytes] = {}


def _root() -> Path:
    """The runs folder (the same rule as `studio.access.runs_root`, which sits above this module)."""
    return Path(os.environ.get("STUDIO_RUNS") or "runs").expanduser()


def server_secret(root: Path | None = None) -> bytes:
    """The runs folder's secret: read it, or make it once (readable only by the server's user)."""
    root = Path(root or _root())
    key = str(root.resolve())
    if key in _secrets:
        return _secrets[key]
    with _lock:
        path = root / SECRET_FILE
        if not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: read theirs
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
        value = path.read_text().strip()
        if len(value) < 32:
            raise OSError(f"{path} is damaged: delete it (visitors' browsers are then new visitors)")
        _secrets[key] = value.encode()
        return _secrets[key]


def _sign(raw: str, purpose: bytes = b"browser-id") -> str:
    return hmac.new(server_secret(), purpose + b":" + raw.encode(), hashlib.sha256).hexdigest()[:32]


def issue_browser_id() -> str:
    """A new browser's id: 128 random bits and the server's signature over them."""
    raw = secrets.token_hex(16)
    return f"{raw}.{_sign(raw)}"


def verify_browser_id(value) -> str | None:
    """The id inside a signed value this server issued; None for anything else (made up, edited, old style)."""
    if not isinstance(value, str) or len(value) != 65 or value[32] != ".":
        return None
    raw, sig = value[:32], value[33:]
    if not all(c in "0123456789abcdef" for c in raw + sig):  # ASCII hex only (compare_digest raises on other text)
        return None
    return raw if hmac.compare_digest(sig, _sign(raw)) else None


def browser_state_secret() -> str:
    """The key `gr.BrowserState` seals the page's stored value with. It travels to every page (Gradio seals in
    the browser), so it is derived from the server's secret, never the secret itself: it only has to stay the
    same across restarts so a browser can open what it stored."""
    return hmac.new(server_secret(), b"gradio-browser-state", hashlib.sha256).hexdigest()[:32]


# ---- ownership records --------------------------------------------------------------------------------------

_local = threading.local()  # one connection per thread and database (sqlite3 connections stay in their thread)
_migrated: set[str] = set()


def _connect(root: Path) -> sqlite3.Connection:
    path = os.path.abspath(root / DB_FILE)  # no resolve(): this runs at every check
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    conn = conns.get(path)
    if conn is None:
        root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; transactions by hand
        try:  # WAL: readers never wait for the writer. A folder that can't hold its shared-memory file (some
            conn.execute("PRAGMA journal_mode=WAL")  # network mounts) keeps SQLite's default journal instead
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:
            pass
        conn.execute("CREATE TABLE IF NOT EXISTS owners (key TEXT PRIMARY KEY, marks TEXT NOT NULL) WITHOUT ROWID")
        conns[path] = conn
        if path not in _migrated:
            _migrate(conn, root)
            _migrated.add(path)
    return conn


def _migrate(conn: sqlite3.Connection, root: Path) -> None:
    """Import `.owners.json` (the store before this one) once, then rename it out of the way."""
    old = root / OLD_JSON
    if not old.is_file():
        return
    try:
        table = json.loads(old.read_text("utf-8"))
    except (OSError, ValueError):
        table = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key, marks in (table.items() if isinstance(table, dict) else ()):
            if isinstance(marks, list):
                row = conn.execute("SELECT marks FROM owners WHERE key = ?", (key,)).fetchone()
                merged = sorted(set(marks) | set(json.loads(row[0]) if row else []))
                conn.execute("INSERT OR REPLACE INTO owners (key, marks) VALUES (?, ?)", (key, json.dumps(merged)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        old.replace(root / (OLD_JSON + ".migrated"))
    except OSError:
        pass  # another process renamed it first


def prepare(root: Path | None = None) -> None:
    """Make the secret and the store now (the app's start), not at some visitor's first click."""
    root = Path(root or _root())
    server_secret(root)
    _connect(root)


def get_marks(key: str, root: Path | None = None) -> list[str] | None:
    """The marks recorded for `key`, or None when nobody (no visitor) made it."""
    row = _connect(Path(root or _root())).execute("SELECT marks FROM owners WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def get_marks_many(keys, root: Path | None = None) -> dict[str, list[str]]:
    """`get_marks` for many keys in a few queries (a listing of thousands costs milliseconds); keys nobody
    made are absent."""
    conn, keys, found = _connect(Path(root or _root())), list(keys), {}
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        rows = conn.execute(f"SELECT key, marks FROM owners WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        found.update((key, json.loads(marks)) for key, marks in rows)
    return found


def shares_marks(keys, marks, root: Path | None = None) -> dict[str, bool]:
    """For each of `keys` somebody made: does its record hold one of `marks`? The match runs in SQLite
    (json_each), so a page load that weighs thousands of other visitors' records decodes none of them."""
    conn, keys, marks, found = _connect(Path(root or _root())), list(keys), list(marks), {}
    if not marks:
        marks = [""]  # no mark matches
    held = ",".join("?" * len(marks))
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        rows = conn.execute(f"SELECT key, EXISTS (SELECT 1 FROM json_each(marks) WHERE value IN ({held})) "
                            f"FROM owners WHERE key IN ({','.join('?' * len(chunk))})", [*marks, *chunk])
        found.update((key, bool(hit)) for key, hit in rows)
    return found


def add_marks(key: str, marks, may_join=lambda existing: True, root: Path | None = None) -> list[str]:
    """Add `marks` to `key`'s record in one transaction; `may_join(existing marks)` false → PermissionError."""
    conn = _connect(Path(root or _root()))
    conn.execute("BEGIN IMMEDIATE")  # one writer at a time; readers go on reading the last commit
    try:
        row = conn.execute("SELECT marks FROM owners WHERE key = ?", (key,)).fetchone()
        existing = json.loads(row[0]) if row else None
        if existing and not may_join(existing):
            raise PermissionError(key)
        merged = sorted(set(existing or []) | set(marks))
        conn.execute("INSERT OR REPLACE INTO owners (key, marks) VALUES (?, ?)", (key, json.dumps(merged)))
        conn.execute("COMMIT")
        return merged
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def count(root: Path | None = None) -> int:
    return _connect(Path(root or _root())).execute("SELECT COUNT(*) FROM owners").fetchone()[0]
