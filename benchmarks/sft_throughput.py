"""SFT throughput: the Gemma quotes notebook's way vs the studio's defaults, same maths.

Same examples, same effective batch (4), same epochs, same learning rate, in one process,
alternating arms:
  notebook  SFTConfig as the notebook writes it on today's TRL: micro-batch 1 × grad-accum 4,
            random order, TRL's default gradient checkpointing
  studio    the studio's resolved defaults: largest micro-batch that fits (4 × 1 here),
            length-grouped batches with dynamic padding, checkpointing only if memory needs it
on (1) the embedded tiny Llama and (2) a randomly initialised SmolLM2-135M architecture.
Prints a table, then one JSON line. Runs unchanged on a GPU (then memory is GPU memory).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import PeakMemory, device_name, random_model_folder, recipe

ARMS = {
    "notebook": {"train_sampling_strategy": "random", "activation_checkpointing": True, "studio.auto_batch": False},
    # ablation: the notebook's 1×4 random order without checkpointing, to separate the two effects
    "nb-no-ckpt": {"train_sampling_strategy": "random", "activation_checkpointing": False, "studio.auto_batch": False},
    "studio": {},
}


def run_arm(arm: str, model: str, epochs: int, lr: float, workdir: Path) -> dict:
    from studio.train.sft import build_sft_trainer

    r = recipe(model_name_or_path=model, num_train_epochs=epochs, max_steps=-1, learning_rate=lr,
               per_device_train_batch_size=1, gradient_accumulation_steps=4, eval_strategy="no",
               save_strategy="no", logging_steps=1000, warmup_steps=2, **ARMS[arm])
    trainer, _, data = build_sft_trainer(r, workdir / f"{arm}-{time.time_ns()}", log=lambda *_: None)
    with PeakMemory() as mem:
        out = trainer.train()
    runtime = out.metrics["train_runtime"]
    examples = len(data.splits["train"]) * epochs
    eval_loss = trainer.evaluate(data.splits["validation"])["eval_loss"]
    return {"examples_per_s": examples / runtime, "tokens_per_s": trainer.state.num_input_tokens_seen / runtime,
            "peak_mem_mb": mem.peak_mb, "eval_loss": eval_loss, "runtime_s": runtime,
            "micro_batch": r.train["per_device_train_batch_size"], "grad_accum": r.train["gradient_accumulation_steps"],
            "optimizer_steps": trainer.state.global_step}


def main() -> None:
    import os

    reps = int(os.environ.get("BENCH_REPS", 2))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {
            "embedded tiny-llama": ("embedded/tiny-llama", 3, 5e-3),
            "SmolLM2-135M arch (random init)": (random_model_folder("smollm2-135m", tmp / "smollm2"), 1, 2e-4),
        }
        for label, (model, epochs, lr) in models.items():
            runs = {arm: [] for arm in ARMS}
            for _ in range(reps):  # alternate, so drift on a shared machine hits both arms alike
                for arm in ARMS:
                    runs[arm].append(run_arm(arm, model, epochs, lr, tmp))
            results[label] = {arm: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for arm, rs in runs.items()}

    print(f"device: {device_name()}; median of {reps} alternating runs per arm; 52 train examples, effective batch 4")
    print("peak MB: GPU allocator peak on CUDA; on CPU the RSS growth during train(), which depends on what the "
          "allocator kept from earlier arms (rough)")
    head = f"{'model':33} {'arm':9} {'batch':>6} {'ex/s':>8} {'tok/s':>9} {'peak MB':>8} {'eval loss':>10}"
    print(head)
    print("-" * len(head))
    summary = {"benchmark": "sft_throughput", "device": device_name(), "reps": reps, "models": {}}
    for label, arms in results.items():
        for arm, m in arms.items():
            print(f"{label:33} {arm:9} {m['micro_batch']:>2.0f}×{m['grad_accum']:<3.0f} {m['examples_per_s']:>8.2f} "
                  f"{m['tokens_per_s']:>9.0f} {m['peak_mem_mb']:>8.0f} {m['eval_loss']:>10.4f}")
        nb, st, ab = arms["notebook"], arms["studio"], arms["nb-no-ckpt"]
        speedup = st["examples_per_s"] / nb["examples_per_s"]
        loss_change = (st["eval_loss"] - nb["eval_loss"]) / nb["eval_loss"]
        print(f"{'':33} {'ratio':9} {'':6} {speedup:>7.2f}× {st['tokens_per_s'] / nb['tokens_per_s']:>8.2f}× "
              f"{st['peak_mem_mb'] / max(nb['peak_mem_mb'], 1e-9):>7.2f}× {100 * loss_change:>+9.2f}%")
        print(f"{'':33} {'(of which batching+grouping alone: ' + format(st['examples_per_s'] / ab['examples_per_s'], '.2f') + '×; checkpointing off alone: ' + format(ab['examples_per_s'] / nb['examples_per_s'], '.2f') + '×)'}")
        summary["models"][label] = {"notebook": nb, "studio": st, "ablation_no_ckpt": ab, "speedup": round(speedup, 3),
                                    "speedup_batching_grouping": round(st["examples_per_s"] / ab["examples_per_s"], 3),
                                    "speedup_no_checkpointing": round(ab["examples_per_s"] / nb["examples_per_s"], 3),
                                    "eval_loss_change_pct": round(100 * loss_change, 3),
                                    "meets_goal": speedup >= 2 and loss_change <= 0.02}
    print("goal: studio ≥ 2× the notebook's examples/s with eval loss no more than 2% worse")
    print(json.dumps(summary, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    main()
