"""How much could any retriever matter to a LAPDOG run's generator? (issue 32)

For each held-out row of the run's persona table (the same rows `eval RUN --persona --limit N` scores), the gold
reply's log-likelihood per token (teacher-forced, the table's `gold_ll`) under the run's final adapter with one
story in the prompt: no story, the fixed retriever's top story, the trained (LAPDOG) retriever's top story, and
`--stories` random stories. The best of all of them per row is an oracle retriever's choice among them; the spread
between the best and the worst is the room a retriever has. Prints a table, then one JSON line.

    OMP_NUM_THREADS=1 python benchmarks/lapdog_oracle.py RUN [--limit 160] [--stories 8]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from _common import device_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished LAPDOG run (its name under runs/ or $STUDIO_RUNS, or its folder)")
    p.add_argument("--limit", type=int, default=160, help="held-out rows, spread over dialogues as the table does")
    p.add_argument("--stories", type=int, default=8, help="random single stories per row")
    args = p.parse_args()

    import numpy as np

    from studio.access import resolve_run
    from studio.evaluate.lapdog_table import _run_on_cached_base, gold_loglik
    from studio.inference import chat_prompt
    from studio.persona import (dialogue_rows, heldout_dialogues, persona_messages, query_text, settings,
                                spread_over_dialogues)
    from studio.recipes import load_recipe
    from studio.retrieval import load_retriever

    run = resolve_run(args.run)
    recipe = load_recipe(run / "recipe.yaml")
    cfg = settings(recipe)
    _, _, heldout = heldout_dialogues(recipe, None)
    rows = spread_over_dialogues(dialogue_rows(heldout), args.limit)
    queries = [query_text(r["persona"], r["history"], cfg["query"] == "persona+turn") for r in rows]
    fixed = load_retriever(cfg["corpus"] or None, cfg["embedder"])
    fixed_top = [s[0] for s in fixed.search(queries, 1)]
    learned_top = [s[0] for s in load_retriever(cfg["corpus"] or None, cfg["embedder"], run).search(queries, 1)]
    model, tok = _run_on_cached_base(run, run / "stage1" / "adapter")
    model.set_adapter("default")
    budget = int(recipe.train.get("max_length") or 1024) - int(cfg["reply_max_new_tokens"])
    rng, started = random.Random(0), time.time()

    def loglik(story_sets):
        prompts = [chat_prompt(tok, persona_messages(tok, r["persona"], s, r["history"], budget)[0])
                   for r, s in zip(rows, story_sets)]
        return np.array(gold_loglik(model, tok, prompts, [r["reply"] for r in rows]))

    none = loglik([[] for _ in rows])
    fx, lp = loglik([[s] for s in fixed_top]), loglik([[s] for s in learned_top])
    rand = np.stack([loglik([[rng.choice(fixed.corpus.stories)] for _ in rows]) for _ in range(args.stories)])
    every = np.vstack([rand, fx[None], lp[None]])
    spread = every.max(0) - every.min(0)
    out = {"benchmark": "lapdog_oracle", "run": run.name, "device": device_name(), "rows": len(rows),
           "random_stories": args.stories, "no_story": float(none.mean()), "fixed_top1": float(fx.mean()),
           "lapdog_top1": float(lp.mean()), "random_story": float(rand.mean()), "oracle_best": float(every.max(0).mean()),
           "spread_mean": float(spread.mean()), "spread_median": float(np.median(spread)),
           "fixed_beats_of": [float((every < fx).sum(0).mean()), every.shape[0] - 1],
           "lapdog_beats_of": [float((every < lp).sum(0).mean()), every.shape[0] - 1],
           "seconds": round(time.time() - started, 1)}
    print(f"gold reply log-likelihood per token, {run.name}, {len(rows)} held-out rows (higher: likelier)")
    for key in ("no_story", "fixed_top1", "lapdog_top1", "random_story", "oracle_best", "spread_mean", "spread_median"):
        print(f"  {key:14s} {out[key]:+.4f}")
    print(f"  stories beaten (of {every.shape[0] - 1}): fixed {out['fixed_beats_of'][0]:.2f}, "
          f"lapdog {out['lapdog_beats_of'][0]:.2f}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
