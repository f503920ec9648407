"""The DPO tab in headless Chromium: label pairs, reload mid-labelling, train tiny-dpo and watch the rewards."""

import json

import pytest

from app_server import ROOT, needs_chromium, open_tab, running_app

pytestmark = needs_chromium
ARTIFACTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("dpo-browser") / "runs"
    runs.mkdir()
    return runs


@pytest.fixture(scope="module")
def app(runs):
    with running_app(runs) as url:
        yield url


def _replies_shown(page):
    page.wait_for_function("document.querySelector('#reply-a textarea').value.length > 0", timeout=120000)


def test_label_pairs_reload_resumes_and_the_file_is_a_dataset(app, browser, runs):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_tab(browser, app, "DPO", height=1100)
    page.get_by_label("Pairs file name").fill("browser-pairs")
    writer = page.get_by_label("Model or run that writes the candidates")
    assert writer.input_value() == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the real default; the toy keeps this fast
    writer.fill("embedded/tiny-llama")
    writer.press("Enter")
    page.get_by_role("button", name="Start or resume labelling").click()
    status = page.locator("#label-status")
    status.get_by_text("prompt 1 of 6").wait_for(timeout=120000)
    _replies_shown(page)
    first_prompt = page.locator("#label-prompt textarea").input_value()
    assert first_prompt.startswith("Question: How do I make tea?")
    # A as generated, B after an edit, then a skip
    page.get_by_role("button", name="A is better").click()
    status.get_by_text("prompt 2 of 6").wait_for(timeout=60000)
    _replies_shown(page)
    page.locator("#reply-b textarea").fill(" Air scatters blue light more than red.")
    page.get_by_role("button", name="B is better").click()
    status.get_by_text("prompt 3 of 6").wait_for(timeout=60000)
    page.get_by_role("button", name="Both bad (skip)").click()
    status.get_by_text("prompt 4 of 6").wait_for(timeout=60000)
    assert "2 pairs saved, 1 skipped" in status.inner_text()
    assert "labelled by a person" in status.inner_text()  # the page says how the pairs were made

    # a reload mid-labelling picks up the same session at the same prompt, with its count
    page.reload()
    page.get_by_role("tab", name="DPO").click()
    status.get_by_text("prompt 4 of 6").wait_for(timeout=60000)
    _replies_shown(page)
    assert "2 pairs saved, 1 skipped" in status.inner_text()
    assert page.get_by_label("Pairs file name").input_value() == "browser-pairs"
    # the form shows the session it resumed, not the defaults (a press of Start would go on with this session)
    assert page.get_by_label("Model or run that writes the candidates").input_value() == "embedded/tiny-llama"
    assert page.get_by_label("Prompts (a blank line between prompts)").input_value().count("Question:") == 6
    assert page.locator("#label-prompt textarea").input_value().startswith("Question: What is rain?")
    page.get_by_role("button", name="A is better").click()
    status.get_by_text("prompt 5 of 6").wait_for(timeout=60000)
    # Train with DPO now names the file being labelled (on a page load the recipe's own pairs stay)
    assert page.get_by_label("Preference pairs").input_value().endswith("pairs/browser-pairs.jsonl")
    page.screenshot(path=str(ARTIFACTS / "dpo-1-labelling.png"), full_page=True)

    # a side left empty (as when the model wrote nothing) is written in; a refusal keeps both boxes as they are
    # (issue 34, item 1: a refusal used to draw the pair again and lose an edit "Kiev" -> "Kyiv")
    _replies_shown(page)
    page.locator("#reply-a textarea").fill("Kyiv is the capital of Ukraine.")
    page.locator("#reply-b textarea").fill("")
    page.get_by_role("button", name="A is better").click()
    page.locator("#label-message").get_by_text("reply B is empty").wait_for(timeout=60000)
    assert page.locator("#reply-a textarea").input_value() == "Kyiv is the capital of Ukraine."  # kept
    assert "prompt 5 of 6" in status.inner_text()
    page.locator("#reply-b textarea").fill("Kiev.")
    page.get_by_role("button", name="A is better").click()
    status.get_by_text("prompt 6 of 6").wait_for(timeout=60000)

    lines = [json.loads(line) for line in (runs / "pairs" / "browser-pairs.jsonl").read_text().splitlines()]
    assert "_meta" in lines[0] and len(lines) == 5
    assert lines[2]["chosen"] == " Air scatters blue light more than red."
    assert lines[3]["prompt"].startswith("Question: What is rain?")
    assert (lines[4]["chosen"], lines[4]["rejected"]) == ("Kyiv is the capital of Ukraine.", "Kiev.")

    # the Data tab reads the file as an ordinary preference dataset
    page.get_by_role("tab", name="Data").click()
    page.get_by_role("radio", name="Local path").check()
    page.get_by_role("textbox", name="Local path").fill(str(runs / "pairs" / "browser-pairs.jsonl"))
    page.get_by_role("button", name="Load dataset").click()
    info = page.locator("#data-info")
    info.get_by_text("preference").first.wait_for(timeout=60000)
    assert "4 usable rows, 0 dropped" in info.inner_text()


def test_train_tiny_dpo_and_watch_rewards(app, browser):
    page = open_tab(browser, app, "DPO", height=1100)
    fields = page.locator("#dpo-fields")
    steps = fields.get_by_label("Max steps (-1: use epochs)")
    page.wait_for_function("document.querySelector('#dpo-fields input') !== null")
    page.wait_for_function("[...document.querySelectorAll('#dpo-fields input')].some(i => i.value === '24')",
                           timeout=120000)  # the tiny-dpo recipe filled the form
    assert page.get_by_label("Preference pairs").input_value() == "pairs"
    steps.fill("12")
    steps.press("Tab")
    page.get_by_role("button", name="Start DPO").click()
    page.locator("#dpo-message").get_by_text("Started").wait_for(timeout=60000)
    page.locator('#dpo-progress [data-status="done"]').wait_for(timeout=400000)
    page.wait_for_function("document.querySelector('#dpo-heldout').innerText.includes('Question:')", timeout=30000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "dpo-2-trained.png"), full_page=True)
    assert page.locator("#dpo-chart .js-plotly-plot").count() == 1
    assert "rewardaccuracy" in "".join(page.locator("#dpo-chart").inner_text().split())  # titles wrap on two lines
    log = page.locator("#dpo-log textarea").input_value()
    assert "held-out test pairs (" in log and "mean reward margin" in log and "reward accuracy" in log


def test_a_recipe_pick_keeps_the_pairs_you_made_and_says_so(app):
    """Issue 34, item 8: picking a DPO recipe put its bundled pairs over the file just labelled."""
    from gradio_client import Client

    client = Client(app, verbose=False)
    *fields, _flat, message = client.predict("tiny-dpo", "runs/pairs/browser-pairs.jsonl", api_name="/fill_dpo")
    assert "runs/pairs/browser-pairs.jsonl" in fields and "Kept your pairs" in message, (fields, message)
    *fields, _flat, message = client.predict("tiny-dpo", "pairs", api_name="/fill_dpo")  # the recipe's own: no note
    assert "pairs" in fields and message == ""
