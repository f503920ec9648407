"""The owner's warm Persona Chat while three strangers each send a 4,000-story corpus (issue 31, finding 3).

Starts its own `--shared` app on a free port. A visitor standing in for the owner chats with SmolLM2 over the
bundled stories (warm: its models and the bundled index loaded; its chat does no heavy work, so it is neither
queued nor billed, as the signed-in owner's would not be): quiet, then while three anonymous strangers' corpora
(each 4,000 stories, each from its own session, read by a page that stays open) go through the heavy-work
queue (studio/work.py). Then the strangers' pages close, and the app's CPU is watched until it is idle again.

    python benchmarks/heavy_contention.py              # 5 quiet, 5 loaded, 5 quiet again owner chats
    python benchmarks/heavy_contention.py --chats 5 --stories 4000

Prints a table, then one JSON line. Timings depend on the machine and its load: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=5, help="owner chats timed in each phase")
    p.add_argument("--stories", type=int, default=4000, help="stories per stranger's corpus")
    p.add_argument("--strangers", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64, help="max new tokens of the owner's reply")
    args = p.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import httpx
    from gradio_client import Client, handle_file

    import test_heavy_work as t
    from app_server import start_app, wait_for

    t.STORIES = args.stories
    tmp = Path(tempfile.mkdtemp())
    runs = tmp / "runs"
    runs.mkdir()
    (tmp / "uploads").mkdir()
    proc, url = start_app(runs, extra_args=["--shared"], env={"GRADIO_TEMP_DIR": str(tmp / "uploads")}, timeout=300)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    pid = proc.pid
    out: dict = {"stories": args.stories, "strangers": args.strangers, "cpus": os.cpu_count()}
    try:
        owner = Client(url, verbose=False)

        def chat() -> float:
            start = time.perf_counter()
            res = owner.predict("i love to ski. i have a dog named biscuit.", "what do you do in winter?", [], [],
                                "HuggingFaceTB/SmolLM2-135M-Instruct", None, "off", "", 3, False, 0, 1, 1.1,
                                args.tokens, "1", api_name="/send")
            took = time.perf_counter() - start
            if "studio-error" in json.dumps(res):
                raise SystemExit(f"the owner's chat failed: {json.dumps(res)[:400]}")
            return took

        chat()  # loads SmolLM2, the embedder and the bundled index: the rest is warm
        quiet = [chat() for _ in range(args.chats)]
        out["load_quiet"] = round(os.getloadavg()[0], 1)
        print(f"quiet: {', '.join(f'{s:.2f}' for s in quiet)} s (load {out['load_quiet']})", flush=True)

        index = next(d["id"] for d in httpx.get(url + "config").json()["dependencies"] if d.get("api_name") == "send")
        streams, handles = [], []
        for n in range(args.strangers):
            c = Client(url, verbose=False)
            path = t._corpus(tmp / f"corpus-{n}.jsonl", f"s{n}-")
            c.predict("Upload", "quotes", handle_file(str(path)), "", "", "", "", "auto", "", "",
                      api_name="/inspect_data")
            handles.append((c.session_hash, str(next((runs / ".uploads").glob(f"*/*/*/{path.name}")))))
        cpu0, wall0 = t._cpu_s(pid), time.perf_counter()
        for session, handle in handles:
            streams.append(t.Stream(url, session))
            time.sleep(0.3)
            t._join(url, index, session, t._send_data(handle))
        wait_for(lambda: t._nice_threads(pid) >= 1, 120, "a stranger's embedding to start", every=0.1)
        loaded, most = [], 0
        for _ in range(args.chats):
            most = max(most, t._nice_threads(pid))
            loaded.append(chat())
            most = max(most, t._nice_threads(pid))
        out["load_loaded"] = round(os.getloadavg()[0], 1)
        still = t._nice_threads(pid) >= 1
        print(f"loaded: {', '.join(f'{s:.2f}' for s in loaded)} s (load {out['load_loaded']}; "
              f"a stranger still embedding at the end: {still})", flush=True)
        said = [[t._said(m) for m in s.messages if t._said(m)] for s in streams]
        cpu_strangers = t._cpu_s(pid) - cpu0
        for s in streams:
            s.close()
        closed = time.perf_counter()
        wait_for(lambda: t._nice_threads(pid) == 0, 60, "the strangers' work to stop", every=0.1)
        stopped = time.perf_counter() - closed
        c0 = t._cpu_s(pid)
        time.sleep(5)
        idle = (t._cpu_s(pid) - c0) / 5
        after = [chat() for _ in range(args.chats)]  # quiet again: did the machine's other load change meanwhile?
        out["load_after"] = round(os.getloadavg()[0], 1)
        print(f"quiet again: {', '.join(f'{s:.2f}' for s in after)} s (load {out['load_after']})", flush=True)
        base = statistics.median(quiet + after)
        out.update(quiet_s=[round(s, 2) for s in quiet], loaded_s=[round(s, 2) for s in loaded],
                   quiet_median_s=round(statistics.median(quiet), 2), loaded_median_s=round(statistics.median(loaded), 2),
                   loaded_max_s=round(max(loaded), 2),
                   after_s=[round(s, 2) for s in after], after_median_s=round(statistics.median(after), 2),
                   quiet_both_median_s=round(base, 2),
                   ratio_median=round(statistics.median(loaded) / base, 2),
                   ratio_max=round(max(loaded) / base, 2),
                   low_priority_threads_at_once_max=most, app_cpu_s_while_loaded=round(cpu_strangers, 1),
                   loaded_wall_s=round(closed - wall0, 1), stopped_after_close_s=round(stopped, 1),
                   app_cpu_share_after=round(idle, 3), strangers_said=[s[-1] if s else "" for s in said])
    finally:
        proc.terminate()
        proc.wait(10)
    print()
    print(f"{'phase':<8} {'owner chats (s)':<28} {'median':>7} {'max':>6} {'÷ quiet':>8} {'load avg':>9}")
    base = out["quiet_both_median_s"]
    for name, key, load in (("quiet", "quiet_s", "load_quiet"), ("loaded", "loaded_s", "load_loaded"),
                            ("quiet", "after_s", "load_after")):
        times = out[key]
        print(f"{name:<8} {', '.join(map(str, times)):<28} {statistics.median(times):>7.2f} {max(times):>6.2f} "
              f"{statistics.median(times) / base:>8.2f} {out[load]:>9}")
    print(f"(÷ quiet: the phase's median over the median of both quiet phases, {base} s)")
    print(f"strangers: at most {out['low_priority_threads_at_once_max']} nice-19 threads at once (one call: its worker "
          f"and its OpenMP team); the app used "
          f"{out['app_cpu_s_while_loaded']} CPU-s in {out['loaded_wall_s']} s while loaded; their work stopped "
          f"{out['stopped_after_close_s']} s after their pages closed; then the app used "
          f"{out['app_cpu_share_after']:.1%} of a core")
    for n, line in enumerate(out["strangers_said"]):
        print(f"  stranger {n + 1}: {line[:160]}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
