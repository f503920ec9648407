"""Two CPU processes (gloo): FSDP2 against DDP for a LoRA on the SmolLM2-135M architecture (random weights from
assets/configs/smollm2-135m.json). Per process: the weights it holds, its peak memory, the time a step takes.

    python benchmarks/fsdp.py [--steps 6] [--seq 128] [--batch 2]

Each arm is its own `torchrun --nproc_per_node 2` (this script, --worker). FSDP2 wraps every decoder layer and the
root with `fully_shard`, as accelerate does for a recipe with `fsdp: true`; the model is built on the meta device and
only each process's shard is materialised (accelerate's `cpu_ram_efficient_loading`). DDP holds the whole model in
every process. Both train the same LoRA (r 16 on the attention and MLP projections) with AdamW on random tokens.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "assets" / "configs" / "smollm2-135m.json"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(mode: str, steps: int, seq: int, batch: int) -> None:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    raw = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    config = LlamaConfig(**raw)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], task_type="CAUSAL_LM")
    base_rss = _rss_mb()
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        with torch.device("meta"):
            model = get_peft_model(LlamaForCausalLM(config), lora)
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        model.to_empty(device="cpu")
        with torch.no_grad():  # random weights, shard by shard (LoRA B starts at zero, as PEFT makes it)
            for name, p in model.named_parameters():
                local = p.to_local()
                local.zero_() if "lora_B" in name else local.normal_(0, 0.02)
            model.base_model.model.model.rotary_emb.__init__(config)  # buffers from the config, not the meta init
        wrapped = model
    else:
        from torch.nn.parallel import DistributedDataParallel

        model = get_peft_model(LlamaForCausalLM(config), lora)
        wrapped = DistributedDataParallel(model, find_unused_parameters=False)
    local_params = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
                       for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(rank))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"rank": rank, "params_mb": round(local_params / 2**20, 1), "peak_rss_mb": round(peak, 1),
           "growth_mb": round(peak - base_rss, 1), "step_s": round(statistics.median(times[1:] or times), 3),
           "loss": round(float(loss), 4)}
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if rank == 0:
        print("RESULT " + json.dumps(rows))
    dist.destroy_process_group()


def run_arm(mode: str, args) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--worker", mode, "--steps", str(args.steps), "--seq", str(args.seq), "--batch", str(args.batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["ddp", "fsdp2"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.seq, args.batch)
    results = {mode: run_arm(mode, args) for mode in ("ddp", "fsdp2")}
    print(f"SmolLM2-135M architecture + LoRA r16, 2 CPU processes (gloo), batch {args.batch}×{args.seq} tokens "
          f"per process, median of {args.steps - 1} steps; load average {os.getloadavg()[0]:.1f}")
    print(f"{'arm':<6} {'rank':>4} {'weights held MB':>16} {'peak RSS MB':>12} {'RSS growth MB':>14} {'s/step':>7}")
    for mode, rows in results.items():
        for r in rows:
            print(f"{mode:<6} {r['rank']:>4} {r['params_mb']:>16} {r['peak_rss_mb']:>12} {r['growth_mb']:>14} "
                  f"{r['step_s']:>7}")
    mean = {m: {k: round(statistics.mean(r[k] for r in rows), 3) for k in ("params_mb", "peak_rss_mb", "step_s")}
            for m, rows in results.items()}
    print(json.dumps({"benchmark": "fsdp", "processes": 2, "steps": args.steps, "seq": args.seq, "batch": args.batch,
                      "load_avg": round(os.getloadavg()[0], 1), **{m: v for m, v in mean.items()},
                      "peak_rss_ratio": round(mean["fsdp2"]["peak_rss_mb"] / mean["ddp"]["peak_rss_mb"], 3),
                      "weights_ratio": round(mean["fsdp2"]["params_mb"] / mean["ddp"]["params_mb"], 3)}))


if __name__ == "__main__":
    main()
