"""The Evaluate tab in headless Chromium: base vs a tiny-quotes run, sort the rows, reopen the saved result."""

import json

import pytest

from app_server import ROOT, needs_chromium, start_app
from conftest import tiny_recipe

pytestmark = needs_chromium
ARTIFACTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from studio import jobs

    runs = tmp_path_factory.mktemp("eval-browser") / "runs"
    job = jobs.start_job(tiny_recipe(max_steps=30, save_steps=30, eval_steps=30), runs_dir=runs, run_name="tq")
    assert job.wait(300) and job.status == "done", job.error
    proc, url = start_app(runs)
    yield url, runs
    proc.terminate()
    proc.wait(10)


def _delta_column(page) -> list[float]:
    """The Δ column of the side-by-side table, as shown."""
    return page.evaluate("""() => [...document.querySelectorAll('#eval-rows div[role=row]')]
        .map(r => parseFloat(r.querySelectorAll('[role=gridcell]')[1].innerText))""")


def test_compare_base_with_a_run_sort_and_reopen(app, browser):
    url, runs = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name="tq").click()
    page.keyboard.press("Escape")
    page.get_by_label("Max new tokens").fill("12")
    page.get_by_label("Result name (optional)").fill("from-browser")
    page.locator("#eval-go").click()
    page.locator("#eval-message").get_by_text("Saved tq/from-browser").wait_for(timeout=180000)
    metrics = page.locator("#eval-metrics").inner_text()
    assert "base (embedded/tiny-llama)" in metrics and "rougeL" in metrics
    saved = json.loads((runs / "tq" / "eval" / "from-browser.json").read_text())
    assert saved["labels"] == ["base (embedded/tiny-llama)", "tq"] and saved["rows"]
    page.wait_for_function("n => document.querySelectorAll('#eval-rows div[role=row]').length === n",
                           arg=len(saved["rows"]))
    deltas = _delta_column(page)
    assert deltas == sorted(deltas, reverse=True)
    page.get_by_label("Δ ascending").check()
    page.wait_for_function("n => { const c = [...document.querySelectorAll('#eval-rows div[role=row]')]"
                           ".map(r => parseFloat(r.querySelectorAll('[role=gridcell]')[1].innerText));"
                           " return c.length === n && c.every((v, i) => !isNaN(v) && (i === 0 || c[i - 1] <= v)); }",
                           arg=len(saved["rows"]))
    assert sorted(_delta_column(page)) == sorted(r["delta"] for r in saved["rows"])
    page.screenshot(path=str(ARTIFACTS / "eval-1-compare.png"), full_page=True)

    # a fresh page reopens the saved result from the list
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("tab", name="Evaluate").click()
    page.wait_for_function("() => (document.querySelector('#eval-saved input') || {}).value === 'tq/from-browser'",
                           timeout=60000)
    page.locator("#eval-open").click()
    page.locator("#eval-message").get_by_text("Opened tq/from-browser").wait_for(timeout=60000)
    assert "tq" in page.locator("#eval-metrics").inner_text()
    page.screenshot(path=str(ARTIFACTS / "eval-2-reopened.png"), full_page=True)


def test_a_bad_suite_file_is_one_line_on_the_page(app, browser, tmp_path):
    url, _ = app
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"question": "wrong shape"}\n')
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name="tq").click()
    page.keyboard.press("Escape")
    page.get_by_label("Rows", exact=True).click()
    page.get_by_role("option", name="upload").click()
    page.locator("#eval-upload input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(1500)
    page.locator("#eval-go").click()
    err = page.locator("#eval-message .studio-error")
    err.wait_for(timeout=60000)
    assert 'bad.jsonl line 2: expected "prompt"' in err.inner_text() and "Traceback" not in err.inner_text()
