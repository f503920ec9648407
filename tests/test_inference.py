"""Loading a base or a run for generation, and batched generation equal to one-at-a-time."""

import pytest

from conftest import tiny_recipe
from studio import jobs
from studio.errors import StudioError
from studio.inference import generate, is_run_ref, load_for_inference

PROMPTS = ["Quote: I am not talented", "Quote: A Woman is like a tea bag;", "The", "### Instruction:\nSay hi\n\n"
           "### Response:\n", "Data: name[The Eagle], food[French]\nText: "]


def test_batched_greedy_equals_one_at_a_time():
    loaded = load_for_inference("embedded/tiny-llama")
    batched = generate(loaded.model, loaded.tokenizer, PROMPTS, 16, batch_size=4)
    single = [generate(loaded.model, loaded.tokenizer, [p], 16, batch_size=1)[0] for p in PROMPTS]
    assert batched == single and all(batched)


def test_a_stop_text_ends_each_row_there_with_the_same_text_before_it():
    """Evaluate cuts single-line answers at the first newline: generation stops each row there instead of decoding
    to max_new_tokens what is thrown away (issue 34: Evaluate of 4 rows x 3 models), and the text before the stop is
    what it was. The embedded model writes no newlines: its most common letter stands in for one."""
    loaded = load_for_inference("embedded/tiny-llama")
    steps = []
    forward = loaded.model.forward
    loaded.model.forward = lambda *a, **k: steps.append(1) or forward(*a, **k)
    try:
        full = generate(loaded.model, loaded.tokenizer, PROMPTS, 24, batch_size=4)
        full_steps = len(steps)
        stop = max("abcdefghijklmnopqrstuvwxyz", key=lambda c: sum(c in text for text in full))
        cut = generate(loaded.model, loaded.tokenizer, PROMPTS, 24, batch_size=4, stop=stop)
    finally:
        del loaded.model.forward
    assert [text.split(stop)[0] for text in cut] == [text.split(stop)[0] for text in full]
    assert all(stop in c for f, c in zip(full, cut) if stop in f)
    assert len(steps) - full_steps < full_steps / 2  # fewer than half the decoding steps


def test_seeded_sampling_is_reproducible():
    loaded = load_for_inference("embedded/tiny-llama")
    a = generate(loaded.model, loaded.tokenizer, PROMPTS[:2], 12, do_sample=True, seed=3, temperature=1.2)
    b = generate(loaded.model, loaded.tokenizer, PROMPTS[:2], 12, do_sample=True, seed=3, temperature=1.2)
    assert a == b


def test_run_loads_its_adapter_on_its_base_and_base_is_really_the_base(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    job = jobs.start_job(tiny_recipe(max_steps=30, save_steps=30, eval_steps=30), runs_dir=runs)
    assert job.wait(120) and job.status == "done", job.error
    assert is_run_ref(job.id) and is_run_ref(str(job.run_dir)) and not is_run_ref("embedded/tiny-llama")
    tuned = load_for_inference(job.id)
    base_of_run = load_for_inference(job.id, adapter=False)
    plain = load_for_inference("embedded/tiny-llama")
    assert tuned.adapter is not None and base_of_run.adapter is None and tuned.base == "embedded/tiny-llama"
    prompts = PROMPTS[:2]
    out_tuned = generate(tuned.model, tuned.tokenizer, prompts, 16)
    out_base = generate(base_of_run.model, base_of_run.tokenizer, prompts, 16)
    assert out_base == generate(plain.model, plain.tokenizer, prompts, 16)
    assert out_tuned != out_base


def test_unknown_run_or_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))
    with pytest.raises(StudioError, match="model no/such-model"):
        load_for_inference("no/such-model")


def test_a_prompt_that_already_starts_with_bos_gets_no_second_one(embedded_path):
    """Chat templates such as Llama-3's and Gemma's write the start token themselves."""
    from transformers import AutoTokenizer

    from studio.inference import _has_bos

    tok = AutoTokenizer.from_pretrained(embedded_path)
    tok.bos_token = tok.bos_token or "<|im_start|>"
    assert _has_bos(tok, [tok.bos_token + "user\nhi", tok.bos_token + "x"])
    assert not _has_bos(tok, [tok.bos_token + "user\nhi", "plain text"])
