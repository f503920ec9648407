"""Training jobs: one background thread per process, the live side of a run, and the one-job registry.

A `Job` is a `studio.runs.Run` being trained here: fed by `JobCallback` (a TrainerCallback), it appends
every event to ``events.jsonl``, so a reloaded page or another process rebuilds the whole history with
`Run.from_run_dir`. Stopping is a flag checked after each step: the trainer then saves a checkpoint and
ends, status ``cancelled``. Only what starts, watches or stops jobs imports this module; readers of runs
import `studio.runs`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
import traceback
from pathlib import Path

from studio.access import (check_run_name, claim, may_write, require_write,  # noqa: F401
                           runs_root)  # runs_root is re-exported
from studio.errors import StudioError, redact

from studio.runs import CANCELLED, DONE, FAILED, LIVE, QUEUED, RUNNING, STOPPING, Run
from studio.train.progress import is_main_process

log = logging.getLogger("studio")


class Job(Run):
    """A run being trained in this process: its thread, its stop flag, the events it writes."""

    def __init__(self, run_dir: Path, recipe=None, kind: str = "sft"):
        super().__init__(run_dir, recipe, kind)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.owner: str | None = None  # who may stop it (a browser's id in the app)
        self.failed_start = False  # failed before its first step: its folder is gone, fresh pages don't show it
        self.new_folder = False
        self._lock = threading.Lock()
        self._events_file = None
        self.writer = is_main_process()  # under several processes, only the main one writes the run's files

    # ---- events -------------------------------------------------------------------------------
    def emit(self, type: str, **data) -> None:
        event = {"t": round(time.time(), 3), "type": type, **data}
        line = json.dumps(event, default=str)
        safe = redact(line)  # no token reaches events.jsonl or the page
        with self._lock:
            self._apply(event if safe == line else json.loads(safe))
            if not self.writer:  # another process of a multi-process run: the main one writes
                return
            try:
                if self._events_file is None:  # kept open: an open/close per step costs more than a tiny step
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    self._events_file = open(self._events_path, "a", encoding="utf-8")
                    if _torn(self._events_path):  # a crash cut the last line: start ours on a fresh one
                        self._events_file.write("\n")
                self._events_file.write(safe + "\n")
                self._events_file.flush()  # readers in other processes see every event at once
            except OSError as e:  # a full disk: the job's state lives on in memory; its save reports the failure
                log.error("[%s] could not write %s: %s", self.id, self._events_path, e)
            if type == "status" and event.get("status") in (DONE, FAILED, CANCELLED) and self._events_file:
                try:
                    self._events_file.close()
                except OSError:
                    pass
                self._events_file = None

    def log(self, line: str) -> None:
        line = redact(line)
        log.info("[%s] %s", self.id, line)
        self.emit("log", line=line)

    def request_stop(self) -> None:
        if self.active:
            self.stop_event.set()
            if self.status == RUNNING:
                self.emit("status", status=STOPPING)

    def wait(self, timeout: float | None = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.active


def _torn(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


# ---- the registry: one training job at a time per process ---------------------------------------
_registry_lock = threading.Lock()
_jobs = LIVE  # the registry is the runs module's view of live runs
_current: Job | None = None


def current_job() -> Job | None:
    return _current


def get_job(job_id: str) -> Job | None:
    return _jobs.get(job_id)


def latest_job(kinds, started_here: str | None = None) -> Job | None:
    """What a tab shows after a (re)load: the newest job of this process of the kinds the tab starts.
    A start that failed before its first step is shown only to the page that started it (`started_here`)."""
    for job in reversed(list(_jobs.values())):
        if job.kind in kinds and (not job.failed_start or job.id == started_here):
            return job
    return None


def start_job(recipe, runs_dir=None, resume: str | os.PathLike | None = None, run_name: str | None = None,
              owner: str | None = None) -> Job:
    """Start `recipe` in a background thread, or resume the run folder `resume`.

    `owner` identifies the browser that started it: only it may stop the job; others watch read-only.
    """
    global _current
    with _registry_lock:
        if _current is not None and _current.active:
            raise StudioError(
                f"a training job is already running: {_current.describe()}; stop it or wait for it to finish"
            )
        if resume:
            run_dir = Path(resume)
            require_write(run_dir, f"run {run_dir.name!r}")  # nobody resumes (and so takes over) another's run
            if not (run_dir / "recipe.yaml").exists():
                raise StudioError(f"{run_dir.name}: not a run folder (no recipe.yaml)")
            if (run_dir / "events.jsonl").exists():
                before = Job.from_run_dir(run_dir)
                if before.status == DONE:
                    raise StudioError(f"{run_dir.name} already finished ({before.step}/{before.total} steps); "
                                      "nothing to resume, the run is left as it was")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            check_run_name(recipe.name, "recipe name")
            base = check_run_name(run_name) if run_name else f"{default_run_name(recipe)}-{stamp}"
            run_dir = runs_root(runs_dir) / base
            n = 1
            if run_name and (run_dir / "summary.json").exists():
                raise StudioError(f"{run_dir.name}: a finished run already has this name; pick another, or --resume it")
            while run_dir.exists() and not run_name:  # a given name is shared on purpose (multi-GPU ranks)
                n += 1
                run_dir = runs_root(runs_dir) / f"{base}-{n}"
        job = Job.from_run_dir(run_dir) if resume and (run_dir / "events.jsonl").exists() else Job(run_dir)
        if resume:
            from studio.recipes import load_recipe

            recipe = load_recipe(run_dir / "recipe.yaml")
            job.elapsed_before = job.elapsed()
        job.recipe, job.kind, job.owner = recipe, recipe.method, owner
        job.new_folder = not resume and not run_dir.exists()  # only a folder this start made is removed on failure
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            claim(run_dir)  # a shared studio's run is its visitor's (studio.access)
        if not resume and job.writer:
            (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        job.emit("status", status=QUEUED, resume=bool(resume), elapsed_before=job.elapsed_before)
        job.thread = threading.Thread(target=_run, args=(job, bool(resume)), name=f"train-{job.id}", daemon=True)
        _jobs[job.id] = job
        _current = job
        job.thread.start()
        return job


def _slug(text: str, limit: int = 28) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text or "")).strip("-._")
    return text[:limit].strip("-._") or "x"


def default_run_name(recipe) -> str:
    """recipe-model-data: five runs of one recipe on different models or files can be told apart. When the
    data is not the recipe's own (smollm2-quotes on an uploaded capitals.jsonl), the recipe's name, which names
    its own data, gives way to the method: model-data-method (SmolLM2-135M-Instruct-capitals-sft)."""
    from pathlib import PurePath

    from studio.recipes import own_data

    model = PurePath(str(recipe.model.get("model_name_or_path") or "model")).name
    source = str((recipe.dataset or {}).get("source") or "data")
    data = PurePath(source.removeprefix("sample:")).stem  # a file's stem, a sample's or a Hub dataset's name
    if not own_data(recipe.name, source):
        return "-".join([_slug(redact(model)), _slug(redact(data)), _slug(recipe.method, 12)])[:84]
    parts = [_slug(recipe.name, 40)]
    for part in (_slug(redact(model)), _slug(redact(data))):  # a token typed as a model name never names a folder
        if part.lower() not in parts[0].lower():  # tiny-quotes on quotes: no "-quotes" twice
            parts.append(part)
    return "-".join(parts)[:84]


def _fail(job: Job, msg: str, resume: bool) -> None:
    """A failed run says why in its log; a run that failed before its first step leaves no run folder."""
    job.log(f"failed: {msg}")
    failed_start = not resume and job.started_at is None
    job.emit("status", status=FAILED, error=msg)
    if failed_start:
        job.failed_start = True
        if job.writer and job.new_folder:
            import shutil

            job.writer = False  # nothing more is written there
            shutil.rmtree(job.run_dir, ignore_errors=True)


def _run(job: Job, resume: bool) -> None:
    from studio.train import run_method

    try:
        run_method(job, resume=resume)
    except StudioError as e:
        _fail(job, str(e), resume)
    except Exception as e:  # noqa: BLE001 - the process must stay up
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
            msg = ("out of memory: lower per_device_train_batch_size or max_length, "
                   "or turn on gradient_checkpointing or load_in_4bit")
        elif isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = (f"disk full while writing {job.run_dir}: free space (or delete old runs), then resume the run; "
                   "the last complete checkpoint is kept")
        else:
            where = "the server log" if not resume and job.started_at is None else job.run_dir / "error.log"
            msg = f"unexpected error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (traceback in {where})"
        try:
            (job.run_dir / "error.log").write_text(redact(traceback.format_exc()), encoding="utf-8")
        except OSError:
            pass  # a full disk: the message above says so
        log.error("job %s failed\n%s", job.id, redact(traceback.format_exc()))
        _fail(job, redact(msg), resume)


def stop_current(client_id: str | None, kind: str | None = None, what: str = "training") -> Job:
    """Stop the running job on behalf of `client_id` (a browser): only the browser that started it may."""
    job = current_job()
    if job is None or not job.active or (kind is not None and job.kind != kind):
        raise StudioError(f"No {what} job is running.")
    if (job.owner and job.owner != client_id) or not may_write(job.run_dir):
        raise StudioError("This job was started by another visitor: you can watch it, not stop it.")
    job.request_stop()
    return job
