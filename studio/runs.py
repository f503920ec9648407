"""Runs: a run folder (runs/<run>/) and what is read from it, below everything that reads runs.

A run folder holds recipe.yaml, events.jsonl (every status, progress, metrics and log event, in order),
summary.json, checkpoints/ and adapter/. `Run.from_run_dir` rebuilds a run's whole state from its
events; `list_runs` lists them. The live training job (`studio.jobs.Job`) is a `Run` that also writes
events as it trains; readers of runs (chat, evaluation, export, the tabs) import this module, never jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from studio.access import may_read, runs_root
from studio.errors import StudioError

QUEUED, RUNNING, STOPPING, DONE, FAILED, CANCELLED = "queued", "running", "stopping", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING, STOPPING)
COMPLETE_MARKER = ".complete"  # written into a checkpoint once the trainer has fully saved it
LIVE: dict[str, "Run"] = {}  # the runs this process is training now (filled by studio.jobs), shown as they are


class Run:
    """A run's state as read from its events.jsonl (read-only; `studio.jobs.Job` adds the live side)."""

    def __init__(self, run_dir: Path, recipe=None, kind: str = "sft"):
        self.run_dir = Path(run_dir)
        self.id = self.run_dir.name
        self.recipe = recipe
        self.kind = kind
        self.status = QUEUED
        self.step = 0
        self.total = 0
        self.epoch = 0.0
        self.tokens = 0
        self.started_at: float | None = None  # start of this process's part of the run
        self.start_step = 0  # the step this process started at (a resumed run skips the rest)
        self.start_tokens = 0
        self.elapsed_before = 0.0  # seconds spent by earlier processes, for resumed runs
        self.finished_at: float | None = None
        self.last_event_at: float | None = None
        # the first step of this process's part ends here: the steps after it give the rate (the first one also
        # carries the warm-up: the first forward and backward, allocations, a compile)
        self.first_step: int | None = None
        self.first_step_at: float | None = None
        self.history: list[dict] = []
        self.logs: list[str] = []
        self.error: str | None = None
        self.summary: dict | None = None
        self.params: dict | None = None
        self.phase: str | None = None  # what a running job does between steps (saving, writing samples)
        self.completions: dict | None = None  # GRPO: the latest sampled completions with their rewards
        self._events_path = self.run_dir / "events.jsonl"

    def _apply(self, e: dict) -> None:
        kind = e["type"]
        self.last_event_at = e["t"]
        if kind == "status":
            self.status, self.phase = e["status"], None
            if "elapsed_before" in e:  # a resumed run: time spent by earlier processes
                self.elapsed_before = e["elapsed_before"]
            if e["status"] == RUNNING:
                self.started_at, self.finished_at = e["t"], None
                self.start_step = e.get("step", self.step)
                self.start_tokens = self.tokens
                self.first_step = self.first_step_at = None
                # resumed from a checkpoint: the steps logged after it are trained again
                self.history = [row for row in self.history if row.get("step", 0) <= self.start_step]
            if e["status"] in (DONE, FAILED, CANCELLED):
                self.finished_at = e["t"]
            if e.get("error"):
                self.error = e["error"]
        elif kind == "progress":
            self.step, self.total = e["step"], e.get("total", self.total)
            self.epoch, self.tokens = e.get("epoch", self.epoch), e.get("tokens", self.tokens)
            if self.first_step is None and self.started_at is not None and self.step > self.start_step:
                self.first_step, self.first_step_at = self.step, e["t"]
        elif kind == "metrics":
            self.history.append({k: v for k, v in e.items() if k not in ("t", "type")})
        elif kind == "log":
            self.logs.append(e["line"])
        elif kind == "phase":
            self.phase = e.get("phase")
        elif kind == "params":
            self.params = e["params"]
        elif kind == "summary":
            self.summary = e["summary"]
        elif kind == "completions":
            self.completions = {"step": e.get("step"), "rows": e.get("rows") or []}

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike) -> "Run":
        """Rebuild a job's whole state from its events.jsonl (read-only view)."""
        job = cls(Path(run_dir))
        path = job._events_path
        if not path.exists():
            raise StudioError(f"{Path(run_dir).name}: not a run folder (no events.jsonl)")
        for line in path.read_text("utf-8").splitlines():
            try:
                job._apply(json.loads(line))
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a crash
        if job.status in ACTIVE:  # the process that ran it is gone: it stopped at its last event
            job.status = "interrupted"
            job.finished_at = job.last_event_at
        return job

    # ---- derived progress ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def elapsed(self) -> float:
        if self.started_at is None:
            return self.elapsed_before
        end = self.finished_at or time.time()
        return self.elapsed_before + max(0.0, end - self.started_at)

    def steps_per_second(self, now: float) -> float:
        """Training speed for the ETA: the steps after the first over the time since it ended (the first step
        carries the warm-up, 4x the real per-step time on SmolLM2 here: issue 34's first ETA read 1,378 s for a
        363 s job); with only the first step done, every step over the whole time so far."""
        if self.first_step is not None and self.step > self.first_step and now > self.first_step_at:
            return (self.step - self.first_step) / (now - self.first_step_at)
        run_time = now - self.started_at if self.started_at is not None else 0.0
        steps_done = max(0, self.step - self.start_step)
        return steps_done / run_time if run_time > 0 and steps_done else 0.0

    def snapshot(self) -> dict:
        """Progress in plain numbers, for the CLI bar and the UI."""
        now = self.finished_at or time.time()
        run_time = now - self.started_at if self.started_at is not None else 0.0
        rate = self.steps_per_second(now)
        eta = (self.total - self.step) / rate if rate and self.active else None
        tokens_per_s = (self.tokens - self.start_tokens) / run_time if run_time > 0 else 0.0
        last = {}
        for row in self.history:
            last.update({k: v for k, v in row.items() if v is not None})
        return {
            "id": self.id, "status": self.status, "step": self.step, "total": self.total,
            "epoch": round(self.epoch or 0.0, 3), "elapsed": round(self.elapsed(), 1),
            "eta": None if eta is None else round(eta, 1), "steps_per_s": round(rate, 3),
            "tokens_per_s": round(tokens_per_s, 1), "loss": last.get("loss"), "eval_loss": last.get("eval_loss"),
            "error": self.error, "phase": self.phase if self.active else None,
        }

    def describe(self) -> str:
        s = self.snapshot()
        pct = f", {100 * s['step'] / s['total']:.0f}%" if s["total"] else ""
        return f"{self.id} ({shown_status(s['status'])}, step {s['step']}/{s['total'] or '?'}{pct})"

    @property
    def has_adapter(self) -> bool:
        return (self.run_dir / "adapter" / "adapter_config.json").exists()


def is_complete(ckpt: Path) -> bool:
    """Marked by `on_save`, or (killed between the Trainer's save and `on_save`) holding a readable
    trainer_state.json, the file the Trainer writes last, for the checkpoint's own step."""
    if (ckpt / COMPLETE_MARKER).exists():
        return True
    try:
        return json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == int(ckpt.name.split("-")[-1])
    except (OSError, ValueError, KeyError):
        return False


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint the trainer finished writing; half-written ones are removed."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = []
    for ckpt in folder.glob("checkpoint-*"):
        try:
            step = int(ckpt.name.split("-")[-1])
        except ValueError:
            continue
        if is_complete(ckpt):
            found.append((step, ckpt))
        else:
            shutil.rmtree(ckpt, ignore_errors=True)  # a crash mid-save: never resume from it
    return max(found)[1] if found else None


def resumable(job: Run) -> bool:
    """Stopped, interrupted or failed, with a finished checkpoint to go on from."""
    return job.status in (CANCELLED, FAILED, "interrupted") and any(
        is_complete(c) for c in (job.run_dir / "checkpoints").glob("checkpoint-*"))


def shown_status(status: str) -> str:
    """A status as pages say it: a cancelled run "stopped" (the log's word; Resume goes on from there)."""
    return "stopped" if status == CANCELLED else str(status)


def run_label(run: Run) -> str:
    """A run as pickers show it: its name (recipe-model-data-time) and its status."""
    return f"{run.id} · {shown_status(run.status)}"


def list_runs(runs_dir=None) -> list[Run]:
    """Past and present runs, newest first (live jobs of this process as they are)."""
    root = runs_root(runs_dir)
    runs = []
    if root.is_dir():
        for d in root.iterdir():
            if (d / "events.jsonl").exists() and may_read(d):  # on a shared studio: the visitor's and the owner's
                live = LIVE.get(d.name)
                runs.append(live if live is not None and live.run_dir.resolve() == d.resolve() else Run.from_run_dir(d))
    return sorted(runs, key=lambda j: j.started_at or 0, reverse=True)


def adapter_runs(runs_dir=None) -> list[str]:
    """The names of runs with a saved adapter (to evaluate, export or chat with), newest first."""
    return [run.id for run in list_runs(runs_dir) if run.has_adapter]
