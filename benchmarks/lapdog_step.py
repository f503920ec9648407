"""Where a LAPDOG step's time goes (issue 32, "affordable on a CPU"): seconds per step for both stages, and
inside a stage-2 step the LoRA step, the k candidate generations and the query encoder's step.

The smollm2-persona-convai2 recipe (the shared ConvAI2 dialogues split by dialogue, LAPDOG's 163 stories, k = 4,
2 rows per generator step, 2 examples per retriever step, max_length 384) runs through the studio's own job
(`studio.train.lapdog.run_lapdog`) for a few steps per stage, on two models:

  smollm2    SmolLM2-135M-Instruct, the offline copy's real weights
  gemma3-1b  Gemma-3-1B's shapes: Gemma3TextConfig with its real sizes (26 layers, hidden 1152, MLP 6912, 4 heads
             of 256, 1 KV head, 262,144-token vocabulary, sliding window 512), random weights (seeded); SmolLM2's
             tokenizer and chat template, since no Gemma tokenizer is offline (so token counts are SmolLM2's)

Stage 1 runs once per model; stage 2 then runs once per arm, each a resume of a copy of that stage-1 run:
`before`, the stage-2 code as it was before the speed work (kept below as `BeforeLearner`, verbatim); `after`, the
checkout's; `short`, the checkout's with candidate replies of `--short-tokens` (retrieval.candidate_max_new_tokens)
instead of the recipe's 24. Inside each stage-2 step the benchmark times, by wrapping the studio's own functions: TRL's
`training_step` (the LoRA forward + backward), the candidate search, the candidate prompts, the candidate
generations, the scoring, and the rest of the retriever step (query encoding with gradient, KL, backward, AdamW).
Training rows are capped (`--rows`) so stage 2 starts quickly; the refresh of the generator's stories, whose cost
grows with the rows, is timed apart on all of the recipe's 5,040 training rows, before and after.
Timing only: nothing here asserts a speed. Prints a table, then one JSON line.

    python benchmarks/lapdog_step.py [--models smollm2,gemma3-1b] [--stage1-steps 3] [--stage2-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import _common  # noqa: F401  (path and offline environment)
from _common import ROOT, device_name

RECIPE = ROOT / "recipes" / "smollm2-persona-convai2.yaml"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA3_1B = dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=256, vocab_size=262144, max_position_embeddings=32768,
                 sliding_window=512, query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                 rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})

TIMES: dict[str, list[tuple[float, float]]] = defaultdict(list)  # label -> (wall s, process CPU s) per call
STEPS: list[tuple[int, float, float, float, float]] = []  # (stage, wall begin, wall end, CPU begin, CPU end)
STAGE = {"n": 0}  # how many of the job's callbacks were made since `reset`


def reset() -> None:
    STEPS.clear()
    TIMES.clear()
    STAGE["n"] = 0


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {text}", file=sys.stderr, flush=True)


INSIDE: dict[str, int] = defaultdict(int)  # labels being timed now


def timed(owner, name: str, label: str, within: str | None = None) -> None:
    """Time `owner.name` under `label` (only while `within` is being timed, when given)."""
    if isinstance(owner, type) and name not in vars(owner):
        return  # inherited: already timed where it is defined
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if within and not INSIDE[within]:
            return original(*args, **kwargs)
        t, c = time.perf_counter(), time.process_time()
        INSIDE[label] += 1
        try:
            return original(*args, **kwargs)
        finally:
            INSIDE[label] -= 1
            TIMES[label].append((time.perf_counter() - t, time.process_time() - c))

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Wrap the studio's own pieces (the same names in the before and after code) with timers."""
    import studio.inference
    import studio.persona
    import studio.train.lapdog as lapdog
    from trl import SFTTrainer

    timed(SFTTrainer, "training_step", "lora")
    timed(studio.inference, "generate", "generate", within="retriever")
    timed(studio.persona, "persona_messages", "prompts", within="retriever")  # StoryInputs uses it too
    timed(lapdog, "reply_scores", "score", within="retriever")
    for cls in (lapdog.RetrieverLearner, before_learner(lapdog.RetrieverLearner)):
        timed(cls, "candidates", "search")
        timed(cls, "step", "retriever")
        timed(cls, "top1_change_rate", "probe")
    make_callback = lapdog.make_callback

    def counting(view):  # run_stage1 makes the job's callback once, run_lapdog once more for stage 2
        cb = make_callback(view)
        STAGE["n"] += 1
        n, begin, end = STAGE["n"], cb.on_step_begin, cb.on_step_end

        def on_step_begin(*a, **k):
            STEPS.append((n, time.perf_counter(), 0.0, time.process_time(), 0.0))
            return begin(*a, **k)

        def on_step_end(*a, **k):
            out = end(*a, **k)
            STEPS[-1] = (n, STEPS[-1][1], time.perf_counter(), STEPS[-1][3], time.process_time())
            return out

        cb.on_step_begin, cb.on_step_end = on_step_begin, on_step_end
        return cb

    lapdog.make_callback = counting


def gemma_folder(out: Path) -> str:
    """A randomly initialised Gemma-3-1B-shaped model with SmolLM2's tokenizer, saved once (4 GB fp32)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from studio.models import load_tokenizer

    if (out / "config.json").exists():
        return str(out)
    tok = load_tokenizer(SMOLLM2)
    torch.manual_seed(0)
    config = Gemma3TextConfig(**GEMMA3_1B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    Gemma3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def recipe_for(model: str, s1: int, s2: int, rows: int | None, **retrieval):
    from studio.recipes import load_recipe

    sets = {"model_name_or_path": model, "retrieval.stage1_steps": s1, "retrieval.stage2_steps": s2,
            "max_steps": s1, "save_steps": 100000, "logging_steps": 1, "retrieval.refresh_steps": 0,
            **{f"retrieval.{k}": v for k, v in retrieval.items()}}
    if rows:
        sets["dataset.max_rows"] = rows
    return load_recipe(RECIPE, [f"{k}={v}" for k, v in sets.items()])


def run_job(recipe, runs: Path, resume: Path | None = None, until: str | None = None):
    from studio import jobs

    t = time.perf_counter()
    job = jobs.start_job(None if resume else recipe, runs_dir=runs, resume=resume)
    ended = job.wait(3 * 3600)
    if not ended or (job.status != "done" and not (until and until in str(job.error))):
        raise SystemExit(f"{recipe.name}: training ended {job.status}: {job.error}")
    note(f"job done in {time.perf_counter() - t:.1f} s; steps {[round(s[2] - s[1], 2) for s in STEPS]}; "
         + ", ".join(f"{k} {sum(w for w, _ in v):.1f} s/{len(v)}" for k, v in TIMES.items()))
    return job


def stage_steps(stage: int, cpu: bool = False) -> list[float]:
    """Seconds (wall, or the process's CPU) of each step of a stage, from one step's end to the next's (data
    loading included); the first from its own begin."""
    marks = [(s[3], s[4]) if cpu else (s[1], s[2]) for s in STEPS if s[0] == stage]
    return [marks[0][1] - marks[0][0]] + [e - prev for (_, prev), (_, e) in zip(marks, marks[1:])]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def stage2_breakdown(times: dict, steps: list[float], cpu_steps: list[float]) -> dict:
    n = len(steps)
    per = {k: sum(w for w, _ in v) / n for k, v in times.items()}
    out = {"s_per_step": med(steps[1:] or steps), "cpu_s_per_step": med(cpu_steps[1:] or cpu_steps),
           "steps_s": [round(s, 2) for s in steps], "cpu_steps_s": [round(s, 2) for s in cpu_steps],
           "lora_step_s": per.get("lora", 0.0), "retriever_step_s": per.get("retriever", 0.0),
           "generate_s": per.get("generate", 0.0), "search_s": per.get("search", 0.0),
           "prompts_s": per.get("prompts", 0.0), "score_s": per.get("score", 0.0), "probe_s": per.get("probe", 0.0),
           "generate_cpu_s": sum(c for _, c in times.get("generate", [])) / n,
           "lora_step_cpu_s": sum(c for _, c in times.get("lora", [])) / n}
    out["encoder_step_s"] = out["retriever_step_s"] - out["generate_s"] - out["search_s"] - out["prompts_s"] - out["score_s"]
    out["other_s"] = sum(steps) / n - out["lora_step_s"] - out["retriever_step_s"] - out["probe_s"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


ARMS = ("before", "after", "short")  # short: after, with candidate_max_new_tokens = --short-tokens


class Stage1Done(Exception):
    """Raised where stage 2 would be built: the first job trains stage 1 only (its adapter is saved by then)."""


def bench_model(label: str, model: str, s1: int, s2: int, args, runs: Path) -> dict:
    """Stage 1 once, then stage 2 once per arm, each resumed from a copy of the same stage-1 run (so every arm
    takes the same path: a resume that finds stage 1 finished)."""
    import shutil

    import studio.train.lapdog as lapdog

    result = {"model": label, "stage1_steps": s1, "stage2_steps": s2}
    note(f"{label}: stage 1 ({s1} steps)")
    reset()
    build_stage2 = lapdog.build_stage2

    def stop(*a, **k):
        raise Stage1Done()

    lapdog.build_stage2 = stop
    try:
        first = run_job(recipe_for(model, s1, s2, args.rows), runs, until="Stage1Done").run_dir
    finally:
        lapdog.build_stage2 = build_stage2
    one, cpu = stage_steps(1), stage_steps(1, cpu=True)
    result["stage1"] = {"s_per_step": round(med(one[1:] or one), 3), "steps_s": [round(x, 2) for x in one],
                        "cpu_s_per_step": round(med(cpu[1:] or cpu), 3)}
    for arm in args.arms:
        extra = {"candidate_max_new_tokens": args.short_tokens} if arm == "short" else {}
        recipe = recipe_for(model, s1, s2, args.rows, **extra)
        run = runs / f"{first.name}-{arm}"
        run.mkdir()
        shutil.copytree(first / "stage1", run / "stage1")
        (run / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        original = lapdog.RetrieverLearner
        if arm == "before":
            lapdog.RetrieverLearner = before_learner(original)
        reset()
        note(f"{label}: stage 2, {arm} ({s2} steps), from the stage-1 adapter")
        try:
            run_job(recipe, runs, resume=run)
        finally:
            lapdog.RetrieverLearner = original
        result[arm] = stage2_breakdown(dict(TIMES), stage_steps(1), stage_steps(1, cpu=True))  # stage 2's callback
    return result


def refresh_cost(arms: list[str]) -> dict:
    """One refresh of the generator's stories (`RetrieverLearner.topk`) over the recipe's 5,040 training rows;
    stage 2's start does the same retrieval once."""
    import studio.train.lapdog as lapdog
    from studio.models import load_tokenizer
    from studio.persona import dialogue_rows, persona_data, settings
    from studio.recipes import load_recipe
    from studio.retrieval import load_embedder, load_retriever

    recipe = load_recipe(RECIPE, [])
    cfg = settings(recipe)
    rows = dialogue_rows(persona_data(recipe).splits["train"])
    retriever = load_retriever(cfg["corpus"], cfg["embedder"])
    out, ids = {"rows": len(rows), "personas": len({r["persona"] for r in rows})}, {}
    for arm in arms:
        cls = before_learner(lapdog.RetrieverLearner) if arm == "before" else lapdog.RetrieverLearner
        learner = cls(load_embedder(cfg["embedder"], fresh=True), retriever.index, rows, cfg, load_tokenizer(SMOLLM2))
        t, c = time.perf_counter(), time.process_time()
        ids[arm] = learner.topk(rows)
        out[f"{arm}_s"] = round(time.perf_counter() - t, 2)
        out[f"{arm}_cpu_s"] = round(time.process_time() - c, 2)
    if len(ids) == 2:
        out["rows_with_other_stories"] = sum(a != b for a, b in zip(ids["before"], ids["after"]))
    return out


_BEFORE = {}


def before_learner(base):
    """The retriever's stage-2 code before the speed work (studio/train/lapdog.py at 9d201b6), verbatim: every
    query encoded in one batch, one row at a time (no deduplication), candidates as long as evaluation replies."""
    if base in _BEFORE:
        return _BEFORE[base]
    import random

    import studio.train.lapdog as lapdog
    from studio.train.lapdog import entropy, kl_target, retriever_loss

    class BeforeLearner(base):
        def top1(self, rows) -> list[int]:
            import torch

            with torch.no_grad():
                q = self.encode(self.queries(rows), grad=False).numpy()
            return [ids[0] for ids in self.index.search(q, 1)[1]]

        def candidates(self, rows, rng: random.Random) -> list[list[int]]:
            import torch

            k, n = int(self.cfg["k"]), len(self.index.corpus)
            with torch.no_grad():
                q = self.encode(self.queries(rows), grad=False).numpy()
            out = []
            for ids in self.index.search(q, k)[1]:
                n_random = int(round(float(self.cfg["candidate_random"]) * k))
                if n_random:
                    pool = [i for i in range(n) if i not in ids]
                    for slot in rng.sample(range(k), n_random):
                        ids[slot] = pool.pop(rng.randrange(len(pool)))
                out.append(ids)
            return out

        def step(self, model, step: int, budget: int) -> dict:
            import torch

            from studio.persona import persona_messages
            from studio.inference import chat_prompt, generate

            reply_scores = lapdog.reply_scores  # the module's function, as the old code found it (timed)
            rng = random.Random(self.seed * 100003 + step)  # the same examples again after a resume
            rows = rng.sample(self.rows, min(int(self.cfg["retriever_batch"]), len(self.rows)))
            cands = self.candidates(rows, rng)
            stories = self.index.corpus.stories
            prompts = []
            for row, ids in zip(rows, cands):
                for i in ids:
                    messages = persona_messages(self.tok, row["persona"], [stories[i]], row["history"], budget)[0]
                    prompts.append(chat_prompt(self.tok, messages))
            was_training = model.training
            model.eval()
            replies = generate(model, self.tok, prompts, int(self.cfg["reply_max_new_tokens"]))
            model.train(was_training)
            k = len(cands[0])
            target = torch.stack([kl_target(reply_scores(replies[j * k:(j + 1) * k], row["reply"]),
                                            float(self.cfg["tau_gold"])) for j, row in enumerate(rows)])
            q = self.encode(self.queries(rows), grad=True)
            p = torch.as_tensor(self.index.vectors([i for ids in cands for i in ids])).view(len(rows), k, -1)
            loss = retriever_loss(q, p, target, float(self.cfg["tau_score"]))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return {"retriever/loss": float(loss.detach()), "retriever/target_entropy": entropy(target)}

        def topk(self, rows) -> list[list[int]]:
            import torch

            with torch.no_grad():
                q = self.encode(self.queries(rows), grad=False).numpy()
            return [[int(i) for i in ids] for ids in self.index.search(q, int(self.cfg["k"]))[1]]

    _BEFORE[base] = BeforeLearner
    return BeforeLearner


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--models", default="smollm2,gemma3-1b")
    p.add_argument("--steps", default="smollm2=3x3,gemma3-1b=1x2",
                   help="stage-1 x stage-2 steps per model (stage 2 per arm)")
    p.add_argument("--rows", type=int, default=400, help="dataset.max_rows for the timed runs (0: all)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--short-tokens", type=int, default=12, help="candidate_max_new_tokens of the 'short' arm")
    p.add_argument("--no-refresh", action="store_true", help="skip timing the refresh over 5,040 rows")
    args = p.parse_args()
    args.arms = args.arms.split(",")
    steps = {m: tuple(map(int, v.split("x"))) for m, v in (kv.split("=") for kv in args.steps.split(","))}
    load = [os.getloadavg()]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    instrument()
    results, refresh = [], None
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STUDIO_RUNS"] = str(Path(tmp) / "runs")
        cache = Path(os.environ.get("BENCH_CACHE", Path(tempfile.gettempdir()) / "lapdog-step-bench"))
        for label in args.models.split(","):
            model = SMOLLM2 if label == "smollm2" else gemma_folder(cache / "gemma3-1b-shape")
            results.append(bench_model(label, model, *steps.get(label, (3, 3)), args, Path(tmp) / "runs"))
            load.append(os.getloadavg())
        if not args.no_refresh:
            note("refresh over the recipe's training rows, before and after")
            refresh = refresh_cost([a for a in ("before", "after") if a in args.arms])
            load.append(os.getloadavg())

    every = int(recipe_refresh_steps())
    print(f"\nLAPDOG seconds per step, {device_name()}, torch {torch.get_num_threads()} threads, {started}; "
          f"recipe {RECIPE.name} (k 4, 2 rows a step, retriever_batch 2, 24-token candidates; short: "
          f"{args.short_tokens}); load average (1 min) at start and after each part: {[round(x[0], 2) for x in load]}")
    head = ["model", "arm", "stage 1", "stage 2", "+refresh", "LoRA", "gen", "search", "prompts", "score",
            "encoder", "other", "CPU s1", "CPU s2"]
    print(f"{head[0]:<10} {head[1]:<7}" + "".join(f"{h:>9}" for h in head[2:]))
    for r in results:
        for arm in args.arms:
            a = r[arm]
            per = refresh[f"{'before' if arm == 'before' else 'after'}_s"] / every if refresh else 0.0
            a["s_per_step_with_refresh"] = round(a["s_per_step"] + per, 3)
            first = arm == args.arms[0]
            cells = [r["stage1"]["s_per_step"] if first else None, a["s_per_step"],
                     a["s_per_step_with_refresh"] if refresh else None, a["lora_step_s"], a["generate_s"],
                     a["search_s"], a["prompts_s"], a["score_s"], a["encoder_step_s"], a["other_s"],
                     r["stage1"]["cpu_s_per_step"] if first else None, a["cpu_s_per_step"]]
            print(f"{r['model']:<10} {arm:<7}" + "".join(f"{c:>9.2f}" if c is not None else f"{'':>9}" for c in cells))
    runs = ", ".join(f"{r['model']} {r['stage1_steps']}x{r['stage2_steps']}" for r in results)
    print(f"(stage 1, stage 2: median s/step after each stage's first step ({runs} steps); +refresh: with one "
          f"refresh over the recipe's rows every {every} steps; LoRA … other: mean wall seconds per stage-2 step; CPU s1, "
          "s2: the process's CPU seconds per step, median, which other people's load moves less than wall time)")
    if refresh:
        print(f"refresh of the generator's stories over {refresh['rows']} training rows ({refresh['personas']} personas): "
              + ", ".join(f"{a} {refresh[f'{a}_s']:.1f} s ({refresh[f'{a}_cpu_s']:.1f} s CPU)"
                          for a in ("before", "after") if f"{a}_s" in refresh)
              + (f"; rows whose top-k differ: {refresh['rows_with_other_stories']}"
                 if "rows_with_other_stories" in refresh else ""))
    print(json.dumps({"benchmark": "lapdog_step", "device": device_name(), "threads": torch.get_num_threads(),
                      "started": started, "loadavg": [[round(v, 2) for v in x] for x in load],
                      "refresh_steps": every, "short_tokens": args.short_tokens, "models": results,
                      "refresh": refresh}))


def recipe_refresh_steps() -> int:
    from studio.recipes import load_recipe

    return int((load_recipe(RECIPE, []).header.get("retrieval") or {}).get("refresh_steps") or 10)


if __name__ == "__main__":
    main()
