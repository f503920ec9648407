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
import uuid
from pathlib import Path

from studio.access import (acting_for, check_run_name, claim, current_visitor, may_watch, may_write,  # noqa: F401
                           require_write, runs_root, shared_mode)  # runs_root is re-exported
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
        self.deadline: float | None = None  # a shared app's wall-clock cap (job_time_limit)
        self.time_limit: float | None = None
        self.memory: int | None = None  # its memory estimate, while it holds the slot

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


def latest_job(kinds, started_here: str | None = None, visible=None, owner: str | None = None) -> Job | None:
    """What a tab shows after a (re)load: the newest job of this process of the kinds the tab starts that
    `visible(job)` allows (the page's visitor may watch it). A start that failed before its first step is shown
    only to the page that started it (`started_here`) or its browser (`owner`, the browser's id: a page whose
    own record of the start was overwritten by a poll that crossed it still learns why its start failed)."""
    for job in reversed(list(_jobs.values())):
        if job.kind in kinds and (not job.failed_start or job.id == started_here
                                  or (owner is not None and job.owner == owner)) and (
                visible is None or visible(job)):
            return job
    return None


def start_job(recipe, runs_dir=None, resume: str | os.PathLike | None = None, run_name: str | None = None,
              owner: str | None = None, wait: bool = False) -> "Job | Ticket":
    """Start `recipe` in a background thread, or resume the run folder `resume`.

    `owner` identifies the browser that started it: on a shared app only it may stop or watch the job.
    The slot is one: while it is busy, `wait=True` (a shared app's page) puts the job in the waiting list and
    returns its `Ticket` (one waiting job per owner); otherwise the start is refused. A job that can't fit
    in memory is refused before it waits or starts (studio.memory).
    """
    est = check_memory(recipe) if recipe is not None else None  # before the lock: reading a config takes a while
    with _registry_lock:
        if _busy() or (_waiting and wait):  # a fresh start never jumps the line
            if not wait:
                if shared_mode():
                    raise StudioError("the training slot is busy with another job; wait for it to finish")
                raise StudioError(
                    f"a training job is already running: {_current.describe()}; stop it or wait for it to finish"
                )
            return _join_queue(recipe, runs_dir, resume, run_name, owner)
        return _start_now(recipe, runs_dir, resume, run_name, owner, est)


def _busy() -> bool:
    return _current is not None and _current.active


def _start_now(recipe, runs_dir, resume, run_name, owner, est=None) -> Job:
    global _current
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
        est = check_memory(recipe)
        job.elapsed_before = job.elapsed()
    job.recipe, job.kind, job.owner = recipe, recipe.method, owner
    job.memory = est.total if est is not None else None
    job.new_folder = not resume and not run_dir.exists()  # only a folder this start made is removed on failure
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        claim(run_dir)  # a shared studio's run is its visitor's (studio.access)
    if not resume and job.writer:
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    job.emit("status", status=QUEUED, resume=bool(resume), elapsed_before=job.elapsed_before)
    limit = job_time_limit()
    if limit:
        job.deadline, job.time_limit = time.time() + limit, limit
        job.log(f"time limit: this shared studio stops a job after {limit / 60:g} min "
                "(STUDIO_MAX_JOB_MINUTES); it is checkpointed then, and can be resumed")
    job.thread = threading.Thread(target=_run, args=(job, bool(resume)), name=f"train-{job.id}", daemon=True)
    _jobs[job.id] = job
    _current = job
    job.thread.start()
    if limit:
        _watch_deadline(job)
    return job


# ---- memory: a job that can't fit is refused before it starts (studio.memory) -------------------------
def check_memory(recipe):
    """Refuse (StudioError) a recipe whose memory estimate is over what this machine has free; else its
    estimate (studio.memory.MemoryEstimate). A job holding the slot gives its share back when it ends, so a job
    that waits is measured against what is free plus what the running one holds. A model whose config can't
    be read is let through (None): the job itself says why it fails."""
    if os.environ.get("STUDIO_MEMORY_CHECK", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    from studio.memory import available_memory, check_fits, estimate_for_recipe, recipe_settings

    try:
        est = estimate_for_recipe(recipe)
    except StudioError:
        return None
    except Exception:  # noqa: BLE001 - an architecture the estimate can't read: the job itself will tell
        log.debug("memory estimate failed", exc_info=True)
        return None
    free, what = available_memory()
    running = _current if _busy() else None
    if running is not None and running.memory:
        free += running.memory
    check_fits(est, recipe_settings(recipe), (free, what))
    return est


# ---- the wall-clock cap (shared apps) ---------------------------------------------------------------
DEFAULT_MAX_JOB_MINUTES = 30


def job_time_limit() -> float | None:
    """Seconds a visitor's job may train on a shared app (STUDIO_MAX_JOB_MINUTES, default 30; 0: no limit).
    The app's owner is exempt: jobs from the command line, a local app, and a demo's signed-in owners."""
    visitor = current_visitor()
    if visitor is None or visitor.is_app_owner:
        return None
    return shared_time_limit()


def shared_time_limit() -> float | None:
    """The time limit of a visitor's job on a shared app, in seconds; None locally or when set to 0."""
    if not shared_mode():
        return None
    raw = os.environ.get("STUDIO_MAX_JOB_MINUTES", "").strip()
    try:
        minutes = float(raw) if raw else DEFAULT_MAX_JOB_MINUTES
    except ValueError:
        minutes = DEFAULT_MAX_JOB_MINUTES
    return minutes * 60 if minutes > 0 else None


def _watch_deadline(job: Job) -> None:
    def expire():
        if job.active and not job.stop_event.is_set():
            job.log(f"time limit reached ({job.time_limit / 60:g} min on this shared studio): "
                    "stopping after the current step; the checkpoint is kept and the run can be resumed")
            job.request_stop()

    timer = threading.Timer(max(0.0, job.deadline - time.time()), expire)
    timer.daemon = True
    timer.name = f"deadline-{job.id}"
    timer.start()


# ---- the waiting list ----------------------------------------------------------------------------------
class Ticket:
    """A job waiting for the slot: it starts by itself when the slot frees, whoever is watching."""

    def __init__(self, recipe, runs_dir, resume, run_name, owner, visitor, kind):
        self.id = uuid.uuid4().hex
        self.recipe, self.runs_dir, self.resume, self.run_name = recipe, runs_dir, resume, run_name
        self.owner, self.visitor, self.kind = owner, visitor, kind
        self.joined = time.time()
        self.job: Job | None = None  # once started
        self.error: str | None = None  # a start that failed when its turn came
        self.left = False

    @property
    def waiting(self) -> bool:
        return self.job is None and self.error is None and not self.left


_waiting: list[Ticket] = []
_tickets: dict[str, Ticket] = {}


def _owner_key(owner) -> str | None:
    if owner:
        return f"client:{owner}"
    visitor = current_visitor()
    return visitor.home if visitor is not None else None


def _join_queue(recipe, runs_dir, resume, run_name, owner) -> Ticket:
    key = _owner_key(owner)
    mine = next((t for t in _waiting if _owner_key_of(t) == key), None) if key else None
    if mine is not None:
        raise StudioError(f"you already have a job waiting (position {_waiting.index(mine) + 1}); leave the queue "
                          "first to wait with another")
    visitor = current_visitor()
    payer = visitor.payer if visitor is not None else "owner"
    theirs = next((t for t in _waiting if getattr(t, "payer", None) == payer), None) if payer != "owner" else None
    if theirs is not None:  # one place per payer: sessions and browser ids are free, so they buy no second one
        raise StudioError(
            "a job is already waiting for anonymous visitors (they share one place in line): try again when it has "
            "started, or sign in (or ask the app's owner for an account) to wait on your own"
            if payer == "anonymous" else
            f"a job of yours is already waiting (position {_waiting.index(theirs) + 1}, from another page or "
            "session); leave the queue there first")
    limit = queue_limit()
    if len(_waiting) >= limit and payer != "owner":  # the app's owner always gets in line (at its end)
        raise StudioError(f"the waiting list is full ({limit} jobs); try again later")
    if resume:
        require_write(Path(resume), f"run {Path(resume).name!r}")
    kind = recipe.method if recipe is not None else _resume_kind(resume)
    ticket = Ticket(recipe, runs_dir, resume, run_name, owner, visitor, kind)
    ticket.key, ticket.payer = key, payer
    _waiting.append(ticket)
    _tickets[ticket.id] = ticket
    log.info("a %s job joined the waiting list (position %d)", kind, len(_waiting))
    return ticket


def _owner_key_of(ticket: Ticket) -> str | None:
    return getattr(ticket, "key", None)


def _resume_kind(resume) -> str:
    try:
        from studio.recipes import load_recipe

        return load_recipe(Path(resume) / "recipe.yaml").method
    except Exception:  # noqa: BLE001 - the start will say what is wrong
        return "sft"


def queue_limit() -> int:
    """STUDIO_MAX_WAITING: how many jobs may wait for the slot at once (one per payer: an account, a trusted
    address, or all anonymous visitors together; the app's owner always gets in line)."""
    try:
        return max(1, int(os.environ.get("STUDIO_MAX_WAITING", "20")))
    except ValueError:
        return 20


def get_ticket(ticket_id: str | None) -> Ticket | None:
    return _tickets.get(ticket_id) if ticket_id else None


def waiting_ticket(owner, kinds=None) -> Ticket | None:
    """This owner's job in the waiting list (of `kinds`), if any."""
    key = _owner_key(owner)
    with _registry_lock:
        return next((t for t in _waiting if key and _owner_key_of(t) == key
                     and (kinds is None or t.kind in kinds)), None)


def queue_position(ticket: Ticket) -> int | None:
    with _registry_lock:
        return _waiting.index(ticket) + 1 if ticket in _waiting else None


def wait_estimate(ticket: Ticket) -> float | None:
    """Seconds until `ticket` should start, roughly: what the running job has left (its ETA, at most what its
    time limit leaves), plus, for each job ahead in line, its time limit. None: no way to tell."""
    with _registry_lock:
        ahead = _waiting.index(ticket) if ticket in _waiting else 0
        job = _current if _busy() else None
    left = slot_time_left(job) if job is not None else 0.0
    limit = shared_time_limit()
    if left is None:
        return None
    if ahead and not limit:
        return None
    return left + ahead * (limit or 0)


def slot_time_left(job: Job | None = None) -> float | None:
    """Roughly how long the slot stays busy with `job` (the current one): its ETA, capped by its time limit."""
    job = job or (_current if _busy() else None)
    if job is None:
        return 0.0
    eta = job.snapshot().get("eta")
    cap = job.deadline - time.time() if job.deadline else None
    if eta is None:
        return None if cap is None else max(0.0, cap)
    return max(0.0, min(eta, cap) if cap is not None else eta)


def slot_busy() -> bool:
    return _busy()


def leave_queue(owner, ticket_id: str | None = None) -> Ticket:
    """Take this owner's waiting job out of the line (only its owner may)."""
    key = _owner_key(owner)
    with _registry_lock:
        ticket = next((t for t in _waiting if key and _owner_key_of(t) == key
                       and (ticket_id is None or t.id == ticket_id)), None)
        if ticket is None:
            raise StudioError("You have no job waiting in line.")
        _waiting.remove(ticket)
        ticket.left = True
        return ticket


def _start_next() -> None:
    """The slot is free: start the first waiting job, as its visitor (their run, their time limit). A job
    that can't start now (its memory no longer fits, its run was removed) says why on its ticket."""
    while True:
        with _registry_lock:
            if _busy() or not _waiting:
                return
            ticket = _waiting.pop(0)
        try:
            with acting_for(ticket.visitor):
                est = check_memory(ticket.recipe) if ticket.recipe is not None else None
                with _registry_lock:
                    if _busy():  # someone else got there first (a local start): back to the front
                        _waiting.insert(0, ticket)
                        return
                    ticket.job = _start_now(ticket.recipe, ticket.runs_dir, ticket.resume, ticket.run_name,
                                            ticket.owner, est)
            return
        except StudioError as e:
            ticket.error = str(e)
        except Exception as e:  # noqa: BLE001 - one bad ticket must not stop the line
            log.exception("could not start a waiting job")
            ticket.error = f"unexpected error ({type(e).__name__}) when its turn came; details are in the server log"


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
    import torch

    from studio.llama_backend import BUSY

    held = BUSY.hold(torch.get_num_threads())  # chat beside it decodes on the cores training leaves (issue 34)
    try:
        _train(job, resume)
    finally:
        held.release()
        _start_next()  # the slot is free: the first job in line starts, whether or not its page is open


def _train(job: Job, resume: bool) -> None:
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
    if not may_watch(job.run_dir) or (shared_mode() and job.owner and job.owner != client_id):
        # locally every browser is the one person at the keyboard; on a shared app only the job's own visitor
        raise StudioError("The running job was started by another visitor: only they can stop it.")
    job.request_stop()
    return job
