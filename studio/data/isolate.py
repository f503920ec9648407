"""Native parsers meet a visitor's bytes only in a short-lived child process.

pyarrow's JSON, CSV and Parquet readers (and `datasets`' builders on top of them) are C++: a bad file can end
them with a signal (pyarrow 26 segfaults on a JSONL whose first line is `null`), which no `try` catches. So
`run_isolated` parses in a child process, and a crash, a hang or an exception there comes back to the caller
as one exception; the server process never runs the native reader on the visitor's bytes. The child hands
its table back as an Arrow IPC file, which the parent memory-maps (no copy, no second parse). What a file may
decode (rows, bytes: `studio.budgets`) is checked in the child, before anything reaches the caller: a 200 KB
Parquet file can hold a million copies of one long string. Bytes are what the rows expand to, not the Arrow
buffers: a column stored as a dictionary counts each index as its value; once within the limits such a
column is decoded here, so the parent maps plain columns and never expands one itself.

Each child is forked by a small helper process (`python -m studio.data.isolate`, started once, kept idle,
single-threaded, with pyarrow already imported): forking the server itself would copy gradio's and torch's
threads, and a fresh interpreter per file costs ~0.7 s of imports; a fork of the helper costs milliseconds.
(`multiprocessing`'s forkserver does the same but re-imports the caller's main module, which breaks scripts
without a `__main__` guard.) Validating every byte in Python first was the alternative; it can't prove the
next reader bug absent.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from studio.errors import StudioError

# A parse of a file up to the upload limit takes seconds; a child still busy after this is stopped.
PARSE_TIMEOUT_S = float(os.environ.get("STUDIO_PARSE_TIMEOUT", 300))
# `datasets` too: a large file is parsed by its builders in the child (its import costs seconds; a fork, nothing)
_PRELOAD = ("numpy", "pyarrow", "pyarrow.json", "pyarrow.csv", "pyarrow.parquet", "pyarrow.ipc", "datasets",
            "studio.data.sources")
_MAX_IDLE = 2  # helpers kept for the next file; more start when several visitors parse at once
_idle: list[subprocess.Popen] = []
_idle_lock = threading.Lock()


class ReaderFailed(Exception):
    """The native reader raised, crashed or hung in the child; the message says which (one line)."""


# ---- the child and the helper (run in other processes) ---------------------------------------------------------
_limits = None  # in a parse child: the DecodeLimits of its request (studio.budgets)


def decode_limits():
    """What the current parse may decode (in a child: its request's limits; elsewhere: the budgets now)."""
    from studio.budgets import DecodeLimits

    return _limits or DecodeLimits.now()


def _child(target: str, args: list, out: str, limits: dict | None = None, name: str = "file") -> None:
    """In the forked child: run target(*args); a table goes to `out` as Arrow IPC, an exception to `out`.err.
    A table over the decode limits is refused here, before anything reaches the caller."""
    code = 0
    try:
        if limits:
            from studio.budgets import DecodeLimits

            # the helper runs this file as __main__: the readers ask the imported module
            importlib.import_module("studio.data.isolate")._limits = DecodeLimits(**limits)
        module, _, fn = target.partition(":")
        table = getattr(importlib.import_module(module), fn)(*args)
        if isinstance(table, (list, dict)):  # a plain answer (e.g. the cache files `datasets` wrote)
            Path(out + ".json.tmp").write_text(json.dumps(table), encoding="utf-8")
            os.replace(out + ".json.tmp", out + ".json")
        elif table is not None:
            import pyarrow as pa

            importlib.import_module("studio.data.isolate").decode_limits().check_table(name, table)
            table = plain(table)  # within the limits: the caller maps plain columns, it never expands one
            with pa.OSFile(out + ".tmp", "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
            os.replace(out + ".tmp", out)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent as one line
        kind = "studio" if isinstance(e, StudioError) else type(e).__name__
        text = (str(e).splitlines() or [""])[0][:300]
        Path(out + ".err").write_text(f"{kind}\n{text}", encoding="utf-8", errors="replace")
        code = 3
    os._exit(code)


def _plain_type(t):
    """`t` with every dictionary and run-end encoding replaced by its values' type, at any depth."""
    import pyarrow as pa

    if pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t):
        return _plain_type(t.value_type)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_plain_type(t.key_type)),
                       t.item_field.with_type(_plain_type(t.item_type)), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_plain_type(t.field(i).type)) for i in range(t.num_fields)])
    for is_kind, make in ((pa.types.is_list, pa.list_), (pa.types.is_large_list, pa.large_list)):
        if is_kind(t):
            return make(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)), t.list_size)
    return t


def _plain_array(arr, to):
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        return _plain_array(arr.dictionary_decode(), to)
    if pa.types.is_run_end_encoded(arr.type):
        return _plain_array(pc.run_end_decode(arr), to)
    return arr if arr.type == to else arr.cast(to)


def plain(table):
    """The table with its dictionary (and run-end-encoded) columns decoded, in the child, once the decode
    limits passed: what the caller maps is what its rows are, so nothing of unknown size is expanded on the
    caller's side (`datasets` casts a dictionary column to its values when it wraps the table). A table
    without such columns is returned as it is."""
    import pyarrow as pa

    schema = pa.schema([f.with_type(_plain_type(f.type)) for f in table.schema], metadata=table.schema.metadata)
    if schema.equals(table.schema):
        return table
    columns = [col if col.type == f.type else pa.chunked_array([_plain_array(c, f.type) for c in col.chunks], f.type)
               for col, f in zip(table.columns, schema)]
    return pa.Table.from_arrays(columns, schema=schema)


def _wait(pid: int, timeout: float) -> int | str:
    """The child's wait status, or "timeout" after killing it."""
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _serve() -> None:
    """The helper: one JSON request per stdin line → fork a child for it → one JSON answer per stdout line."""
    for module in _PRELOAD:
        importlib.import_module(module)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    devnull = os.open(os.devnull, os.O_WRONLY)
    for line in requests:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.dup2(devnull, 1)  # the child never writes into the answer pipe
            _child(req["target"], req["args"], req["out"], req.get("limits"), req.get("name", "file"))
        status = _wait(pid, req["timeout"])
        if status == "timeout":
            answer = {"timeout": True}
        elif os.WIFSIGNALED(status):
            answer = {"signal": os.WTERMSIG(status)}
        else:
            answer = {"exit": os.WEXITSTATUS(status)}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


# ---- the caller's side ------------------------------------------------------------------------------------------
def _start_helper() -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "studio.data.isolate"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


def warm() -> None:
    """Start one helper ahead of the first file (the app does this while it starts)."""
    with _idle_lock:
        if not _idle:
            _idle.append(_start_helper())


def _ask(request: dict) -> dict | None:
    with _idle_lock:
        helper = _idle.pop() if _idle else None
    if helper is None or helper.poll() is not None:
        helper = _start_helper()
    try:
        helper.stdin.write(json.dumps(request).encode() + b"\n")
        helper.stdin.flush()
        line = helper.stdout.readline()
    except OSError:
        line = b""
    if not line:  # the helper itself died (it never parses anything, so this is rare): start another next time
        helper.kill()
        helper.wait()
        return None
    with _idle_lock:
        if len(_idle) < _MAX_IDLE:
            _idle.append(helper)
            helper = None
    if helper is not None:
        helper.stdin.close()
        helper.wait()
    return json.loads(line)


def run_isolated(fn, *args, name: str, timeout: float | None = None, limits=None):
    """fn(*args) in a child process: its pyarrow Table, list or dict (or None), a StudioError it raised, or ReaderFailed
    when it raised anything else, died by a signal or ran past `timeout` seconds. `fn` is a module-level
    function; its arguments are JSON values (absolute file paths, suffixes: the helper's working folder is
    the one it started in). A table over `limits` (studio.budgets.DecodeLimits; the budgets now by default)
    is refused in the child; one within them is memory-mapped from the child's Arrow file, not copied."""
    import dataclasses

    import pyarrow as pa

    from studio.budgets import DecodeLimits

    timeout = PARSE_TIMEOUT_S if timeout is None else timeout
    limits = DecodeLimits.now() if limits is None else limits
    with tempfile.TemporaryDirectory(prefix="studio-parse-") as tmp:
        out = os.path.join(tmp, "table.arrow")
        answer = _ask({"target": f"{fn.__module__}:{fn.__name__}", "args": list(args), "out": out,
                       "timeout": timeout, "limits": dataclasses.asdict(limits), "name": name})
        if answer is None:
            raise ReaderFailed("the file reader's helper process stopped")
        if answer.get("timeout"):
            raise StudioError(f"{name}: reading took longer than {timeout:g} s and was stopped")
        if "signal" in answer:
            try:
                why = signal.Signals(answer["signal"]).name
            except ValueError:
                why = f"signal {answer['signal']}"
            raise ReaderFailed(f"the file reader crashed on this file ({why})")
        if os.path.exists(out + ".err"):
            kind, _, text = Path(out + ".err").read_text("utf-8").partition("\n")
            if kind == "studio":
                raise StudioError(text)
            raise ReaderFailed(f"{text or kind}")
        if answer.get("exit"):
            raise ReaderFailed(f"the file reader exited with status {answer['exit']}")
        if os.path.exists(out + ".json"):
            return json.loads(Path(out + ".json").read_text("utf-8"))
        if not os.path.exists(out):
            return None
        # Mapped, not read: the table's buffers are the file's pages (the file is unlinked when the folder
        # goes; its pages stay mapped until the table is freed), so the server holds no second copy.
        return pa.ipc.open_file(pa.memory_map(out, "r")).read_all()


if __name__ == "__main__":
    _serve()
