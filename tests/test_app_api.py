"""The app's events through gradio_client, against the real app on a local port."""

import time

import pytest
import yaml

from app_server import start_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("api") / "runs"
    runs.mkdir()
    proc, url = start_app(runs)
    yield url, runs
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def test_inspect_bundled_sample(client):
    status, info, _plot = client.predict("Bundled sample", "dolly", None, "", "", "", "", "auto", "",
                                         "embedded/tiny-llama", api_name="/inspect_data")
    assert "Loaded" in status and "format **dolly**" in info and "1 dropped" in info
    assert "### Instruction:" in info and "Tokens per example" in info


def test_inspect_bad_path_is_one_line_inline(client):
    status, info, _plot = client.predict("Local path", "quotes", None, "/nope/missing.jsonl", "", "", "",
                                         "auto", "", "", api_name="/inspect_data")
    assert "studio-error" in status and "missing.jsonl: no such file" in status and "Traceback" not in status
    assert info == ""


def _form(**changes):
    """Form values in the Train tab's order, from the tiny-quotes recipe."""
    from studio.recipes import RECIPES_DIR, load_recipe, recipe_to_flat
    from studio.ui.train_tab import ADVANCED, BASIC, LAPDOG, _flat_to_widget, form_value

    flat = recipe_to_flat(load_recipe(RECIPES_DIR / "tiny-quotes.yaml"))
    flat.update(changes)
    keys = ["model_name_or_path", "dataset.source", "dataset.format", "dataset.template"] + [k for k, _ in BASIC] + [
        k for k, _ in ADVANCED] + ["eval_prompts"] + [k for k, _ in LAPDOG]
    return flat, [_flat_to_widget(k, form_value(flat, k)) for k in keys]


def test_parameter_report_and_save_recipe(client, tmp_path):
    client.predict("tiny-quotes", api_name="/fill")  # as the page does on load: the session keeps the recipe
    flat, values = _form(lora_r=4)
    report = client.predict(*values, api_name="/check_parameters")
    assert "trainable params: 11,264 || all params: 265,536" in report and "trainable%" in report
    path = client.predict(*values, api_name="/save_recipe")
    saved = yaml.safe_load(open(path).read())
    assert saved["lora_r"] == 4 and saved["model_name_or_path"] == "embedded/tiny-llama"
    assert saved["name"] == "tiny-quotes" and saved["save_total_limit"] == 2  # keys the form doesn't show are kept
    # what the download holds runs unchanged with the CLI's loader
    from studio.recipes import load_recipe

    copy = tmp_path / "saved.yaml"
    copy.write_text(open(path).read())
    assert load_recipe(copy).model["lora_r"] == 4


def test_start_second_start_and_stop_from_another_visitor(client, app):
    client.predict("tiny-quotes", api_name="/fill")
    flat, values = _form(max_steps=3000, save_steps=1000, eval_steps=1000)
    msg = client.predict("visitor-a", *values, api_name="/start_training")
    assert "Started" in msg
    from gradio_client import Client

    other = Client(app[0], verbose=False)  # another browser: another session (a client id as text proves nothing)
    msg = other.predict("visitor-b", *values, api_name="/start_training")
    assert "already running" in msg  # a local app: one person, no waiting list
    # locally a second browser is the same person at the keyboard (issue 27): it may stop the job
    assert "Stopping" in other.predict(None, api_name="/stop_training")
    runs = app[1]
    deadline = time.time() + 60
    while time.time() < deadline and not list(runs.glob("*/summary.json")):
        time.sleep(0.3)
    assert list(runs.glob("*/checkpoints/checkpoint-*/.complete"))


def test_a_lapdog_recipe_shows_its_own_settings_and_the_form_trains_them(client):
    """Issue 34, item 7: picking a lapdog recipe showed only SFT fields; `retrieval.*` was CLI-only."""
    from studio.recipes import RECIPES_DIR, load_recipe, recipe_to_flat
    from studio.ui.train_tab import ADVANCED, BASIC, LAPDOG, _flat_to_widget, form_value

    keys = ["model_name_or_path", "dataset.source", "dataset.format", "dataset.template"] + [k for k, _ in BASIC] + [
        k for k, _ in ADVANCED] + ["eval_prompts"] + [k for k, _ in LAPDOG]
    shown = client.predict("smollm2-persona-lapdog", api_name="/fill")  # (the section's visibility: browser test)
    assert shown[keys.index("retrieval.k")] == 4 and shown[keys.index("retrieval.query")] == "persona"
    assert shown[keys.index("retrieval.stage1_steps")] == 30 and shown[keys.index("retrieval.tau_score")] == 0.1
    shown = client.predict("tiny-quotes", api_name="/fill")
    assert shown[keys.index("retrieval.k")] is None  # an SFT recipe has no retrieval block
    client.predict("tiny-persona-lapdog", api_name="/fill")  # the session keeps the recipe's other keys
    flat = recipe_to_flat(load_recipe(RECIPES_DIR / "tiny-persona-lapdog.yaml"))
    values = [_flat_to_widget(k, form_value(flat, k)) for k in keys]
    values[keys.index("retrieval.k")] = 3
    values[keys.index("retrieval.stage2_steps")] = 7
    values[keys.index("retrieval.query")] = "persona+turn"
    values[keys.index("retrieval.refresh_steps")] = 2
    saved = yaml.safe_load(open(client.predict(*values, api_name="/save_recipe")).read())
    assert saved["method"] == "lapdog"
    assert (saved["retrieval"]["k"], saved["retrieval"]["stage2_steps"], saved["retrieval"]["query"],
            saved["retrieval"]["refresh_steps"]) == (3, 7, "persona+turn", 2)
    assert saved["retrieval"]["tau_gold"] == flat["retrieval"]["tau_gold"]  # fields left alone keep their values
