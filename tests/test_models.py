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


def test_gated_model_message_says_how_to_fix():
    from huggingface_hub.errors import GatedRepoError

    from studio.models import _load_error

    import httpx

    response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/google/gemma-2b"))
    err = _load_error("google/gemma-2b", GatedRepoError("Access to model google/gemma-2b is restricted",
                                                        response=response))
    assert "gated" in str(err) and "https://huggingface.co/google/gemma-2b" in str(err) and "HF_TOKEN" in str(err)


def test_qlora_4bit_nf4_loads_and_trains_on_cpu(tmp_path):
    """The QLoRA code path through bitsandbytes (which runs 4-bit on CPU, slowly)."""
    import bitsandbytes as bnb

    from conftest import tiny_recipe
    from studio import jobs

    recipe = tiny_recipe(load_in_4bit=True, use_bnb_nested_quant=True, max_steps=3, eval_steps=3, save_steps=3)
    from studio.models import load_model

    model = load_model(recipe.model_config())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    job = jobs.start_job(recipe, runs_dir=tmp_path)
    job.wait(240)
    assert job.status == "done", job.error
    assert (job.run_dir / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("local_rank, expected", [("1", 1), (None, 0)])
def test_4bit_weights_go_to_this_processs_gpu_under_torchrun(monkeypatch, embedded_path, local_rank, expected):
    """Under torchrun each process loads its 4-bit copy on its own GPU (LOCAL_RANK), not all of them on GPU 0.
    No GPU here: CUDA is said to be there and the load is caught at from_pretrained."""
    import torch
    import transformers
    from trl import ModelConfig, SFTTrainer, get_quantization_config  # noqa: F401 - imported before CUDA "appears"

    from studio.models import load_model

    get_quantization_config(ModelConfig(load_in_4bit=True))

    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("caught")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_load)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(Exception, match="caught"):
        load_model(ModelConfig(model_name_or_path="embedded/tiny-llama", load_in_4bit=True))
    assert seen["device_map"] == {"": expected}
