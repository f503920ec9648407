"""Pieces every training path shares: fast defaults, seeds, samples, the summary."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from studio.errors import StudioError


def largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def resolve_fast_defaults(recipe, on_gpu: bool, fits=None) -> list[str]:
    """Fill the studio's speed choices into `recipe.train`; each is recorded and can be switched off.

    - auto_batch: keep the effective batch (micro-batch × accumulation), but make the micro-batch
      the largest that fits (a divisor of the effective batch), so fewer, fuller steps run.
    - group by length with dynamic padding (TRL's collator pads to the longest in each batch).
    - count non-padding tokens for an honest tokens/s.
    `fits(micro)` answers whether a micro-batch fits in memory (a GPU probe); on CPU memory is ample.
    """
    studio, train, notes = recipe.studio, recipe.train, []
    micro = int(train.get("per_device_train_batch_size", 8))
    accum = int(train.get("gradient_accumulation_steps", 1))
    effective = micro * accum
    if studio.get("auto_batch", True) and accum > 1:
        cap = int(studio.get("max_micro_batch", 16 if on_gpu else 8))
        best = largest_divisor_at_most(effective, cap)
        while fits is not None and best > micro and not fits(best):
            best = largest_divisor_at_most(effective, best - 1)
        if best != micro:
            train["per_device_train_batch_size"] = best
            train["gradient_accumulation_steps"] = effective // best
            notes.append(f"auto batch: micro-batch {micro}×{accum} → {best}×{effective // best} "
                         f"(effective batch {effective} kept)")
    if "train_sampling_strategy" not in train and not train.get("packing") and not train.get("padding_free"):
        train["train_sampling_strategy"] = "group_by_length"
        notes.append("group_by_length: batches of similar length, padded to the longest in each batch")
    train.setdefault("include_num_input_tokens_seen", "non_padding")
    return notes


def quiet_trainer(trainer) -> None:
    """The job reports progress; the Trainer's own console printer and bar would only duplicate it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of `prompts` (deterministic, so before/after are comparable)."""
    import torch

    outs = []
    model.eval()
    device = next(model.parameters()).device
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outs.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


def write_summary(job, trainer, status: str, started: float, start_step: int, extra: dict | None = None) -> dict:
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    runtime = time.time() - started
    steps = state.global_step - start_step
    summary = {
        "run": job.id, "status": status, "method": job.recipe.method,
        "steps": state.global_step, "planned_steps": state.max_steps,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None, "final_eval_loss": evals[-1] if evals else None,
        "runtime_s": round(runtime, 2), "steps_per_s": round(steps / runtime, 3) if runtime else None,
        "tokens_seen": int(state.num_input_tokens_seen or 0),
        "tokens_per_s": round((state.num_input_tokens_seen or 0) / runtime, 1) if runtime and start_step == 0 else None,
        "trainable_params": (job.params or {}).get("trainable"), "total_params": (job.params or {}).get("total"),
        "trainable_percent": (job.params or {}).get("percent"),
        "best_checkpoint": state.best_model_checkpoint,
    }
    if summary["tokens_per_s"] is None and runtime:
        tokens_now = (state.num_input_tokens_seen or 0) - job.start_tokens
        summary["tokens_per_s"] = round(tokens_now / runtime, 1)
    summary.update(extra or {})
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    (Path(job.run_dir) / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    job.emit("summary", summary=summary)
    return summary


def require_split(data, name: str, where: str):
    if name not in data.splits:
        raise StudioError(f"{where}: no {name} split (too few rows for 80/10/10); add rows or set eval_strategy: 'no'")
    return data.splits[name]
