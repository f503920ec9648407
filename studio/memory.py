"""How much memory a training job will need, before it starts, and whether this machine has it.

Pure arithmetic over the model's config (its sizes, no weights loaded) and the recipe's settings:

- weights: every parameter in the compute dtype (fp32 on a CPU, bf16/fp16 on a GPU); with
  `load_in_4bit` the linear layers take NF4's 0.5 byte + its block constants, with `load_in_8bit` 1 byte;
- the LoRA weights (kept in fp32 by PEFT), their gradients and AdamW's two moments: 16 bytes per
  trainable parameter — the term that makes `lora_r` huge cost gigabytes;
- activations kept for the backward pass at micro-batch × max length: per layer ≈ (16·hidden +
  4·intermediate) values per token, plus heads × length² attention scores; with gradient checkpointing only
  each layer's input is kept (and one layer's activations while it is recomputed); plus the logits
  (3 copies of batch × length × vocab: logits, log-softmax, their gradient), and 64 MiB for the trainer and
  its data. DPO runs chosen and rejected together: twice the sequences.

The constants were fitted to the peak RSS of real runs (docs/budgets.md, "Jobs"); the estimate errs high.
`studio.jobs.start_job` refuses a job whose estimate is over what the machine has free; the Train tab's
parameter check shows the same line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from studio.errors import StudioError

GiB = 2**30
FIXED = 64 * 2**20  # the trainer, the tokenized data, the allocator's slack: what a tiny model's job still takes
ADAM_BYTES_PER_TRAINABLE = 4 + 4 + 8  # fp32 LoRA weight, its gradient, AdamW's exp_avg and exp_avg_sq
HEADROOM = 0.9  # a job may use at most this share of the free memory: the rest is the app's and the OS's


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int  # LoRA weights + gradients + optimizer state
    activations: int
    device: str  # "cpu" or "cuda"

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations

    def line(self) -> str:
        return (f"≈{gib(self.total)} ({gib(self.weights)} weights, {gib(self.adapter)} LoRA weights + gradients "
                f"+ AdamW state, {gib(self.activations)} activations)")


def gib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < GiB else f"{n / GiB:.1f} GiB"


def _get(config, *names, default=None):
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def config_sizes(config) -> dict:
    """The sizes the estimate needs, from a transformers config (or a dict of one), any common naming."""
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model", default=0))
    layers = int(_get(config, "num_hidden_layers", "n_layer", "num_layers", default=0))
    heads = int(_get(config, "num_attention_heads", "n_head", default=1))
    inter = int(_get(config, "intermediate_size", "n_inner", "ffn_dim", default=0) or 4 * hidden)
    vocab = int(_get(config, "vocab_size", default=0))
    tied = bool(_get(config, "tie_word_embeddings", default=True))
    if not hidden or not layers or not vocab:
        raise StudioError("model config: no hidden_size / num_hidden_layers / vocab_size to estimate memory from")
    return {"hidden": hidden, "layers": layers, "heads": heads, "intermediate": inter, "vocab": vocab,
            "embedding_params": vocab * hidden * (1 if tied else 2)}


GRPO_PROMPT_TOKENS = 256  # the prompt length a GRPO estimate assumes (TRL does not cut prompts)


def estimate_memory(config, settings: dict, trainable: int, total: int, device: str = "cpu",
                    method: str = "sft") -> MemoryEstimate:
    """The memory a LoRA training job needs. `settings`: the recipe's model and training keys
    (load_in_4bit, load_in_8bit, dtype, per_device_train_batch_size, max_length, activation_checkpointing);
    `trainable` / `total`: parameter counts (`studio.models.estimate_parameters`, from the config alone)."""
    sizes = config_sizes(config)
    on_gpu = device != "cpu"
    dtype = str(settings.get("dtype") or "auto")
    compute = 4 if (not on_gpu or dtype in ("float32", "fp32")) else 2
    frozen = max(0, total - trainable)
    other = min(frozen, sizes["embedding_params"])  # embeddings and lm_head are never quantized
    linear = frozen - other
    if settings.get("load_in_4bit"):
        per_linear = 0.5 + (0.5 / 64 if settings.get("use_bnb_nested_quant") else 4 / 64)  # NF4 + absmax per block
    elif settings.get("load_in_8bit"):
        per_linear = 1.0 + 4 / 64
    else:
        per_linear = compute
    weights = int(linear * per_linear + other * compute)
    adapter = trainable * ADAM_BYTES_PER_TRAINABLE

    micro = int(settings.get("per_device_train_batch_size") or 8)
    accum = int(settings.get("gradient_accumulation_steps") or 1)
    grpo = method == "grpo"  # GRPO: the micro-batch is counted in completions, and the studio keeps it as set
    if settings.get("auto_batch", True) and accum > 1 and not on_gpu and not grpo:  # resolve_fast_defaults' pick
        micro = max(d for d in range(1, min(micro * accum, int(settings.get("max_micro_batch") or 8)) + 1)
                    if (micro * accum) % d == 0)
    batch = micro * (2 if method == "dpo" else 1)
    length = int(settings.get("max_length") or 1024)
    if grpo:  # a prompt (up to GRPO_PROMPT_TOKENS) and its sampled completion
        length = int(settings.get("max_length") or GRPO_PROMPT_TOKENS + int(settings.get("max_completion_length") or 512))
    act_bytes = 4 if not on_gpu else 2
    h, i, n, a = sizes["hidden"], sizes["intermediate"], sizes["layers"], sizes["heads"]
    per_layer = batch * length * (16 * h + 4 * i) + 2 * batch * a * length * length
    checkpointing = settings.get("activation_checkpointing")
    if checkpointing is None:
        checkpointing = settings.get("gradient_checkpointing")
    if checkpointing:
        layer_values = n * batch * length * h + per_layer  # each layer's input + one layer being recomputed
    else:
        layer_values = n * per_layer
    logits = 3 * batch * length * sizes["vocab"] * 4  # fp32 logits, log-softmax and their gradient
    activations = int(layer_values * act_bytes + logits) + FIXED
    if grpo:  # sampling a whole generation batch at once: its key/value cache and each new token's logits
        sampled = micro * accum
        activations += int(sampled * length * n * 2 * h * act_bytes + 2 * sampled * sizes["vocab"] * 4)
    return MemoryEstimate(weights, adapter, activations, "cuda" if on_gpu else "cpu")


def available_memory() -> tuple[int, str]:
    """(bytes free for a job now, what was measured): the GPU's free memory, else the machine's available
    RAM (psutil; a container's cgroup limit when lower)."""
    try:
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return int(free), f"free on {torch.cuda.get_device_name()}"
    except Exception:  # noqa: BLE001 - no usable GPU: the CPU's memory is what counts
        pass
    import psutil

    free = int(psutil.virtual_memory().available)
    limit = _cgroup_room()
    if limit is not None and limit < free:
        return limit, "left under this container's memory limit"
    return free, "available RAM"


def _cgroup_room() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(0, int(raw) - int(f.read().strip()))
    except (OSError, ValueError):
        return None


def what_to_lower(est: MemoryEstimate, settings: dict) -> str:
    """The one change most likely to fit, named by the recipe's own keys."""
    biggest = max(("adapter", est.adapter), ("activations", est.activations), ("weights", est.weights),
                  key=lambda kv: kv[1])[0]
    if biggest == "adapter":
        return "lower lora_r or target fewer modules (lora_target_modules)"
    if biggest == "activations":
        ckpt = settings.get("activation_checkpointing") or settings.get("gradient_checkpointing")
        return ("lower per_device_train_batch_size or max_length"
                + ("" if ckpt else ", or turn on activation_checkpointing"))
    return "turn on load_in_4bit, or pick a smaller model"


def job_memory_limit() -> int | None:
    """STUDIO_JOB_MEMORY_GB: the most a job may take, whatever the machine has (the app's owner sets it)."""
    raw = os.environ.get("STUDIO_JOB_MEMORY_GB", "").strip()
    try:
        return int(float(raw) * GiB) if raw else None
    except ValueError:
        return None


def check_fits(est: MemoryEstimate, settings: dict, available: tuple[int, str] | None = None) -> str:
    """One line saying the job fits; a StudioError with the estimate and what to lower when it does not."""
    free, what = available or available_memory()
    room = int(free * HEADROOM)
    cap = job_memory_limit()
    if cap is not None and cap < room:
        room, what = cap, "allowed per job (STUDIO_JOB_MEMORY_GB)"
    if est.total > room:
        raise StudioError(f"this job needs {est.line()} but {gib(room)} is {what}: {what_to_lower(est, settings)}")
    return f"memory: {est.line()} of {gib(room)} {what}"


def recipe_settings(recipe) -> dict:
    return {**recipe.model, **recipe.train, **{k: v for k, v in recipe.studio.items()
                                               if k in ("auto_batch", "max_micro_batch")}}


def estimate_for_recipe(recipe) -> MemoryEstimate:
    """The estimate for a recipe, from its model's config (read, never loaded) and its settings."""
    from studio.models import estimate_parameters, model_config

    config = model_config(recipe.model_config().model_name_or_path)
    counts = estimate_parameters(recipe.model_config())
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        device = "cpu"
    return estimate_memory(config, recipe_settings(recipe), counts["trainable"], counts["total"], device,
                           recipe.method)
