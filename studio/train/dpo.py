"""Direct Preference Optimization with LoRA: one linear path handing the work to TRL's DPOTrainer.

Two starts, one path:
- from the base model: a fresh LoRA adapter; the reference is the base (adapter switched off);
- from a finished SFT run (`init_adapter` in the recipe header): its adapter is loaded trainable and
  TRL keeps a frozen `ref` copy of it as the reference, so the base weights are never held twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from studio.inference import init_adapter_run
from studio.metrics import margin_table
from studio.pairs import load_pairs
from studio.train.common import (eval_split, keep_trackers_in_run, memory_probe, parallel_summary, policy_model,
                                 quiet_trainer, resolve_fast_defaults, stopped_summary, train_job, use_trackers,
                                 write_summary)
from studio.train.progress import make_callback, save_adapter
from studio.runs import DONE

REWARD_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
HELDOUT_ROWS = 32  # held-out pairs scored after training (a table, not a benchmark)


def build_dpo_trainer(recipe, run_dir: Path, log=print, callbacks=()):
    """seed → tokenizer → pairs → model (fresh adapter or the SFT run's) → speed settings → DPOTrainer."""
    import torch
    from transformers import set_seed
    from trl import DPOTrainer

    from studio.models import load_tokenizer

    seed = int(recipe.train.get("seed", 42))
    set_seed(seed)
    model_args = recipe.model_config()
    init_run = init_adapter_run(recipe)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    data = load_pairs(recipe, tokenizer, seed)
    log(f"data: {data.source} as {data.format.name}, {data.rows} pairs, {data.dropped_total} dropped"
        + (f" ({', '.join(f'{v} {k}' for k, v in data.dropped.items())})" if data.dropped else "")
        + f", splits {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())}")
    eval_ds = eval_split(recipe, data, log)

    model, peft_config = policy_model(recipe, model_args, init_run, log)
    if init_run is not None:
        log(f"starting from {init_run.name}'s adapter; the reference is a frozen copy of it")
    else:
        log("starting from the base model: a fresh adapter; the reference is the base (adapter off)")
    if "train_sampling_strategy" not in recipe.train:  # the length sampler needs an input_ids column; pairs have none
        recipe.train["train_sampling_strategy"] = "random"
    on_gpu = torch.cuda.is_available()
    fits = memory_probe(model, tokenizer, data, recipe.train.get("max_length")) if on_gpu else None
    for note in [*resolve_fast_defaults(recipe, on_gpu=on_gpu, fits=fits), *use_trackers(recipe, run_dir)]:
        log(note)
    args, notes = recipe.training_config(run_dir / "checkpoints")
    for note in notes:
        log(note)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data.splits["train"], eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    keep_trackers_in_run(trainer, run_dir)
    quiet_trainer(trainer)
    return trainer, tokenizer, data


def reward_summary(log_history: list[dict]) -> dict:
    """Final train and eval rewards/* as TRL logged them, and the first train margin to compare with."""
    out = {}
    for prefix, label in (("", "train_"), ("eval_", "eval_")):
        for key in REWARD_KEYS:
            values = [h[prefix + key] for h in log_history if prefix + key in h]
            if values:
                out[label + key] = round(float(values[-1]), 4)
                if key == "rewards/margins":
                    out[f"first_{label}{key}"] = round(float(values[0]), 4)
    return out


def run_dpo(job, resume: bool = False) -> dict:
    from studio.models import folder_size

    recipe, run_dir = job.recipe, job.run_dir
    started = time.time()
    trainer, tokenizer, data = build_dpo_trainer(recipe, run_dir, job.log, [make_callback(job)])
    output, start_step = train_job(job, trainer, resume)
    extra = {"train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 3),
             "beta": trainer.args.beta, "loss_type": list(trainer.args.loss_type),
             "init_adapter": recipe.header.get("init_adapter"), "parallel": parallel_summary(trainer),
             **reward_summary(trainer.state.log_history)}
    stopped = stopped_summary(job, trainer, started, start_step, extra)
    if stopped is not None:
        return stopped

    adapter_dir = run_dir / "adapter"
    job.emit("phase", phase="saving the adapter")
    save_adapter(trainer, tokenizer, adapter_dir, adapters=["default"])  # not TRL's frozen `ref` copy
    extra.update(adapter_dir=str(adapter_dir), adapter_bytes=folder_size(adapter_dir))
    heldout_name = "test" if "test" in data.splits else "validation" if "validation" in data.splits else None
    if heldout_name:
        rows, prompts = [], set()
        for row in data.splits[heldout_name]:  # one pair per prompt: a table of distinct questions
            key = json.dumps(row["prompt"], sort_keys=True)
            if key not in prompts:
                prompts.add(key)
                rows.append(row)
            if len(rows) == HELDOUT_ROWS:
                break
        reference = "ref" if "ref" in trainer.model.peft_config else None
        job.emit("phase", phase=f"scoring {len(rows)} held-out pairs")
        table = margin_table(trainer.model, tokenizer, rows, reference, beta=trainer.args.beta)
        (run_dir / "heldout_margins.json").write_text(json.dumps(table, indent=1, ensure_ascii=False), encoding="utf-8")
        extra["heldout"] = {"split": heldout_name, "rows": len(table),
                            "reward_accuracy": round(sum(r["reward_margin"] > 0 for r in table) / len(table), 4),
                            "policy_prefers_chosen": round(sum(r["prefers_chosen"] for r in table) / len(table), 4),
                            "reference_prefers_chosen": round(
                                sum(r["reference_margin"] > 0 for r in table) / len(table), 4)}
        h = extra["heldout"]
        margin = sum(r["reward_margin"] for r in table) / len(table)
        h["mean_reward_margin"] = round(margin, 4)
        job.log(f"held-out {heldout_name} pairs ({len(table)} prompts): mean reward margin {margin:+.3f}, "
                f"reward accuracy {h['reward_accuracy']:.0%} (DPO moved towards the chosen reply on that share)")
    summary = write_summary(job, trainer, DONE, started, start_step, extra)
    job.emit("status", status=DONE)
    return summary
