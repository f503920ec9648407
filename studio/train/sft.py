"""Supervised fine-tuning with LoRA/QLoRA: one linear path handing the work to TRL's SFTTrainer."""

from __future__ import annotations

import time
from pathlib import Path

from studio.train.progress import is_main_process, make_callback, save_adapter
from studio.runs import DONE
from studio.inference import is_instruct
from studio.train.common import (eval_split, generate_samples, keep_trackers_in_run, memory_probe, parallel_summary,
                                 prepare_sharded_load, quiet_trainer, resolve_fast_defaults, resolve_sharding,
                                 shard_on_cpu, stopped_summary, train_job, use_trackers, write_summary)


def build_sft_trainer(recipe, run_dir: Path, log=print, callbacks=()):
    """seed → tokenizer → data → model → speed settings → TRL config → SFTTrainer.

    The studio's job and the benchmarks' "plain TRL" arm both build their trainer here, so they
    train the identical configuration.
    """
    import torch
    from transformers import set_seed
    from trl import SFTTrainer, get_peft_config

    from studio.data import prepare_dataset
    from studio.models import load_model, load_tokenizer, source_note

    seed = int(recipe.train.get("seed", 42))
    set_seed(seed)
    model_args = recipe.model_config()
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    ds = recipe.dataset
    data = prepare_dataset(ds["source"], ds.get("format"), ds.get("template"), config=ds.get("config"),
                           split=ds.get("split"), splits=ds.get("splits", "80/10/10"), seed=seed,
                           # token lengths only when filtering by them: SFTTrainer tokenizes everything anyway
                           tokenizer=tokenizer if ds.get("max_length") else None, max_length=ds.get("max_length"),
                           max_rows=ds.get("max_rows"), streaming=bool(ds.get("streaming")), cache=True,
                           group_by=ds.get("group_by"))
    log(f"data: {data.source} as {data.format.name}, {data.rows} rows, {data.dropped_total} dropped, "
        f"splits {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())} ({data.split_line()})")
    eval_ds = eval_split(recipe, data, log)

    for note in prepare_sharded_load(recipe):
        log(note)
    model_args = recipe.model_config()
    log(f"loading {model_args.model_name_or_path}{source_note(model_args.model_name_or_path)}")
    model = load_model(model_args, trust_remote_code=bool(recipe.train.get("trust_remote_code")))
    on_gpu = torch.cuda.is_available()
    fits = memory_probe(model, tokenizer, data, recipe.train.get("max_length")) if on_gpu else None
    for note in [*resolve_fast_defaults(recipe, on_gpu=on_gpu, fits=fits), *resolve_sharding(recipe, model),
                 *use_trackers(recipe, run_dir)]:
        log(note)
    args, notes = recipe.training_config(run_dir / "checkpoints")
    for note in notes:
        log(note)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data.splits["train"], eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=get_peft_config(model_args), callbacks=list(callbacks))
    shard_on_cpu(trainer)
    keep_trackers_in_run(trainer, run_dir)
    quiet_trainer(trainer)
    return trainer, tokenizer, data


def run_sft(job, resume: bool = False) -> dict:
    from studio.models import folder_size

    recipe, run_dir = job.recipe, job.run_dir
    started = time.time()
    trainer, tokenizer, _data = build_sft_trainer(recipe, run_dir, job.log, [make_callback(job)])
    main = is_main_process()  # under torchrun / accelerate launch the other processes only train
    output, start_step = train_job(job, trainer, resume)
    extra = {"train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 3), "parallel": parallel_summary(trainer)}
    stopped = stopped_summary(job, trainer, started, start_step, extra)
    if stopped is not None:
        return stopped

    adapter_dir = run_dir / "adapter"
    job.emit("phase", phase="saving the adapter")
    save_adapter(trainer, tokenizer, adapter_dir)  # atomic; only the main process writes
    if main:
        extra.update(adapter_dir=str(adapter_dir), adapter_bytes=folder_size(adapter_dir))
    # sharded weights are gathered layer by layer as generation runs: every process generates, the main one keeps it
    prompts = (recipe.header.get("eval_prompts") or []) if main or trainer.is_fsdp_enabled else []
    if prompts:
        n = int(recipe.studio.get("sample_max_new_tokens", 32))
        job.emit("phase", phase=f"writing the before/after samples ({len(prompts)} prompts, up to {n} tokens each)")
        peft_model = trainer.model
        via_chat = is_instruct(tokenizer)  # an instruct base is asked through its chat template, as Evaluate does
        with peft_model.disable_adapter():
            before = generate_samples(peft_model, tokenizer, prompts, n, chat=via_chat)
        after = generate_samples(peft_model, tokenizer, prompts, n)
        extra["samples"] = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after)]
        extra["samples_before_via"] = "chat template" if via_chat else "raw prompt"
    summary = write_summary(job, trainer, DONE, started, start_step, extra)
    job.emit("status", status=DONE)
    return summary
