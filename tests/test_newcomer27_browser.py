"""Issue 27 in Chromium: stale views, choices that undid each other, the metrics table's last columns (one app
server for the module; one tiny run on an upload serves them all)."""

import json

import pytest

from app_server import needs_chromium, running_app, wait_for

pytestmark = needs_chromium

CAPITALS = [{"prompt": f"What is the capital of country {i}?", "completion": f" City {i}."} for i in range(20)]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("newcomer27-browser")
    runs = root / "runs"
    runs.mkdir()
    data = root / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CAPITALS), encoding="utf-8")
    with running_app(runs) as url:
        yield url, runs, data


@pytest.fixture(scope="module")
def page(app, browser):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(app[0])
    page.get_by_role("tab", name="Data").wait_for()
    yield page
    page.context.close()


def _info(page):
    return page.locator("#data-info").inner_text()


def test_upload_is_read_at_once_and_a_changed_field_empties_the_preview(app, page):  # finding 3
    page.get_by_role("button", name="Load dataset").click()
    wait_for(lambda: "format quotes" in _info(page), 300, "the bundled sample's preview")
    page.get_by_label("Upload").check()
    page.locator("input[type=file]").first.set_input_files(str(app[2]))
    wait_for(lambda: "capitals.jsonl" in _info(page) and "capital of country" in _info(page), 60,
             "the upload's preview without pressing Load")
    template = page.get_by_label("Template override")
    template.fill("{prompt}")
    wait_for(lambda: "press Load dataset" in page.locator("#data-status").inner_text(), 20, "the stale note")
    assert "capital of country" not in _info(page)
    template.fill("")
    page.get_by_role("button", name="Load dataset").click()
    wait_for(lambda: "capital of country" in _info(page), 60, "the upload's preview again")


def test_recipe_keeps_the_handed_dataset_and_points_to_the_real_model_and_dpo(app, page):  # finding 4
    page.get_by_role("button", name="Use this dataset on the Train tab").click()
    page.get_by_role("tab", name="Train").click()
    source = page.get_by_label("Dataset (sample name, file path or Hub id)")
    # named by its file, not the server's temp path; the job still reads the upload (the next test trains on it)
    wait_for(lambda: source.input_value() == "upload: capitals.jsonl", 30, "the handed dataset")
    assert "smollm2-" in page.locator("#train-recipe").inner_text()  # the real recipes named beside the toy
    recipe = page.get_by_label("Recipe")
    recipe.click()
    page.get_by_role("option", name="smollm2-quotes").click()
    wait_for(lambda: "Kept your dataset" in page.locator("#train-message").inner_text(), 60, "the kept note")
    assert source.input_value() == "upload: capitals.jsonl"
    page.get_by_text("Advanced", exact=True).click()
    prompts = page.get_by_label("Sample prompts (one per line), generated before and after")
    assert "capital of country" in prompts.input_value() and "Quote:" not in prompts.input_value()  # the data's own
    recipe.click()
    page.get_by_role("option", name="tiny-dpo").click()
    wait_for(lambda: "DPO tab" in page.locator("#train-message").inner_text(), 60, "the pointer to the DPO tab")
    recipe.click()
    page.get_by_role("option", name="tiny-quotes", exact=True).click()
    wait_for(lambda: source.input_value() == "upload: capitals.jsonl", 60, "the handed dataset, kept")
    # issue 34: the hand-over is this browser's, kept on the server, so a reload brings it back (the next test
    # trains on it after this reload)
    page.reload()
    page.get_by_role("tab", name="Train").click()
    wait_for(lambda: source.input_value() == "upload: capitals.jsonl", 60, "the handed dataset after a reload")
    assert "Kept your dataset from the Data tab (upload: capitals.jsonl)" in page.locator("#train-message").inner_text()


def test_lists_fill_when_a_run_finishes_without_refresh(app, page):  # finding 3
    page.get_by_role("tab", name="Export").click()
    page.get_by_text("No finished runs yet").wait_for(timeout=30000)
    page.get_by_role("tab", name="Train").click()
    steps = page.get_by_label("Max steps (-1: use epochs)")
    wait_for(lambda: steps.input_value() == "200", 60, "the tiny-quotes form")
    steps.fill("4")
    steps.press("Tab")
    page.get_by_role("button", name="Start", exact=True).click()
    wait_for(lambda: page.locator("#train-progress .studio-progress").get_attribute("data-status") == "done"
             if page.locator("#train-progress .studio-progress").count() else False, 240,
             lambda: f"the run to finish ({page.locator('#train-message').inner_text()})")
    run_id = next(p.name for p in app[1].iterdir() if p.is_dir() and p.name.startswith("tiny-llama-capitals-sft-"))
    page.get_by_text("Runs history").click()
    wait_for(lambda: run_id in page.locator("#train-run-pick input").input_value(), 30, "the run in Runs history")
    page.get_by_role("tab", name="Export").click()
    wait_for(lambda: run_id in page.locator("#export-run input").input_value(), 30, "the run on the Export tab")
    assert page.get_by_text("No finished runs yet").count() == 0
    page.get_by_role("tab", name="DPO").click()
    start_from = page.get_by_label("Start from")
    start_from.click()
    page.get_by_role("option", name=run_id).wait_for(timeout=30000)
    start_from.press("Escape")


def test_metrics_table_shows_or_scrolls_to_its_last_column(app, page):  # finding 5
    page.get_by_role("tab", name="Evaluate").click()
    runs = page.locator("#eval-runs input")
    runs.click()
    page.get_by_role("option").filter(has_text="capitals").first.click()
    runs.press("Escape")
    page.get_by_label("Max rows").filter(visible=True).fill("2")
    page.get_by_label("Max new tokens").filter(visible=True).fill("4")
    page.locator("#eval-go").click()
    page.locator("#eval-message").get_by_text("Saved").wait_for(timeout=300000)
    last = page.locator("#eval-metrics th").last
    reachable = last.evaluate("""th => {
        const r = th.getBoundingClientRect();
        if (r.right <= window.innerWidth) return true;
        for (let e = th.parentElement; e; e = e.parentElement) {
            const o = getComputedStyle(e).overflowX;
            if ((o === 'auto' || o === 'scroll') && e.scrollWidth > e.clientWidth) return true;
        }
        return false; }""")
    assert reachable, "the metrics table's last column is cut with no scrollbar"
    from app_server import ROOT

    shots = ROOT / "artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.locator("#eval-metrics").screenshot(path=str(shots / "eval-metrics-1400.png"))
    page.set_viewport_size({"width": 420, "height": 1000})
    page.wait_for_timeout(500)
    page.locator("#eval-metrics").screenshot(path=str(shots / "eval-metrics-420.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})
