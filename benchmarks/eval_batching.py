"""Batched vs one-at-a-time greedy generation: the same 64 prompts, both times, the ratio, identical outputs.

Models: the embedded tiny Llama and the SmolLM2-135M architecture (assets/configs, random init).
Prints a table, then one JSON line: {"speedup": smaller ratio, "identical": all outputs equal, ...}.

    python benchmarks/eval_batching.py [--prompts 64] [--max-new-tokens 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import ROOT, random_model_folder


def prompts(n: int) -> list[str]:
    """Real prompts from the bundled samples, in the layouts the studio evaluates, varied in length."""
    rows = []
    for name, make in (("quotes", lambda r: f"Quote: {r['quote']}\nAuthor: "),
                       ("dolly", lambda r: f"### Instruction:\n{r['instruction']}\n\n### Response:\n"),
                       ("e2e", lambda r: f"Data: {r['mr']}\nText: ")):
        rows += [make(json.loads(line)) for line in (ROOT / "assets" / "samples" / f"{name}.jsonl").open()]
    return [rows[(i * 7) % len(rows)] for i in range(n)]


def bench(label: str, path: str, texts: list[str], max_new: int, batch_size: int) -> dict:
    from studio.inference import generate, load_for_inference

    loaded = load_for_inference(path)
    model, tok = loaded.model, loaded.tokenizer
    generate(model, tok, texts[:2], 4, batch_size=2)  # warm-up
    t = time.perf_counter()
    single = [generate(model, tok, [p], max_new, batch_size=1)[0] for p in texts]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    batched = generate(model, tok, texts, max_new, batch_size=batch_size)
    t_batched = time.perf_counter() - t
    diff = [i for i, (a, b) in enumerate(zip(single, batched)) if a != b]
    return {"model": label, "one_at_a_time_s": round(t_single, 2), "batched_s": round(t_batched, 2),
            "speedup": round(t_single / t_batched, 2), "identical": not diff, "differing_rows": diff}


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    texts = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        smol = random_model_folder("smollm2-135m", Path(tmp) / "smollm2-135m")
        results = [bench("embedded/tiny-llama", "embedded/tiny-llama", texts, args.max_new_tokens, args.batch_size),
                   bench("smollm2-135m (random init)", smol, texts, args.max_new_tokens, args.batch_size)]
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{len(texts)} prompts, greedy, {args.max_new_tokens} new tokens, batch {args.batch_size}, {device}")
    print(f"{'model':30} {'one-at-a-time s':>16} {'batched s':>10} {'speedup':>8} {'identical':>10}")
    for r in results:
        print(f"{r['model']:30} {r['one_at_a_time_s']:16.2f} {r['batched_s']:10.2f} {r['speedup']:8.2f} "
              f"{str(r['identical']):>10}")
    print(json.dumps({"speedup": min(r["speedup"] for r in results), "identical": all(r["identical"] for r in results),
                      "prompts": len(texts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                      "device": device, "models": results}))


if __name__ == "__main__":
    main()
