"""Promise 3: training failures are contained. Each fault is injected into a real job; the job ends failed
with one plain line and a suggestion, the last good checkpoint survives, and the next job runs."""

import errno
import sys

import pytest

from conftest import tiny_recipe
from studio import jobs
from studio import runs as run_folders


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def _run(recipe, runs, **kw):
    job = jobs.start_job(recipe, runs_dir=runs, **kw)
    assert job.wait(240), f"job still {job.status}"
    return job


def _failed(job, *words):
    assert job.status == "failed", job.status
    assert "\n" not in job.error and "Traceback" not in job.error
    for word in words:
        assert word in job.error, job.error
    if job.failed_start:  # failed before its first step: the page that started it has the line, no folder is left
        assert not job.run_dir.exists()
    else:  # the page and a reload read the same line
        assert jobs.Job.from_run_dir(job.run_dir).error == job.error
    return job


def _next_job_runs(runs):
    job = _run(tiny_recipe(max_steps=2, save_steps=2), runs)
    assert job.status == "done", job.error


def test_out_of_memory(runs, monkeypatch):
    import torch
    import trl

    real = trl.SFTTrainer.training_step

    def step(self, *args, **kwargs):
        if self.state.global_step >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", step)
    _failed(_run(tiny_recipe(), runs), "out of memory", "per_device_train_batch_size")
    monkeypatch.undo()
    _next_job_runs(runs)


@pytest.mark.parametrize("logging_steps,save_steps,nan_from,kept", [
    (2, 4, 5, "checkpoint-4"),  # seen in the logged grad norm before checkpoint-8 is due
    (100, 3, 4, "checkpoint-3"),  # nothing logged yet: the save of NaN weights at step 6 is refused
])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(runs, monkeypatch, logging_steps, save_steps, nan_from,
                                                           kept):
    import torch
    import trl

    real = trl.SFTTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.state.global_step < nan_from:
            return out
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", poisoned)
    job = _failed(_run(tiny_recipe(logging_steps=logging_steps, save_steps=save_steps), runs), "NaN",
                  "learning_rate", f"the last good checkpoint, {kept}, is kept")
    last = run_folders.last_checkpoint(job.run_dir)
    assert last.name == kept and [c.name for c in (job.run_dir / "checkpoints").glob("checkpoint-*")] == [kept]
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(last / "adapter_model.safetensors")).values())
    assert not (job.run_dir / "adapter").exists() and run_folders.resumable(jobs.Job.from_run_dir(job.run_dir))
    monkeypatch.undo()
    _next_job_runs(runs)


def test_4bit_without_bitsandbytes(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` fails as if not installed
    _failed(_run(tiny_recipe(load_in_4bit=True), runs), "bitsandbytes", "load_in_4bit: false")
    monkeypatch.undo()
    _next_job_runs(runs)


def test_4bit_with_no_usable_bitsandbytes_backend(runs, monkeypatch):
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def load(*args, **kwargs):
        if kwargs.get("quantization_config") is not None:
            raise RuntimeError("bitsandbytes: no usable backend found for 4-bit (CUDA Setup failed)\nmore detail")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
    _failed(_run(tiny_recipe(load_in_4bit=True), runs), "bitsandbytes", "turn off load_in_4bit")
    monkeypatch.undo()
    _next_job_runs(runs)


def test_gated_model_without_token(runs, monkeypatch):
    import httpx
    import transformers
    from huggingface_hub.errors import GatedRepoError

    def gated(name, *args, **kwargs):
        assert kwargs.get("token") is None
        response = httpx.Response(401, request=httpx.Request("HEAD", f"https://huggingface.co/{name}"))
        raise GatedRepoError(f"Cannot access gated repo for url https://huggingface.co/{name}", response=response)

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", gated)
    job = _failed(_run(tiny_recipe(model_name_or_path="google/gemma-2b"), runs), "gated",
                  "https://huggingface.co/google/gemma-2b", "HF_TOKEN")
    assert not (job.run_dir / "checkpoints").exists()
    monkeypatch.undo()
    _next_job_runs(runs)


def test_disk_full_while_checkpointing_then_resume(runs, monkeypatch):
    import transformers

    real = transformers.Trainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == 8:  # checkpoint-8's weights are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", save)
    job = _failed(_run(tiny_recipe(), runs), "disk full", "free space", "resume")
    assert run_folders.resumable(job) and run_folders.last_checkpoint(job.run_dir).name == "checkpoint-4"
    monkeypatch.undo()  # space freed: the run resumes and finishes its plan
    resumed = _run(None, runs, resume=job.run_dir)
    assert resumed.status == "done" and resumed.summary["steps"] == 12


def test_a_real_divergence_is_caught_before_any_nan_checkpoint(runs):
    """No injection: plain SGD at an absurd learning rate without clipping blows the weights up."""
    recipe = tiny_recipe(optim="sgd", max_grad_norm=0, save_steps=2)
    recipe.train["learning_rate"] = 1e30  # past the recipe check (≤ 1): the guard must still catch what it does
    job = _failed(_run(recipe, runs), "NaN", "learning_rate is 1e+30")
    assert run_folders.last_checkpoint(job.run_dir) is None or run_folders.last_checkpoint(job.run_dir).name == "checkpoint-2"
    assert ("no checkpoint had been saved yet" in job.error) == (run_folders.last_checkpoint(job.run_dir) is None)
