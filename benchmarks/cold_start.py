"""Seconds from `python app.py` to the first HTTP 200, and the idle resident memory.

Median over 5 runs. Goal (issue 3): under 6 s and under 700 MB on a 2-core machine.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(runs_dir: Path, idle_s: float = 20.0) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STUDIO_RUNS": str(runs_dir), "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--no-share"], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200:
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("app exited")
                time.sleep(0.05)
        ready = time.perf_counter() - t0
        time.sleep(idle_s)  # idle: the background warm-up import has finished
        return ready, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    import tempfile

    runs = int(os.environ.get("BENCH_RUNS", 5))
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_run(Path(tmp)) for _ in range(runs)]
    print(f"{'run':>4} {'first 200 (s)':>14} {'idle RSS (MB)':>14}")
    for i, (t, m) in enumerate(results, 1):
        print(f"{i:>4} {t:>14.2f} {m:>14.0f}")
    median_t = statistics.median(t for t, _ in results)
    median_m = statistics.median(m for _, m in results)
    print(f"{'med':>4} {median_t:>14.2f} {median_m:>14.0f}   goals: < 6 s, < 700 MB")
    print(json.dumps({"benchmark": "cold_start", "runs": runs, "median_first_200_s": round(median_t, 2),
                      "median_idle_rss_mb": round(median_m, 1), "goal_s": 6, "goal_mb": 700,
                      "meets_goal": median_t < 6 and median_m < 700, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
