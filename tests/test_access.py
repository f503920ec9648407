"""The four findings of the reliability issue: finished runs, run names, impossible settings, server files."""

import os
import subprocess
import sys

import json

import pytest

from conftest import ROOT, tiny_recipe
from studio import access, jobs
from studio.errors import StudioError
from studio.recipes import load_recipe, recipe_from_flat, recipe_to_flat


def run_cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    runs = tmp_path / "runs"
    job = jobs.start_job(tiny_recipe(max_steps=6, save_steps=3, eval_steps=3), runs_dir=runs)
    assert job.wait(120) and job.status == "done", job.error
    adapter = (job.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    ckpts = sorted(p.name for p in (job.run_dir / "checkpoints").iterdir())
    events = (job.run_dir / "events.jsonl").read_text()
    out = run_cli("train", "--resume", str(job.run_dir))
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "already finished (6/6 steps)" in line and "Traceback" not in line
    assert (job.run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert sorted(p.name for p in (job.run_dir / "checkpoints").iterdir()) == ckpts
    assert (job.run_dir / "events.jsonl").read_text() == events
    with pytest.raises(StudioError, match="already finished"):
        jobs.start_job(None, resume=job.run_dir)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", "x..y", ".hidden", "name with space",
                                  "semi;colon", "", "a" * 101])
def test_run_names_stay_in_the_runs_folder(tmp_path, name):
    runs = tmp_path / "runs"
    with pytest.raises(StudioError, match="not allowed"):
        jobs.start_job(tiny_recipe(), runs_dir=runs, run_name=name or " ")
    assert not (tmp_path / "escaped").exists() and not any(tmp_path.glob("*escaped*"))
    assert not runs.exists() or not any(runs.iterdir())


def test_cli_run_name_and_recipe_name_rejected(tmp_path):
    out = run_cli("train", "recipes/tiny-quotes.yaml", "--runs-dir", str(tmp_path / "runs"), "--run-name",
                  "../escaped")
    assert out.returncode == 2 and "run name '../escaped' is not allowed" in out.stderr
    assert not (tmp_path / "escaped").exists() and not (ROOT / "escaped").exists()
    flat = recipe_to_flat(load_recipe(ROOT / "recipes" / "tiny-quotes.yaml"))
    flat["name"] = "../../etc/evil"
    with pytest.raises(StudioError, match="recipe name '../../etc/evil' is not allowed"):
        recipe_from_flat(flat)


@pytest.mark.parametrize("setting,message", [
    ("learning_rate=-1", "'learning_rate' must be > 0, got -1"),
    ("lora_r=0", "'lora_r' must be an integer ≥ 1, got 0"),
    ("lora_dropout=1.5", "'lora_dropout' must be from 0 up to"),
    ("per_device_train_batch_size=0", "'per_device_train_batch_size' must be an integer ≥ 1"),
    ("max_steps=0", "'max_steps' must be -1 (use epochs) or an integer ≥ 1"),
    ("num_train_epochs=0", "'num_train_epochs' must be > 0"),
    ("dataset.max_rows=0", "'dataset.max_rows' must be an integer ≥ 1"),
])
def test_impossible_settings_fail_before_a_run_exists(tmp_path, capsys, setting, message):
    from studio.cli import main

    runs = tmp_path / "runs"
    code = main(["train", str(ROOT / "recipes" / "tiny-quotes.yaml"), "--runs-dir", str(runs), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir())


def test_impossible_setting_through_the_real_cli(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli("train", "recipes/tiny-quotes.yaml", "--runs-dir", str(runs), "--set", "learning_rate=-1")
    assert out.returncode == 2 and out.stderr.strip() == (
        f"error: {ROOT / 'recipes' / 'tiny-quotes.yaml'}: 'learning_rate' must be > 0, got -1".replace(f"{ROOT}/", ""))
    assert not runs.exists()


def test_form_rejects_impossible_settings():
    flat = recipe_to_flat(load_recipe(ROOT / "recipes" / "tiny-quotes.yaml"))
    with pytest.raises(StudioError, match="'learning_rate' must be > 0"):
        recipe_from_flat({**flat, "learning_rate": -1})


@pytest.fixture
def shared(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    (tmp_path / "uploads").mkdir()
    (tmp_path / "runs" / "pairs").mkdir(parents=True)
    return tmp_path


def test_a_jobs_log_and_a_pairs_file_on_a_shared_page_name_no_server_path(shared, monkeypatch):
    from types import SimpleNamespace

    from studio.ui.common import job_log

    adapter = shared / "runs" / "r1" / "adapter"
    job = SimpleNamespace(logs=["loading embedded/tiny-llama", f"finished: 3 steps in 1s; adapter saved in {adapter}"])
    assert job_log(job).endswith("adapter saved in runs/r1/adapter") and str(shared) not in job_log(job)
    from studio.ui.dpo_tab import _label_status

    pairs = shared / "runs" / "pairs" / "mine.jsonl"
    status = {"name": "mine", "pairs": 0, "skipped": 0, "done": True, "total": 6, "file": str(pairs)}
    assert "`runs/pairs/mine.jsonl`" in _label_status(status) and str(shared) not in _label_status(status)
    from studio.ui.evaluate_tab import definitions_markdown

    result = {"name": "r", "definitions": {}, "config": {"suite": "instruction", "max_new_tokens": 8},
              "path": str(shared / "runs" / "evals" / "r.json")}
    assert "Saved to `runs/evals/r.json`" in definitions_markdown(result)
    monkeypatch.delenv("STUDIO_SHARED")  # locally the owner is told the real folder
    assert job_log(job).endswith(f"adapter saved in {adapter}") and str(pairs) in _label_status(status)


def test_shared_mode_reads_only_samples_uploads_pairs_and_hub(shared, write):
    secret = write("secret.jsonl", [{"text": "server secret"}])
    for source in [str(secret), "/etc/passwd", str(ROOT / "assets" / "samples" / "dolly.jsonl"),
                   str(shared / "uploads" / ".." / "secret.jsonl"), str(ROOT)]:
        with pytest.raises(StudioError, match="on a shared studio only bundled samples"):
            access.check_data_source(source)
    upload = shared / "uploads" / "abc" / "mine.jsonl"
    upload.parent.mkdir()
    upload.write_text('{"text": "hi"}\n')
    pairs = shared / "runs" / "pairs" / "p.jsonl"
    pairs.write_text("{}\n")
    for source in ["quotes", "sample:dolly", str(upload), "Abirate/english_quotes"]:
        assert access.check_data_source(source) == source
    # a pairs file by its handle (as the page shows it), never by the server's path to it
    assert access.check_data_source("runs/pairs/p.jsonl") == str(pairs)
    with pytest.raises(StudioError, match="on a shared studio"):
        access.check_data_source(str(pairs))


def test_runs_paths_as_pages_show_them_read_from_the_runs_folder(shared, write):
    """A shared page shows runs/pairs/NAME.jsonl (never the server's folder); that text reads the real file."""
    from studio.data.sources import read_source

    pairs = shared / "runs" / "pairs" / "mine.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert access.shown_path(str(pairs)) == "runs/pairs/mine.jsonl"
    assert access.check_data_source("runs/pairs/mine.jsonl") == str(pairs)
    assert next(iter(read_source("runs/pairs/mine.jsonl").records()))["chosen"] == "a"
    for escape in ["runs/pairs/../../secret.jsonl", "runs/../../etc/passwd"]:
        write("secret.jsonl", [{"text": "server secret"}])
        with pytest.raises(StudioError, match="on a shared studio"):
            access.check_data_source(escape)


def test_shared_mode_models_and_runs(shared):
    assert access.check_model_source("embedded/tiny-llama") == "embedded/tiny-llama"
    assert access.check_model_source("gpt2/x") == "gpt2/x"
    for name in [str(ROOT), "/root/.cache", str(shared)]:
        with pytest.raises(StudioError, match="on a shared studio a model is"):
            access.check_model_source(name)
    (shared / "runs" / "r1").mkdir()
    assert access.resolve_run("r1") == shared / "runs" / "r1"
    for ref in ["../r1", str(shared), "/etc", "r1/../../x"]:
        with pytest.raises(StudioError):
            access.resolve_run(ref)


def test_form_in_shared_mode_refuses_server_paths_and_remote_code(shared):
    flat = recipe_to_flat(load_recipe(ROOT / "recipes" / "tiny-quotes.yaml"))
    with pytest.raises(StudioError, match="only bundled samples"):
        recipe_from_flat({**flat, "dataset.source": "/etc/hostname"})
    with pytest.raises(StudioError, match="a model is a Hub id"):
        recipe_from_flat({**flat, "model_name_or_path": str(ROOT)})


def test_remote_code_only_from_the_owner(monkeypatch):
    flat = recipe_to_flat(load_recipe(ROOT / "recipes" / "tiny-quotes.yaml"))
    monkeypatch.delenv("STUDIO_ALLOW_REMOTE_CODE", raising=False)
    with pytest.raises(StudioError, match="trust_remote_code can only be turned on by whoever started the app"):
        recipe_from_flat({**flat, "trust_remote_code": True})
    assert recipe_from_flat({**flat, "trust_remote_code": False}).train.get("trust_remote_code") is False
    monkeypatch.setenv("STUDIO_ALLOW_REMOTE_CODE", "1")
    assert recipe_from_flat({**flat, "trust_remote_code": True}).train["trust_remote_code"] is True


def test_remote_code_from_the_owners_recipe_file_reaches_the_loader(tmp_path, monkeypatch):
    import studio.train.sft as sft

    import studio.models as models

    seen = {}

    def spy(model_args, trust_remote_code=False):
        seen["trust"] = trust_remote_code
        raise StudioError("stop here")

    monkeypatch.setattr(models, "load_model", spy)
    path = tmp_path / "r.yaml"
    path.write_text((ROOT / "recipes" / "tiny-quotes.yaml").read_text() + "trust_remote_code: true\n")
    with pytest.raises(StudioError, match="stop here"):
        sft.build_sft_trainer(load_recipe(path), tmp_path / "run")
    assert seen["trust"] is True


def test_upload_handle_names_the_visitors_own_copy_in_every_data_field(tmp_path, monkeypatch):
    """`upload: NAME`, as the Data tab shows a visitor's upload, is one handle for every field that reads data
    (issue 34, item 4): on a shared studio it is the visitor's own copy, never another's; locally Gradio's newest."""
    import json

    from studio.access import Visitor, acting_for, check_data_source, claim_upload
    from studio.data import prepare_dataset
    from studio.errors import StudioError

    raw_root, runs = tmp_path / "gradio", tmp_path / "runs"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(raw_root))
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    monkeypatch.setenv("STUDIO_SHARED", "1")

    def raw(name, rows):
        path = raw_root / f"{abs(hash((name, rows))):040x}"[:40] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"prompt": f"{rows} {i}", "chosen": "c", "rejected": "r"}) + "\n"
                                for i in range(12)))
        return path

    a, b = Visitor(frozenset({"session:a"})), Visitor(frozenset({"session:b"}), "bob")
    with acting_for(a):
        mine = claim_upload(str(raw("pairs.jsonl", "A's")))
        assert check_data_source("upload: pairs.jsonl") == mine
        assert all(p.startswith("A's ") for p in prepare_dataset("upload: pairs.jsonl").splits["train"]["prompt"])
    with acting_for(b):  # same name, another visitor: their own file, or nothing
        with pytest.raises(StudioError, match="no upload of yours by that name"):
            check_data_source("upload: pairs.jsonl")
        theirs = claim_upload(str(raw("pairs.jsonl", "B's")))
        assert check_data_source("upload: pairs.jsonl") == theirs != mine
        for bad in ("upload: ../x", "upload: *", "upload: "):
            with pytest.raises(StudioError):
                check_data_source(bad)
    monkeypatch.delenv("STUDIO_SHARED")  # locally: the newest upload of that name Gradio holds
    local = raw("local.jsonl", "owner's")
    assert check_data_source("upload: local.jsonl") == str(local)


def test_a_path_deep_inside_another_visitors_run_is_not_theirs_to_see(tmp_path, monkeypatch):
    """What a page lists (the model-cache panel) is checked at the run a path belongs to: marks are kept for a
    run, not for its adapter folder inside (the fuzzer's state found a llama.cpp entry naming A's run)."""
    from studio.access import Visitor, acting_for, claim, may_see

    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    monkeypatch.setenv("STUDIO_SHARED", "1")
    a, b = Visitor(frozenset({"session:a"})), Visitor(frozenset({"session:b"}))
    (runs / "a-run" / "adapter").mkdir(parents=True)
    (runs / "owners-run" / "adapter").mkdir(parents=True)
    with acting_for(a):
        claim(runs / "a-run")
        assert may_see(runs / "a-run" / "adapter")
    with acting_for(b):
        assert not may_see(runs / "a-run" / "adapter") and not may_see(runs / "a-run")
        assert may_see(runs / "owners-run" / "adapter")  # the owner's unmarked runs are open to read
        assert may_see(tmp_path / "elsewhere.gguf")
