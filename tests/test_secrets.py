"""Promise 5: a token in the environment, a recipe or a form field never reaches runs/, logs, events,
error messages, recipes or pages. A recognisable token is planted, then everything the run and the app
produced is searched for it."""

import json
import time
from pathlib import Path

import pytest

from app_server import start_app
from conftest import tiny_recipe

MARKER = "SeCrEtMaRkEr"
TOKEN = f"hf_{MARKER}0123456789abcdefghijkl"  # hf_ + 34 letters and digits, as a real token


def _leaks(folder: Path) -> list[str]:
    """Every file under `folder` (text or binary, e.g. pickled training args) that holds the marker."""
    return [str(f) for f in folder.rglob("*") if f.is_file() and MARKER.encode() in f.read_bytes()]


def test_redact_removes_tokens_and_the_env_value(monkeypatch):
    from studio.errors import StudioError, redact

    monkeypatch.setenv("HF_TOKEN", "not-hf-shaped-secret")
    assert redact(f"a {TOKEN} b not-hf-shaped-secret c") == "a hf_*** b hf_*** c"
    assert redact("hf_internal_testing/tiny-model stays") == "hf_internal_testing/tiny-model stays"
    assert MARKER not in str(StudioError(f"model {TOKEN}: not found"))


def test_unexpected_error_traceback_in_the_log_is_redacted(monkeypatch):
    """`safely` logs a bug's full traceback: through the app's formatter the token in it is redacted."""
    import io
    import logging

    from studio.errors import RedactingFormatter
    from studio.ui.common import safely

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        def buggy():
            raise RuntimeError(f"token {TOKEN} in an unexpected error")

        result, message = safely(buggy)
    finally:
        logging.getLogger().removeHandler(handler)
    assert result is None and MARKER not in message
    logged = stream.getvalue()
    assert "Traceback" in logged and "RuntimeError: token hf_*** in an unexpected error" in logged
    assert MARKER not in logged


def test_training_job_keeps_the_token_out_of_its_run(tmp_path, monkeypatch, caplog):
    from studio import jobs

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    runs = tmp_path / "runs"
    # in the environment and in the recipe (hub_token is a TrainingArguments field, pickled into checkpoints)
    job = jobs.start_job(tiny_recipe(max_steps=4, save_steps=2, hub_token=TOKEN), runs_dir=runs)
    assert job.wait(240) and job.status == "done", job.error
    # a failing job: the token typed where a model name goes ends up in the error line
    bad = jobs.start_job(tiny_recipe(model_name_or_path=f"org/{TOKEN}"), runs_dir=runs)
    assert bad.wait(240) and bad.status == "failed"
    assert "hf_***" in bad.error and MARKER not in bad.error
    # a bug whose message carries the token: error line, error.log and the server log are redacted
    import trl

    def boom(self, *args, **kwargs):
        raise RuntimeError(f"boom with {TOKEN} inside")

    monkeypatch.setattr(trl.SFTTrainer, "training_step", boom)
    with caplog.at_level("INFO", logger="studio"):
        bug = jobs.start_job(tiny_recipe(), runs_dir=runs)
        assert bug.wait(240) and bug.status == "failed"
    assert "RuntimeError: boom with hf_*** inside" in bug.error and (bug.run_dir / "error.log").exists()
    assert "hf_***" in (bug.run_dir / "error.log").read_text() and MARKER not in caplog.text
    assert _leaks(runs) == []


@pytest.fixture(scope="module")
def app_with_token(tmp_path_factory):
    import os

    runs = tmp_path_factory.mktemp("secrets") / "runs"
    runs.mkdir()
    before = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = TOKEN  # start_app hands the environment to the app
    try:
        proc, url = start_app(runs)
    finally:
        if before is None:
            os.environ.pop("HF_TOKEN")
        else:
            os.environ["HF_TOKEN"] = before
    yield url, runs
    proc.terminate()
    proc.wait(10)


def test_app_api_and_pages_never_show_the_token(app_with_token):
    import urllib.request

    from gradio_client import Client

    from test_app_api import _form

    url, runs = app_with_token
    client = Client(url, verbose=False)
    answers = []
    # error paths with the token typed into fields
    answers += client.predict("Local path", "quotes", None, f"/nope/{TOKEN}.jsonl", "", "", "", "auto", "", "",
                              api_name="/inspect_data")[:2]
    answers += client.predict("Hub dataset", "quotes", None, "", f"org/{TOKEN}", "", "", "auto", "", TOKEN,
                              api_name="/inspect_data")[:2]
    client.predict("tiny-quotes", api_name="/fill")
    _flat, values = _form(model_name_or_path=f"org/{TOKEN}")
    answers.append(client.predict(*values, api_name="/check_parameters"))
    answers.append(client.predict("visitor-a", *values, api_name="/start_training"))
    # a run that fails on the token-named model (before its first step: it leaves no folder), then one that
    # trains once the first has ended; another visitor watches both
    _flat, values = _form(max_steps=4, save_steps=2, eval_steps=1000)
    for _ in range(60):
        answer = client.predict("visitor-a", *values, api_name="/start_training")
        if "already running" not in answer:
            break
        time.sleep(1)
    answers.append(answer)
    deadline = time.time() + 180
    while time.time() < deadline and not list(runs.glob("*/summary.json")):
        time.sleep(0.5)
    answers.append(json.dumps(client.predict("visitor-b", -1, api_name="/poll"), default=str))
    for path in ("/", "/config", "/gradio_api/info"):
        answers.append(urllib.request.urlopen(url.rstrip("/") + path, timeout=30).read().decode("utf-8", "replace"))
    assert any("hf_***" in str(a) for a in answers)  # the token was echoed back, redacted
    assert [a for a in answers if MARKER in str(a)] == []
    assert list(runs.glob("*/summary.json")), "the second run did not finish"
    app_log = next(runs.parent.glob("app-*.log"))
    assert _leaks(runs) == [] and MARKER not in app_log.read_text("utf-8", "replace")
