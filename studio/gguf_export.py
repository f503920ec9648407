"""GGUF for llama.cpp / Ollama / LM Studio: write, quantize, check against llama.cpp itself, Modelfile.

The studio writes GGUF with the `gguf` package (not llama.cpp's `convert_hf_to_gguf.py`, which recognises
a BPE tokenizer by a hash of its output and so refuses every locally trained one, the embedded model's
included). Owning the writer means owning two things llama.cpp reads that transformers' GGUF loader ignores:

- the pre-tokenizer name (`tokenizer.ggml.pre`), chosen here from the tokenizer's actual pre-tokenizer
  structure (`PRE_TOKENIZERS`): a structure llama.cpp has no name for is refused, not guessed;
- the sentencepiece vocabulary layout (`tokenizer.ggml.model = llama`: scores that order the merges,
  byte tokens, the space prefix) for Llama-2 / Mistral / Gemma tokenizers.

The judge is llama.cpp (llama-cpp-python) when it is installed: `check_gguf` tokenizes the prompts and
generates greedily with it, and compares ids and tokens with the merged model in transformers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from studio.errors import StudioError

DIRECT_TYPES = ("f16", "bf16", "q8_0")  # written by the gguf package
LLAMA_CPP_TYPES = ("q4_k_m", "q5_k_m")  # quantized from the f16 file by llama.cpp's own quantizer
GGUF_TYPES = DIRECT_TYPES + LLAMA_CPP_TYPES
CHECK_NEW_TOKENS = 16

# transformers model_type → llama.cpp architecture (each verified against llama.cpp by tests/test_gguf.py)
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2",
                 "gemma2": "gemma2", "gemma3_text": "gemma3"}

# Byte-level BPE pre-tokenizers llama.cpp knows, by the structure of tokenizer.json's `pre_tokenizer`.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {  # structure → llama.cpp's name for the same regexes
    ("bytelevel+regex",): "gpt-2",                                  # GPT-2, DialoGPT, the embedded model
    ("digits", "bytelevel+regex"): "smollm",                        # SmolLM / SmolLM2
    (f"split:{_LLAMA3_SPLIT}", "bytelevel"): "llama-bpe",           # Llama-3.x
    (f"split:{_QWEN2_SPLIT}", "bytelevel"): "qwen2",                # Qwen2 / Qwen2.5
    (f"split:{_GPT2_SPLIT}", "bytelevel"): "gpt-2",
}
OTHER_TOOL = "convert the merged/ folder with llama.cpp's convert_hf_to_gguf.py"


# ---- what can be written ------------------------------------------------------------------------
def _spec(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}


def _pre_key(pre: dict | None) -> tuple:
    parts = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre] if pre else []
    key = []
    for p in parts:
        kind = p.get("type")
        if kind == "ByteLevel":
            if p.get("add_prefix_space"):
                return ("bytelevel+prefix-space",)
            key.append("bytelevel+regex" if p.get("use_regex", True) else "bytelevel")
        elif kind == "Digits":
            key.append("digits" if p.get("individual_digits") else "digits-grouped")
        elif kind == "Split":
            key.append("split:" + str((p.get("pattern") or {}).get("Regex") or (p.get("pattern") or {}).get("String")))
        else:
            key.append(str(kind))
    return tuple(key)


def vocab_kind(tokenizer) -> tuple[str, str | None]:
    """('bpe', llama.cpp pre name) for byte-level BPE, ('spm', None) for sentencepiece-style BPE (byte fallback,
    ▁ for spaces); StudioError for anything llama.cpp would tokenize differently."""
    spec = _spec(tokenizer)
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise StudioError(f"GGUF export: a {model.get('type') or 'slow'} tokenizer is not written here "
                          f"(byte-level or sentencepiece BPE only); {OTHER_TOOL}")
    if model.get("byte_fallback"):
        return "spm", None
    key = _pre_key(spec.get("pre_tokenizer"))
    if key not in PRE_TOKENIZERS:
        raise StudioError(f"GGUF export: llama.cpp has no pre-tokenizer matching this tokenizer's "
                          f"({' + '.join(k[:40] for k in key) or 'none'}); {OTHER_TOOL}")
    return "bpe", PRE_TOKENIZERS[key]


def gguf_unsupported(config, tokenizer) -> str | None:
    """None when this model can be written as GGUF here; otherwise the one line saying why not."""
    arch = getattr(config, "model_type", "?")
    if arch not in ARCHITECTURES:
        return (f"GGUF export covers {', '.join(sorted(ARCHITECTURES))}; this model is {arch!r}: {OTHER_TOOL} "
                "(or use the merged model with transformers)")
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear", None):
        return f"GGUF export: {arch!r} with rope scaling {rope.get('rope_type')!r} is not written here; {OTHER_TOOL}"
    try:
        vocab_kind(tokenizer)
    except StudioError as e:
        return str(e)
    return None


def _rope(config, layer_type: str = "full_attention") -> dict:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_type in rope and isinstance(rope[layer_type], dict):  # Gemma-3: one entry per attention kind
        rope = rope[layer_type]
    return dict(rope)


def _rope_theta(config, layer_type: str = "full_attention", default: float = 10000.0) -> float:
    return float(_rope(config, layer_type).get("rope_theta", getattr(config, "rope_theta", None) or default))


# ---- writing ------------------------------------------------------------------------------------
def _permute(w, n_head: int, n_head_kv: int):
    """llama.cpp stores Llama q/k rows interleaved for its rope (convert_hf_to_gguf.LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(config):
    """The per-frequency factors llama.cpp reads from `rope_freqs.weight` for Llama-3.1+ rope scaling."""
    import numpy as np

    rope = _rope(config)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = _rope_theta(config)
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _add_hparams(w, config, arch: str) -> None:
    import gguf

    if arch == "gpt2":
        w.add_context_length(config.n_positions)
        w.add_embedding_length(config.n_embd)
        w.add_block_count(config.n_layer)
        w.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        w.add_head_count(config.n_head)
        w.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(config))
    if arch in ("llama", "qwen2"):
        w.add_rope_dimension_count(head_dim)
    else:  # Gemma: explicit head size, softcaps, sliding window
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if getattr(config, "sliding_window", None):
            w.add_sliding_window(config.sliding_window)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(config.attn_logit_softcapping or 0.0)
            w.add_final_logit_softcapping(config.final_logit_softcapping or 0.0)
        if arch == "gemma3":
            w.add_rope_freq_base_swa(_rope_theta(config, "sliding_attention"))
            rope = _rope(config)
            if rope.get("rope_type") == "linear":
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(rope["factor"])


def _check_gemma_scale(config, arch: str) -> None:
    """llama.cpp scales Gemma queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) only for the 27B sizes it
    knows); a config that says otherwise would run differently there."""
    if arch in ("gemma2", "gemma3"):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        scalar = getattr(config, "query_pre_attn_scalar", head_dim)
        if scalar not in (head_dim, config.hidden_size // config.num_attention_heads):
            raise StudioError(f"GGUF export: {config.model_type!r} with query_pre_attn_scalar={scalar} (not the "
                              f"head size {head_dim}) runs differently in llama.cpp; {OTHER_TOOL}")


def _tensors(model, arch: str):
    """(GGUF tensor name, float32 numpy array) in llama.cpp's layout."""
    import gguf

    config = model.config
    layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith(("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")):
            continue
        if tied and hf_name == "lm_head.weight" and arch != "gpt2":
            continue  # llama.cpp reads the output matrix from token_embd
        stem, suffix = hf_name.rsplit(".", 1)
        new = names.get_name(stem)
        if new is None:
            raise StudioError(f"GGUF export: no GGUF name for {config.model_type!r} tensor {hf_name}; {OTHER_TOOL}")
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads, config.num_attention_heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = _permute(data, config.num_attention_heads, config.num_key_value_heads)
        elif arch == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T.copy()  # transformers' Conv1D stores (in, out)
        elif arch in ("gemma2", "gemma3") and hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
        yield f"{new}.{suffix}", data
    if arch == "llama" and _rope(config).get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_factors(config)


def write_gguf(model, tokenizer, path: Path, qtype: str = "f16", name: str = "model") -> Path:
    """A transformers model and its tokenizer → one GGUF file (f16, bf16 or q8_0), as llama.cpp reads it."""
    import gguf
    import numpy as np

    config = model.config
    reason = gguf_unsupported(config, tokenizer)
    if reason:
        raise StudioError(reason)
    if qtype not in DIRECT_TYPES:
        raise StudioError(f"GGUF type {qtype!r} is written directly only as {', '.join(DIRECT_TYPES)}")
    arch = ARCHITECTURES[config.model_type]
    _check_gemma_scale(config, arch)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    _add_hparams(w, config, arch)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, tokenizer, config.vocab_size)
    for full, data in _tensors(model, arch):
        if data.ndim == 1 or full.startswith("position_embd"):  # norms, biases, rope factors stay f32
            w.add_tensor(full, data.astype(np.float32))
        elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
            w.add_tensor(full, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif qtype == "bf16":
            w.add_tensor(full, gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(full, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_tokenizer(w, tokenizer, vocab_size: int) -> None:
    import gguf

    kind, pre = vocab_kind(tokenizer)
    spec = _spec(tokenizer)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    # sentencepiece scores order the merges: a token made by an earlier merge scores higher
    rank = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", "", 1), r)
    tokens, types, scores = [], [], []
    for i in range(max(vocab_size, len(by_id))):
        tok = by_id.get(i)
        score = 0.0
        if tok is None:  # a padded embedding row with no token, as llama.cpp's converter writes it
            tok, kind_ = f"[PAD{i}]", gguf.TokenType.UNUSED
        elif tok in added:
            kind_ = gguf.TokenType.CONTROL if added[tok].special else gguf.TokenType.USER_DEFINED
            if kind == "spm" and tok == tokenizer.unk_token:
                kind_ = gguf.TokenType.UNKNOWN
        elif kind == "spm" and re.fullmatch(r"<0x[0-9A-F]{2}>", tok):
            kind_ = gguf.TokenType.BYTE
        else:
            kind_ = gguf.TokenType.NORMAL
            score = -float(rank[tok]) if tok in rank else -float(len(merges) + i)
        tokens.append(tok)
        types.append(kind_)
        scores.append(score)
    if kind == "bpe":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_merges(merges)
    else:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_scores(scores)
        w.add_add_space_prefix(_adds_space_prefix(spec))
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, setter in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                        ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setter(value)
    ids = tokenizer("a")["input_ids"]
    w.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)
    w.add_add_eos_token(bool(ids) and ids[-1] == tokenizer.eos_token_id and len(ids) > 1)
    if getattr(tokenizer, "chat_template", None) and isinstance(tokenizer.chat_template, str):
        w.add_chat_template(tokenizer.chat_template)


def _adds_space_prefix(spec: dict) -> bool:
    """Llama-2 / Mistral put '▁' before the text (normalizer Prepend or Metaspace prepend_scheme); Gemma does not."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or re.search(r'"prepend_scheme": "(first|always)"', text) is not None


# ---- LoRA adapters as llama.cpp reads them ------------------------------------------------------
def lora_unsupported(adapter_dir: Path) -> str | None:
    """None when this PEFT adapter can be written as a GGUF LoRA adapter; otherwise the line saying why not."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text("utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"a {cfg.get('peft_type')} adapter (llama.cpp applies LoRA only)"
    if cfg.get("use_dora"):
        return "a DoRA adapter (llama.cpp applies plain LoRA only)"
    if cfg.get("modules_to_save"):
        return f"the adapter also saves whole modules ({', '.join(cfg['modules_to_save'])})"
    if not (Path(adapter_dir) / "adapter_model.safetensors").exists():
        return "no adapter_model.safetensors"
    return None


def write_lora_gguf(adapter_dir: Path, config, path: Path) -> Path:
    """A PEFT LoRA adapter → a GGUF LoRA adapter in the layout llama.cpp's `convert_lora_to_gguf.py` writes:
    `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per base tensor
    `<gguf name>.weight.lora_a` (rank × in) and `.lora_b` (out × rank), f32, with the base's own row layout
    (q/k rows of Llama permuted for llama.cpp's rope, as the base file has them).

    llama.cpp scales each delta by alpha / rank; a PEFT scale that differs (rsLoRA, per-module rank or alpha
    patterns) is folded into `lora_b`, so the delta it adds equals PEFT's."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir, path = Path(adapter_dir), Path(path)
    why = lora_unsupported(adapter_dir)
    if why:
        raise StudioError(f"GGUF LoRA adapter: {why}")
    if config.model_type not in ARCHITECTURES:
        raise StudioError(f"GGUF LoRA adapter: llama.cpp architecture for {config.model_type!r} is not written here")
    arch = ARCHITECTURES[config.model_type]
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text("utf-8"))
    alpha, rank = float(cfg.get("lora_alpha") or cfg.get("r") or 8), int(cfg.get("r") or 8)
    rslora = bool(cfg.get("use_rslora"))
    alpha_out = alpha * math.sqrt(rank) if rslora else alpha  # llama.cpp: alpha_out / r == PEFT's alpha / sqrt(r)
    layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], layers)
    pairs: dict[str, dict] = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if m is None:
            raise StudioError(f"GGUF LoRA adapter: {key} is not a LoRA A/B matrix; llama.cpp can't apply it")
        pairs.setdefault(m.group(1), {})[m.group(2)] = value.astype(np.float32)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha_out)
    for stem, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise StudioError(f"GGUF LoRA adapter: {stem} has lora_{'A' if 'A' in ab else 'B'} only")
        new = names.get_name(stem)
        if new is None or new.startswith(("token_embd", "output")):
            raise StudioError(f"GGUF LoRA adapter: no llama.cpp tensor for {stem}")
        a, b = ab["A"], ab["B"]
        short = stem.rsplit(".", 1)[-1]
        r_m = a.shape[0]
        a_m = float(cfg.get("alpha_pattern", {}).get(short, alpha))
        peft_scale = a_m / math.sqrt(r_m) if rslora else a_m / r_m
        factor = peft_scale / (alpha_out / r_m)
        if not math.isclose(factor, 1.0, rel_tol=1e-9):
            b = b * np.float32(factor)
        if arch == "llama" and short == "q_proj":
            b = _permute(b, config.num_attention_heads, config.num_attention_heads)
        elif arch == "llama" and short == "k_proj":
            b = _permute(b, config.num_attention_heads, config.num_key_value_heads)
        w.add_tensor(f"{new}.weight.lora_a", np.ascontiguousarray(a))
        w.add_tensor(f"{new}.weight.lora_b", np.ascontiguousarray(b))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- quantizing with llama.cpp ------------------------------------------------------------------
def llama_cpp_version() -> str | None:
    """llama-cpp-python's version when it is installed (found without importing it: the page asks at start-up)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def quantize(src: Path, dst: Path, qtype: str) -> Path:
    """Q4_K_M / Q5_K_M from an f16 file with llama.cpp's own quantizer (llama_model_quantize)."""
    import ctypes

    if llama_cpp_version() is None:
        raise StudioError(f"GGUF {qtype} is made by llama.cpp's quantizer: pip install llama-cpp-python "
                          f"(or choose {', '.join(DIRECT_TYPES)})")
    import llama_cpp

    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M}[qtype]
    with suppress_stdout_stderr(disable=False):  # llama.cpp prints a line per tensor; its return code tells
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.exists():
        raise StudioError(f"llama.cpp could not quantize {src.name} to {qtype} (code {rc})")
    return dst


# ---- the check: llama.cpp is the judge ----------------------------------------------------------
def reference(model, tokenizer, prompts, new_tokens: int = CHECK_NEW_TOKENS) -> list[tuple[list[int], list[int], list]]:
    """(prompt ids, greedy new token ids, each step's logits) of each prompt with the merged model in transformers.
    The logits let a check tell a real difference from a near-tie that float rounding tipped the other way."""
    import torch

    out = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                                 if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                                 output_logits=True, return_dict_in_generate=True)
        out.append((ids, gen.sequences[0, len(ids):].tolist(), [s[0].float() for s in gen.logits]))
    return out


def _near_tie(want, got_tokens) -> float | None:
    """Where `got_tokens` first leaves the reference's greedy tokens, how far (in transformers' logits) its token
    was behind the reference's choice; None if they don't part or the step's logits are unknown."""
    ids, tokens, logits = (list(want) + [None])[:3]
    k = next((k for k, (a, b) in enumerate(zip(tokens, got_tokens)) if a != b), None)
    if k is None or not logits or k >= len(logits):
        return None
    step = logits[k]
    return float(step[tokens[k]] - step[got_tokens[k]])


def llama_cpp_greedy(path: Path, prompts, new_tokens: int = CHECK_NEW_TOKENS) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy new token ids) of each prompt as llama.cpp tokenizes and generates them."""
    import llama_cpp

    # an f32 KV cache: the check judges the file, not llama.cpp's default 16-bit cache rounding
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    vocab = llama_cpp.llama_model_get_vocab(llm.model) if hasattr(llama_cpp, "llama_model_get_vocab") else None
    out = []
    try:
        for prompt in prompts:
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            gen = []
            llm.reset()
            for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
                gen.append(int(tok))
                eog = llama_cpp.llama_vocab_is_eog(vocab, tok) if vocab is not None else tok == llm.token_eos()
                if eog or len(gen) >= new_tokens:
                    break
            out.append((list(ids), gen))
    finally:
        llm.close()
    return out


def transformers_greedy(path: Path, prompts, new_tokens: int = CHECK_NEW_TOKENS):
    model, tokenizer = load_gguf(path)
    return reference(model, tokenizer, prompts, new_tokens)


def load_gguf(path: Path):
    """(model, tokenizer) from a GGUF file with transformers' own GGUF loader (dequantized to fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(Path(path).parent), Path(path).name
    return (AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval(),
            AutoTokenizer.from_pretrained(folder, gguf_file=name))


NEAR_TIE = 0.05  # logits: a parting this close is rounding (f16 arithmetic in llama.cpp), not a wrong tensor


def check_gguf(path: Path, prompts, want, tokenizer=None, qtype: str | None = None) -> str:
    """One line: which runtime judged, prompt ids and greedy tokens against the merged model's (`want`, from
    `reference`), where they first part, and what that means for this quantization type (`qtype`)."""
    version = llama_cpp_version()
    if version is not None:
        judge, got = f"llama.cpp (llama-cpp-python {version})", llama_cpp_greedy(path, prompts)
    else:
        judge = "transformers' GGUF loader (llama-cpp-python not installed)"
        try:
            got = transformers_greedy(path, prompts)
        except Exception as e:  # noqa: BLE001 - the fallback judge can't read this architecture: say so
            return f"{judge}: could not load it ({type(e).__name__}); install llama-cpp-python to check it"
    n = len(want)
    same_ids = sum(g[0] == w[0] for g, w in zip(got, want))
    same_gen = sum(g[1] == w[1] for g, w in zip(got, want))
    agree = sum(a == b for g, w in zip(got, want) for a, b in zip(g[1], w[1]))
    total = sum(max(len(g[1]), len(w[1])) for g, w in zip(got, want))
    line = (f"{judge} judged: prompt ids identical on {same_ids}/{n}; greedy output ({CHECK_NEW_TOKENS} new tokens) "
            f"identical to the merged model's (transformers) on {same_gen}/{n}; tokens agreeing {agree}/{total}")
    if same_gen < n:
        i = next(i for i, (g, w) in enumerate(zip(got, want)) if g[1] != w[1])

        def show(ids):  # one line on the page: a new line shown as ↵, not as a \n escape
            if tokenizer is None:
                return str(ids[:8])
            text = tokenizer.decode(ids).replace("\r", "").replace("\n", "↵")
            return f"“{text[:56]}{'…' if len(text) > 56 else ''}”"

        line += f"; first difference on prompt {i + 1}: {show(got[i][1])} vs {show(want[i][1])}"
        gaps = [_near_tie(w, g[1]) for g, w in zip(got, want) if g[1] != w[1]]
        ties = bool(gaps) and all(gap is not None and gap < NEAR_TIE for gap in gaps)
        if ties:
            line += (f" — each output parts where transformers' top two tokens were within {max(gaps):.3g} logits "
                     f"(a near-tie float rounding tips; identical up to there)")
    return line + _verdict(same_ids, same_gen, n, qtype, same_gen < n and ties)


def _verdict(same_ids: int, same_gen: int, n: int, qtype: str | None, ties: bool = False) -> str:
    """What the numbers mean, in a word: a newcomer read "identical on 0/2" after a q4_k_m export as a failure."""
    if same_ids < n:
        return " → PROBLEM: the prompt ids differ, so the GGUF's tokenizer is not the model's; don't publish it"
    if same_gen == n:
        return " → OK: same tokenizer, same greedy output"
    lossy = qtype is not None and not qtype.lower().startswith(("f16", "bf16", "f32"))
    if lossy:
        return (f" → OK for {qtype}: the tokenizer matches; quantized weights change some greedy tokens, as "
                "expected (Evaluate the GGUF to see what that costs)")
    if ties:
        return " → OK: the outputs part only where float rounding tips a tie"
    return " → CHECK: a float GGUF parts from the merged model beyond rounding; look at the conversion"


# ---- Ollama -------------------------------------------------------------------------------------
_MARK = "\x00{}\x00"


def go_template(tokenizer) -> tuple[str, list[str]]:
    """(Ollama TEMPLATE, stop strings) from the tokenizer's chat template, found by rendering probe
    conversations: the text around each role's content becomes a Go-template branch, and text the template
    puts before the first user turn when there is no system message (SmolLM2's default system prompt) is
    kept for conversations without one."""
    ids = tokenizer("a")["input_ids"]
    adds_bos = bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    bos = (tokenizer.bos_token or "") if adds_bos else ""

    def render(messages, gen=False):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return text[len(bos):] if bos and text.startswith(bos) else text  # llama.cpp / Ollama add BOS themselves

    u1, a1, u2, sys_ = (_MARK.format(c) for c in ("U", "A", "V", "S"))
    one = render([{"role": "user", "content": u1}])
    gen = render([{"role": "user", "content": u1}], gen=True)[len(one):]
    two = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1}])
    three = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                    {"role": "user", "content": u2}])
    a_suf = two.split(a1, 1)[1]
    u_pre = three.split(a1, 1)[1].split(u2, 1)[0][len(a_suf):]
    u_suf = one.split(u1, 1)[1]
    a_pre = two.split(u1, 1)[1].split(a1, 1)[0][len(u_suf):]
    head = one.split(u1, 1)[0][: -len(u_pre) or None]
    branches = [f'{{{{ if eq .Role "user" }}}}{u_pre}{{{{ .Content }}}}{u_suf}',
                f'{{{{ else if eq .Role "assistant" }}}}{a_pre}{{{{ .Content }}}}{a_suf}']
    try:
        before_user = render([{"role": "system", "content": sys_}, {"role": "user", "content": u1}]).split(u1, 1)[0]
        if sys_ in before_user and before_user.endswith(u_pre):
            s_pre, s_suf = before_user[: -len(u_pre) or None].split(sys_, 1)
            branches.insert(1, f'{{{{ else if eq .Role "system" }}}}{s_pre}{{{{ .Content }}}}{s_suf}')
    except Exception:  # noqa: BLE001 - a template without a system role (Gemma): Ollama's system goes unused
        pass
    template = ((f"{{{{- if not .System }}}}{head}{{{{ end }}}}" if head else "")
                + "{{- range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + gen)
    stops = [s for s in dict.fromkeys([a_suf.strip(), tokenizer.eos_token or ""]) if s]
    return template, stops


def write_modelfile(folder: Path, gguf_file: str, tokenizer) -> Path:
    """`ollama create NAME -f Modelfile` in the gguf/ folder: FROM the file, its chat template, its stops."""
    lines = ["# ollama create my-model -f Modelfile   (other files here: change FROM)", f"FROM ./{gguf_file}"]
    if getattr(tokenizer, "chat_template", None):
        template, stops = go_template(tokenizer)
        lines.append(f'TEMPLATE """{template}"""')
    else:
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    path = Path(folder) / "Modelfile"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


# ---- the files of one export --------------------------------------------------------------------
def check_gguf_types(types) -> None:
    """Refuse unknown types, and llama.cpp-quantized ones without llama.cpp, before anything is written."""
    for t in types:
        if t not in GGUF_TYPES:
            raise StudioError(f"GGUF type {t!r}: choose from {', '.join(GGUF_TYPES)}")
    needs = [t for t in types if t in LLAMA_CPP_TYPES]
    if needs and llama_cpp_version() is None:
        raise StudioError(f"GGUF {', '.join(needs)} is made by llama.cpp's quantizer: pip install llama-cpp-python "
                          f"(or choose {', '.join(DIRECT_TYPES)})")


def write_gguf_files(model, tokenizer, folder: Path, types, name: str, log=print) -> list[Path]:
    """`<name>-<type>.gguf` for each type; K-quants come from the f16 file (a temporary one if f16 was not asked)."""
    check_gguf_types(types)
    folder = Path(folder)
    paths = {t: folder / f"{name}-{t}.gguf" for t in types}
    f16 = paths.get("f16") or folder / f".{name}-f16-for-quantizing.gguf"
    for t in types:
        if t in DIRECT_TYPES:
            log(f"writing gguf/{paths[t].name}")
            write_gguf(model, tokenizer, paths[t], t, name)
    quantized = [t for t in types if t in LLAMA_CPP_TYPES]
    if quantized and not f16.exists():
        write_gguf(model, tokenizer, f16, "f16", name)
    for t in quantized:
        log(f"quantizing gguf/{paths[t].name} with llama.cpp (llama_model_quantize, from f16)")
        quantize(f16, paths[t], t)
    if "f16" not in types and f16.exists():
        f16.unlink()
    return [paths[t] for t in types]
