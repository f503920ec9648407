"""Data at scale: `studio data` on a Dolly-shaped JSONL vs `datasets`' own load + batched map + filter + split,
and how soon a resumed training run reaches its first step compared with the first run on the same data.

Each measurement runs in a fresh process with an empty `datasets` cache (both sides parse the JSON cold);
time is wall time of the whole process, peak memory is the PSS of the process and its children (the studio's
parse child included), sampled every 50 ms. Files are generated
in /tmp (BENCH_DIR), never in the repo. Prints a table, then one JSON line.

    python benchmarks/data_scale.py                 # 200k and 1M rows, plus the resume measurement
    BENCH_ROWS=200000 BENCH_RESUME=0 python benchmarks/data_scale.py
    BENCH_RESUME_ROWS=50000 python benchmarks/data_scale.py   # the resume measurement on a smaller file
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT

REFERENCE = r"""
import sys, datasets
ds = datasets.load_dataset("json", data_files=sys.argv[1], split="train")
def render(b):
    prompts = []
    for ins, ctx in zip(b["instruction"], b["context"]):
        p = f"### Instruction:\n{ins.strip()}\n\n"
        if ctx and ctx.strip():
            p += f"### Context:\n{ctx.strip()}\n\n"
        prompts.append(p + "### Response:\n")
    return {"prompt": prompts, "completion": [r.strip() for r in b["response"]]}
ds = ds.map(render, batched=True, remove_columns=ds.column_names)
ds = ds.filter(lambda b: [bool(c) for c in b["completion"]], batched=True)
parts = ds.train_test_split(test_size=0.2, seed=42)
rest = parts["test"].train_test_split(test_size=0.5, seed=42)
print(len(parts["train"]), len(rest["train"]), len(rest["test"]))
"""

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so what more about some them can "
         "model data train river city music light history science garden window").split()


def make_dolly(path: Path, rows: int) -> Path:
    """A Dolly-shaped file (instruction / context / response / category), ~530 bytes a row, seeded."""
    if path.exists():
        return path
    rng = random.Random(0)
    say = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    tmp = path.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"instruction": say(rng.randint(6, 20)) + "?", "context": say(rng.randint(20, 90)) if i % 3 else "",
                   "response": say(rng.randint(10, 60)) if i % 50 else "", "category": "open_qa"}
            f.write(json.dumps(row) + "\n")
    tmp.rename(path)
    return path


def _tree_memory(pid: int) -> int:
    """Bytes the process and all its descendants hold now (PSS: pages shared between them counted once)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], env: dict) -> dict:
    """Wall time and peak memory of one fresh process, its children included (the studio parses in a child
    process: the process's own ru_maxrss would leave that out). Memory is the process tree's PSS, sampled every
    50 ms; ru_maxrss of the process alone is kept beside it."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, streams = 0, {}
    readers = [threading.Thread(target=lambda k, f: streams.__setitem__(k, f.read()), args=(k, f), daemon=True)
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    while True:
        done, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if done:
            break
        peak = max(peak, _tree_memory(proc.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    for r in readers:
        r.join()
    out, err = streams["out"].decode(), streams["err"].decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"time_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20, 1),
            "own_maxrss_mb": round(usage.ru_maxrss / 1024, 1), "out": out.strip()}


def fresh_env(tmp: Path) -> dict:
    cache = Path(tempfile.mkdtemp(dir=tmp, prefix="hf-"))
    return {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "STUDIO_DATA_CACHE": str(cache / "studio")}


def first_step_seconds(cmd: list[str], env: dict, run_dir: Path, stop_after_checkpoint: bool) -> tuple[float, float]:
    """Seconds to the first training step (events.jsonl) from the process's start and from its job's first event;
    optionally Ctrl-C once it has saved a checkpoint."""
    events = run_dir / "events.jsonl"
    seen = sum(1 for _ in open(events)) if events.exists() else 0
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        time.sleep(0.05)
        if not events.exists():
            continue
        lines = events.read_text().splitlines()[seen:]
        rows = [json.loads(x) for x in lines if x.strip().endswith("}")]
        running = next((e for e in rows if e["type"] == "status" and e.get("status") == "running"), None)
        if first is None and running is not None:
            later = [e["t"] for e in rows if e["type"] == "progress" and e["step"] > running.get("step", 0)]
            if later:  # from the process's start, and from its job's start (imports and recipe checks done)
                first = (later[0] - start, later[0] - rows[0]["t"])
        if stop_after_checkpoint and any(e["type"] == "checkpoint" for e in rows):
            proc.send_signal(signal.SIGINT)
            stop_after_checkpoint = False
    if first is None:
        raise SystemExit(f"no training step seen:\n{proc.stderr.read().decode()[-2000:]}")
    return first


def resume_benchmark(data: Path, tmp: Path) -> dict:
    env = fresh_env(tmp)
    runs = tmp / "runs"
    name = f"scale-{time.time_ns()}"
    base = [sys.executable, "-m", "studio", "train", "recipes/tiny-quotes.yaml", "--runs-dir", str(runs)]
    sets = ["dataset.source=" + str(data), "dataset.format=dolly", "max_steps=6", "save_steps=2", "eval_strategy=no",
            "logging_steps=1", "max_length=256"]
    cmd = base + [x for s in sets for x in ("--set", s)] + ["--run-name", name]
    first = first_step_seconds(cmd, env, runs / name, stop_after_checkpoint=True)
    resumed = first_step_seconds([sys.executable, "-m", "studio", "train", "--resume", str(runs / name)], env,
                                 runs / name, stop_after_checkpoint=False)
    return {"first_run_to_first_step_s": round(first[0], 2), "resumed_run_to_first_step_s": round(resumed[0], 2),
            "speedup": round(first[0] / resumed[0], 2), "meets_goal": first[0] / resumed[0] >= 5,
            "first_job_to_first_step_s": round(first[1], 2), "resumed_job_to_first_step_s": round(resumed[1], 2),
            "job_speedup": round(first[1] / resumed[1], 2)}


def main() -> None:
    sizes = [int(x) for x in os.environ.get("BENCH_ROWS", "200000,1000000").split(",")]
    reps = int(os.environ.get("BENCH_REPS", 1))
    work = Path(os.environ.get("BENCH_DIR", "/tmp/studio-data-scale"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        for rows in sizes:
            data = make_dolly(work / f"dolly-{rows}.jsonl", rows)
            runs = {"datasets": [], "studio": []}
            for _ in range(reps):  # alternate, so drift on a shared machine hits both alike
                runs["datasets"].append(measure([sys.executable, "-c", REFERENCE, str(data)], fresh_env(tmp)))
                runs["studio"].append(measure([sys.executable, "-m", "studio", "data", str(data), "--json"],
                                              fresh_env(tmp)))
            med = {side: {k: statistics.median(r[k] for r in rs) for k in ("time_s", "peak_rss_mb")}
                   for side, rs in runs.items()}
            med["file_mb"] = round(data.stat().st_size / 2**20, 1)
            med["time_ratio"] = round(med["studio"]["time_s"] / med["datasets"]["time_s"], 2)
            med["rss_ratio"] = round(med["studio"]["peak_rss_mb"] / med["datasets"]["peak_rss_mb"], 2)
            med["meets_goal"] = med["time_ratio"] <= 1.5 and med["rss_ratio"] <= 2
            med["studio_rows"] = json.loads(runs["studio"][0]["out"].splitlines()[-1])["splits"]
            results[rows] = med
        resume_rows = int(os.environ.get("BENCH_RESUME_ROWS", max(sizes)))
        resume = resume_benchmark(make_dolly(work / f"dolly-{resume_rows}.jsonl", resume_rows), tmp) \
            if os.environ.get("BENCH_RESUME", "1") != "0" else None
        if resume:
            resume["rows"] = resume_rows

    print(f"machine: {os.cpu_count()} CPU cores; each side a fresh process with an empty datasets cache; "
          f"median of {reps}")
    head = f"{'rows':>9} {'file MB':>8} {'datasets s':>11} {'studio s':>9} {'ratio':>6} {'datasets MB':>12} " \
           f"{'studio MB':>10} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for rows, m in results.items():
        print(f"{rows:>9} {m['file_mb']:>8} {m['datasets']['time_s']:>11.2f} {m['studio']['time_s']:>9.2f} "
              f"{m['time_ratio']:>5.2f}× {m['datasets']['peak_rss_mb']:>12.0f} {m['studio']['peak_rss_mb']:>10.0f} "
              f"{m['rss_ratio']:>5.2f}×")
    print("goal: studio ≤ 1.5× the time and ≤ 2× the peak memory (PSS of the process and its children) of datasets' load + batched map + filter + split")
    if resume:
        print(f"first step on {resume['rows']} rows (process start → first training step, tiny model): first run "
              f"{resume['first_run_to_first_step_s']} s, resumed run "
              f"{resume['resumed_run_to_first_step_s']} s ({resume['speedup']}×; goal ≥ 5×); from the job's start "
              f"(after imports): {resume['first_job_to_first_step_s']} s vs {resume['resumed_job_to_first_step_s']} s "
              f"({resume['job_speedup']}×)")
    print(json.dumps({"benchmark": "data_scale", "cpu_count": os.cpu_count(), "reps": reps,
                      "sizes": {str(k): v for k, v in results.items()}, "resume": resume}))


if __name__ == "__main__":
    main()
