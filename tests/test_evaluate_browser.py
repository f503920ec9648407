"""The Evaluate tab in headless Chromium: base vs a tiny-quotes run, sort the rows, reopen the saved result;
a LAPDOG run's closed-book vs fixed vs trained-retriever table."""

import json

import pytest

from app_server import ROOT, needs_chromium, open_tab, running_app
from conftest import tiny_recipe

pytestmark = needs_chromium
ARTIFACTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from studio import jobs

    runs = tmp_path_factory.mktemp("eval-browser") / "runs"
    job = jobs.start_job(tiny_recipe(max_steps=30, save_steps=30, eval_steps=30), runs_dir=runs, run_name="tq")
    assert job.wait(300) and job.status == "done", job.error
    from studio.recipes import load_recipe

    lapdog = load_recipe("tiny-persona-lapdog", ["retrieval.stage1_steps=4", "retrieval.stage2_steps=4",
                                                 "retrieval.reply_max_new_tokens=6", "dataset.max_rows=40"])
    job = jobs.start_job(lapdog, runs_dir=runs, run_name="persona")
    assert job.wait(300) and job.status == "done", job.error
    with running_app(runs) as url:
        yield url, runs


def _evaluate_with_run(browser, url, run="tq"):
    """The Evaluate tab with `run` picked in the runs to compare."""
    page = open_tab(browser, url, "Evaluate")
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name=run).click()
    page.keyboard.press("Escape")
    return page


def _delta_column(page) -> list[float]:
    """The Δ column of the side-by-side table, as shown."""
    return page.evaluate("""() => [...document.querySelectorAll('#eval-rows div[role=row]')]
        .map(r => parseFloat(r.querySelectorAll('[role=gridcell]')[1].innerText))""")


def test_compare_base_with_a_run_sort_and_reopen(app, browser):
    url, runs = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = _evaluate_with_run(browser, url)
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
    page = open_tab(browser, url, "Evaluate")
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
    page = _evaluate_with_run(browser, url)
    page.get_by_label("Rows", exact=True).click()
    page.get_by_role("option", name="upload").click()
    page.locator("#eval-upload input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(1500)
    page.locator("#eval-go").click()
    err = page.locator("#eval-message .studio-error")
    err.wait_for(timeout=60000)
    assert 'bad.jsonl line 2: expected "prompt"' in err.inner_text() and "Traceback" not in err.inner_text()


def test_lapdog_table_closed_book_vs_fixed_vs_trained_retriever(app, browser):
    url, runs = app
    page = open_tab(browser, url, "Evaluate", height=1100)
    page.get_by_text("LAPDOG runs: closed-book vs fixed retriever").click()
    page.locator("#eval-persona-go").click()
    page.locator("#eval-persona-message .studio-error").get_by_text("Pick a finished LAPDOG run.").wait_for(timeout=30000)
    page.locator("#eval-persona-message").screenshot(path=str(ARTIFACTS / "eval-3-lapdog-no-run.png"))
    page.locator("#eval-persona-run input").click()
    page.get_by_role("option", name="persona").wait_for(timeout=30000)  # the list is filled on page load
    options = page.get_by_role("option").all_inner_texts()
    assert options == ["persona"]  # LAPDOG runs only, not the SFT run
    page.get_by_role("option", name="persona").click()
    page.get_by_label("Max dialogues").fill("4")
    page.locator("#eval-persona-go").click()
    page.locator("#eval-message").get_by_text("Saved persona/persona-").wait_for(timeout=180000)
    summary = page.locator("#eval-persona-message").inner_text()
    assert "closed-book (stage 1): F1" in summary and "+ LAPDOG retriever: F1" in summary
    metrics = page.locator("#eval-metrics").inner_text()
    for label in ("closed-book (stage 1)", "+ fixed retriever", "+ LAPDOG retriever"):
        assert label in metrics
    saved = json.loads(next((runs / "persona" / "eval").glob("persona-*.json")).read_text())
    assert len(saved["rows"]) == 4 and saved["config"]["persona"]["k"] == 4
    page.screenshot(path=str(ARTIFACTS / "eval-3-lapdog-table.png"), full_page=True)
