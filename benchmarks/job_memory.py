"""The memory estimate (studio.memory) against a real job's peak RSS, recipe by recipe.

    python benchmarks/job_memory.py                  # tiny-quotes, smollm2-quotes, smollm2-dpo (+ variants)
    python benchmarks/job_memory.py --steps 6

Each case runs in its own process: import the stack, read the RSS (the baseline), train the recipe for a few
steps, read the peak RSS (`resource.getrusage(...).ru_maxrss`). "job" = peak − baseline, what the estimate
estimates. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("tiny-quotes", {}),
    ("smollm2-quotes", {}),
    ("smollm2-quotes", {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 256}),
    ("smollm2-quotes", {"lora_r": 256, "lora_target_modules": "all-linear"}),
    ("smollm2-dpo", {}),
]

CHILD = r"""
import json, os, resource, sys
import psutil
from studio.stack import import_ml_stack
import_ml_stack()
from studio import jobs
from studio.memory import estimate_for_recipe
from studio.recipes import RECIPES_DIR, load_recipe
name, sets, steps, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
recipe = load_recipe(RECIPES_DIR / f"{name}.yaml")
for k, v in {"max_steps": steps, "save_steps": 1000, "eval_strategy": "no", **sets}.items():
    recipe.set(k, v)
recipe.header["eval_prompts"] = []
est = estimate_for_recipe(recipe)
import gc; gc.collect()
base = psutil.Process().memory_info().rss
job = jobs.start_job(recipe, runs_dir=runs)
job.wait(1800)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"status": job.status, "error": job.error, "estimate": est.total, "weights": est.weights,
                  "adapter": est.adapter, "activations": est.activations, "baseline": base, "peak": peak}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in CASES:
            out = subprocess.run([sys.executable, "-c", CHILD, name, json.dumps(sets), str(args.steps), tmp],
                                 env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
            line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
            if line is None:
                print(f"{name} {sets}: no result\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(line)
            r.update(recipe=name, changes=sets, job=r["peak"] - r["baseline"])
            rows.append(r)
            print(f"# {name} {sets}: estimate {r['estimate'] / 2**20:.0f} MiB, job {r['job'] / 2**20:.0f} MiB "
                  f"({r['status']})", file=sys.stderr, flush=True)
    mib = 2**20
    print(f"| recipe | changes | estimate (MiB) | weights / LoRA+AdamW / activations | measured job peak (MiB) | "
          "estimate ÷ measured | status |")
    print("|---|---|---:|---|---:|---:|---|")
    for r in rows:
        ch = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "as shipped"
        print(f"| {r['recipe']} | {ch} | {r['estimate'] / mib:.0f} | {r['weights'] / mib:.0f} / "
              f"{r['adapter'] / mib:.0f} / {r['activations'] / mib:.0f} | {r['job'] / mib:.0f} | "
              f"{r['estimate'] / max(r['job'], 1):.2f} | {r['status']} |")
    print(json.dumps({"benchmark": "job_memory", "steps": args.steps, "load": os.getloadavg()[0],
                      "rows": [{k: r[k] for k in ("recipe", "changes", "estimate", "job", "baseline", "peak", "status")}
                               for r in rows]}))


if __name__ == "__main__":
    main()
