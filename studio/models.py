"""Base model and tokenizer loading, quantization, LoRA config and the parameter report.

Model settings are TRL's own `ModelConfig` (model_name_or_path, lora_r, load_in_4bit…);
the LoRA and bitsandbytes configs come from TRL's helpers built on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from studio.embedded import CHATML_TEMPLATE, EMBEDDED_MODEL_ID, embedded_model_path
from studio.errors import StudioError
from studio.offline import hub_reachable  # noqa: F401 - its home is studio.offline; callers import it from here too

PRESETS = {
    EMBEDDED_MODEL_ID: "Embedded tiny Llama: offline, 1 MB, for trying things out",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2 135M Instruct",
    "google/gemma-3-270m-it": "Gemma 3 270M instruct (gated)",
    "gpt2": "GPT-2 124M",
    "microsoft/DialoGPT-small": "DialoGPT small",
    "google/gemma-2b": "Gemma 2B (gated)",
    "meta-llama/Llama-2-7b-hf": "Llama 2 7B (gated)",
}


REAL_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the real default: Hub, Hub cache or offline copy


def default_model() -> str:
    """The Train tab's first base: the embedded model when the Hub is out of reach (trains in seconds), a small real one otherwise."""
    return REAL_MODEL_ID if hub_reachable() else EMBEDDED_MODEL_ID


def resolve_model_path(name: str) -> str:
    """A model name → what transformers loads: the embedded folder, a GGUF file's converted folder
    (studio.offline), a Hub id (or its offline copy when the Hub is out of reach), or a local folder."""
    from studio.offline import gguf_model_path, gguf_source, hub_or_offline

    if not name:
        raise StudioError("no model given: pick a preset, a Hub id or a local folder")
    if name in (EMBEDDED_MODEL_ID, "embedded"):
        return str(embedded_model_path())
    gguf = gguf_source(name)
    if gguf is not None:
        return str(gguf_model_path(gguf))
    if not Path(name).expanduser().exists():
        name = hub_or_offline(name)
    return os.path.expanduser(name)


def source_note(name: str) -> str:
    """", from the offline copy (…)" / ", from the Hub" / ", converted from GGUF …" for a run's log; "" otherwise."""
    from studio.offline import gguf_source, source_note as note

    resolve_model_path(name)
    gguf = gguf_source(name)
    return note(str(gguf) if gguf is not None else name)


def _hub_token():
    from studio.access import hub_token

    return hub_token()  # on a shared studio the visitor's sign-in or False, never the owner's HF_TOKEN


def hub_preflight(name: str) -> bool:
    """One bounded request (HF_HUB_ETAG_TIMEOUT, 10 s by default) before loading a Hub model.

    Left to itself a failed lookup is retried per file with a 60 s timeout: minutes of silence. Here a
    Hub that stalls, fails or is offline gives one line within the timeout, and a model already in the
    local cache loads from it. Returns True when the load must stay offline (local_files_only).

    On a shared studio the Hub decides, every time, with the visitor's own token (or none), as for Hub
    datasets: a cached copy (the owner's private model, downloaded once with HF_TOKEN) is no answer, and
    offline is a refusal. The studio's own models (the embedded one, SmolLM2's offline copy) are folders.
    """
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    from studio.access import shared_mode

    if Path(resolve_model_path(name)).exists():
        return False  # a folder
    shared = shared_mode()
    if constants.HF_HUB_OFFLINE:
        if shared:
            raise StudioError(f"model {name}: the Hub is out of reach, and on a shared studio a Hub model is loaded "
                              f"only when the Hub confirms you may; use {EMBEDDED_MODEL_ID}, "
                              "HuggingFaceTB/SmolLM2-135M-Instruct or one of your runs")
        return False  # huggingface_hub is offline already and reads its cache
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), token=_hub_token(), timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return False
    except EntryNotFoundError:
        return False  # no config.json: let the loader say what is missing
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status is not None and status < 500:
            raise _load_error(name, e) from None
        why = f"the Hub answered {status}"
    except (httpx2.HTTPError, OSError) as e:
        why = (f"no answer from the Hub within {constants.HF_HUB_ETAG_TIMEOUT:g} s"
               if isinstance(e, httpx2.TimeoutException) else "the Hub can't be reached")
    if shared:  # the Hub did not say this visitor may read it: a copy in the server's cache is no answer
        raise StudioError(f"model {name}: {why}, and on a shared studio a Hub model is loaded only when the Hub "
                          f"confirms you may; try again later, or use {EMBEDDED_MODEL_ID}")
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return True  # cached earlier: go on offline
    raise StudioError(f"model {name}: {why} and it is not in the local cache; try again later, "
                      f"or use a local folder or {EMBEDDED_MODEL_ID}")


def _load_error(name: str, e: Exception) -> StudioError:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError) or ("gated" in str(e).lower() and not isinstance(e, RepositoryNotFoundError)):
        return StudioError(
            f"model {name} is gated: accept its licence at https://huggingface.co/{name} "
            "and set HF_TOKEN to a token with read access"
        )
    if isinstance(e, RepositoryNotFoundError):
        return StudioError(f"model {name}: not found on the Hub (if it is private, set HF_TOKEN)")
    text = str(e)
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 401:
        return StudioError(f"model {name}: the Hub refused the token (401); check HF_TOKEN")
    if "timed out" in text.lower() or "timeout" in type(e).__name__.lower():
        return StudioError(f"model {name}: the download timed out; try again (finished files are kept), "
                           f"or use a local folder or {EMBEDDED_MODEL_ID}")
    if isinstance(e, LocalEntryNotFoundError) or "offline" in text.lower() or "connect" in text.lower():
        return StudioError(
            f"model {name}: not in the local cache and the Hub can't be reached; "
            f"use a local folder or {EMBEDDED_MODEL_ID}"
        )
    if Path(name).exists():
        return StudioError(f"model {name}: the folder is not a loadable model ({text.splitlines()[0] if text else e})")
    return StudioError(f"model {name}: could not load ({text.splitlines()[0] if text else type(e).__name__})")


def load_tokenizer(name: str):
    """Tokenizer with the fixes training needs: a pad token and a chat template."""
    from transformers import AutoTokenizer

    offline = hub_preflight(name)
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name), token=_hub_token(), local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - every loading failure becomes one clear line
        raise _load_error(name, e) from None
    return finish_tokenizer(tok)


def finish_tokenizer(tok):
    """A pad token and a chat template where the tokenizer lacks them (every loader applies the same)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def pick_dtype():
    """bf16 where supported, fp16 on older GPUs (T4), fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(model_args, trust_remote_code: bool = False):
    """A causal LM from a TRL `ModelConfig`: dtype auto, optional 4-/8-bit through bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    name = model_args.model_name_or_path
    quant = None
    if model_args.load_in_4bit or model_args.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # noqa: BLE001
            raise StudioError(
                f"4-/8-bit loading needs bitsandbytes, which can't run here ({e}); "
                "set load_in_4bit: false and load_in_8bit: false"
            ) from None
        quant = get_quantization_config(model_args)
    dtype = model_args.dtype
    if dtype in (None, "auto"):
        dtype = pick_dtype()
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    # `trust_remote_code` comes from a recipe's SFTConfig/DPOConfig key: a file the owner runs, or a page form
    # only when the owner allowed it (studio.access.check_remote_code). Off by default.
    kwargs = dict(dtype=dtype, token=_hub_token(), quantization_config=quant, trust_remote_code=trust_remote_code,
                  local_files_only=hub_preflight(name))
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quant is not None and torch.cuda.is_available():
        # bitsandbytes places the weights at load: each torchrun/accelerate process on its own GPU (LOCAL_RANK),
        # not every process on GPU 0 (current_device() before the trainer sets the device)
        local = os.environ.get("LOCAL_RANK", "").strip()
        kwargs["device_map"] = {"": int(local) if local.isdigit() else torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), **kwargs)
    except StudioError:
        raise
    except Exception as e:  # noqa: BLE001
        if quant is not None and "bitsandbytes" in str(e).lower():
            raise StudioError(
                f"4-/8-bit loading failed in bitsandbytes ({str(e).splitlines()[0]}); turn off load_in_4bit"
            ) from None
        raise _load_error(name, e) from None
    return model


def parameter_report(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "percent": round(100 * trainable / max(total, 1), 4)}


def format_parameter_report(report: dict) -> str:
    return f"trainable params: {report['trainable']:,} || all params: {report['total']:,} || trainable%: {report['percent']:.4f}"


def folder_size(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def model_config(name: str):
    """A model's transformers config (its sizes), read without loading any weights."""
    from transformers import AutoConfig

    offline = hub_preflight(name)
    try:
        return AutoConfig.from_pretrained(resolve_model_path(name), token=_hub_token(), local_files_only=offline)
    except Exception as e:  # noqa: BLE001
        raise _load_error(name, e) from None


def estimate_parameters(model_args) -> dict:
    """Trainable / total parameters for a LoRA setup without loading weights (config only)."""
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import get_peft_config

    name = model_args.model_name_or_path
    config = model_config(name)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    # Empty-weight models are not tied for us (and the context re-creates assigned parameters): tie here,
    # so shared embeddings count once, as in the loaded model.
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if getattr(config, "tie_word_embeddings", False) and out_emb is not None and out_emb.weight is not in_emb.weight:
        out_emb.weight = in_emb.weight
    with init_empty_weights():
        peft_config = get_peft_config(model_args)
        if peft_config is not None:
            try:
                model = get_peft_model(model, peft_config)
            except ValueError as e:
                raise StudioError(f"LoRA settings don't fit {name}: {str(e).splitlines()[0]}") from None
    return parameter_report(model)
