"""The Export tab in headless Chromium: export a trained run, download, a push that fails offline, secrecy."""

import time

import pytest

from app_server import ROOT, needs_chromium, open_tab, running_app
from conftest import tiny_recipe

pytestmark = needs_chromium
ARTIFACTS = ROOT / "artifacts" / "screenshots"
PLANTED = "hf_PLANTEDbrowserSecret0123456789"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from studio import jobs

    runs = tmp_path_factory.mktemp("export-browser") / "runs"
    job = jobs.start_job(tiny_recipe(max_steps=8, save_steps=100, eval_strategy="no"), runs_dir=runs,
                         run_name="quotes")
    assert job.wait(300) and job.status == "done", job.error
    return runs


@pytest.fixture(scope="module")
def app(runs):
    with running_app(runs) as url:
        yield url


def test_export_download_and_offline_push_from_the_browser(app, runs, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_tab(browser, app, "Export")
    page.locator("#export-run input").wait_for()
    page.wait_for_function("document.querySelector('#export-run input').value === 'quotes'", timeout=30000)
    page.get_by_role("checkbox", name="f16", exact=True).check()  # not bf16
    page.get_by_role("button", name="Export", exact=True).click()
    page.locator("#export-done").wait_for(timeout=240000)
    done = page.locator("#export-done").inner_text()
    for part in ("adapter", "merged"):
        assert f"{part}: greedy output (24 new tokens) identical to the adapter's on 2/2 prompts" in done, done
    # GGUF: judged by llama.cpp when it is installed, by transformers' loader otherwise; the line says which
    assert "quotes-f16.gguf: " in done and "prompt ids identical on 2/2; greedy output (16 new tokens) identical " \
        "to the merged model's (transformers) on 2/2" in done, done
    assert page.locator("#export-download a").first.get_attribute("href").endswith("quotes-export.zip")
    assert "library_name: peft" in page.locator("#export-card").inner_text()
    page.screenshot(path=str(ARTIFACTS / "export-1-done.png"), full_page=True)

    # no network here: the push fails within seconds with one line, the export stays whole
    files = sorted(p.name for p in (runs / "quotes" / "export").rglob("*") if p.is_file())
    page.locator("#export-repo input, #export-repo textarea").first.fill("me/quotes")
    page.locator("#export-token input").fill(PLANTED)
    started = time.time()
    page.get_by_role("button", name="Push to the Hub").click()
    page.locator("#push-message .studio-error").wait_for(timeout=15000)
    assert time.time() - started < 15
    assert "offline mode is on" in page.locator("#push-message").inner_text()
    assert sorted(p.name for p in (runs / "quotes" / "export").rglob("*") if p.is_file()) == files
    page.screenshot(path=str(ARTIFACTS / "export-2-push-offline.png"), full_page=True)

    # the typed token stays in this page's password box: not in another visitor's page, the log, or runs/
    other = browser.new_context().new_page()
    other.goto(app)
    other.get_by_role("tab", name="Export").click()
    other.wait_for_timeout(1500)
    assert PLANTED not in other.content()
    log = next(runs.parent.glob("app-*.log")).read_text()
    assert PLANTED not in log
    for path in runs.rglob("*"):
        if path.is_file():
            assert PLANTED.encode() not in path.read_bytes(), path
    other.context.close()
    page.context.close()


def test_demo_mode_refuses_export_to_visitors(runs, monkeypatch):
    from gradio_client import Client

    monkeypatch.setenv("STUDIO_DEMO", "1")
    with running_app(runs) as url:
        client = Client(url, verbose=False)
        html, zipped, card = client.predict("quotes", ["adapter"], [], False, api_name="/export_run")
        assert "open only to the owner of this demo" in html and zipped is None
        assert "sign in with Hugging Face first" in client.predict("quotes", ["adapter"], "me/x", False, "", PLANTED,
                                                                   api_name="/push_run")


def test_runs_finished_after_the_page_loaded_are_listed_when_a_tab_is_opened(app, runs, browser):
    import shutil

    page = open_tab(browser, app, "Data")
    tabs = (("Export", "#export-run"), ("Evaluate", "#eval-runs"), ("Persona Chat", "#chat-model"))

    def options(tab, box):
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_timeout(1500)
        page.locator(f"{box} input").click()
        page.get_by_role("option", name="quotes", exact=True).wait_for(timeout=15000)
        names = page.get_by_role("option").all_inner_texts()
        page.keyboard.press("Escape")
        return names

    for tab, box in tabs:  # each tab seen once before the run finishes (the page's load events listed the runs)
        assert "later" not in options(tab, box)
    shutil.copytree(runs / "quotes", runs / "later", ignore=shutil.ignore_patterns("export"))
    try:
        for tab, box in tabs:
            assert "later" in options(tab, box), tab
    finally:
        page.context.close()
        shutil.rmtree(runs / "later")
