"""The whole app's memory over a newcomer's afternoon on SmolLM2-135M-Instruct, at the model cache's default budget.

Starts the real app (`python app.py`, as tests/app_server.py does) with `STUDIO_MACHINE_RAM_MB` set to the RAM of
the machine to emulate (16 GB by default: a 16 GB Space), so the model cache's default budget is that machine's
(`studio.model_cache.default_limit`; `STUDIO_MODEL_CACHE_MB` is left unset unless `--cache-mb` is given). Then,
over gradio_client, as a newcomer would:

    chat        Persona Chat on SmolLM2 (two messages), then "base vs tuned" on a small SFT run of SmolLM2
    labelling   DPO labelling: three prompts on SmolLM2, two labelled
    evaluate    Evaluate: the SFT run vs its base on the run's test split
    lm-eval     lm-evaluation-harness, the bundled offline task (assets/lm_eval), on the run and its base
    lapdog      the LAPDOG table (three arms) of a tiny LAPDOG run
    chat again  one more chat message on SmolLM2 (and the cache's own line: what it holds)

The server's process tree (psutil: the server's RSS plus each child's unique memory, so a child forked from the
server is not counted as a second server) is sampled every 0.1 s; the table gives each
phase's peak and its RSS at the end. The two runs are trained first, by the command line in their own processes
(not counted). With llama-cpp-python installed the afternoon runs twice, once per chat backend
(`STUDIO_CHAT_BACKEND=transformers`, then `auto`, i.e. llama.cpp); `--backend` picks one. Prints a table, then one
JSON line.

    OMP_NUM_THREADS=1 python benchmarks/app_memory.py [--ram-gb 16] [--backend both|transformers|auto]
    python benchmarks/app_memory.py --root /path/to/another/checkout --cache-mb 4096   # another tree's app
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, device_name

sys.path.insert(0, str(ROOT / "tests"))
from app_server import free_port  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PERSONA = "i love to ski. i spend every winter in the mountains. i have a dog named biscuit."
TASK = "quote_authors"


def train(runs: Path, recipe: str, name: str, sets: list[str], env: dict) -> None:
    if (runs / name / "adapter" / "adapter_config.json").exists():
        return
    cmd = [sys.executable, "-m", "studio", "train", recipe, "--runs-dir", str(runs), "--run-name", name]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0 or not (runs / name / "adapter" / "adapter_config.json").exists():
        raise SystemExit(f"training {recipe} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


class Sampler(threading.Thread):
    """RSS of a process and its children, every 0.1 s, peak per phase."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.phase, self.peaks, self.stop_flag = psutil.Process(pid), "start", {}, threading.Event()

    def rss(self) -> int:
        """The server's RSS + each child's unique memory (USS): a child just forked from the server shares all
        its pages, and summing RSS would count the server twice (seen: a 2 GB "spike" during lm-eval)."""
        import psutil

        total = self.proc.memory_info().rss
        for p in self.proc.children(recursive=True):
            try:
                total += p.memory_full_info().uss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                r = self.rss()
            except Exception:  # noqa: BLE001 - the server is gone
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), r)
            time.sleep(0.1)


def afternoon(root: Path, runs: Path, backend: str, ram_gb: float, cache_mb: int | None, log: Path) -> dict:
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STUDIO_RUNS": str(runs), "PYTHONPATH": str(root),
           "GRADIO_ANALYTICS_ENABLED": "False", "STUDIO_MACHINE_RAM_MB": str(int(ram_gb * 1024)),
           "STUDIO_CHAT_BACKEND": backend}
    env.pop("STUDIO_MODEL_CACHE_MB", None)
    if cache_mb is not None:
        env["STUDIO_MODEL_CACHE_MB"] = str(cache_mb)
    proc = subprocess.Popen([sys.executable, str(root / "app.py"), "--port", str(port), "--no-share"], env=env,
                            cwd=root, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    phases, notes = [], {}
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not serving yet
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the app did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        time.sleep(3)  # the ML stack's background import

        def phase(name, fn):
            sampler.phase, t0 = name, time.time()
            fn()
            time.sleep(0.3)  # a sample after the last step
            phases.append({"phase": name, "seconds": round(time.time() - t0, 1),
                           "peak_mb": round(sampler.peaks.get(name, 0) / 2**20), "end_mb": round(sampler.rss() / 2**20)})

        def send(message, model=MODEL, compare="off"):
            out = client.predict(PERSONA, message, [], [], model, None, compare, "", 3, False, 0, 1, 1.1, 32, "0",
                                 api_name="/send")
            if "studio-error" in str(out[5]):
                raise SystemExit(f"chat: {out[5]}")
            notes["cache"] = str(out[3]).split("model cache:")[-1].split("</div>")[0].strip()
            notes.setdefault("chat_backend", str(out[5])[:200])

        def chat():
            send("What is the capital of France?")
            send("What do you do in winter?")
            send("Tell me about your dog.", model="sft", compare="base vs tuned (a run)")

        def labelling():
            out = client.predict(None, f"afternoon-{backend.replace('.', '')}-{int(time.time())}", MODEL, 0, 24, "What is the capital of France?\n"
                                 "What is the capital of Italy?\nWhat is the capital of Spain?", "",
                                 api_name="/start_labelling")
            if "studio-error" in str(out[1]):
                raise SystemExit(f"labelling: {out[1]}")
            for _ in range(2):
                out = client.predict(out[3] or "Paris.", out[4] or "I don't know.", api_name="/label_a")
            notes["labelling"] = str(out[0])[:80]

        def evaluate():
            out = client.predict([], "sft", "test split", "", 4, 16, "", None, "row order", api_name="/evaluate")
            if "studio-error" in str(out[1]):
                raise SystemExit(f"evaluate: {out[1]}")

        def lm_eval():
            table, message = client.predict([], "sft", TASK, 4, api_name="/lm_eval")
            if "studio-error" in str(message):
                raise SystemExit(f"lm-eval: {message}")
            notes["lm_eval"] = table.get("value", table) if isinstance(table, dict) else table

        def lapdog():
            client.predict(api_name="/persona_runs")  # the tab's Refresh: the run joins the list
            out = client.predict("lapdog", 3, "row order", api_name="/persona_report")
            if "studio-error" in str(out[1]) or "studio-error" in str(out[-1]):
                raise SystemExit(f"lapdog: {out[1]} {out[-1]}")

        phase("idle", lambda: time.sleep(2))
        phase("chat", chat)
        phase("labelling", labelling)
        phase("evaluate", evaluate)
        if (root / "assets" / "lm_eval" / f"{TASK}.yaml").exists() and importlib.util.find_spec("lm_eval"):
            phase("lm-eval", lm_eval)
        phase("lapdog", lapdog)
        phase("chat again", lambda: send("How was your day?"))
    finally:
        sampler.stop_flag.set()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"backend": backend, "phases": phases, "peak_mb": max(p["peak_mb"] for p in phases), **notes}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ram-gb", type=float, default=16, help="the machine to emulate (STUDIO_MACHINE_RAM_MB)")
    p.add_argument("--backend", default="both", choices=["both", "transformers", "auto"])
    p.add_argument("--cache-mb", type=int, default=None, help="STUDIO_MODEL_CACHE_MB (default: unset)")
    p.add_argument("--root", default=str(ROOT), help="the checkout whose app.py runs (default: this one)")
    p.add_argument("--runs", default=None, help="a runs folder to keep the two runs in (default: a temporary one)")
    p.add_argument("--setup-only", action="store_true", help="train the two runs into --runs and stop")
    args = p.parse_args()
    root = Path(args.root).resolve()
    work = Path(tempfile.mkdtemp(prefix="app-memory-"))
    runs = Path(args.runs) if args.runs else work / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STUDIO_RUNS": str(runs), "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    train(runs, "smollm2-quotes", "sft", ["max_steps=2", "eval_strategy=no", "save_steps=1000"], env)
    train(runs, "tiny-persona-lapdog", "lapdog", ["max_steps=4", "retrieval.stage1_steps=4",
                                                   "retrieval.stage2_steps=2", "save_steps=1000"], env)
    setup_s = round(time.time() - t0)
    if args.setup_only:
        print(f"runs ready in {runs} ({setup_s} s)")
        return
    backends = ["transformers", "auto"] if args.backend == "both" else [args.backend]
    if "auto" in backends and importlib.util.find_spec("llama_cpp") is None:
        backends = [b for b in backends if b != "auto"] or ["transformers"]
    results = [afternoon(root, runs, b, args.ram_gb, args.cache_mb, work / f"app-{b}.log") for b in backends]
    load = os.getloadavg()
    cache = f"STUDIO_MODEL_CACHE_MB={args.cache_mb}" if args.cache_mb else f"default for {args.ram_gb:g} GB"
    print(f"app memory over an afternoon on SmolLM2-135M-Instruct ({device_name()}; cache {cache}; "
          f"tree {root.name}; runs trained in {setup_s} s)")
    print(f"{'backend':<13}{'phase':<12}{'seconds':>8}{'peak MB':>9}{'end MB':>8}")
    for r in results:
        for ph in r["phases"]:
            print(f"{r['backend']:<13}{ph['phase']:<12}{ph['seconds']:>8}{ph['peak_mb']:>9,}{ph['end_mb']:>8,}")
        print(f"{r['backend']:<13}{'peak':<12}{'':>8}{r['peak_mb']:>9,}   cache: {r.get('cache', '?')[:140]}")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(json.dumps({"benchmark": "app_memory", "ram_gb": args.ram_gb, "cache_mb": args.cache_mb,
                      "root": str(root), "device": device_name(), "loadavg": [round(x, 2) for x in load],
                      "results": results}))


if __name__ == "__main__":
    main()
