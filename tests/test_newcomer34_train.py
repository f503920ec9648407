"""Issue 34's Train-tab leftovers and issue 32's "the Train form takes dataset.eval_source": the held-out field, the
hand-over that survives a reload, the first ETA, and a recipe picked before the page's own fill."""

import types

import pytest

from conftest import runs_env


def _request(session):
    return types.SimpleNamespace(session_hash=session)


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    """The Train tab alone (no other tab, no server): its page-load handler and its fields."""
    import gradio as gr

    from studio.ui.common import browser_state
    from studio.ui.train_tab import create_train_tab

    with runs_env(tmp_path_factory.mktemp("train34") / "runs"):
        with gr.Blocks():
            made = create_train_tab(browser_state())
        fn, inputs, outputs = made["on_load"]
        yield fn, [getattr(c, "label", None) for c in outputs], made


def test_the_form_carries_eval_source_into_the_recipe():
    from studio.recipes import recipe_from_flat
    from studio.ui.train_tab import form_to_flat, load_form

    flat = load_form("tiny-quotes")
    recipe = recipe_from_flat(form_to_flat(["dataset.source", "dataset.eval_source"], ["quotes", "validation"], flat))
    assert recipe.dataset["eval_source"] == "validation" and recipe.dataset["source"] == "quotes"
    assert "eval_source" not in recipe_from_flat(form_to_flat(["dataset.eval_source"], [""], flat)).dataset


def test_a_shared_visitor_names_only_what_the_server_handed_them_as_eval_source(monkeypatch, tmp_path):
    from studio.errors import StudioError
    from studio.recipes import recipe_from_flat
    from studio.ui.train_tab import form_to_flat, load_form

    flat = load_form("tiny-quotes")
    with runs_env(tmp_path / "runs"):
        monkeypatch.setenv("STUDIO_SHARED", "1")
        for path in ("/etc/passwd", "../x", "../../etc/passwd", "runs/../x"):
            with pytest.raises(StudioError) as refused:
                recipe_from_flat(form_to_flat(["dataset.eval_source"], [path], flat))
            line = str(refused.value)
            assert "\n" not in line and "on a shared studio only bundled samples, your uploads" in line, line
            assert "/etc" not in line
        with pytest.raises(StudioError, match="no upload of yours by that name"):
            recipe_from_flat(form_to_flat(["dataset.eval_source"], ["upload: secret.jsonl"], flat))
        # a split name and a bundled sample are what a visitor may name
        for ok in ("validation", "test", "quotes"):
            assert recipe_from_flat(form_to_flat(["dataset.eval_source"], [ok], flat)).dataset["eval_source"] == ok


def test_the_field_shows_and_a_recipe_fills_it(tab):
    fn, labels, made = tab
    assert "Held-out data (optional)" in labels
    from studio.ui.train_tab import load_form

    assert load_form("qwen2.5-gsm8k-grpo").get("dataset.eval_source") == "test"  # a recipe's own shows in the field


def test_a_handover_comes_back_after_a_reload_for_its_browser_only(tab, tmp_path, monkeypatch):
    """The Data tab's "Use this dataset" is kept per verified browser id; a reload (a new session, the same id)
    fills the form with it and says so; another browser, a forged id and an API client (no id) get nothing."""
    from studio.ownership import issue_browser_id
    from studio.ui.common import handover, keep_handover

    fn, labels, _ = tab
    data = tmp_path / "capitals.jsonl"
    data.write_text('{"prompt": "Capital of France?", "completion": " Paris."}\n')
    mine, other = issue_browser_id(), issue_browser_id()
    choice = {"source": str(data), "format": "prompt-completion", "kind": "prompt-completion", "template": None,
              "prompts": ["Capital of France?"]}
    keep_handover(mine, choice)
    keep_handover(None, {**choice, "source": "/etc/passwd"})  # an API client keeps nothing
    forged = mine[:33] + ("0" if mine[33] != "0" else "1") + mine[34:]
    assert handover(other) is None and handover(forged) is None and handover(None) is None

    out = fn(mine, "tiny-quotes", _request("reload-1"))  # the page after a reload: same browser, new session
    values = dict(zip(labels, out))
    assert out[0] == mine and out[-1]["source"] == str(data)  # the handed State is back: the job reads this file
    assert values["Dataset (sample name, file path or Hub id)"] == str(data)
    assert values["Format"]["value"] == "prompt-completion"
    assert "Kept your dataset from the Data tab" in out[-2]
    assert fn(other, "tiny-quotes", _request("reload-2"))[-1] is None  # someone else's page: the recipe's data

    keep_handover(mine, None)  # typed over in the Dataset field: forgotten
    assert handover(mine) is None
    from studio.ui import common

    monkeypatch.setattr(common, "HANDOVERS_KEPT", 2)  # a bounded table: the least recent browser's goes first
    browsers = [issue_browser_id() for _ in range(3)]
    for browser_id in browsers:
        keep_handover(browser_id, choice)
    assert handover(browsers[0]) is None and handover(browsers[1]) and handover(browsers[2])
    # an upload that has left (the upload TTL) is not offered
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "0123abcd" / "capitals.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_text(data.read_text())
    keep_handover(browsers[2], {**choice, "source": str(upload)})
    assert handover(browsers[2])["source"] == str(upload)
    upload.unlink()
    assert handover(browsers[2]) is None


def test_a_recipe_picked_before_the_page_fill_is_not_overwritten(tab, monkeypatch):
    """The pick's event can finish before the page's load-time fill (on a fresh app both wait for the ML stack's
    import); the fill then leaves the form alone, whether the pick came before it began or while it waited."""
    from studio.ui import train_tab
    from studio.ui.train_tab import note_pick

    fn, labels, _ = tab
    note_pick(_request("early"))  # what picking a recipe does first (pick_recipe)
    out = fn(None, "tiny-quotes", _request("early"))
    assert out[0]  # the browser id is still issued
    assert all(value == {"__type__": "update"} for value in out[1:])  # no field, no base recipe, no message
    real = train_tab.load_form
    monkeypatch.setattr(train_tab, "load_form", lambda name: note_pick(_request("during")) or real(name))
    out = fn(None, "tiny-quotes", _request("during"))  # picked while the load's fill waited (seen in Chromium)
    assert all(value == {"__type__": "update"} for value in out[1:])
    monkeypatch.setattr(train_tab, "load_form", real)
    filled = dict(zip(labels, fn(None, "tiny-quotes", _request("no-pick"))))
    assert filled["Max steps (-1: use epochs)"] == 200  # a load with no pick fills the form as before


def test_the_eta_leaves_out_the_first_steps_warm_up(monkeypatch, tmp_path):
    """Issue 34: the first ETA read 1,378 s for a 363 s job. A fake clock: a 60 s first step (model warm-up),
    then 1 s per step; 100 steps."""
    from studio import runs

    run = runs.Run(tmp_path / "r")
    clock = {"now": 0.0}
    monkeypatch.setattr(runs.time, "time", lambda: clock["now"])
    run._apply({"type": "progress", "t": 0.0, "step": 0, "total": 100})
    run._apply({"type": "status", "t": 0.0, "status": runs.RUNNING, "step": 0})
    run._apply({"type": "progress", "t": 60.0, "step": 1, "total": 100})
    clock["now"] = 60.0
    assert run.snapshot()["eta"] == pytest.approx(99 * 60, rel=0.01)  # one step known: all of it counts
    for step in range(2, 12):
        run._apply({"type": "progress", "t": 60.0 + step - 1, "step": step, "total": 100})
    clock["now"] = 70.0
    snap = run.snapshot()
    assert snap["eta"] == pytest.approx(89, abs=2) and snap["steps_per_s"] == pytest.approx(1.0, abs=0.05)
    # a resumed run starts counting again from its own first step
    run._apply({"type": "status", "t": 100.0, "status": runs.RUNNING, "step": 11})
    run._apply({"type": "progress", "t": 130.0, "step": 12, "total": 100})
    run._apply({"type": "progress", "t": 132.0, "step": 14, "total": 100})
    clock["now"] = 132.0
    assert run.snapshot()["eta"] == pytest.approx(86, abs=2)


def test_the_queue_wait_uses_the_same_eta(monkeypatch, tmp_path):
    """studio.jobs.slot_time_left (the waiting line's "starts in about …") reads the snapshot's ETA."""
    from studio import jobs, runs

    job = runs.Run(tmp_path / "r")
    job.deadline = None
    monkeypatch.setattr(runs.time, "time", lambda: 70.0)
    job._apply({"type": "status", "t": 0.0, "status": runs.RUNNING, "step": 0})
    job._apply({"type": "progress", "t": 60.0, "step": 1, "total": 100})
    job._apply({"type": "progress", "t": 70.0, "step": 11, "total": 100})
    assert jobs.slot_time_left(job) == pytest.approx(89, abs=2)
