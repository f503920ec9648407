"""End to end in headless Chromium: the real app, driven like a person would."""

import re

import pytest

from app_server import ROOT, attribute, needs_chromium, running_app, wait_for

pytestmark = needs_chromium
ARTIFACTS = ROOT / "artifacts" / "screenshots"
TABS = ["Data", "Train", "DPO", "Persona Chat", "Evaluate", "Export"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("browser") / "runs"
    runs.mkdir()
    with running_app(runs) as url:
        yield url


def _step(page) -> int:
    step = attribute(page, "#train-progress .studio-progress", "data-step")
    return -1 if step is None else int(step)


def start_long_run(page, steps: str = "3000") -> None:
    """Open the Train tab, wait for the tiny recipe to fill the form, lengthen it and press Start."""
    page.get_by_role("tab", name="Train").click()
    field = page.get_by_label("Max steps (-1: use epochs)")
    wait_for(lambda: field.input_value() == "200", 120, "recipe to fill the form")
    field.fill(steps)
    field.press("Tab")
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator("#train-message").get_by_text("Started").wait_for(timeout=30000)


def test_train_from_the_browser_live_chart_stop_reload_reattach(app, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app)
    page.get_by_role("tab", name="Data").wait_for()
    for name in TABS:
        assert page.get_by_role("tab", name=name).count() == 1, name

    # Data: the bundled sample loads and is described
    page.get_by_role("button", name="Load dataset").click()
    page.locator("#data-info").get_by_text("format").first.wait_for(timeout=60000)
    assert "quotes" in page.locator("#data-info").inner_text()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "1-data.png"), full_page=True)

    # Train: the tiny recipe fills the form; make it long enough to watch, then start
    start_long_run(page)
    wait_for(lambda: _step(page) >= 10, 90, "progress to advance")
    first = _step(page)
    wait_for(lambda: _step(page) > first + 5, 60, "progress to keep advancing")
    wait_for(lambda: page.locator("#train-chart .js-plotly-plot .scatterlayer .trace").count() >= 1, 30, "chart")
    points_before = page.locator("#train-chart .js-plotly-plot .scatterlayer .trace .point").count()
    wait_for(lambda: page.locator("#train-chart .js-plotly-plot .scatterlayer .trace .point").count() > points_before,
              30, "chart to update")
    page.screenshot(path=str(ARTIFACTS / "2-train-running.png"), full_page=True)

    # Reload: the page re-attaches to the running job with its history
    page.reload()
    page.get_by_role("tab", name="Train").click()
    wait_for(lambda: _step(page) > first + 5, 30, "re-attached progress")
    wait_for(lambda: page.locator("#train-chart .js-plotly-plot .scatterlayer .trace").count() >= 1, 30, "chart")
    assert re.search(r"running", page.locator("#train-progress").inner_text())

    # Stop (the same browser still owns the job after a reload)
    page.get_by_role("button", name="Stop").click()
    page.locator("#train-message").get_by_text("Stopping").wait_for(timeout=10000)
    wait_for(lambda: "stopped" in page.locator("#train-progress").inner_text(), 60, "cancelled status")
    page.screenshot(path=str(ARTIFACTS / "3-train-stopped.png"), full_page=True)
    stopped_at = _step(page)

    # Resume picks the stopped run up from its checkpoint
    page.get_by_role("button", name="Resume", exact=True).click()
    page.locator("#train-message").get_by_text("Resuming").wait_for(timeout=30000)
    wait_for(lambda: "running" in page.locator("#train-progress").inner_text() and _step(page) > stopped_at,
              90, "resumed progress")
    page.get_by_role("button", name="Stop").click()
    wait_for(lambda: "stopped" in page.locator("#train-progress").inner_text(), 60, "cancelled again")

    for i, name in enumerate(TABS[2:], start=4):
        page.get_by_role("tab", name=name).click()
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"{i}-{name.lower().replace(' ', '-')}.png"))
    context.close()


def test_second_local_browser_is_the_same_person(app, browser):
    """A local app has one person at the keyboard (issue 27): a second browser sees the run's log and chart,
    finished or not, and may stop it. A shared app hides them (tests/test_queue.py)."""
    owner = browser.new_context()
    other = browser.new_context()
    p1, p2 = owner.new_page(), other.new_page()
    p1.goto(app)
    start_long_run(p1)
    wait_for(lambda: _step(p1) >= 3, 60, "owner progress")
    p2.goto(app)
    p2.get_by_role("tab", name="Train").click()
    # past step 5, the first logged loss: a run stopped before it has no chart to show (this flaked under load)
    wait_for(lambda: _step(p2) >= 6, 60, "the second browser sees progress")
    assert "read-only" not in p2.locator("#train-progress").inner_text()
    wait_for(lambda: "loading" in p2.locator("#train-log textarea").input_value(), 30, "the log")
    p2.get_by_role("button", name="Stop").click()
    p2.locator("#train-message").get_by_text("Stopping").wait_for(timeout=10000)
    wait_for(lambda: "stopped" in p2.locator("#train-progress").inner_text(), 60, "cancelled")
    # a third browser opened after the run ended still sees its log and chart
    third = browser.new_context()
    p3 = third.new_page()
    p3.goto(app)
    p3.get_by_role("tab", name="Train").click()
    wait_for(lambda: "stopped" in p3.locator("#train-progress").inner_text(), 30, "the finished run")
    assert "stopped at step" in p3.locator("#train-log textarea").input_value()
    wait_for(lambda: p3.locator("#train-chart .js-plotly-plot").count() == 1, 30, "the finished run's chart")
    for context in (owner, other, third):
        context.close()
