"""Evaluate as a newcomer runs it (issue 34, item 12): 4 rows of a run's test split, 3 models (the base and two
runs of SmolLM2-135M-Instruct), through `studio.evaluate.compare`, the function the Evaluate tab calls, with the
tab's defaults (greedy, 32 new tokens, held-out loss on). Cold: a fresh process, so every model is loaded as on
the page's first Evaluate; then warm (the models in the cache, as on a second click), alternating two arms:
"before", generation to 32 tokens as it was, and "after", each row ending at the first newline that Evaluate cuts
its single-line answers at (`inference.generate(stop=…)`); the answers must be the same.

Prints where the time went (each column's model load, generation, held-out loss) and one JSON line. The two runs
(smollm2-quotes, 2 and 4 steps) are trained first by the job runner and not timed. `--beside-training` times it
again while a SmolLM2 SFT runs in another process (`python -m studio train`), as on the newcomer's afternoon.

    OMP_NUM_THREADS=1 python benchmarks/evaluate_three.py [--rows 4] [--max-new-tokens 32] [--beside-training]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import ROOT


def load_average() -> float:
    return os.getloadavg()[0]


def train(runs: Path, steps: int, name: str) -> str:
    from studio import jobs
    from studio.recipes import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "smollm2-quotes.yaml",
                         [f"max_steps={steps}", "save_steps=1000", "eval_strategy=no", "eval_prompts=[]"])
    job = jobs.start_job(recipe, runs_dir=runs, run_name=name)
    assert job.wait(1800) and job.status == "done", job.error
    return job.id


def timed_compare(refs, rows: int, max_new: int, arm: str = "after") -> tuple[float, dict, dict]:
    """compare(...) with each phase timed by wrapping the functions it calls. Arm "before": generation runs to
    max_new_tokens as before the stop at the first newline (the answers are cut there all the same)."""
    import studio.evaluate.comparison as comparison
    import studio.inference as inference
    import studio.metrics as metrics
    from studio.evaluate import compare

    if arm == "before":
        real_generate = inference.generate
        inference.generate = lambda *a, stop=None, **k: real_generate(*a, **k)

    spent = {"load": 0.0, "generate": 0.0, "loss": 0.0}
    calls = {"load": 0, "generate": 0, "loss": 0}
    wrapped = {}

    def wrap(module, attr, key):
        real = getattr(module, attr)
        wrapped[(module, attr)] = real

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
                calls[key] += 1
        setattr(module, attr, timed)

    wrap(inference, "load_for_inference", "load")
    wrap(comparison, "generate_items", "generate")
    wrap(metrics, "heldout_loss", "loss")
    try:
        t = time.perf_counter()
        result = compare(refs, limit=rows, max_new_tokens=max_new, save=False)
        total = time.perf_counter() - t
    finally:
        for (module, attr), real in wrapped.items():
            setattr(module, attr, real)
        if arm == "before":
            inference.generate = real_generate
    answers = [row["outputs"] for row in result["rows"]]
    return total, {k: round(v, 1) for k, v in spent.items()}, {"calls": calls, "labels": result["labels"],
                                                               "rows": len(result["rows"]), "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--beside-training", action="store_true")
    args = parser.parse_args()
    import torch

    runs = Path(tempfile.mkdtemp(prefix="eval-three-")) / "runs"
    os.environ["STUDIO_RUNS"] = str(runs)
    t = time.perf_counter()
    a, b = train(runs, 2, "quotes-2"), train(runs, 4, "quotes-4")
    trained = time.perf_counter() - t
    out = {"rows": args.rows, "models": 3, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
           "train_s": round(trained, 1)}
    answers = {}
    # cold first (every model loaded, as on the page's first Evaluate), then warm, the arms alternating
    for label, arm in (("cold", "after"), ("warm-before", "before"), ("warm-after", "after"),
                       ("warm-before-2", "before"), ("warm-after-2", "after")):
        before = load_average()
        total, spent, info = timed_compare([a, b], args.rows, args.max_new_tokens, arm)
        after = load_average()
        answers.setdefault(arm, info["answers"])
        print(f"{label}: {total:.1f} s for {info['rows']} rows x {len(info['labels'])} models {info['labels']}; "
              f"load_for_inference {spent['load']} s ({info['calls']['load']} calls), generation {spent['generate']} s, "
              f"held-out loss {spent['loss']} s; load average {before:.2f} -> {after:.2f}", flush=True)
        out[label] = {"seconds": round(total, 1), **spent, "load_average": [round(before, 2), round(after, 2)]}
    out["same_answers"] = answers["before"] == answers["after"]
    print("the same answers before and after:", out["same_answers"])
    if args.beside_training:
        import subprocess
        import sys

        trainer = subprocess.Popen([sys.executable, "-m", "studio", "train", "recipes/smollm2-quotes.yaml",
                                    "--runs-dir", str(runs), "--run-name", "beside", "--set", "max_steps=2000",
                                    "--set", "eval_strategy=no", "--set", "save_steps=100000"],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            events = runs / "beside" / "events.jsonl"
            deadline = time.time() + 300
            while time.time() < deadline and '"step": 3' not in (events.read_text() if events.exists() else ""):
                time.sleep(1)  # training, past its warm-up
            for arm in ("before", "after"):
                before = load_average()
                total, spent, info = timed_compare([a, b], args.rows, args.max_new_tokens, arm)
                after = load_average()
                print(f"beside training, {arm}: {total:.1f} s; generation {spent['generate']} s, held-out loss "
                      f"{spent['loss']} s; load average {before:.2f} -> {after:.2f}", flush=True)
                out[f"beside_training_{arm}"] = {"seconds": round(total, 1), **spent,
                                                 "load_average": [round(before, 2), round(after, 2)]}
        finally:
            trainer.terminate()
            trainer.wait(30)
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
