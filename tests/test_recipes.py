
import pytest
import yaml

from studio.errors import StudioError
from studio.recipes import RECIPES_DIR, load_recipe, recipe_from_dict

ALL = sorted(RECIPES_DIR.glob("*.yaml"))


def test_there_are_recipes_for_each_notebook():
    names = {p.stem for p in ALL}
    assert {"tiny-quotes", "gemma-2b-quotes-qlora", "llama2-dolly-lora", "gpt2-e2e-lora"} <= names


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_every_recipe_validates_against_installed_trl_and_peft(path):
    from peft import LoraConfig
    from trl import get_peft_config

    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.header["description"] and recipe.header["source_notebook"]
    args, _ = recipe.training_config("/tmp/out")  # the real TRL dataclass accepts every key
    assert type(args).__name__ == {"dpo": "DPOConfig", "grpo": "GRPOConfig"}.get(recipe.method, "SFTConfig")
    peft_config = get_peft_config(recipe.model_config())
    assert isinstance(peft_config, LoraConfig) and peft_config.r == recipe.model["lora_r"]


def test_notebook_settings_are_kept():
    gemma = load_recipe(RECIPES_DIR / "gemma-2b-quotes-qlora.yaml")
    assert gemma.model["load_in_4bit"] and gemma.model["bnb_4bit_quant_type"] == "nf4" and gemma.model["lora_r"] == 8
    assert gemma.train["max_steps"] == 100 and gemma.train["learning_rate"] == 2e-4 and gemma.train["optim"] == "paged_adamw_8bit"
    llama = load_recipe(RECIPES_DIR / "llama2-dolly-lora.yaml")
    assert llama.train["load_best_model_at_end"] and llama.train["metric_for_best_model"] == "eval_loss"
    assert llama.dataset["splits"] == "80/10/10"
    gpt2 = load_recipe(RECIPES_DIR / "gpt2-e2e-lora.yaml")
    assert (gpt2.model["lora_r"], gpt2.model["lora_alpha"], gpt2.train["max_length"]) == (16, 128, 64)


def test_misspelt_key_fails_with_suggestion(tmp_path):
    data = yaml.safe_load((RECIPES_DIR / "tiny-quotes.yaml").read_text())
    data["learning_rat"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(StudioError, match=r"bad\.yaml: unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        load_recipe(path)


def test_bad_values_and_yaml(tmp_path):
    with pytest.raises(StudioError, match="'max_steps' must be int"):
        load_recipe(RECIPES_DIR / "tiny-quotes.yaml", ["max_steps=lots"])
    with pytest.raises(StudioError, match="unknown key 'dataset.sauce'"):
        load_recipe(RECIPES_DIR / "tiny-quotes.yaml", ["dataset.sauce=x"])
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\n  method: [sft\n")
    with pytest.raises(StudioError, match=r"broken\.yaml line \d+: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(StudioError, match="unknown method 'ppo'"):
        recipe_from_dict({"method": "ppo"})


def test_yaml_no_means_the_word_no_for_strategy_fields():
    r = load_recipe(RECIPES_DIR / "tiny-quotes.yaml", ["eval_strategy=no", "save_strategy=no"])
    args, _ = r.training_config("/tmp/out")
    assert args.eval_strategy == "no" and args.save_strategy == "no"


def test_set_overrides_and_string_numbers():
    r = load_recipe(RECIPES_DIR / "tiny-quotes.yaml", ["max_steps=7", "learning_rate=2e-4", "dataset.source=dolly"])
    assert r.train["max_steps"] == 7 and r.train["learning_rate"] == pytest.approx(2e-4)
    assert r.dataset["source"] == "dolly"


def test_round_trip_and_tokens_never_written(tmp_path, monkeypatch):
    r = load_recipe(RECIPES_DIR / "tiny-quotes.yaml")
    r.train["hub_token"] = "hf_abcdefghijklmnopqrstuvwxyz123456"
    r.header.setdefault("export", {})["hub_model_id"] = "hf_abcdefghijklmnopqrstuvwxyz123456"
    text = r.to_yaml()
    assert "hf_abcdefghijklmnop" not in text
    path = tmp_path / "again.yaml"
    path.write_text(text)
    again = load_recipe(path)
    assert again.train == {k: v for k, v in r.train.items() if k != "hub_token"} and again.model == r.model


def test_cpu_adaptation_is_recorded():
    gemma = load_recipe(RECIPES_DIR / "gemma-2b-quotes-qlora.yaml")
    args, notes = gemma.training_config("/tmp/out")
    assert args.use_cpu and not args.bf16 and args.optim == "adamw_torch"
    assert any("bf16 off" in n for n in notes) and any("paged_adamw_8bit" in n for n in notes)
