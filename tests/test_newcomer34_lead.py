"""Issue 34: the parts that live in files outside the newcomer-34 change (recipes, train_tab, write_summary, the app's
wiring of "Use this dataset")."""

import json

import pytest


def test_none_beside_trackers_is_refused_by_recipe_validation():
    from studio.errors import StudioError
    from studio.recipes import load_recipe, recipe_from_flat, recipe_to_flat
    from studio.ui.train_tab import form_to_flat, load_form

    for value in ("[none, tensorboard]", "none,trackio"):
        with pytest.raises(StudioError, match="report_to: none means no tracker; pick none alone or only trackers"):
            load_recipe("recipes/tiny-quotes.yaml", [f"report_to={value}"])
    flat = load_form("tiny-quotes")
    with pytest.raises(StudioError, match="report_to: none means no tracker"):  # the Train/DPO form's pick
        recipe_from_flat({**flat, **form_to_flat(["report_to"], [["none", "tensorboard"]], flat)})
    assert recipe_from_flat({**recipe_to_flat(load_recipe("recipes/tiny-quotes.yaml")), "report_to": "none"})


def test_lapdog_fields_show_the_defaults_a_recipe_leaves_out():
    from studio.persona import DEFAULTS
    from studio.ui.train_tab import form_value, load_form

    flat = load_form("tiny-persona-lapdog")
    assert "refresh_steps" not in (flat.get("retrieval") or {})
    assert form_value(flat, "retrieval.refresh_steps") == DEFAULTS["refresh_steps"] == 10
    assert form_value(load_form("tiny-quotes"), "retrieval.refresh_steps") is None  # not a lapdog recipe


def test_a_finished_run_records_its_hardware(tmp_path):
    from conftest import runs_env, tiny_recipe
    from studio import export, jobs

    with runs_env(tmp_path / "runs") as runs:
        job = jobs.start_job(tiny_recipe(max_steps=2, eval_strategy="no"), runs_dir=runs, run_name="hw")
        assert job.wait(300) and job.status == "done", job.error
        hardware = json.loads((job.run_dir / "summary.json").read_text())["hardware"]
        assert hardware.startswith("CPU only: ") and "threads" in hardware
        assert f"| hardware | {hardware} |" in str(export.model_card(job.run_dir, "adapter"))


def test_use_this_dataset_reaches_every_tab():
    from studio.ui import build_app

    demo = build_app()
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "data-target")
    use = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "data-use")
    deps = [d for d in demo.config["dependencies"] if use._id in [t[0] for t in d["targets"]]]
    assert len(deps) == 1 and len(deps[0]["outputs"]) == 6 + 3 + 1  # Train's six, DPO/Evaluate/Chat's fields, the tabs
    assert radio is not None
