"""What a training path reports back: the TrainerCallback that feeds a job, checkpoint saving, the adapter.

Training paths (`studio/train/*.py`) import from here, never from `studio.jobs`: arrows point one
way, ui/cli → jobs → train → data/models/recipes → runs. Status names and checkpoint reading live in
`studio.runs`. A job hands its path itself (`emit`, `log`,
`stop_event`), and the callback built here turns trainer events into job events.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
from pathlib import Path

from studio.errors import StudioError
from studio.runs import COMPLETE_MARKER, RUNNING, is_complete

GRPO_KEYS = {"reward", "reward_std", "kl", "frac_reward_zero_std", "entropy"}  # TRL's GRPO logs, charted
KILL_HOOK = "STUDIO_TEST_KILL"  # tests only: SIGKILL the process at a named point (see `_kill_at`)


def _kill_at(point: str, step: int | None = None) -> None:
    """Crash tests: STUDIO_TEST_KILL=step:N (after step N), ckpt:N (halfway through saving checkpoint N:
    weights written, optimizer and trainer state not), saved:N (checkpoint N just finished) or adapter
    (halfway through the final adapter save). Unset, this does nothing."""
    if os.environ.get(KILL_HOOK) == (point if step is None else f"{point}:{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _nonfinite(model) -> bool:
    import torch

    return any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)


def _nan_error(step: int, args) -> StudioError:
    good = sorted((int(c.name.split("-")[-1]), c.name) for c in Path(args.output_dir).glob("checkpoint-*")
                  if c.name.split("-")[-1].isdigit() and is_complete(c))
    kept = f"the last good checkpoint, {good[-1][1]}, is kept" if good else "no checkpoint had been saved yet"
    return StudioError(
        f"loss became NaN or infinite at step {step}; training stopped and {kept} "
        f"(learning_rate is {args.learning_rate:g}: lower it, or set max_grad_norm, and start again or resume)"
    )


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
            _kill_at("step", state.global_step)
            if job.stop_event.is_set():
                control.should_training_stop = True
                control.should_save = True  # stop = checkpoint now, resume later
            if control.should_save:
                if _nonfinite(kwargs["model"]):  # never keep NaN weights as the "last good" checkpoint
                    raise _nan_error(state.global_step, args)
                optimizer = kwargs.get("optimizer")
                if os.environ.get(KILL_HOOK) == f"ckpt:{state.global_step}" and optimizer is not None:
                    optimizer.state_dict = lambda: _kill_at("ckpt", state.global_step)  # saved after the weights

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            # the Trainer hides NaN step losses from the logged mean (logging_nan_inf_filter), not from grad_norm
            if any(isinstance(logs.get(k), float) and not math.isfinite(logs[k]) for k in ("loss", "grad_norm")) or (
                    "loss" in logs and _nonfinite(kwargs["model"])):
                control.should_save = False
                raise _nan_error(state.global_step, args)
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = float(logs[key])
            for key, value in logs.items():  # DPO, GRPO and eval extras: rewards/*, logps/*, completions/*, eval_*
                if key not in row and isinstance(value, (int, float)) and (
                        key.startswith(("rewards/", "logps/", "eval_", "completions/")) or key in GRPO_KEYS):
                    row[key] = float(value)
            if len(row) > 2:
                row["memory_mb"] = memory_mb()
                job.emit("metrics", **row)

        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                (ckpt / COMPLETE_MARKER).write_text(str(state.global_step))
                job.emit("checkpoint", step=state.global_step, path=str(ckpt))
                _kill_at("saved", state.global_step)

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


def train_from(trainer, checkpoint: Path | None):
    """`trainer.train()`, resumed from `checkpoint`. A checkpoint already at the planned last step (killed
    during the final save) is loaded, not trained past: the Trainer would run one step more."""
    if checkpoint is not None:
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        if state.max_steps and state.global_step >= state.max_steps:
            trainer._load_from_checkpoint(str(checkpoint))  # the Trainer's own loader (adapter or full weights)
            trainer.state = state
            return TrainOutput(state.global_step, 0.0, {"train_runtime": 0.0})
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def save_adapter(trainer, tokenizer, adapter_dir: Path, adapters: list[str] | None = None) -> None:
    """Write the final adapter atomically: into a temporary folder, renamed once complete, so an
    `adapter/` folder is always a whole one (a kill mid-save leaves only the temporary folder).

    `adapters` picks which of a PeftModel's adapters to write (DPO from an SFT run: not TRL's frozen `ref`)."""
    adapter_dir = Path(adapter_dir)
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if trainer.args.should_save:  # the main process writes; the others only take part in save_model
        shutil.rmtree(tmp, ignore_errors=True)
    if adapters is None:
        trainer.save_model(str(tmp))
    elif trainer.args.should_save:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp), selected_adapters=adapters)
    if not trainer.args.should_save:
        return
    _kill_at("adapter")
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(adapter_dir, ignore_errors=True)  # a resumed run re-saves the same weights
    os.replace(tmp, adapter_dir)
