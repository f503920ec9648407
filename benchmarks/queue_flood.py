"""A flood of anonymous `queue/join` POSTs, each with a fresh session hash and never reading its results
(issue 25, finding 2), against a --shared app; then one ordinary visitor's call.

Gradio 6.31 keeps pending messages for 2,000 sessions; past that, before the studio's limits, its queue stopped
for good ("Queue is stopped"). Run by hand (it starts its own app on a free port):

    python benchmarks/queue_flood.py                 # 3,000 joins at the default limits
    python benchmarks/queue_flood.py --joins 3000 --no-limits   # the same with the limits lifted (the old app)

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fn_index(url: str, api_name: str) -> int:
    config = json.load(urllib.request.urlopen(url + "config", timeout=30))
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return dep["id"]
    raise SystemExit(f"no endpoint {api_name}")


def _join(url: str, index: int) -> int:
    body = json.dumps({"data": [None], "fn_index": index, "session_hash": uuid.uuid4().hex, "event_data": None,
                       "trigger_id": None}).encode()
    request = urllib.request.Request(url + "gradio_api/queue/join", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


def flood(url: str, joins: int, api_name: str = "resume_latest_1", threads: int = 32, say=None) -> dict:
    """`joins` fresh-session joins of one page-load event, `threads` at a time: {HTTP status: count}."""
    index = _fn_index(url, api_name)
    counts = collections.Counter()
    with ThreadPoolExecutor(threads) as pool:
        for i, status in enumerate(pool.map(lambda _: _join(url, index), range(joins)), 1):
            counts[status] += 1
            if say and i % 500 == 0:
                say(f"  {i} joins: {dict(counts)}")
    return dict(counts)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--joins", type=int, default=3000)
    p.add_argument("--no-limits", action="store_true", help="lift the studio's queue limits (as before them)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from gradio_client import Client

    from app_server import start_app

    env = {"STUDIO_QUEUE_MAX": "1000000", "STUDIO_QUEUE_PER_CLIENT": "1000000",
           "STUDIO_MAX_SESSIONS": "10000"} if args.no_limits else {}
    runs = Path(tempfile.mkdtemp()) / "runs"
    runs.mkdir()
    proc, url = start_app(runs, extra_args=["--shared"], env=env, timeout=300)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout still stops the app (finally below)
    try:
        rss0 = _rss_mb(proc.pid)
        start = time.perf_counter()
        counts = flood(url, args.joins, say=lambda line: print(line, flush=True))
        took = time.perf_counter() - start
        rss1 = _rss_mb(proc.pid)
        time.sleep(5)  # let what was accepted run
        try:
            Client(url, verbose=False).predict(None, api_name="/resume_latest_1")
            after = "answered"
        except Exception as e:  # noqa: BLE001 - what the visitor gets is the finding
            after = f"failed: {type(e).__name__}: {str(e)[:80]}"
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{'joins':>6} {'limits':>7} {'200':>6} {'503':>6} {'other':>6} {'seconds':>8} {'RSS MB before→after':>20}  "
          f"visitor after")
    other = sum(v for k, v in counts.items() if k not in (200, 503))
    print(f"{args.joins:>6} {'off' if args.no_limits else 'on':>7} {counts.get(200, 0):>6} {counts.get(503, 0):>6} "
          f"{other:>6} {took:>8.1f} {f'{rss0:.0f}→{rss1:.0f}':>20}  {after}")
    print(f"(load average {os.getloadavg()[0]:.1f})")
    print(json.dumps({"joins": args.joins, "limits": not args.no_limits, "status": counts, "seconds": round(took, 1),
                      "rss_mb_before": round(rss0), "rss_mb_after": round(rss1), "visitor_after": after}))


if __name__ == "__main__":
    main()
