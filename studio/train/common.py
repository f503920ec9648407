"""Pieces every training path shares: fast defaults, sharding and trackers, seeds, samples, the summary."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from studio.train.progress import is_main_process, train_from, world_size
from studio.runs import CANCELLED, last_checkpoint


def largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def _explicit_checkpointing(train: dict) -> bool | None:
    for key in ("activation_checkpointing", "gradient_checkpointing"):
        if train.get(key) is not None:
            return bool(train[key])
    return None


def resolve_fast_defaults(recipe, on_gpu: bool, fits=None) -> list[str]:
    """Fill the studio's speed choices into `recipe.train`; each is logged, recorded in the resolved
    recipe, and switched off by setting the key yourself (or `studio.auto_batch: false`).

    - auto_batch: keep the effective batch (micro-batch × accumulation) but make the micro-batch the
      largest that fits, a divisor of the effective batch: fewer, fuller steps, the same maths. Under
      several processes the recipe's effective batch is split across them: micro × accumulation × processes.
    - group by length, with TRL's dynamic padding to the longest in each batch (never a fixed length).
      TRL's padding-free/packing paths need FlashAttention for correctness; they stay the user's choice.
    - gradient checkpointing only when memory needs it (TRL turns it on by default; it costs ~30%).
    - on GPU: tf32 where the GPU has it, Liger kernels where installed.
    `fits(micro, checkpointing)` answers whether a micro-batch fits in memory (a GPU probe); a CPU has room.
    """
    import importlib.util

    studio, train, notes = recipe.studio, recipe.train, []
    explicit_ckpt = _explicit_checkpointing(train)
    ckpt = bool(explicit_ckpt)
    if explicit_ckpt is None:
        if fits is not None and not fits(1, False):
            ckpt = True
            notes.append("gradient checkpointing on: one example does not fit in memory without it")
        else:
            notes.append("gradient checkpointing off: memory allows it (set activation_checkpointing: true to force)")
        train["activation_checkpointing"] = ckpt
        train["gradient_checkpointing"] = ckpt
    micro = int(train.get("per_device_train_batch_size", 8))
    accum = int(train.get("gradient_accumulation_steps", 1))
    # A resumed run's recipe is already split across `split_across` processes: on as many it stays as it is; on
    # another number the split is undone first. Either way the effective batch is kept, never split twice.
    split, world = int(studio.get("split_across") or 1), world_size()
    if split > 1 and split != world:
        accum *= split
        train["gradient_accumulation_steps"] = accum
        recipe.header["studio"].pop("split_across", None)
    effective = micro * accum
    already_split = split > 1 and split == world
    if studio.get("auto_batch", True) and not already_split and (accum > 1 or world > 1):
        if effective % world:
            notes.append(f"auto batch: effective batch {effective} does not split across {world} processes; each "
                         f"keeps {micro}×{accum} (global batch {effective * world})")
        else:
            per_process = effective // world  # micro × accumulation × processes = the recipe's effective batch
            cap = int(studio.get("max_micro_batch", 16 if on_gpu else 8))
            best = largest_divisor_at_most(per_process, cap)
            while fits is not None and best > 1 and not fits(best, ckpt):
                best = largest_divisor_at_most(per_process, best - 1)
            if world > 1:
                recipe.header.setdefault("studio", {})["split_across"] = world
            if (best, per_process // best) != (micro, accum):
                train["per_device_train_batch_size"] = best
                train["gradient_accumulation_steps"] = per_process // best
                across = f" × {world} processes" if world > 1 else ""
                notes.append(f"auto batch: micro-batch {micro}×{accum} → {best}×{per_process // best}{across} "
                             f"(effective batch {effective} kept)")
    if world > 1 and "ddp_find_unused_parameters" not in train:
        train["ddp_find_unused_parameters"] = False  # LoRA uses every trainable weight: skip DDP's extra graph walk
    if "train_sampling_strategy" not in train and not train.get("packing") and not train.get("padding_free"):
        train["train_sampling_strategy"] = "group_by_length"
        notes.append("group_by_length: batches of similar length, padded to the longest in each batch")
    train.setdefault("include_num_input_tokens_seen", "non_padding")
    import torch

    if on_gpu and torch.cuda.is_available():
        if "tf32" not in train and torch.cuda.get_device_capability()[0] >= 8:
            train["tf32"] = True
            notes.append("tf32 on: Ampere or newer GPU")
        if "use_liger_kernel" not in train and importlib.util.find_spec("liger_kernel") is not None:
            train["use_liger_kernel"] = True
            notes.append("Liger kernels on (installed)")
    return notes


# ---- several processes: FSDP2 through accelerate ------------------------------------------------------------
# A recipe asks with TRL's own fields: `fsdp: true` (or the legacy "full_shard auto_wrap") and an optional
# `fsdp_config` mapping (or an `accelerate launch --config_file configs/fsdp2.yaml`, which sets the same plugin).

def _sharding_asked(train: dict) -> bool:
    fsdp = train.get("fsdp")
    return bool(fsdp) and str(fsdp).strip().lower() not in ("false", "no", "none", "0")


def prepare_sharded_load(recipe) -> list[str]:
    """Before the model loads: QLoRA under FSDP stores its 4-bit weights in the compute dtype
    (`bnb_4bit_quant_storage`), so FSDP can shard them beside the other weights (Answer.AI's FSDP-QLoRA)."""
    if not (_sharding_asked(recipe.train) and recipe.model.get("load_in_4bit")):
        return []
    from studio.models import pick_dtype

    dtype = recipe.model.get("dtype")
    storage = dtype if dtype not in (None, "auto") else str(pick_dtype()).removeprefix("torch.")
    if recipe.model.get("bnb_4bit_quant_storage") in (None, storage):
        recipe.model["bnb_4bit_quant_storage"] = storage
        return [f"QLoRA under FSDP: 4-bit weights stored as {storage} (bnb_4bit_quant_storage) so they shard"]
    return []


def resolve_sharding(recipe, model) -> list[str]:
    """Fill `fsdp_config` for FSDP2 on `model`: wrap each decoder layer, the adapter's weights trainable and the
    frozen base sharded beside them (FSDP2 shards per parameter: frozen and trainable mix freely, which FSDP1
    needed `use_orig_params` for), and a full state dict gathered on rank 0 so the adapter is saved whole.
    One process has nothing to shard: the keys are dropped and the log says so. Mutates `recipe.train`."""
    train = recipe.train
    if not _sharding_asked(train):
        train.pop("fsdp", None)
        train.pop("fsdp_config", None)
        return []
    if world_size() < 2:
        train.pop("fsdp", None)
        train.pop("fsdp_config", None)
        return ["fsdp off: one process has nothing to shard (launch with torchrun --nproc_per_node N or "
                "accelerate launch --config_file configs/fsdp2.yaml)"]
    config = {k.removeprefix("fsdp_"): v for k, v in dict(train.get("fsdp_config") or {}).items()}
    legacy = str(train["fsdp"]).lower().split() if isinstance(train["fsdp"], str) else []
    if "offload" in legacy:
        config.setdefault("cpu_offload", True)
    if "shard_grad_op" in legacy:
        config.setdefault("reshard_after_forward", False)
    config["version"] = 2
    layers = list(getattr(model, "_no_split_modules", None) or [])
    if layers:
        config.setdefault("transformer_layer_cls_to_wrap", layers)
        config.setdefault("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
    config.setdefault("state_dict_type", "FULL_STATE_DICT")
    notes = []
    if train.get("activation_checkpointing") or train.get("gradient_checkpointing"):
        # the Trainer's checkpointing under FSDP gathers every layer twice; FSDP's own does it once
        config["activation_checkpointing"] = True
        train["activation_checkpointing"] = train["gradient_checkpointing"] = False
        notes.append("activation checkpointing done by FSDP (fsdp_config.activation_checkpointing), not the Trainer")
    train["fsdp"], train["fsdp_config"] = True, config
    wrap = ", ".join(config.get("transformer_layer_cls_to_wrap") or []) or "each module FSDP picks"
    notes.insert(0, f"FSDP2: weights sharded across {world_size()} processes, wrapped per {wrap}; "
                    "the adapter is gathered whole on rank 0")
    return notes


def shard_on_cpu(trainer) -> None:
    """accelerate turns FSDP on for GPU processes only; torch's FSDP2 (`fully_shard`) also runs on CPU with gloo.
    Under CPU processes, hand the Trainer's FSDP plugin to accelerate's state as a GPU launch would."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # accelerate launch --config_file
    if not (trainer.args.fsdp_plugin_args or from_env):
        return
    from accelerate.state import PartialState

    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        # both shared states: each new AcceleratorState() copies PartialState's distributed type over its own
        PartialState._shared_state["distributed_type"] = state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**(trainer.args.fsdp_plugin_args or {}))
        trainer.is_fsdp_enabled = True


def parallel_summary(trainer) -> dict:
    """How the run was spread, as accelerate actually ran it (not as asked): fsdp2 / ddp / one process."""
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    world = int(state.num_processes)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if state.distributed_type == DistributedType.FSDP:
        mode = f"fsdp{getattr(state.fsdp_plugin, 'fsdp_version', 1)}"
    elif state.distributed_type == DistributedType.DEEPSPEED:
        mode = f"deepspeed-zero{state.deepspeed_plugin.zero_stage}"
    else:
        mode = "ddp" if world > 1 else "single"
    return {"mode": mode, "world_size": world, "nodes": max(1, world // max(local, 1)),
            "backend": str(getattr(state, "backend", None) or "none")}


# ---- experiment trackers: TRL's own `report_to` ----------------------------------------------------------------

def use_trackers(recipe, run_dir: Path) -> list[str]:
    """The trackers a recipe names get the run as TRL logs it (its name, its settings, every logged metric),
    beside the studio's own charts. The run's name is the tracker's run name; Trackio's project is the studio's.
    `none` means no tracker: named beside trackers it contradicts them, and the job refuses it in one line."""
    from studio.errors import StudioError
    from studio.recipes import report_targets

    value = recipe.train.get("report_to")
    targets = report_targets(value)
    asked = value if isinstance(value, (list, tuple)) else str(value or "").replace(",", " ").split()
    if targets and "none" in (str(v).strip().lower() for v in asked):
        raise StudioError(f"report_to: none means no tracker; pick none alone or only trackers "
                          f"(got none with {', '.join(targets)})")
    if not targets:
        return []
    recipe.train.setdefault("run_name", Path(run_dir).name)
    if "trackio" in targets and recipe.train.get("project") in (None, "huggingface"):
        recipe.train["project"] = "lora-studio"
    where = {"trackio": f"Trackio project {recipe.train.get('project')} (trackio show)",
             "tensorboard": f"TensorBoard events in {Path(run_dir) / 'tensorboard' / recipe.train['run_name']}",
             "wandb": "Weights & Biases", "mlflow": "MLflow"}
    return [f"report_to: run {recipe.train['run_name']} → " + "; ".join(where[t] for t in targets)]


def keep_trackers_in_run(trainer, run_dir: Path) -> None:
    """TensorBoard's event files go in the run's own folder (not under checkpoints/, which resumes prune), in a
    subfolder named after the run so `tensorboard --logdir` lists it by name (not "."). Trackio logs each point at
    the trainer's global step (transformers' callback lets Trackio count its own calls, so evaluations landed at
    5 and 10 where the trainer evaluated at 20 and 40)."""
    from transformers.integrations import TensorBoardCallback, TrackioCallback

    callbacks = trainer.callback_handler.callbacks
    name = Path(str(trainer.args.run_name or Path(run_dir).name)).name or Path(run_dir).name
    for i, callback in enumerate(callbacks):
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(Path(run_dir) / "tensorboard" / name)
        if type(callback) is TrackioCallback:
            callbacks[i] = _trackio_at_trainer_step()


def _trackio_at_trainer_step():
    """transformers' Trackio callback, each log stored at the trainer's global step (built here: trackio is optional)."""
    from transformers.integrations import TrackioCallback
    from transformers.integrations.integration_utils import rewrite_logs

    class TrackioAtTrainerStep(TrackioCallback):
        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero:
                summary = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                           "total_flos"}
                scalars = rewrite_logs({k: v for k, v in (logs or {}).items() if k not in summary})
                self._trackio.log({**scalars, "train/global_step": state.global_step}, step=state.global_step)

    return TrackioAtTrainerStep()


def memory_probe(model, tokenizer, data, max_length: int | None):
    """fits(micro, checkpointing): one forward/backward on the longest training examples, OOM = no.

    Only the activations get gradients (weights frozen, as under LoRA), so the answer tracks a LoRA step.
    """
    import torch

    from studio.data import render_example

    train = data.splits["train"]
    sample = train.select(range(min(len(train), 2000)))  # the train split is shuffled: a fair sample, not all rows
    texts = sorted((render_example(row, tokenizer) for row in sample), key=len, reverse=True)

    def fits(micro: int, checkpointing: bool) -> bool:
        chosen = (texts * micro)[:micro]  # the longest examples, repeated if there are fewer than `micro`
        batch = tokenizer(chosen, return_tensors="pt", padding=True, truncation=bool(max_length),
                          max_length=max_length).to(model.device)
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        if checkpointing:
            model.gradient_checkpointing_enable()
        try:
            out = model(**batch, labels=batch["input_ids"])
            out.loss.backward()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            if checkpointing:
                model.gradient_checkpointing_disable()
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return fits


def quiet_trainer(trainer) -> None:
    """The job reports progress; the Trainer's own console printer and bar would only duplicate it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, chat: bool = False) -> list[str]:
    """Greedy continuations of `prompts` (deterministic, so before/after are comparable). `chat`: each prompt is
    asked as one user message through the tokenizer's chat template (how an instruct base is asked fairly: to
    it a raw prompt is a finished turn, and its reply is empty). An empty reply is named, never a blank cell."""
    import torch

    from studio.inference import chat_prompt, marked_reply

    outs = []
    model.eval()
    device = next(model.parameters()).device
    for prompt in prompts:
        text = chat_prompt(tokenizer, [{"role": "user", "content": prompt}]) if chat else prompt
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).to(device)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outs.append(marked_reply(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
    return outs


def describe_hardware(device=None, world_size: int = 1) -> str:
    """The machine a run trained on, in one line for its summary and model card: the GPU (name, memory, count)
    or the CPU (model, the threads torch used, RAM), and the number of processes when there were several.
    `device` is the trainer's (`trainer.args.device`): a CPU run on a GPU machine is a CPU run."""
    import os
    import platform

    import torch

    procs = f"{world_size} processes, " if world_size > 1 else ""
    kind = getattr(device, "type", None) or str(device or "")
    if (kind == "cuda" or not kind) and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        runtime = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {getattr(torch.version, 'hip', '')}"
        return (f"{procs}{count} × {props.name} ({props.total_memory / 2**30:.0f} GiB), {runtime}, "
                f"torch {torch.__version__}")
    if kind == "mps" or (not kind and torch.backends.mps.is_available()):
        return f"{procs}Apple MPS ({platform.machine()}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        ram = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    return f"{procs}CPU only: {cpu}, {torch.get_num_threads()} threads{ram}, torch {torch.__version__}"


def write_summary(job, trainer, status: str, started: float, start_step: int, extra: dict | None = None) -> dict:
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    runtime = time.time() - started
    steps = state.global_step - start_step
    train_runtime = (extra or {}).get("train_runtime_s") or runtime
    tokens_now = int(state.num_input_tokens_seen or 0) - job.start_tokens  # this process's part of a resumed run
    summary = {
        "run": job.id, "status": status, "method": job.recipe.method,
        "steps": state.global_step, "planned_steps": state.max_steps,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None, "final_eval_loss": evals[-1] if evals else None,
        # the whole job: what earlier processes spent before a resume, plus this one
        "runtime_s": round(runtime + float(getattr(job, "elapsed_before", 0.0) or 0.0), 2), "steps_per_s": round(steps / train_runtime, 3) if train_runtime else None,
        "tokens_seen": int(state.num_input_tokens_seen or 0),
        "tokens_per_s": round(tokens_now / train_runtime, 1) if train_runtime else None,
        "trainable_params": (job.params or {}).get("trainable"), "total_params": (job.params or {}).get("total"),
        "trainable_percent": (job.params or {}).get("percent"),
        "best_checkpoint": state.best_model_checkpoint,
        "hardware": describe_hardware(trainer.args.device, trainer.args.world_size),
    }
    summary.update(extra or {})
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    if is_main_process():
        (Path(job.run_dir) / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if status == "done":
        loss = f", loss {summary['first_loss']:.4f} → {summary['final_loss']:.4f}" if losses else ""
        where = f"; adapter saved in {summary['adapter_dir']}" if summary.get("adapter_dir") else ""
        job.log(f"finished: {summary['steps']} steps in {summary['runtime_s']:.0f}s{loss}{where}")
    job.emit("summary", summary=summary)
    return summary


def train_job(job, trainer, resume: bool):
    """What every method does once its trainer is built: the resolved recipe (main process only), the
    parameter report, then training, from the last complete checkpoint on a resume.
    Returns (train output, the step it started from)."""
    from studio.models import format_parameter_report, parameter_report

    if is_main_process():  # under torchrun / accelerate launch the other processes only train
        (job.run_dir / "recipe.yaml").write_text(job.recipe.to_yaml(), encoding="utf-8")
    job.params = parameter_report(trainer.model)
    job.emit("params", params=job.params)
    job.log(format_parameter_report(job.params))
    checkpoint = last_checkpoint(job.run_dir) if resume else None
    if resume:
        job.log(f"resuming from {checkpoint.name}" if checkpoint else "no complete checkpoint: starting over")
    start_step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    return train_from(trainer, checkpoint), start_step


def stopped_summary(job, trainer, started: float, start_step: int, extra: dict) -> dict | None:
    """After training: None if it ran to the end, else the cancelled run's summary (resume continues it)."""
    if not job.stop_event.is_set():
        return None
    job.log(f"stopped at step {trainer.state.global_step}; resume to continue")
    summary = write_summary(job, trainer, CANCELLED, started, start_step, extra)
    job.emit("status", status=CANCELLED)
    return summary


def eval_split(recipe, data, log):
    """The validation split when the recipe evaluates; small data (no validation split) trains without
    evaluation, and the log says so."""
    if recipe.train.get("eval_strategy", "no") == "no":
        return None
    from studio.data import heldout_data

    held = heldout_data(recipe.dataset, int(recipe.train.get("seed", 42)))  # dataset.eval_source, if any
    if held is not None:
        log(f"held-out loss on dataset.eval_source {held.source}: {len(held.splits['test'])} rows "
            f"({held.split_line()})")
        return held.splits["test"]
    if "validation" in data.splits:
        return data.splits["validation"]
    log(f"no validation split: {data.rows} rows are too few for {recipe.dataset.get('splits', '80/10/10')} "
        "(10 or more make one); training without evaluation")
    recipe.train["eval_strategy"] = "no"
    for key in ("load_best_model_at_end", "metric_for_best_model"):
        recipe.train.pop(key, None)
    return None


def policy_model(recipe, model_args, init_run, log):
    """(model, peft_config) for a method that tunes a policy (DPO, GRPO): the base with a fresh LoRA (`peft_config`
    for TRL to apply), or a finished SFT run's adapter loaded trainable (`init_adapter`; its LoRA settings come
    with it, so `peft_config` is None)."""
    from trl import get_peft_config

    from studio.models import load_model, source_note

    log(f"loading {model_args.model_name_or_path}{source_note(model_args.model_name_or_path)}")
    model = load_model(model_args, trust_remote_code=bool(recipe.train.get("trust_remote_code")))
    if init_run is None:
        return model, get_peft_config(model_args)
    from peft import PeftModel

    from studio.inference import run_adapter

    return PeftModel.from_pretrained(model, str(run_adapter(init_run)), is_trainable=True), None
