"""GRPO on the page without a browser: the reward menu's rows ↔ the recipe's `rewards:` list, one plain line for a
bad entry, the completions table and the reward report shown as text."""

import pytest

from studio.errors import StudioError

ROWS = 4


def _keys():
    from studio.ui.train_tab import ADVANCED, BASIC, GRPO, LAPDOG

    return (["model_name_or_path", "dataset.source", "dataset.format", "dataset.template"] + [k for k, _ in BASIC]
            + [k for k, _ in ADVANCED] + ["eval_prompts"] + [k for k, _ in LAPDOG]
            + [f"rewards.{n}.{part}" for n in range(1, ROWS + 1) for part in ("type", "weight", "settings")]
            + [k for k, _ in GRPO] + ["reward_code"])


def _form(name, **changes):
    """The Train form as the page fills it from recipe `name`, with fields changed as a person would."""
    from studio.ui.train_tab import _flat_to_widget, form_value, load_form

    flat = load_form(name)
    keys = _keys()
    values = [_flat_to_widget(k, form_value(flat, k)) for k in keys]
    for key, value in changes.items():
        values[keys.index(key)] = value
    return keys, values, flat


def _recipe(name, **changes):
    from studio.recipes import recipe_from_flat
    from studio.ui.train_tab import form_to_flat

    keys, values, flat = _form(name, **changes)
    return recipe_from_flat(form_to_flat(keys, values, flat, grpo_section=True))


def test_the_form_shows_a_grpo_recipes_rewards_and_gives_them_back():
    from studio.ui.grpo import REWARD_ROWS

    assert REWARD_ROWS == ROWS
    keys, values, _ = _form("tiny-grpo")
    shown = dict(zip(keys, values))
    assert (shown["rewards.1.type"], shown["rewards.1.weight"], shown["rewards.1.settings"]) == ("number", 1.0, "")
    assert shown["rewards.2.type"] == "length" and shown["rewards.2.settings"] == "min=1; max=4; unit=words"
    assert shown["rewards.3.type"] == "(none)" and shown["num_generations"] == 4 and shown["beta"] == 0.0
    assert shown["studio.heldout_prompts"] == 16
    recipe = _recipe("tiny-grpo", **{"rewards.3.type": "json", "rewards.3.weight": 0.5,
                                     "rewards.3.settings": "keys=name, age", "num_generations": 2.0})
    assert recipe.header["rewards"] == [{"type": "number", "weight": 1.0},
                                        {"type": "length", "min": 1, "max": 4, "unit": "words", "weight": 0.5},
                                        {"type": "json", "keys": ["name", "age"], "weight": 0.5}]
    assert recipe.train["num_generations"] == 2


def test_an_sft_recipe_has_no_rewards_and_its_grpo_fields_stay_unset():
    keys, values, _ = _form("tiny-quotes")
    shown = dict(zip(keys, values))
    assert (shown["rewards.1.type"], shown["rewards.1.weight"], shown["num_generations"]) == ("(none)", 1.0, None)
    recipe = _recipe("tiny-quotes")
    assert recipe.method == "sft" and "rewards" not in recipe.header and "num_generations" not in recipe.train
    # an API client that leaves the GRPO fields out sends their initial values: another method ignores them
    recipe = _recipe("tiny-quotes", num_generations=8, max_completion_length=256, temperature=1.0, beta=0.0,
                     reward_code="", **{"studio.heldout_prompts": 200})
    assert recipe.method == "sft" and "temperature" not in recipe.train and "heldout_prompts" not in recipe.studio


@pytest.mark.parametrize("changes, said", [
    ({"rewards.2.settings": "min=1; max=many"}, "form: reward 2 (length): max must be a number, got 'many'"),
    ({"rewards.2.settings": "min 1"}, "settings are name=value pairs separated by ';'"),
    ({"rewards.1.type": "regex", "rewards.1.settings": "pattern=(("}, "rewards entry 1 (regex): pattern does not "
                                                                      "compile"),
    ({"rewards.1.type": "contains", "rewards.1.settings": "colour=red"}, "unknown setting 'colour'; it takes text"),
    ({"rewards.1.type": "(none)", "rewards.2.type": "(none)"}, "a GRPO run needs at least one reward"),
    ({"rewards.1.weight": 1000.0}, "weight must be a number from -100 to 100"),
])
def test_a_bad_entry_is_one_plain_line(changes, said):
    with pytest.raises(StudioError) as e:
        _recipe("tiny-grpo", **changes)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_regex_keeps_its_semicolons_and_a_shared_app_refuses_reward_code(monkeypatch):
    recipe = _recipe("tiny-grpo", **{"rewards.1.type": "regex", "rewards.1.settings": r"pattern=^\d+;$"})
    assert recipe.header["rewards"][0] == {"type": "regex", "pattern": r"^\d+;$", "weight": 1.0}
    from studio.ui.grpo import reward_types

    assert "code" in reward_types(local=True) and "code" not in reward_types(local=False)
    monkeypatch.setenv("STUDIO_SHARED", "1")
    with pytest.raises(StudioError, match="reward_code runs a Python file on the server"):
        _recipe("tiny-grpo", reward_code="/tmp/mine.py", **{"rewards.3.type": "code",
                                                             "rewards.3.settings": "function=f"})


def test_the_train_tab_offers_a_reward_code_field_only_on_a_local_app(monkeypatch):
    import gradio as gr

    from studio.ui.common import browser_state
    from studio.ui.train_tab import create_train_tab

    def labels():
        with gr.Blocks() as demo:
            create_train_tab(browser_state())
        return [getattr(b, "label", None) or "" for b in demo.blocks.values()], [
            getattr(b, "choices", None) for b in demo.blocks.values() if getattr(b, "label", None) == "Reward 1"][0]

    shown, choices = labels()
    assert any(label.startswith("Reward code file") for label in shown) and ("code", "code") in choices
    monkeypatch.setenv("STUDIO_SHARED", "1")
    shown, choices = labels()
    assert not any(label.startswith("Reward code file") for label in shown) and ("code", "code") not in choices
    assert ("regex", "regex") in choices


def test_completions_and_reports_are_text_not_markup():
    from studio.ui.grpo import completions_markdown, report_text

    pixel = "![x](http://evil.example/p.png) <img src=x onerror=alert(1)> [link](http://evil.example)"
    table = completions_markdown({"step": 3, "rows": [
        {"prompt": "2+2?", "completion": pixel, "rewards": {"number": 0.0, "format_last_line": 1.0},
         "advantage": -0.5},
        {"prompt": "2+2?", "completion": "4", "rewards": {"number": 1.0, "format_last_line": 1.0}, "advantage": 0.5},
        {"prompt": "1+1?", "completion": "", "rewards": {"number": 0.0, "format_last_line": 0.0}, "advantage": 0.0}]})
    assert "(step 3;" in table
    lines = table.splitlines()
    assert lines[2] == "| prompt | completion | number | format&#95;last&#95;line | advantage |"
    assert "<img" not in table and "](" not in table and "![" not in table
    assert lines[5] == "| <i>same prompt</i> | 4 | 1.00 | 1.00 | +0.50 |"
    assert lines[6] == "| 1+1? | <i>(empty)</i> | 0.00 | 0.00 | +0.00 |"
    assert completions_markdown(None) == "" and completions_markdown({"rows": []}) == ""

    report = {"prompts": 2, "accuracy_from": "number", "rewards": [], "source": "the test split",
              "reward": {"means": {"base (m)": 0.0, "my_run_*x*": 0.5},
                         "intervals": {"base (m)": [0.0, 0.0], "my_run_*x*": [0.0, 1.0]}},
              "accuracy": {"means": {"base (m)": 0.0, "my_run_*x*": 0.5},
                           "intervals": {"base (m)": [0.0, 0.0], "my_run_*x*": [0.0, 1.0]}},
              "words": ["my_run_*x* − base (m), mean reward: +0.500 [+0.000, +1.000]: within noise"],
              "examples": [{"prompt": pixel, "reference": "4", "base (m)": {"completion": "", "reward": 0.0},
                            "my_run_*x*": {"completion": "4", "reward": 1.0}}]}
    text = report_text(report)
    assert "| my&#95;run&#95;&#42;x&#42; | 0.500 [0.000, 1.000] | 50.0% [0.0%, 100.0%] |" in text
    assert "within noise" in text and "<img" not in text and "](" not in text
    assert "First held-out prompts" in text and "4<br><i>reward 1.00</i>" in text


def test_the_dpo_forms_own_beta_is_read_although_grpo_has_a_beta_too():
    """The DPO tab's form shares form_to_flat with Train; GRPO's hidden section must not swallow DPO's beta."""
    from studio.recipes import load_recipe, recipe_from_flat, recipe_to_flat
    from studio.ui.train_tab import form_to_flat

    flat = recipe_to_flat(load_recipe("tiny-dpo"))
    recipe = recipe_from_flat(form_to_flat(["beta", "loss_type"], [0.37, "ipo"], flat))
    assert recipe.train["beta"] == 0.37 and recipe.train["loss_type"] == "ipo"
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="beta"):
        recipe_from_flat(form_to_flat(["beta"], [-1], flat))
