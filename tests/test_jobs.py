import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tiny_recipe
from studio import jobs
from studio import runs as run_folders
from studio.errors import StudioError


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def _wait(job, timeout=240):
    assert job.wait(timeout), f"job still {job.status}"
    return job


def test_tiny_sft_trains_and_adapter_loads_with_plain_peft(runs, embedded_path):
    job = _wait(jobs.start_job(tiny_recipe(max_steps=40, save_steps=20, eval_steps=20), runs_dir=runs))
    assert job.status == "done", job.error
    s = json.loads((job.run_dir / "summary.json").read_text())
    assert s["steps"] == 40 and s["final_loss"] < s["first_loss"] - 1.0
    assert s["trainable_params"] > 0 and s["total_params"] > s["trainable_params"] and s["tokens_per_s"] > 0
    assert s["final_eval_loss"] is not None and s["adapter_bytes"] > 0
    assert len(s["samples"]) == 2 and all(x["after"] for x in s["samples"])
    # the run folder holds what it says
    assert (job.run_dir / "recipe.yaml").exists() and (job.run_dir / "adapter" / "adapter_config.json").exists()
    events = [json.loads(l) for l in (job.run_dir / "events.jsonl").read_text().splitlines()]
    assert {e["type"] for e in events} >= {"status", "progress", "metrics", "log", "params", "summary", "checkpoint"}
    # after the last step the page says what the job still does (it sat at "step 40/40" saying nothing)
    phases = [e["phase"] for e in events if e["type"] == "phase"]
    assert phases[0] == "saving the adapter" and phases[1].startswith("writing the before/after samples (2 prompts")
    from studio.ui.common import progress_html

    at_work = jobs.Job.from_run_dir(job.run_dir)
    at_work.status, at_work.phase = "running", phases[1]
    assert "writing the before/after samples" in progress_html(at_work.snapshot())
    assert job.snapshot()["phase"] is None  # done: no phase shown
    # the adapter loads with plain PEFT on the base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(embedded_path))
    model = PeftModel.from_pretrained(base, str(job.run_dir / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    # a later process rebuilds the whole history from events.jsonl
    replay = jobs.Job.from_run_dir(job.run_dir)
    assert replay.status == "done" and replay.step == 40 and len(replay.history) == len(job.history)
    assert replay.summary == job.summary


def test_trained_model_follows_the_quote_format(runs):
    job = _wait(jobs.start_job(tiny_recipe(max_steps=200, save_steps=100, eval_steps=100, logging_steps=20), runs_dir=runs))
    samples = job.summary["samples"]
    assert sum("Author:" in s["after"] for s in samples) >= 1
    assert not any("Author:" in s["before"] for s in samples)


def test_stop_is_graceful_and_resume_finishes(runs):
    job = jobs.start_job(tiny_recipe(max_steps=400, save_steps=1000, logging_steps=5), runs_dir=runs)
    deadline = time.time() + 120
    while job.step < 8 and time.time() < deadline:
        time.sleep(0.05)
    job.request_stop()
    _wait(job)
    assert job.status == "cancelled"
    ckpt = run_folders.last_checkpoint(job.run_dir)
    assert ckpt is not None and int(ckpt.name.split("-")[1]) == job.step < 400
    resumed = _wait(jobs.start_job(None, resume=job.run_dir))
    assert resumed.status == "done" and resumed.summary["steps"] == 400


def test_one_job_at_a_time(runs):
    first = jobs.start_job(tiny_recipe(max_steps=400, save_steps=1000), runs_dir=runs)
    try:
        with pytest.raises(StudioError, match=rf"already running: {first.id} \("):
            jobs.start_job(tiny_recipe(), runs_dir=runs)
    finally:
        first.request_stop()
        _wait(first)


def test_validating_recipes_while_a_job_trains_does_not_break_it(runs):
    from studio.recipes import RECIPES_DIR, load_recipe

    job = jobs.start_job(tiny_recipe(max_steps=150, save_steps=1000, eval_steps=1000), runs_dir=runs)
    deadline = time.time() + 60
    while job.step < 3 and time.time() < deadline:
        time.sleep(0.05)
    for _ in range(5):  # what the app does on every page load and "Check parameters"
        load_recipe(RECIPES_DIR / "tiny-quotes.yaml")
        time.sleep(0.05)
    _wait(job)
    assert job.status == "done", job.error


def test_failure_ends_job_with_message_and_process_stays_up(runs):
    job = _wait(jobs.start_job(tiny_recipe(**{"dataset.source": str(runs / "missing.jsonl")}), runs_dir=runs))
    assert job.status == "failed" and "missing.jsonl: no such file" in job.error
    job = _wait(jobs.start_job(tiny_recipe(model_name_or_path="google/gemma-2b"), runs_dir=runs))
    assert job.status == "failed" and "can't be reached" in job.error
    ok = _wait(jobs.start_job(tiny_recipe(max_steps=2), runs_dir=runs))
    assert ok.status == "done"


def test_half_written_checkpoint_is_never_resumed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / run_folders.COMPLETE_MARKER).write_text("4")
    (run / "checkpoints" / "checkpoint-8").mkdir()  # crash mid-save: no marker
    assert run_folders.last_checkpoint(run).name == "checkpoint-4"
    assert not (run / "checkpoints" / "checkpoint-8").exists()


def test_sigkill_mid_training_then_resume_finishes_planned_steps(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "studio", "train", str(ROOT / "recipes" / "tiny-quotes.yaml"), "--runs-dir",
           str(tmp_path), "--set", "max_steps=300", "--set", "save_steps=5", "--set", "eval_steps=1000"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    run_dir = None
    while time.time() < deadline:
        found = list(tmp_path.glob("tiny-quotes-*/checkpoints/checkpoint-*/.complete"))
        if len(found) >= 2:
            run_dir = found[0].parents[2]
            break
        time.sleep(0.1)
    assert run_dir is not None, "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = jobs.Job.from_run_dir(run_dir)
    assert killed_at.status == "interrupted" and killed_at.step < 300
    frozen = killed_at.elapsed()
    time.sleep(0.2)
    assert killed_at.elapsed() == frozen > 0  # an interrupted run's clock stopped with its process
    out = subprocess.run([sys.executable, "-m", "studio", "train", "--resume", str(run_dir)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(run_dir.name)
    assert "resuming from checkpoint-" in out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 300
    replay = jobs.Job.from_run_dir(run_dir)  # a later process sees both processes' time
    assert replay.status == "done" and replay.elapsed_before == pytest.approx(frozen, abs=0.01)
    assert replay.elapsed() > frozen
