"""Issue 28: `report_to` hands the run to the trackers people use, as TRL logs it, beside the studio's own charts.
Offline: Trackio's local store and TensorBoard's event files, each read back by its own reader."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("trackio")
pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trackers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "STUDIO_DATA_CACHE": str(tmp / "cache"), "TRACKIO_DIR": str(tmp / "trackio")}
    env.pop("TRACKIO_SPACE_ID", None)
    cmd = [sys.executable, "-m", "studio", "train", "recipes/tiny-quotes.yaml", "--run-name", "tracked",
           "--runs-dir", str(tmp / "runs"), "--set", "report_to=[trackio, tensorboard]", "--set", "max_steps=4",
           "--set", "logging_steps=2", "--set", "eval_steps=4", "--set", "save_steps=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "runs" / "tracked"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    studio_losses = [e["loss"] for e in events if e["type"] == "metrics" and "loss" in e]
    return tmp, run, events, studio_losses


def test_trackio_store_holds_the_run(tracked_run):
    tmp, run, events, studio_losses = tracked_run
    code = f"""
import json, trackio
from trackio.sqlite_storage import SQLiteStorage
runs = trackio.Api().runs("lora-studio")
names = [r.name for r in runs]
logs = SQLiteStorage.get_logs("lora-studio", "tracked")
print(json.dumps({{"names": names, "config": runs[0].config, "logs": logs}}, default=str))
"""  # trackio reads TRACKIO_DIR at import: its own reader, in a process that points it at the test's store
    env = {**os.environ, "TRACKIO_DIR": str(tmp / "trackio")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["names"] == ["tracked"]  # the studio's run name is the tracker's
    assert data["config"]["learning_rate"] == pytest.approx(5e-3) and data["config"]["max_steps"] == 4
    tracked = [row["train/loss"] for row in data["logs"] if "train/loss" in row]
    assert tracked == pytest.approx(studio_losses)  # the same numbers the studio's own chart shows
    assert any("eval/loss" in row for row in data["logs"])
    # issue 34: Trackio's step axis is the trainer's global step (logging_steps=2, eval_steps=4), not its own counter
    assert [row["step"] for row in data["logs"] if "train/loss" in row] == [2, 4]
    assert [row["step"] for row in data["logs"] if "eval/loss" in row] == [4]
    studio_steps = [e["step"] for e in events if e["type"] == "metrics" and "loss" in e]
    assert studio_steps == [2, 4]


def test_tensorboard_events_hold_the_run(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, events, studio_losses = tracked_run
    folders = {p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(folders) == 1  # in the run's own folder; one writer
    # issue 34: `tensorboard --logdir runs/NAME/tensorboard` lists the run by its name, not "."
    assert [f.relative_to(run / "tensorboard").as_posix() for f in folders] == ["tracked"]
    acc = EventAccumulator(str(folders.pop()))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses == pytest.approx(studio_losses, rel=1e-5)
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]
    assert "eval/loss" in acc.Tags()["scalars"]
    # the studio's own live chart is still fed, and the log says where the run went
    assert studio_losses and any("report_to: run tracked" in e.get("line", "") for e in events)


def test_report_to_is_checked_in_one_line(monkeypatch):
    from studio.errors import StudioError
    from studio.recipes import installed_trackers, load_recipe, recipe_from_flat, recipe_to_flat, tracker_choices

    with pytest.raises(StudioError, match="report_to 'comet_ml' is not one of none, trackio"):
        load_recipe("recipes/tiny-quotes.yaml", ["report_to=comet_ml"])
    if "wandb" not in installed_trackers():
        with pytest.raises(StudioError, match=r"report_to wandb: not installed here \(pip install wandb\)"):
            load_recipe("recipes/tiny-quotes.yaml", ["report_to=wandb"])
    assert tracker_choices(shared=False)[:3] == ["none", "trackio", "tensorboard"]
    # a shared app: a visitor's form reports to this machine's disk only
    flat = recipe_to_flat(load_recipe("recipes/tiny-quotes.yaml"))
    monkeypatch.setenv("STUDIO_SHARED", "1")
    assert set(tracker_choices(shared=True)) <= {"none", "trackio", "tensorboard"}
    for name in ("wandb", "mlflow"):
        with pytest.raises(StudioError, match=f"report_to '{name}' sends the run off this server"):
            recipe_from_flat({**flat, "report_to": name})
    with pytest.raises(StudioError, match="trackio_space_id publishes from the server"):
        recipe_from_flat({**flat, "report_to": "trackio", "trackio_space_id": "someone/dash"})
    monkeypatch.setenv("TRACKIO_SPACE_ID", "owner/dash")
    with pytest.raises(StudioError, match="syncs to a Space"):
        recipe_from_flat({**flat, "report_to": "trackio"})
    assert recipe_from_flat({**flat, "report_to": "tensorboard"}).train["report_to"] == "tensorboard"


def test_the_forms_pass_report_to_through():
    from studio.recipes import recipe_from_flat
    from studio.ui.dpo_tab import FIELDS
    from studio.ui.train_tab import ADVANCED, _flat_to_widget, form_to_flat, load_form

    assert "report_to" in [k for k, _ in ADVANCED] and "report_to" in [k for k, _ in FIELDS]
    flat = load_form("tiny-quotes")
    assert _flat_to_widget("report_to", flat["report_to"]) == ["none"]
    for picked, sent in ((["none"], "none"), ([], "none"), (["tensorboard"], "tensorboard"),
                         (["trackio", "tensorboard"], ["trackio", "tensorboard"])):
        recipe = recipe_from_flat({**flat, **form_to_flat(["report_to"], [picked], flat)})
        assert recipe.train["report_to"] == sent


def test_none_beside_trackers_is_refused_in_one_line(tmp_path):
    """Issue 34: `none` means no tracker; named beside trackers the job refuses it, naming the field."""
    from studio.errors import StudioError
    from studio.recipes import load_recipe
    from studio.train.common import use_trackers

    for value in (["none", "tensorboard", "trackio"], "none,tensorboard"):
        recipe = load_recipe("recipes/tiny-quotes.yaml")
        recipe.train["report_to"] = value  # as a job gets it (recipe validation may refuse it earlier too)
        with pytest.raises(StudioError) as refused:
            use_trackers(recipe, tmp_path / "run")
        line = str(refused.value)
        assert line.startswith("report_to: none means no tracker") and "\n" not in line
    for value, notes in (("none", 0), ("[none]", 0), ("tensorboard", 1)):
        recipe = load_recipe("recipes/tiny-quotes.yaml", [f"report_to={value}"])
        assert len(use_trackers(recipe, tmp_path / "run")) == notes


def test_report_to_says_how_to_add_a_tracker(monkeypatch):
    from studio.ui.train_tab import _report_to_widget

    assert "pip install trackio tensorboard" in _report_to_widget().info
    assert "restart" in _report_to_widget().info
    monkeypatch.setenv("STUDIO_SHARED", "1")
    assert "its owner adds them: pip install trackio tensorboard" in _report_to_widget().info
