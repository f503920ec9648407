"""GRPO in headless Chromium (issue 33): a person picks smollm2-grpo (the real SmolLM2-135M-Instruct, offline), sizes
it down in the form, starts it, watches the reward chart and the sampled-completions table update, stops and
resumes it, reads the held-out reward table, and compares the run with its base on the Evaluate tab."""

import json
import re

import pytest

from app_server import ROOT, attribute, needs_chromium, running_app, wait_for

pytestmark = needs_chromium
ARTIFACTS = ROOT / "artifacts" / "screenshots"
# typed into the form as a person would: small enough for CI on 2 cores, real enough to sample and score
FORM = {"Max steps (-1: use epochs)": "6", "Micro-batch": "2", "Grad accumulation": "1"}
GRPO_FORM = {"Completions per prompt (num_generations)": "2", "Max completion length (tokens)": "8",
             "Held-out prompts scored after training": "4"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("grpo-browser") / "runs"
    runs.mkdir()
    with running_app(runs) as url:
        yield url, runs


def _status(page):
    return attribute(page, "#train-progress .studio-progress", "data-status")


def _step_shown(page):
    found = re.search(r"Latest sampled completions\s*\(step (\d+)", page.locator("#train-completions").inner_text())
    return int(found.group(1)) if found else None


def _pick(page, dropdown, option):
    dropdown.click()
    page.get_by_role("option", name=option, exact=True).click()


def _type(field, value):
    field.fill(value)
    field.press("Tab")


def test_pick_train_watch_stop_resume_and_evaluate_grpo(app, browser):
    url, runs = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    grpo = page.locator("#train-grpo")
    steps = page.get_by_label("Max steps (-1: use epochs)")
    wait_for(lambda: steps.input_value() == "200", 60, "the tiny-quotes form")
    assert not grpo.is_visible()  # an SFT recipe has no rewards

    from studio.recipes import load_recipe
    from studio.rewards import named_specs
    from studio.ui.grpo import settings_text

    wanted = load_recipe(ROOT / "recipes" / "smollm2-grpo.yaml")
    recipe = page.get_by_label("Recipe")
    recipe.click()
    page.get_by_role("option", name="smollm2-grpo").click()
    generations = grpo.get_by_label("Completions per prompt (num_generations)")
    wait_for(lambda: grpo.is_visible() and generations.input_value() == f"{wanted.train['num_generations']:g}", 60,
             "the smollm2-grpo form")
    # the recipe's reward menu, as rows of the form: type, weight, settings
    rewards = wanted.header["rewards"]
    names = [name for _, name in named_specs(rewards)]  # as TRL logs them: rewards/<name>/mean
    assert 2 <= len(rewards) <= 3
    for i, entry in enumerate(rewards):
        assert grpo.get_by_label(f"Reward {i + 1}").input_value() == entry["type"]
        assert grpo.get_by_label("Weight").nth(i).input_value() == f"{entry.get('weight', 1.0):g}"
        assert grpo.get_by_label("Settings (name=value; …)").nth(i).input_value() == settings_text(entry)
    assert grpo.get_by_label(f"Reward {len(rewards) + 1}").input_value() == "(none)"
    assert grpo.get_by_label("Sampling temperature").input_value() == f"{wanted.train['temperature']:g}"
    assert grpo.get_by_label("β: KL to the reference (0: none)").input_value() == f"{wanted.train['beta']:g}"
    assert grpo.get_by_label("Reward code file").is_visible()  # a local app: the owner's own file
    page.screenshot(path=str(ARTIFACTS / "grpo-1-recipe.png"), full_page=True)

    # a bad entry is one plain line (the reward menu's own check), nothing starts
    free = len(rewards) + 1
    _pick(page, grpo.get_by_label(f"Reward {free}"), "format")
    _type(grpo.get_by_label("Settings (name=value; …)").nth(free - 1), "rule=middle")
    page.get_by_role("button", name="Check parameters").click()
    page.locator("#param-report").get_by_text(f"rewards entry {free} (format): rule must be one of last_line, "
                                              "tags").wait_for(timeout=60000)
    _pick(page, grpo.get_by_label(f"Reward {free}"), "(none)")  # the row left out again: the recipe's rewards

    for label, value in FORM.items():
        _type(page.get_by_label(label), value)
    for label, value in GRPO_FORM.items():
        _type(grpo.get_by_label(label), value)
    page.get_by_text("Advanced", exact=True).click()
    _type(page.get_by_label("Log every N steps"), "1")
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator("#train-message").get_by_text("Started").wait_for(timeout=60000)

    # the live view: the reward chart and the latest completions with their rewards and advantages
    wait_for(lambda: _step_shown(page) is not None, 240, lambda: f"the completions table ({_status(page)})")
    first = _step_shown(page)
    chart = page.locator("#train-chart")
    wait_for(lambda: "mean reward" in chart.inner_text(), 30, "the reward chart")
    assert "no signal" in chart.inner_text() and all(name in chart.inner_text() for name in names)
    assert "loss" not in chart.inner_text().lower().replace("no signal", "")  # rewards, not the loss chart
    table = page.locator("#train-completions table")
    heads = [h.strip() for h in table.locator("th").all_inner_texts()]
    assert heads == ["prompt", "completion", *names, "advantage"], heads
    cells = table.locator("tbody tr").first.locator("td").all_inner_texts()
    assert "How many" in cells[0]  # the arithmetic problem the completion answers
    assert re.fullmatch(r"[01]\.\d\d", cells[2].strip()) and re.fullmatch(r"[+-]\d\.\d\d", cells[4].strip()), cells
    page.screenshot(path=str(ARTIFACTS / "grpo-2-running.png"), full_page=True)
    wait_for(lambda: (_step_shown(page) or 0) > first, 120, "the completions table to update")

    # stop, then resume from the checkpoint the stop saved
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_for(lambda: _status(page) == "cancelled", 120, lambda: f"the stop ({_status(page)})")
    stopped_at = int(page.locator("#train-progress .studio-progress").get_attribute("data-step"))
    assert 1 <= stopped_at < 6
    page.locator("#train-message").get_by_text("press Resume").wait_for(timeout=30000)
    page.get_by_role("button", name="Resume", exact=True).click()
    page.locator("#train-message").get_by_text("Resuming").wait_for(timeout=60000)
    wait_for(lambda: _status(page) == "done", 300, lambda: f"the resumed run to finish ({_status(page)})")
    run_dir = next(p for p in runs.iterdir() if p.name.startswith("smollm2-grpo-"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["method"] == "grpo"
    resumed = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e.get("type") == "status" and e.get("resume") for e in resumed)

    # after training: the before/after samples and the held-out reward table under them
    samples = page.locator("#train-samples")
    wait_for(lambda: "Rewards on 4 held-out prompts" in samples.inner_text(), 60, "the held-out reward table")
    text = samples.inner_text()
    assert "Before / after" in text and text.index("Before / after") < text.index("Rewards on 4 held-out")
    held = summary["heldout"]
    for label in ("base", "tuned"):
        lo, hi = held["reward_interval"][label]
        assert f"{held['mean_reward'][label]:.3f} [{lo:.3f}, {hi:.3f}]" in text, (label, text)
    assert "tuned − base, mean reward:" in text
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "grpo-3-finished.png"), full_page=True)

    # Evaluate: the run against its base, scored by its own reward functions
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_text("GRPO runs: rewards vs base on held-out prompts").click()
    pick = page.locator("#eval-grpo-run input")
    pick.click()
    page.get_by_role("option", name=run_dir.name).click()
    _type(page.locator("#eval-grpo").get_by_label("Max prompts"), "4")
    page.locator("#eval-grpo-go").click()
    report = page.locator("#eval-grpo-report")
    wait_for(lambda: "Rewards on 4 held-out prompts" in report.inner_text(), 300,
             lambda: f"the rewards report ({page.locator('#eval-grpo-message').inner_text()})")
    text = report.inner_text()
    rows = report.locator("table").first.locator("tbody tr").all_inner_texts()
    assert [r.split("\t")[0].strip() for r in rows] == ["base (HuggingFaceTB/SmolLM2-135M-Instruct)", run_dir.name]
    # the same greedy answers to the same prompts, scored by the same functions: the run's own table's numbers
    tuned = held["mean_reward"]["tuned"]
    assert f"{tuned:.3f} [" in rows[1], (rows, held)
    found = re.search(rf"{re.escape(run_dir.name)} − base \(.*\), mean reward: ([+-]\d\.\d+) \[([+-]\d\.\d+), "
                      r"([+-]\d\.\d+)\]: (.+)", text)
    assert found, text
    delta, lo, hi, verdict = float(found[1]), float(found[2]), float(found[3]), found[4]
    assert lo <= delta <= hi
    assert ("within noise" in verdict) == (lo <= 0 <= hi)
    assert "First held-out prompts" in text and "How many" in text
    assert "held-out prompts" in page.locator("#eval-grpo-message").inner_text()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "grpo-4-evaluate.png"), full_page=True)
    page.context.close()
