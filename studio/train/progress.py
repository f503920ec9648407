"""What a training path reports back: status names, the TrainerCallback that feeds a job, checkpoints.

Training paths (`studio/train/*.py`) import from here, never from `studio.jobs`: arrows point one
way, ui/cli → jobs → train → data/models/recipes. A job hands its path itself (`emit`, `log`,
`stop_event`), and the callback built here turns trainer events into job events.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

QUEUED, RUNNING, STOPPING, DONE, FAILED, CANCELLED = "queued", "running", "stopping", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING, STOPPING)
COMPLETE_MARKER = ".complete"  # written into a checkpoint once the trainer has fully saved it


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (they set RANK); 0 when alone."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only the main process writes a run's files (events, markers, summary, adapter, samples); the others train."""
    return process_rank() == 0


def make_callback(job):
    """A TrainerCallback that feeds `job` (built lazily: transformers is imported on first use)."""
    from transformers import TrainerCallback

    class JobCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            job.emit("progress", step=state.global_step, total=state.max_steps, epoch=state.epoch or 0.0,
                     tokens=state.num_input_tokens_seen or 0)
            job.emit("status", status=RUNNING, step=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            job.emit("progress", step=state.global_step, total=state.max_steps, epoch=round(state.epoch or 0, 4),
                     tokens=state.num_input_tokens_seen or 0)
            if job.stop_event.is_set():
                control.should_training_stop = True
                control.should_save = True  # stop = checkpoint now, resume later

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = float(logs[key])
            for key, value in logs.items():  # DPO and eval extras: rewards/*, logps/*, eval_*
                if key not in row and isinstance(value, (int, float)) and key.startswith(("rewards/", "logps/", "eval_")):
                    row[key] = float(value)
            if len(row) > 2:
                row["memory_mb"] = memory_mb()
                job.emit("metrics", **row)

        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                (ckpt / COMPLETE_MARKER).write_text(str(state.global_step))
                job.emit("checkpoint", step=state.global_step, path=str(ckpt))

    return JobCallback()


@functools.cache
def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()  # ~4 ms a call on a CPU build: ask once, not every log


def memory_mb() -> float:
    if _has_cuda():
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except Exception:  # noqa: BLE001
        return 0.0


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
        if (ckpt / COMPLETE_MARKER).exists():
            found.append((step, ckpt))
        else:
            shutil.rmtree(ckpt, ignore_errors=True)  # a crash mid-save: never resume from it
    return max(found)[1] if found else None


