"""SFT throughput: the Gemma quotes notebook as written vs the studio's defaults, same maths, with MFU.

Same examples, same effective batch (4), same epochs, same learning rate; each arm in a fresh process (no
allocator or thread-pool state carried from one arm to the next), arms alternating:
  notebook       the notebook as written: `transformers.TrainingArguments` passed to `SFTTrainer`
                 (micro-batch 1 × grad-accum 4, random order, logging every step). TRL converts it to an
                 SFTConfig that keeps gradient checkpointing OFF: this is the honest baseline.
  notebook+ckpt  (extra row) the same on a bare `SFTConfig`, whose default turns gradient checkpointing on:
                 what the notebook would get if rewritten for today's TRL (the earlier, slower baseline)
  studio         the studio's resolved defaults: largest micro-batch that fits (4 × 1 here), length-grouped
                 batches with dynamic padding, checkpointing only if memory needs it
on (1) the embedded tiny Llama and (2) a randomly initialised SmolLM2-135M architecture.

MFU = achieved matmul FLOP/s ÷ this machine's dense-matmul peak, measured in the same run (best of several
square fp32 matmuls with torch's threads; bf16 on a GPU). Matmul FLOPs per real (non-padding) token of a
LoRA step: forward 2·N + input-gradient backward 2·N for the frozen Linear weights N (lm_head included,
embeddings excluded: a lookup), 6·n for the LoRA weights n (they also get weight gradients), and attention
scores/values 2·L·d·s forward + twice that backward (L layers, d = heads × head size, causal: mean context s/2
of the mean length s). Checkpointing's recomputation and padding are not useful work and are not counted.
Prints a table, then one JSON line. Runs unchanged on a GPU (then memory is GPU memory).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PeakMemory, device_name, random_model_folder, recipe

ARMS = {
    "notebook": None,  # built by notebook_trainer: TrainingArguments → SFTTrainer, as the notebook does
    "notebook+ckpt": {"train_sampling_strategy": "random", "activation_checkpointing": True,
                      "studio.auto_batch": False, "logging_steps": 1},
    "studio": {},
}


def matmul_peak_flops(seconds: float = 2.0) -> float:
    """Best dense-matmul FLOP/s of this device, the ceiling MFU is measured against."""
    import torch

    cuda = torch.cuda.is_available()
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    a = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
    b = torch.randn_like(a)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


def flops_per_token(model, mean_len: float) -> float:
    import torch

    frozen = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "lora_" in name:
                lora += module.weight.numel()
            else:
                frozen += module.weight.numel()
    cfg = model.config
    attn_width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    attention = 2 * cfg.num_hidden_layers * attn_width * mean_len  # QKᵀ and AV over a mean context of s/2
    return 4 * frozen + 6 * lora + 3 * attention


def token_lengths(trainer) -> list[int]:
    return [len(ids) for ids in trainer.train_dataset["input_ids"]]


def notebook_trainer(r, workdir: Path):
    """What the quotes notebook does: a TrainingArguments, not an SFTConfig, handed to SFTTrainer."""
    import torch
    from transformers import TrainingArguments, set_seed
    from trl import SFTTrainer, get_peft_config

    from studio.data import prepare_dataset
    from studio.models import load_model, load_tokenizer

    set_seed(42)
    model_args = r.model_config()
    tok = load_tokenizer(model_args.model_name_or_path)
    ds = r.dataset
    data = prepare_dataset(ds["source"], ds.get("format"), splits=ds.get("splits", "80/10/10"), seed=42)
    t = r.train
    args = TrainingArguments(output_dir=str(workdir), per_device_train_batch_size=1, gradient_accumulation_steps=4,
                             warmup_steps=t["warmup_steps"], num_train_epochs=t["num_train_epochs"], max_steps=-1,
                             learning_rate=t["learning_rate"], logging_steps=1, save_strategy="no", report_to="none",
                             seed=42, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available())
    trainer = SFTTrainer(model=load_model(model_args), args=args, train_dataset=data.splits["train"],
                         processing_class=tok, peft_config=get_peft_config(model_args))
    return trainer, data


def run_arm(arm: str, model: str, epochs: int, lr: float, workdir: Path, peak: float) -> dict:
    from studio.train.common import quiet_trainer
    from studio.train.sft import build_sft_trainer

    sets = {"model_name_or_path": model, "num_train_epochs": epochs, "max_steps": -1, "learning_rate": lr,
            "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4, "eval_strategy": "no",
            "save_strategy": "no", "logging_steps": 5, "warmup_steps": 2, **(ARMS[arm] or {})}
    r = recipe(**sets)
    where = workdir / f"{arm.replace('+', '-')}-{time.time_ns()}"
    if ARMS[arm] is None:
        trainer, data = notebook_trainer(r, where)
        quiet_trainer(trainer)
    else:
        trainer, _, data = build_sft_trainer(r, where, log=lambda *_: None)
    lengths = token_lengths(trainer)
    with PeakMemory() as mem:
        out = trainer.train()
    runtime = out.metrics["train_runtime"]
    tokens = sum(lengths) * epochs
    flops = flops_per_token(trainer.model, statistics.fmean(lengths)) * tokens
    eval_loss = trainer.evaluate(data.splits["validation"])["eval_loss"]
    a = trainer.args
    return {"examples_per_s": len(lengths) * epochs / runtime, "tokens_per_s": tokens / runtime,
            "peak_mem_mb": mem.peak_mb, "eval_loss": eval_loss, "runtime_s": runtime,
            "tflops": flops / runtime / 1e12, "mfu_pct": 100 * flops / runtime / peak,
            "micro_batch": a.per_device_train_batch_size, "grad_accum": a.gradient_accumulation_steps,
            "checkpointing": float(bool(a.gradient_checkpointing)), "optimizer_steps": trainer.state.global_step}


def run_arm_in_process(arm: str, model: str, epochs: int, lr: float, workdir: Path, peak: float) -> dict:
    """One arm in a fresh Python process; its result is the last line it prints."""
    cmd = [sys.executable, __file__, "--arm", arm, model, str(epochs), str(lr), str(workdir), str(peak)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise SystemExit(f"arm {arm} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    reps = int(os.environ.get("BENCH_REPS", 2))
    results = {}
    peaks = [matmul_peak_flops()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wanted = os.environ.get("BENCH_MODELS", "tiny,smollm2").split(",")  # e.g. BENCH_MODELS=tiny for a quick run
        models = {}
        if "tiny" in wanted:
            models["embedded tiny-llama"] = ("embedded/tiny-llama", 3, 5e-3)
        if "smollm2" in wanted:
            models["SmolLM2-135M arch (random init)"] = (random_model_folder("smollm2-135m", tmp / "smollm2"), 1, 2e-4)
        for label, (model, epochs, lr) in models.items():
            runs = {arm: [] for arm in ARMS}
            for _ in range(reps):  # alternate, so drift on a shared machine hits both arms alike
                for arm in ARMS:
                    runs[arm].append(run_arm_in_process(arm, model, epochs, lr, tmp, peaks[0]))
            results[label] = {arm: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for arm, rs in runs.items()}
    peaks.append(matmul_peak_flops())
    peak = max(peaks)
    for arms in results.values():  # MFU against the best peak seen at either end of the run
        for m in arms.values():
            m["mfu_pct"] = 100 * m["tflops"] * 1e12 / peak

    print(f"device: {device_name()}, torch threads {torch.get_num_threads()}; dense matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s (measured before and after); median of {reps} alternating runs per arm, each in its own process; "
          "52 train examples, effective batch 4")
    print("peak MB: GPU allocator peak on CUDA; on CPU the RSS growth during train() (rough)")
    head = (f"{'model':33} {'arm':13} {'batch':>6} {'ckpt':>4} {'ex/s':>8} {'tok/s':>8} {'GFLOP/s':>8} {'MFU':>6} "
            f"{'peak MB':>8} {'eval loss':>10}")
    print(head)
    print("-" * len(head))
    summary = {"benchmark": "sft_throughput", "device": device_name(), "threads": torch.get_num_threads(),
               "peak_gflops": round(peak / 1e9, 1), "reps": reps, "models": {}}
    for label, arms in results.items():
        for arm, m in arms.items():
            print(f"{label:33} {arm:13} {m['micro_batch']:>2.0f}×{m['grad_accum']:<3.0f} "
                  f"{'on' if m['checkpointing'] else 'off':>4} {m['examples_per_s']:>8.2f} {m['tokens_per_s']:>8.0f} "
                  f"{1000 * m['tflops']:>8.1f} {m['mfu_pct']:>5.1f}% {m['peak_mem_mb']:>8.0f} {m['eval_loss']:>10.4f}")
        nb, st, ck = arms["notebook"], arms["studio"], arms["notebook+ckpt"]
        speedup = st["examples_per_s"] / nb["examples_per_s"]
        loss_change = (st["eval_loss"] - nb["eval_loss"]) / nb["eval_loss"]
        print(f"{'':33} {'studio/notebook':>18} {speedup:>12.2f}× examples/s, eval loss {100 * loss_change:+.2f}% "
              f"(vs the checkpointing row: {st['examples_per_s'] / ck['examples_per_s']:.2f}×)")
        summary["models"][label] = {"notebook": nb, "notebook_ckpt": ck, "studio": st, "speedup": round(speedup, 3),
                                    "speedup_vs_ckpt": round(st["examples_per_s"] / ck["examples_per_s"], 3),
                                    "eval_loss_change_pct": round(100 * loss_change, 3),
                                    "meets_goal": speedup >= 2 and loss_change <= 0.02}
    print("goal: studio ≥ 2× the notebook-as-written's examples/s with eval loss no more than 2% worse")
    print(json.dumps(summary, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--arm":
        _, _, arm, model, epochs, lr, workdir, peak = sys.argv
        print(json.dumps(run_arm(arm, model, int(epochs), float(lr), Path(workdir), float(peak))))
    else:
        main()
