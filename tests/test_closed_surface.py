"""A shared app is closed by construction (issue 24): a visitor names things only by handles the server gave them,
and `studio.access.resolve` is the one door from a handle to a path. Each test is one finding, retried as a
stranger through gradio_client or raw HTTP against a real `--shared` (and `--demo`) app; each failed before.

Findings: 1 an lm-eval task name that is a YAML path runs the visitor's Python; 2 a path inside the runs folder
is a model; 3 caches answer before the check (chat set-ups, the pair builder, a Hub dataset in the cache);
6 results in the owner's run, a server path in an answer, URL data_files fetched, formulas in the CSV."""

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app_server import ROOT, wait_for
from conftest import tiny_recipe
from fake_hub import FakeHub
from test_attack import App, _call, _form


class Internal:
    """An "internal" HTTP service on this machine: it records every request made to it."""

    def __init__(self):
        self.hits = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                body = b'{"text": "internal secret"}\n'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def internal():
    srv = Internal()
    yield srv
    srv.server.shutdown()


@pytest.fixture(scope="module")
def hub(internal):
    with FakeHub() as h:
        url = f"http://127.0.0.1:{internal.port}/data/train.jsonl"
        h.datasets["stranger/url-card"] = {"cardData": {"configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": url}]}]}}
        h.datasets["owner-private/cached"] = {"private": True}
        yield h


def _owners_run(app):
    """The owner trained a run from the command line before sharing the app: visitors may read it."""
    from studio import jobs

    job = jobs.start_job(tiny_recipe(max_steps=2, save_steps=2, eval_steps=2), runs_dir=app.runs, run_name="owner-run")
    assert job.wait(120) and job.status == "done", job.error


@pytest.fixture(scope="module")
def shared(tmp_path_factory, hub):
    app = App(tmp_path_factory.mktemp("closed-shared"), ["--shared"], hub, _owners_run)
    app.a, app.b = app.client(), app.client()
    yield app
    app.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, hub):
    app = App(tmp_path_factory.mktemp("closed-demo"), ["--demo"], hub, _owners_run)
    app.v = app.client()
    yield app
    app.close()


@pytest.fixture(scope="module")
def a_run(shared):
    """Visitor A trains a run of their own to the end (a handful of steps)."""
    a = shared.a
    a.predict("tiny-quotes", api_name="/fill")
    msg = a.predict("browser-a", *_form(max_steps=4, save_steps=2, eval_steps=4), api_name="/start_training")
    assert "Started" in msg, msg
    run_id = msg.split("Started ")[1].split(".")[0]
    run = shared.runs / run_id
    wait_for(lambda: (run / "summary.json").exists() and json.loads(
        (run / "summary.json").read_text()).get("status") == "done", timeout=180, what="A's run to finish")
    assert (run / "adapter" / "adapter_config.json").exists()
    return run_id


def _refused(out) -> str:
    """The studio's own one-line refusal (not Gradio's choice check, which would prove nothing here)."""
    text = json.dumps(out)
    assert "studio-error" in text and "Traceback" not in text, text[:600]
    return text


# ---- 1. an lm-eval task is a name from lm-eval's index, never a file ---------------------------------------------
def _upload(app, *files):
    import httpx

    r = httpx.post(app.url + "gradio_api/upload", files=[("files", (f.name, f.read_bytes())) for f in files])
    r.raise_for_status()
    return r.json()


def _evil_task(app, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef docs(d):\n    return d\n")
    module = _upload(app, evil)[0].removesuffix(".py")
    task = tmp_path / "task.yaml"
    task.write_text(f"task: evil\ndataset_path: json\noutput_type: generate_until\n"
                    f"process_docs: !function {module}.docs\ndoc_to_text: x\ndoc_to_target: y\n")
    return _upload(app, task)[0], marker


@pytest.mark.parametrize("mode", ["shared", "demo"])
def test_an_lm_eval_task_that_is_a_path_runs_nothing(mode, request, tmp_path):
    app = request.getfixturevalue(mode)
    task, marker = _evil_task(app, tmp_path)
    client = app.b if mode == "shared" else app.v
    for name in [task, f"{task}, quote_authors"]:
        out = json.dumps(_call(client, [], "embedded/tiny-llama", name, 2, api_name="/lm_eval"))
        assert not marker.exists(), "the visitor's Python ran in the server"
        _refused(out)
        assert "lm-eval task" in out and str(app.tmp) not in out, out


# ---- 2. a path inside the runs folder is not a model ---------------------------------------------------------------
def _inside_paths(app, run_id):
    run = app.runs / run_id
    ckpt = sorted((run / "checkpoints").glob("checkpoint-*"))[0]
    return [f"runs/{run_id}/adapter", str(run / "adapter"), str(ckpt), f"runs/{run_id}/checkpoints/{ckpt.name}",
            str(run), f"runs/{run_id}"]


def test_a_path_inside_another_visitors_run_is_no_model(shared, a_run):
    b = shared.b
    for model in _inside_paths(shared, a_run):
        out = _refused(_call(b, [], model, "test split", "quotes", 2, 4, "", None, "row order", api_name="/evaluate"))
        assert "A's" not in out and str(shared.runs) not in out
        _refused(_call(b, "hi", "hello", [], [], model, None, "off", "", 0, False, 0, 1, 1, 8,
                       api_name="/send"))
        _refused(_call(b, None, "b-pairs", model, 0, 8, "a prompt", "", api_name="/start_labelling"))
        _refused(_call(b, "quotes", model, "b-built", 2, api_name="/build_pairs"))
        _refused(_call(b, [], model, "quote_authors", 2, api_name="/lm_eval"))
    assert not (shared.runs / "pairs" / "b-pairs.jsonl").exists() and not (shared.runs / "pairs" / "b-built.jsonl").exists()
    assert not list((shared.runs / a_run).glob("eval/*.json"))


def test_the_owners_run_is_named_by_its_name_not_its_path(shared):
    """Locally a path works; on a shared app even the owner's (readable) run is named by its name."""
    out = _refused(_call(shared.b, [], f"runs/owner-run/adapter", "test split", "quotes", 2, 4, "", None, "row order",
                         api_name="/evaluate"))
    assert "on a shared studio a model is" in out


# ---- 3. every cache answers after the check -------------------------------------------------------------------
def test_a_chat_set_up_another_visitor_loaded_is_no_shortcut(shared, a_run):
    a, b = shared.a, shared.b
    out = json.dumps(a.predict("a persona", "hello", [], [], a_run, None, "off", "", 0, False, 0, 1, 1, 8,
                               api_name="/send"))
    assert "studio-error" not in out, out[:600]  # A chats with A's own run: the set-up is now cached
    out = _refused(_call(b, "a persona", "hello", [], [], a_run, None, "off", "", 0, False, 0, 1, 1, 8,
                         api_name="/send"))
    assert "another visitor" in out


def test_a_model_the_pair_builder_cached_is_no_shortcut(shared, a_run):
    a, b = shared.a, shared.b
    status = json.dumps(a.predict(None, "a-session", a_run, 0, 8, "one prompt", "", api_name="/start_labelling"))
    assert "studio-error" not in status, status[:600]  # A's run is loaded for A's candidates
    for model in [a_run, f"runs/{a_run}"]:
        _refused(_call(b, None, "b-session", model, 0, 8, "one prompt", "", api_name="/start_labelling"))
        _refused(_call(b, "quotes", model, "b-built-2", 2, api_name="/build_pairs"))
    assert not (shared.runs / "pairs" / "b-session.jsonl").exists()


def test_a_cached_hub_dataset_is_not_served_when_the_hub_refuses(hub, monkeypatch, tmp_path):
    """The owner's private dataset lies in the server's Hub cache; a visitor with no token asks for it."""
    import datasets
    from huggingface_hub import constants

    from studio.data.sources import read_hub
    from studio.errors import StudioError

    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "datasets--owner-private--cached").mkdir()  # "already in the local cache"
    loads = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a))
    before = len(hub.requests)
    with pytest.raises(StudioError, match="refused access"):
        read_hub("owner-private/cached")
    assert not loads  # never datasets' "latest cached version" fallback
    assert [r for r in hub.requests[before:] if "/api/datasets/owner-private/cached" in r["path"]]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the Hub out of reach: no check, no cached copy
    with pytest.raises(StudioError, match="Hub is out of reach"):
        read_hub("owner-private/cached")
    assert not loads


# ---- 6. outputs that can't attack their reader ------------------------------------------------------------------
def test_a_card_whose_data_files_are_urls_fetches_nothing(shared, internal):
    status, info, _ = shared.b.predict("Hub dataset", "quotes", None, "", "stranger/url-card", "", "", "auto", "", "",
                                       api_name="/inspect_data")
    assert not internal.hits, internal.hits  # the server fetched the card's URL (datasets refuses only after)
    assert "studio-error" in status and "outside the repository" in status, status
    assert str(internal.port) not in status + info and str(ROOT) not in status + info


def test_a_visitors_results_live_in_their_own_folder(shared):
    a, b = shared.a, shared.b
    out = json.dumps(b.predict([], "owner-run", "test split", "", 2, 4, "b-result", None, "row order",
                               api_name="/evaluate"))
    assert "Saved owner-run/b-result" in out, out[:600]
    assert not list((shared.runs / "owner-run").glob("eval/*.json"))  # the owner's run is not the visitor's to write
    assert str(shared.runs) not in out and ".visitors" not in out
    assert "owner-run/b-result" in json.dumps(b.predict(api_name="/refresh_lists_2"))  # B's own list
    assert "b-result" not in json.dumps(a.predict(api_name="/refresh_lists_2"))  # nobody else's
    refused = json.dumps(_call(a, "owner-run/b-result", "row order", api_name="/open_result"))
    assert "no such saved result" in refused or "not in the list of choices" in refused, refused[:400]


def test_skipping_the_last_prompt_shows_no_server_path(shared):
    b = shared.b
    out = b.predict(None, "b-skip", "embedded/tiny-llama", 0, 8, "only prompt", "", api_name="/start_labelling")
    assert "studio-error" not in json.dumps(out), out
    out = json.dumps(_call(b, out[3], out[4], api_name="/label_skip"))  # the session's shown state is B's own
    assert "All prompts labelled" in out, out[:600]
    assert str(shared.runs) not in out and str(shared.tmp) not in out and "runs/pairs/b-skip.jsonl" in out


def test_csv_cells_that_spreadsheets_would_run_are_text(tmp_path):
    from studio.evaluate import export_result

    nasty = ['=HYPERLINK("http://x","y")', "=cmd|' /C calc'!A0", "@SUM(1+1)", "+1+1", "-2+3", "\tx", "\rx"]
    result = {"name": "r", "labels": ["m"], "score_key": "rougeL",
              "rows": [{"id": i, "prompt": p, "reference": p, "outputs": {"m": p}, "scores": {"m": {"rougeL": -0.5}},
                        "delta": -0.25} for i, p in enumerate(nasty)]}
    csv_path, _ = export_result(result, tmp_path)
    rows = list(csv.reader(open(csv_path, newline="", encoding="utf-8")))[1:]
    for row, text in zip(rows, nasty):
        assert row[1] == row[2] == row[3] == "'" + text
        assert row[4] == "-0.5" and row[5] == "-0.25"  # numbers stay numbers


# ---- an upload is its sender's: its raw path handed to a file box by another visitor is refused ----------------------
def _raw_call(app, name: str, data: list) -> str:
    """One event as the page's JavaScript client sends it (a fresh session), its event stream as text."""
    import uuid

    import httpx

    with httpx.Client(timeout=120) as http:
        r = http.post(app.url + f"gradio_api/call/{name}", json={"data": data, "session_hash": uuid.uuid4().hex})
        r.raise_for_status()
        return http.get(app.url + f"gradio_api/call/{name}/{r.json()['event_id']}").text


def test_another_visitors_raw_upload_in_a_file_box_is_refused(shared, tmp_path):
    from gradio_client import handle_file

    src = tmp_path / "a-upload.jsonl"
    src.write_text("".join(json.dumps({"quote": f"A's upload row {i}", "author": "A"}) + "\n" for i in range(12)))
    status, info, _ = shared.a.predict("Upload", "quotes", handle_file(str(src)), "", "", "", "", "auto", "", "",
                                       api_name="/inspect_data")
    assert "Loaded" in status and "A's upload row" in info
    copies = list((shared.runs / ".uploads").glob("*/*/*/a-upload.jsonl"))  # A's copy, outside Gradio's folder
    assert len(copies) == 1
    raw = shared.uploads / copies[0].parent.name / "a-upload.jsonl"  # where Gradio's route had put it
    assert not raw.exists()  # gone from the served folder at hand-over
    for path in (raw, copies[0]):  # B names the raw path (told it, or guessing the bytes) or A's copy
        out = _raw_call(shared, "inspect_data", ["Upload", "quotes", {"path": str(path), "orig_name": path.name,
                                                                      "meta": {"_type": "gradio.FileData"}},
                                                 "", "", "", "", "auto", "", ""])
        assert "A's upload row" not in out and ("no longer here" in out or "error" in out), out[:600]
    assert list((shared.runs / ".uploads").glob("*/*/*/a-upload.jsonl")) == copies  # no copy made for B
