import pytest

from studio.errors import StudioError
from studio.recipes import RECIPES_DIR, load_recipe


def test_estimate_matches_the_real_peft_model(embedded_path):
    from peft import get_peft_model
    from trl import get_peft_config

    from studio.models import estimate_parameters, load_model, parameter_report

    args = load_recipe(RECIPES_DIR / "tiny-quotes.yaml").model_config()
    real = parameter_report(get_peft_model(load_model(args), get_peft_config(args)))
    assert estimate_parameters(args) == real
    assert real["trainable"] == 45056 and 0 < real["percent"] < 100


def test_tokenizer_fixes_and_dtype(embedded_path):
    import torch

    from studio.models import load_tokenizer, pick_dtype

    tok = load_tokenizer("embedded/tiny-llama")
    assert tok.pad_token and tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert pick_dtype() == (torch.float32 if not torch.cuda.is_available() else pick_dtype())


def test_local_folder_and_offline_errors(tmp_path):
    from studio.models import load_tokenizer

    with pytest.raises(StudioError, match="not in the local cache and the Hub can't be reached"):
        load_tokenizer("meta-llama/Llama-2-7b-hf")
    (tmp_path / "junk").mkdir()
    with pytest.raises(StudioError, match="junk"):
        load_tokenizer(str(tmp_path / "junk"))


def test_embedded_model_is_small_and_reproducible(embedded_path):
    from studio.models import folder_size

    assert folder_size(embedded_path) < 20 * 2**20
    assert embedded_path.name.startswith("tiny-llama-")
