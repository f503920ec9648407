"""Promise 1: a training process SIGKILLed at any moment leaves a run that resumes to its plan.

One run is killed at each point in turn (STUDIO_TEST_KILL makes the kill land exactly there, no timers):
before the first checkpoint, halfway through a checkpoint save, right after one, halfway through the final
adapter save; after each kill the run folder is checked, then resumed. test_jobs.py kills one run mid-training.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from studio import jobs
from studio import runs as run_folders

STEPS, SAVE, LOG = 16, 4, 2


def _train(args, kill=None, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STUDIO_TEST_KILL", None)
    if kill:
        env["STUDIO_TEST_KILL"] = kill
    return subprocess.run([sys.executable, "-m", "studio", "train", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _events(run_dir):
    lines = (run_dir / "events.jsonl").read_text("utf-8").splitlines()
    parsed, torn = [], 0
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return parsed, torn


def _complete(run_dir):
    return sorted(int(c.name.split("-")[1]) for c in (run_dir / "checkpoints").glob("checkpoint-*")
                  if run_folders.is_complete(c))


def _killed(out, run_dir, step):
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    job = jobs.Job.from_run_dir(run_dir)
    assert job.status == "interrupted" and job.step == step
    assert run_folders.resumable(job) == bool(_complete(run_dir))
    assert not (run_dir / "adapter").exists() and not (run_dir / "summary.json").exists()
    return job


def _adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_sigkill_at_every_kill_point_then_resume_to_the_plan(tmp_path):
    run_dir = tmp_path / "crash"
    first = [str(ROOT / "recipes" / "tiny-quotes.yaml"),
             "--runs-dir", str(tmp_path), "--run-name", "crash", "--set", f"max_steps={STEPS}",
             "--set", f"save_steps={SAVE}", "--set", f"logging_steps={LOG}", "--set", "eval_steps=1000"]
    resume = ["--resume", str(run_dir)]

    # 1. before the first checkpoint: nothing to resume from yet, the events are readable
    _killed(_train(first, kill="step:3"), run_dir, 3)
    assert _complete(run_dir) == []
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"t": 1, "type": "metr')  # the torn line a kill mid-write would leave

    # 2. halfway through saving checkpoint-8: weights on disk, optimizer and trainer state not
    out = _train(resume, kill="ckpt:8")
    assert "no complete checkpoint: starting over" in out.stderr
    _killed(out, run_dir, 8)
    half = run_dir / "checkpoints" / "checkpoint-8"
    assert (half / "adapter_model.safetensors").exists() and not (half / "trainer_state.json").exists()
    assert _complete(run_dir) == [4] and run_folders.last_checkpoint(run_dir).name == "checkpoint-4"
    assert not half.exists()  # a half checkpoint is removed, never resumed

    # 3. right after checkpoint-12 is complete
    out = _train(resume, kill="saved:12")
    assert "resuming from checkpoint-4" in out.stderr
    _killed(out, run_dir, 12)
    assert _complete(run_dir)[-1] == 12

    # 4. halfway through the final adapter save: the last checkpoint holds step 16, no adapter/ folder exists
    out = _train(resume, kill="adapter")
    assert "resuming from checkpoint-12" in out.stderr
    _killed(out, run_dir, STEPS)
    assert _complete(run_dir)[-1] == STEPS

    # 5. the last resume finishes without training past the plan
    out = _train(resume)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming from checkpoint-{STEPS}" in out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == summary["planned_steps"] == STEPS
    assert not (run_dir / "checkpoints" / f"checkpoint-{STEPS + 1}").exists()
    final, ckpt = _adapter_weights(run_dir / "adapter"), _adapter_weights(run_dir / "checkpoints" / f"checkpoint-{STEPS}")
    assert final.keys() == ckpt.keys() and all((final[k] == ckpt[k]).all() for k in final)
    assert not list(run_dir.glob(".adapter*"))

    # events: only the planted torn line fails to parse; the loss history continues, one row per logged step
    events, torn = _events(run_dir)
    assert torn == 1
    replay = jobs.Job.from_run_dir(run_dir)
    assert replay.status == "done" and replay.step == STEPS
    losses = [(row["step"], row["loss"]) for row in replay.history if "loss" in row]
    assert [step for step, _ in losses] == list(range(LOG, STEPS + 1, LOG))
    assert summary["final_loss"] == pytest.approx(losses[-1][1])
    assert max(e["step"] for e in events if e["type"] == "progress") == STEPS


def test_torn_last_line_is_tolerated_and_the_next_event_starts_a_new_line(tmp_path):
    job = jobs.Job(tmp_path / "run")
    job.emit("status", status="queued")
    with open(job._events_path, "a", encoding="utf-8") as f:
        f.write('{"t": 2, "type": "progre')
    job._events_file.close()
    job._events_file = None  # as a new process would open it
    job.emit("progress", step=5, total=10)
    replay = jobs.Job.from_run_dir(job.run_dir)
    assert replay.step == 5 and replay.total == 10 and replay.status == "interrupted"


def test_checkpoint_saved_but_not_yet_marked_still_counts(tmp_path):
    """A kill between the Trainer's save (and its rotation of old checkpoints) and our marker."""
    ckpt = tmp_path / "checkpoints" / "checkpoint-6"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    torn = tmp_path / "checkpoints" / "checkpoint-9"
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"global_st')
    assert run_folders.last_checkpoint(tmp_path).name == "checkpoint-6" and not torn.exists()
