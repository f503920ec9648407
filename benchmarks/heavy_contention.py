"""The owner's warm Persona Chat while three strangers each send a 4,000-story corpus (issue 31, finding 3).

Starts its own `--shared` app on a free port. A visitor standing in for the owner chats with SmolLM2 over the
bundled stories (warm: its models and the bundled index loaded; its chat does no heavy work, so it is neither
queued nor billed, as the signed-in owner's would not be), in pairs: quiet, then while three anonymous strangers'
corpora (each 4,000 stories, each from its own session, read by a page that stays open) go through the heavy-work
queue (studio/work.py); then the strangers' pages close and the app is watched until their work has stopped.
Pairs, because the shared machine's own load moves a lot within minutes.

    python benchmarks/heavy_contention.py              # 5 pairs
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
    p.add_argument("--chats", type=int, default=5, help="pairs of owner chats (quiet, then loaded)")
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
        index = next(d["id"] for d in httpx.get(url + "config").json()["dependencies"] if d.get("api_name") == "send")

        def strangers_ready(pair: int) -> list:
            """Each stranger a fresh anonymous session with its own (never embedded) corpus, uploaded."""
            ready = []
            for n in range(args.strangers):
                c = Client(url, verbose=False)
                path = t._corpus(tmp / f"corpus-{pair}-{n}.jsonl", f"p{pair}s{n}-")
                c.predict("Upload", "quotes", handle_file(str(path)), "", "", "", "", "auto", "", "",
                          api_name="/inspect_data")
                ready.append((c.session_hash, str(next((runs / ".uploads").glob(f"*/*/*/{path.name}")))))
            return ready

        # Pairs, not phases: the shared machine's own load (other people's work) moves by 10x within minutes, so
        # each loaded chat is compared with the quiet chat just before it
        pairs, said, most = [], [], 0
        for pair in range(args.chats):
            ready = strangers_ready(pair)
            load_q = os.getloadavg()[0]
            quiet = chat()
            streams = []
            for session, handle in ready:
                streams.append(t.Stream(url, session))
                time.sleep(0.3)
                t._join(url, index, session, t._send_data(handle))
            wait_for(lambda: t._nice_threads(pid) >= 1, 300, "a stranger's embedding to start", every=0.1)
            most = max(most, t._nice_threads(pid))
            loaded = chat()
            most = max(most, t._nice_threads(pid))
            still = t._nice_threads(pid) >= 1
            said.append([next((t._said(m) for m in reversed(st.messages) if t._said(m)), "") for st in streams])
            for st in streams:
                st.close()
            closed = time.perf_counter()
            wait_for(lambda: t._nice_threads(pid) == 0, 120, "the strangers' work to stop", every=0.1)
            stopped = time.perf_counter() - closed
            pairs.append({"quiet_s": round(quiet, 2), "loaded_s": round(loaded, 2), "ratio": round(loaded / quiet, 2),
                          "load": round((load_q + os.getloadavg()[0]) / 2, 1), "embedding_all_along": still,
                          "stopped_after_close_s": round(stopped, 1)})
            print(f"pair {pair + 1}: quiet {quiet:.2f} s, loaded {loaded:.2f} s (×{loaded / quiet:.2f}), load "
                  f"{pairs[-1]['load']}, a stranger embedding until the end: {still}, stopped {stopped:.1f} s after "
                  "their pages closed", flush=True)
        c0 = t._cpu_s(pid)
        time.sleep(5)
        idle = (t._cpu_s(pid) - c0) / 5
        ratios = [p["ratio"] for p in pairs]
        out.update(pairs=pairs, ratio_median=round(statistics.median(ratios), 2), ratio_max=max(ratios),
                   quiet_median_s=round(statistics.median(p["quiet_s"] for p in pairs), 2),
                   loaded_median_s=round(statistics.median(p["loaded_s"] for p in pairs), 2),
                   low_priority_threads_at_once_max=most, app_cpu_share_after=round(idle, 3),
                   stopped_after_close_max_s=max(p["stopped_after_close_s"] for p in pairs),
                   strangers_said=said[-1])
    finally:
        proc.terminate()
        proc.wait(10)
    print()
    print(f"{'pair':>4} {'quiet (s)':>10} {'loaded (s)':>11} {'÷ quiet':>8} {'load avg':>9} "
          f"{'stopped after close (s)':>24}")
    for n, p in enumerate(out["pairs"], 1):
        print(f"{n:>4} {p['quiet_s']:>10.2f} {p['loaded_s']:>11.2f} {p['ratio']:>8.2f} {p['load']:>9} "
              f"{p['stopped_after_close_s']:>24}")
    print(f"median ÷ quiet {out['ratio_median']}, max {out['ratio_max']}; at most "
          f"{out['low_priority_threads_at_once_max']} nice-19 threads at once (one call: its worker and its OpenMP "
          f"team); after the last pages closed the app used {out['app_cpu_share_after']:.1%} of a core")
    for n, line in enumerate(out["strangers_said"]):
        print(f"  stranger {n + 1}: {line[:160]}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
