"""LoRA vs full fine-tuning: trainable parameters, checkpoint sizes and optimizer memory, from the config."""

from __future__ import annotations

from studio.errors import StudioError


def lora_vs_full(ref: str) -> dict:
    """Trainable vs total parameters, checkpoint sizes and grad + optimizer-state memory, from the config.

    Memory assumes fp32 gradients and AdamW's two fp32 moments per trainable parameter (8 bytes); a
    full checkpoint stores every weight at the config's dtype, an adapter only the LoRA weights (fp32).
    When the run has an adapter on disk its real size is reported.
    """
    from transformers import AutoConfig

    from studio.access import check_run_name, hub_token, resolve_run
    from studio.inference import is_run_ref
    from studio.models import estimate_parameters, folder_size, resolve_model_path
    from studio.recipes import RECIPES_DIR, load_recipe

    adapter_bytes = None
    if is_run_ref(ref):
        run = resolve_run(ref)
        recipe = load_recipe(run / "recipe.yaml")
        if (run / "adapter" / "adapter_config.json").exists():
            adapter_bytes = sum(folder_size(p) if p.is_dir() else p.stat().st_size
                                for p in (run / "adapter").glob("adapter_model.*"))
    elif (RECIPES_DIR / f"{check_run_name(ref, 'recipe name')}.yaml").exists():  # a name, never a path
        recipe = load_recipe(RECIPES_DIR / f"{ref}.yaml")
    else:
        raise StudioError(f"{ref}: pick a run or a recipe name for the LoRA vs full report")
    model_args = recipe.model_config()
    lora = estimate_parameters(model_args)
    config = AutoConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path), token=hub_token())
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32").replace("torch.", "")
    width = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)
    total, trainable = lora["total"], lora["trainable"]
    base_total = total - trainable  # the model's own weights (LoRA adds its matrices on top)
    return {
        "model": model_args.model_name_or_path, "dtype": dtype,
        "lora": {"trainable": trainable, "total": total, "percent": lora["percent"],
                 "checkpoint_bytes": adapter_bytes if adapter_bytes is not None else trainable * 4,
                 "checkpoint_measured": adapter_bytes is not None,
                 "grad_bytes": trainable * 4, "optimizer_bytes": trainable * 8},
        "full": {"trainable": base_total, "total": base_total, "percent": 100.0,
                 "checkpoint_bytes": base_total * width, "checkpoint_measured": False,
                 "grad_bytes": base_total * 4, "optimizer_bytes": base_total * 8},
    }
