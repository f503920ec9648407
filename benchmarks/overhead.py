"""The studio's overhead over plain TRL: the same trainer, run (a) directly and (b) as a studio Job.

Each arm runs in a fresh process, as a user would run it: (a) a plain script that builds the trainer
and calls `trainer.train()` in its main thread; (b) `start_job` — the background thread, the
TrainerCallback, every event appended to events.jsonl — with a UI-like reader polling the job
(snapshot + plotly chart) every second. Both build their trainer with the same function and
configuration and are compared on the Trainer's own train_runtime; arms alternate.
Goal: ≤ 3% slower. Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _common import device_name, recipe

SETTINGS = dict(max_steps=400, eval_strategy="no", save_strategy="no", logging_steps=5, eval_prompts=[])


def direct(workdir: Path) -> float:
    from studio.train.sft import build_sft_trainer

    trainer, _, _ = build_sft_trainer(recipe(**SETTINGS), workdir, log=lambda *_: None)
    return trainer.train().metrics["train_runtime"]


def as_job(workdir: Path) -> float:
    from studio.charts import loss_chart
    from studio.jobs import start_job

    loss_chart([])  # the app has plotly loaded before anyone trains
    job = start_job(recipe(**SETTINGS), runs_dir=workdir)
    while not job.wait(1.0):  # what the Train tab's timer does
        job.snapshot()
        loss_chart(job.history)
    assert job.status == "done", job.error
    return job.summary["train_runtime_s"]


def run_arm(arm: str, workdir: Path) -> float:
    out = subprocess.run([sys.executable, __file__, "--arm", arm, str(workdir)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["train_runtime"]


def main() -> None:
    reps = int(os.environ.get("BENCH_REPS", 7))
    times = {"plain TRL": [], "studio Job": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_arm("direct", Path(tmp) / "warmup")  # builds the embedded model once
        for i in range(reps):
            times["plain TRL"].append(run_arm("direct", Path(tmp) / f"d{i}"))
            times["studio Job"].append(run_arm("job", Path(tmp) / f"j{i}"))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the least-disturbed run: timeit's estimator on a shared machine
    overhead = med["studio Job"] / med["plain TRL"] - 1
    overhead_min = best["studio Job"] / best["plain TRL"] - 1
    print(f"device: {device_name()}; embedded tiny-llama, {SETTINGS['max_steps']} steps (tiny steps: the worst case "
          f"for per-step overhead); {reps} alternating runs, each in a fresh process")
    print(f"{'arm':12} {'median (s)':>11} {'min (s)':>8} {'runs':>40}")
    for k, v in times.items():
        print(f"{k:12} {med[k]:>11.3f} {best[k]:>8.3f} {' '.join(f'{x:.2f}' for x in v):>40}")
    print(f"overhead: {100 * overhead:+.2f}% (medians), {100 * overhead_min:+.2f}% (minimums)   goal: ≤ 3%")
    print(json.dumps({"benchmark": "overhead", "device": device_name(), "reps": reps, "steps": SETTINGS["max_steps"],
                      "plain_trl_s": round(med["plain TRL"], 3), "studio_job_s": round(med["studio Job"], 3),
                      "overhead_pct": round(100 * overhead, 2), "overhead_min_pct": round(100 * overhead_min, 2),
                      "meets_goal": overhead <= 0.03}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--arm":
        fn = direct if sys.argv[2] == "direct" else as_job
        print(json.dumps({"train_runtime": fn(Path(sys.argv[3]))}))
    else:
        main()
