"""Issue 21 in Chromium: what a newcomer met, checked the way they met it (one app server for the module)."""


import pytest
import yaml

from app_server import attribute, needs_chromium, running_app, wait_for

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("newcomer-browser") / "runs"
    runs.mkdir()
    with running_app(runs) as url:
        yield url, runs


def _page(browser, url, width=1400, height=1000):
    page = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True).new_page()
    page.goto(url)
    page.get_by_role("tab", name="Data").wait_for()
    return page


def _train_tab(page):
    page.get_by_role("tab", name="Train").click()
    field = page.get_by_label("Max steps (-1: use epochs)")
    wait_for(lambda: field.input_value() == "200", 120, "recipe to fill the form")


def _status(page, box="#train-progress"):
    return attribute(page, f"{box} .studio-progress", "data-status")


def _overlap(a, b) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_save_as_recipe_saves_the_form_at_each_click(app, browser):  # finding 1
    page = _page(browser, app[0])
    _train_tab(page)
    lr = page.get_by_label("Learning rate")
    for value in ("0.0011", "0.0022", "0.0033"):
        lr.fill(value)
        lr.press("Tab")
        with page.expect_download(timeout=30000) as download:
            page.get_by_role("button", name="Save as recipe").click()
        saved = yaml.safe_load(open(download.value.path()).read())
        assert saved["learning_rate"] == float(value)
    page.context.close()


def test_failed_start_one_clear_signal_and_not_on_fresh_pages(app, browser):  # findings 2, 5, 7
    url, runs = app
    page = _page(browser, url)
    _train_tab(page)
    model = page.get_by_label("Base model (preset, Hub id or local folder)")
    model.fill("nobody/no-such-model")
    model.press("Enter")
    page.get_by_role("button", name="Start", exact=True).click()
    wait_for(lambda: _status(page) == "failed", 60, "the failed status")
    wait_for(lambda: "Started" not in page.locator("#train-message").inner_text(), 10, "the banner to go")
    assert "no-such-model" in page.locator("#train-progress .studio-error").inner_text()
    assert "failed: " in page.locator("#train-log textarea").input_value()
    assert page.locator("#train-chart .js-plotly-plot").count() == 0  # no empty chart
    assert not [p for p in runs.iterdir() if not p.name.startswith(".")]  # no run folder left behind (dotfiles: the
    # server's own secret and ownership records)
    fresh = _page(browser, url)
    _train_tab(fresh)
    fresh.wait_for_timeout(2500)  # a few polls
    assert _status(fresh) is None and "no-such-model" not in fresh.locator("#train-progress").inner_text()
    page.context.close()
    fresh.context.close()


def test_finished_run_log_banner_chart_and_reload_at_both_widths(app, browser):  # findings 2, 8, 9
    url, _ = app
    page = _page(browser, url)
    _train_tab(page)
    steps = page.get_by_label("Max steps (-1: use epochs)")
    steps.fill("6")
    steps.press("Tab")
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator("#train-message").get_by_text("Started").wait_for(timeout=30000)
    wait_for(lambda: _status(page) == "done", 180, "the run to finish")
    wait_for(lambda: "Started" not in page.locator("#train-message").inner_text(), 10, "the banner to go")
    # the message says how the run ended and what to do next (it was an empty box)
    assert "finished (6 steps). Next:" in page.locator("#train-message").inner_text()
    log = page.locator("#train-log textarea").input_value()
    assert "finished: 6 steps" in log and "adapter saved in" in log
    assert "tiny-quotes-tiny-llama-" in log or "tiny-quotes-tiny-llama-" in page.locator("#train-progress").inner_text() \
        or "tiny-quotes-tiny-llama-" in page.locator("#train-chart").inner_text()
    narrow = _page(browser, url, width=420, height=900)
    narrow.get_by_role("tab", name="Train").click()
    wait_for(lambda: _status(narrow) == "done", 20, "the reloaded page to show the Train tab's last run")
    for p in (page, narrow):
        chart = p.locator("#train-chart")
        chart.locator(".legend").wait_for(timeout=10000)
        legend, title = chart.locator(".legend").bounding_box(), chart.locator(".g-xtitle").bounding_box()
        assert legend and title and not _overlap(legend, title), (legend, title)
    dpo = narrow.get_by_role("tab", name="DPO")
    dpo.click()
    narrow.wait_for_timeout(2000)
    assert _status(narrow, "#dpo-progress") is None  # the SFT run is not the DPO tab's
    page.context.close()
    narrow.context.close()


def test_narrow_screen_tabs_labels_and_chat_position(app, browser):  # finding 9
    page = _page(browser, app[0], width=420, height=900)
    more = page.locator(".overflow-menu > button")
    if more.count() and more.is_visible():
        assert "More tabs" in more.evaluate("b => getComputedStyle(b, '::after').content")
    _train_tab(page)
    box = page.get_by_text("4-bit NF4 (QLoRA)").bounding_box()
    assert box and box["width"] > 60 and box["x"] + box["width"] <= 420
    model = page.get_by_label("Base model (preset, Hub id or local folder)")
    assert model.evaluate("e => e.scrollWidth <= e.clientWidth"), "base model name cut"
    tab = page.get_by_role("tab", name="Persona Chat")
    if not tab.count():
        more.click()
        tab = page.get_by_role("button", name="Persona Chat")
    tab.click()
    page.locator("#chat-a").wait_for()
    assert page.locator("#chat-a").bounding_box()["y"] < 700  # the conversation first, its settings below
    page.context.close()


def test_chat_toolbar_leaves_the_first_message_readable_and_says_its_seed(app, browser):  # finding 10
    page = _page(browser, app[0])
    page.get_by_role("tab", name="Persona Chat").click()
    page.locator("#chat-model input").fill("embedded/tiny-llama")  # the toy keeps this test fast
    page.locator("#chat-model input").press("Enter")
    page.locator("#chat-message textarea").fill("hello there")
    page.locator("#chat-send").click()
    page.locator("#chat-status").get_by_text("done").wait_for(timeout=120000)
    assert "seed" in page.locator("#chat-status").inner_text()
    first = page.locator("#chat-a .message").first.bounding_box()
    toolbar = [b for b in page.locator("#chat-a button:visible").all()
               if b.evaluate("b => !b.closest('.message-row')")]  # the chatbot's own buttons, not a message's
    for button in toolbar:
        assert not _overlap(button.bounding_box(), first), button.get_attribute("aria-label")
    assert "\ufffd" not in page.locator("#chat-a").inner_text()
    page.context.close()
