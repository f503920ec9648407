"""Visitors are strangers: two gradio_client visitors (and the owner's own files) against a --shared app and a
--demo app, with a stand-in Hub that records every request's Authorization header (issue 19).

One app server per mode (module-scoped); each test is one finding of the issue and failed before its fix."""

import json
import os

import pytest

from app_server import ROOT, needs_chromium, start_app, wait_for
from fake_hub import FakeHub

OWNER_TOKEN = "hf_ownersecret000000000000000"


def _form(**changes):
    from studio.recipes import RECIPES_DIR, load_recipe, recipe_to_flat
    from studio.ui.train_tab import ADVANCED, BASIC, LAPDOG, _flat_to_widget, form_value

    flat = recipe_to_flat(load_recipe(RECIPES_DIR / "tiny-quotes.yaml"))
    flat.update(changes)
    keys = ["model_name_or_path", "dataset.source", "dataset.format", "dataset.template"] + [k for k, _ in BASIC] + [
        k for k, _ in ADVANCED] + ["eval_prompts"] + [k for k, _ in LAPDOG]
    return [_flat_to_widget(k, form_value(flat, k)) for k in keys]


def _call(client, *args, api_name):
    """The event's outputs, or the one-line refusal gradio itself gave (an invalid choice, say)."""
    from gradio_client.exceptions import AppError

    try:
        return client.predict(*args, api_name=api_name)
    except AppError as e:
        return f"refused by gradio: {e}"


class App:
    def __init__(self, tmp, args, hub, owner_files=None):
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.uploads = tmp / "uploads"
        (self.runs / "pairs").mkdir(parents=True)
        self.uploads.mkdir()
        if owner_files:
            owner_files(self)
        self.proc, self.url = start_app(self.runs, extra_args=args, env={
            "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_TOKEN": OWNER_TOKEN,
            "HF_HUB_ETAG_TIMEOUT": "5", "GRADIO_TEMP_DIR": str(self.uploads)})

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as h:
        yield h


def _owners_pairs(app):
    # the app's owner made these before sharing (the command line): visitors may read, never overwrite
    (app.runs / "pairs" / "owners.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    (app.runs / "pairs" / "owners-session.jsonl").write_text('{"_meta": {"made_by": "owner"}}\n')
    (app.runs / "pairs" / "owners-session.session.json").write_text(json.dumps(
        {"name": "owners-session", "model": "embedded/tiny-llama", "prompts": ["owner's prompt"], "position": 0,
         "skipped": 0, "seed": 0, "max_new_tokens": 8, "temperature": 1.0}))


@pytest.fixture(scope="module")
def shared(tmp_path_factory, hub):
    app = App(tmp_path_factory.mktemp("attack-shared"), ["--shared"], hub, _owners_pairs)
    app.a, app.b = app.client(), app.client()
    yield app
    app.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, hub):
    app = App(tmp_path_factory.mktemp("attack-demo"), ["--demo"], hub, _owners_pairs)
    app.v = app.client()
    yield app
    app.close()


def _hub_reads_are_not_the_owners(app, client, hub):
    before = len(hub.requests)
    status, _info, _plot = client.predict("Hub dataset", "quotes", None, "", "owner-private/dataset", "", "", "auto",
                                          "", "", api_name="/inspect_data")
    assert "studio-error" in status and "Traceback" not in status
    status, _info, _plot = client.predict("Bundled sample", "quotes", None, "", "", "", "", "auto", "",
                                          "owner-private/model", api_name="/inspect_data")
    assert "studio-error" in status
    seen = hub.requests[before:]
    paths = " ".join(r["path"] for r in seen)
    assert "/api/datasets/owner-private/dataset" in paths and "/owner-private/model/resolve/main/" in paths
    assert not [r for r in seen if OWNER_TOKEN in r["auth"]], [(r["method"], r["path"]) for r in seen]


# ---- 1. the owner's credentials are the owner's ----------------------------------------------------------------
def test_hub_reads_for_a_visitor_never_carry_the_owners_token(shared, hub):
    _hub_reads_are_not_the_owners(shared, shared.b, hub)


def test_hub_reads_on_a_demo_never_carry_the_owners_token(demo, hub):
    _hub_reads_are_not_the_owners(demo, demo.v, hub)


def test_a_signed_in_visitor_reads_with_their_own_token(monkeypatch):
    from studio import access

    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    assert access.hub_token() is False  # not None: huggingface_hub would fetch HF_TOKEN itself
    with access.acting_for(access.make_visitor(None, "s1", "alice", "hf_alices_own")):
        assert access.hub_token() == "hf_alices_own"
    monkeypatch.delenv("STUDIO_SHARED")
    assert access.hub_token() == OWNER_TOKEN  # the app run locally: the owner is the visitor


# ---- 2. names that become paths --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["shared", "demo"])
def test_report_takes_a_recipe_name_never_a_path(mode, request, tmp_path):
    app = request.getfixturevalue(mode)
    evil = tmp_path / "evil.yaml"  # what a visitor could have uploaded: remote code, a token, a server folder
    evil.write_text((ROOT / "recipes" / "tiny-quotes.yaml").read_text() + "trust_remote_code: true\n")
    name = os.path.relpath(evil.with_suffix(""), ROOT / "recipes")
    assert name.startswith("..")
    client = app.b if mode == "shared" else app.v
    _table, message = client.predict(name, api_name="/report")
    assert "recipe name" in message and "not allowed" in message, message
    _table, message = client.predict("tiny-quotes", api_name="/report")  # a bundled recipe still works
    assert message == ""


# ---- 3. another visitor's data ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def a_upload(shared, tmp_path_factory):
    """Visitor A hands a file to the studio; the copy it trains on is A's."""
    from gradio_client import handle_file

    src = tmp_path_factory.mktemp("a-files") / "a-secret.jsonl"
    src.write_text("".join(json.dumps({"quote": f"A's private row {i}", "author": "A"}) + "\n" for i in range(40)))
    status, info, _ = shared.a.predict("Upload", "quotes", handle_file(str(src)), "", "", "", "", "auto", "", "",
                                       api_name="/inspect_data")
    assert "Loaded" in status and "A's private row" in info
    copies = list((shared.runs / ".uploads").glob("*/*/*/a-secret.jsonl"))  # A's own copy, in the runs folder
    assert len(copies) == 1
    raw = copies[0].parent.name  # the folder Gradio's route had named by the bytes: gone from its served folder
    assert not (shared.uploads / raw / "a-secret.jsonl").exists()
    return [copies[0], shared.uploads / raw / "a-secret.jsonl"]


def test_a_visitors_upload_has_no_public_address(shared, a_upload):
    """Issue 31, finding 1: Gradio serves every file in its temp folder to whoever names the path; A's copy is
    not there, and the raw upload left it when A handed it over."""
    import urllib.error
    import urllib.request

    for path in a_upload:
        try:
            body = urllib.request.urlopen(f"{shared.url}gradio_api/file={path}", timeout=30).read()
        except urllib.error.HTTPError as e:
            assert e.code in (403, 404), (path, e.code)
        else:
            raise AssertionError(f"{path} was served: {body[:80]!r}")


def test_a_visitor_cannot_read_another_visitors_upload(shared, a_upload):
    for path in a_upload:
        status, info, _ = shared.b.predict("Local path", "quotes", None, str(path), "", "", "", "auto", "", "",
                                           api_name="/inspect_data")
        assert "studio-error" in status and "A's private row" not in info, status
    status, info, _ = shared.a.predict("Local path", "quotes", None, str(a_upload[0]), "", "", "", "auto", "", "",
                                       api_name="/inspect_data")
    assert "Loaded" in status and "A's private row" in info  # A still reads A's own copy


@pytest.fixture(scope="module")
def a_stopped_run(shared, a_upload):
    """Visitor A trains on A's upload and stops after a checkpoint."""
    a = shared.a
    a.predict("tiny-quotes", api_name="/fill")
    msg = a.predict("browser-a", *_form(**{"dataset.source": str(a_upload[0]), "max_steps": 3000, "save_steps": 2,
                                           "eval_steps": 1000}), api_name="/start_training")
    assert "Started" in msg, msg
    run_id = msg.split("Started ")[1].split(".")[0]
    run = shared.runs / run_id
    wait_for(lambda: list(run.glob("checkpoints/checkpoint-*/.complete")), timeout=120, what="a checkpoint")
    assert "Stopping" in a.predict("browser-a", api_name="/stop_training")
    wait_for(lambda: (run / "summary.json").exists(), timeout=120, what="the stopped run's summary")
    return run_id


def test_a_visitor_cannot_resume_take_over_open_or_evaluate_another_visitors_run(shared, a_stopped_run):
    a, b, run_id = shared.a, shared.b, a_stopped_run
    run = shared.runs / run_id
    # resume (and so take over) A's stopped run, or open it
    _call(b, api_name="/list_run_ids")  # B's run list, as B's page load fills it: A's run is not in it
    msg = json.dumps(_call(b, "browser-b", run_id, api_name="/resume_training"))
    assert "another visitor" in msg or "not in the list of choices" in msg, msg
    msg = b.predict("browser-b", api_name="/resume_latest")  # the newest resumable run is A's: not for B
    assert "Resuming" not in msg, msg
    out = json.dumps(_call(b, run_id, None, api_name="/open_selected"))
    assert ("another visitor" in out or "not in the list of choices" in out) and "A's private" not in out, out
    # A still owns it: A resumes it to the end (the test shortens its plan to 2 more steps, so it ends soon)
    stopped_at = json.loads((run / "summary.json").read_text())["steps"]
    recipe = (run / "recipe.yaml").read_text()
    assert "max_steps: 3000\n" in recipe
    (run / "recipe.yaml").write_text(recipe.replace("max_steps: 3000\n", f"max_steps: {stopped_at + 2}\n"))
    a.predict(api_name="/list_run_ids")
    msg = a.predict("browser-a", run_id, api_name="/resume_training")
    assert "Resuming" in msg, msg
    wait_for(lambda: (run / "adapter" / "adapter_config.json").exists() and json.loads(
        (run / "summary.json").read_text()).get("status") == "done", timeout=120, what="A's resumed run to finish")
    # evaluating A's finished run (on its own test split: A's rows), named in the free model field
    out = json.dumps(_call(b, [], run_id, "test split", "", 3, 4, "", None, "row order", api_name="/evaluate"))
    assert "A's private row" not in out and "another visitor" in out, out[:400]
    assert not list(run.glob("eval/*.json"))


# ---- 4. labelling sessions and pairs files ---------------------------------------------------------------------
def _start_labelling(client, name, prompts="one prompt\n\nanother prompt"):
    return client.predict(None, name, "embedded/tiny-llama", 0, 8, prompts, "", api_name="/start_labelling")


def test_an_api_visitors_labelling_session_is_theirs_alone_and_works(shared):
    status, message, prompt, a, b, *_ = _start_labelling(shared.b, "b-session")
    assert "belongs to another visitor" not in message and prompt == "one prompt" and (a or b), message
    status, message, prompt, *_ = shared.b.predict(a, b, api_name="/label_a")  # B labels B's own session
    assert "1 pairs saved" in status or "1 pair saved" in status or prompt == "another prompt", (status, message)
    # another visitor's page load, and a start with the same name, do not open it
    status, message, prompt, *_ = _start_labelling(shared.a, "b-session")
    assert "belongs to another visitor" in message and prompt != "one prompt"
    out = shared.a.predict("browser-a", api_name="/resume_latest_1")
    assert "one prompt" not in json.dumps(out) and "owner's prompt" not in json.dumps(out)


def test_build_pairs_never_overwrites_someone_elses_file(shared):
    before = (shared.runs / "pairs" / "owners.jsonl").read_text()
    message, _ = shared.a.predict("dolly", "embedded/tiny-llama", "a-pairs", 3, api_name="/build_pairs")
    assert "pairs written" in message, message
    mine = (shared.runs / "pairs" / "a-pairs.jsonl").read_text()
    for name in ("a-pairs", "owners"):
        message, _ = shared.b.predict("dolly", "embedded/tiny-llama", name, 3, api_name="/build_pairs")
        assert "belongs to someone else" in message, message
    assert (shared.runs / "pairs" / "a-pairs.jsonl").read_text() == mine
    assert (shared.runs / "pairs" / "owners.jsonl").read_text() == before


def test_demo_page_load_does_not_open_the_owners_session(demo):
    out = demo.v.predict("browser-v", api_name="/resume_latest_1")
    assert "owner's prompt" not in json.dumps(out)


# ---- 5. smaller ------------------------------------------------------------------------------------------------
def test_sample_prompts_render_no_markdown_image_or_link():
    from studio.ui.train_tab import samples_markdown

    pixel = "![x](http://tracker.example/p.png) [click](http://evil.example) <img src=x>"
    out = samples_markdown({"samples": [{"prompt": pixel, "before": pixel, "after": "ok"}]})
    assert "![" not in out and "](" not in out and "<img" not in out and "tracker.example" in out


def test_error_lines_hide_the_runs_path_and_the_runs_folder_is_not_a_run(shared):
    root = str(shared.runs.resolve())
    message, _, _ = shared.b.predict("no-such-run", ["adapter"], [], False, api_name="/export_run")
    assert "no such run" in message and root not in message, message
    # a path is no run handle on a shared app (studio.access.resolve): refused, named by its last part only
    for ref in (str(shared.runs / "no-such-run"), str(shared.runs)):
        message, _, _ = shared.b.predict(ref, ["adapter"], [], False, api_name="/export_run")
        assert "a run is named by its name" in message and root not in message, message
        assert "unexpected error" not in message


def test_a_dict_as_the_dataset_format_is_one_line_before_any_job(shared):
    values = _form()
    values[2] = {"name": "prompt_completion"}
    shared.b.predict("tiny-quotes", api_name="/fill")
    before = set(os.listdir(shared.runs))
    msg = _call(shared.b, "browser-b", *values, api_name="/start_training")
    text = msg[0] if isinstance(msg, (list, tuple)) else str(msg)
    assert "Started" not in text and ("must be text" in text or "refused" in text), text
    assert set(os.listdir(shared.runs)) == before


# ---- each browser labels its own session on a shared app -------------------------------------------------------
@needs_chromium
def test_two_browsers_each_label_their_own_session(shared, browser):
    pages = []
    for who in ("one", "two"):
        page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
        page.goto(shared.url)
        page.get_by_role("tab", name="DPO").click()
        page.get_by_label("Pairs file name").fill(f"browser-{who}")
        page.get_by_label("Model or run that writes the candidates").fill("embedded/tiny-llama")  # fast
        page.get_by_label("Prompts (a blank line between prompts)").fill(f"{who}: first\n\n{who}: second")
        page.get_by_role("button", name="Start or resume labelling").click()
        pages.append((who, page))
    for who, page in pages:
        page.locator("#label-status").get_by_text("prompt 1 of 2").wait_for(timeout=60000)
        page.wait_for_function("document.querySelector('#reply-a textarea').value.length > 0", timeout=60000)
        assert "another visitor" not in page.locator("#label-message").inner_text()
        assert page.locator("#label-prompt textarea").input_value() == f"{who}: first"
        page.get_by_role("button", name="A is better").click()
        page.locator("#label-status").get_by_text("prompt 2 of 2").wait_for(timeout=60000)
    for who, _page in pages:
        lines = (shared.runs / "pairs" / f"browser-{who}.jsonl").read_text().splitlines()
        assert len(lines) == 2 and json.loads(lines[1])["prompt"] == f"{who}: first"
    for _who, page in pages:
        page.context.close()
