"""Models for generation: a base model or a run's adapter on its base, and batched generation.

Every tab that generates (DPO labelling, Evaluate, Persona Chat, Export's checks) loads through
`load_for_inference` and generates through `generate`, so "the base" always means the same thing
and a run's adapter is always put on the base model its recipe names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError


@dataclass
class Loaded:
    model: object  # a transformers model, or a PeftModel when an adapter is on
    tokenizer: object
    base: str  # the base model's id or path, as the recipe names it
    run: Path | None = None  # the run folder whose adapter is loaded, if any
    adapter: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.run.name if self.run is not None else self.base


def run_base_model(run_dir: str | Path) -> str:
    """The base model a run trained on, from its resolved recipe.yaml."""
    import yaml

    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise StudioError(f"{Path(run_dir).name}: not a run folder (no recipe.yaml)")
    data = yaml.safe_load(path.read_text("utf-8")) or {}
    if not data.get("model_name_or_path"):
        raise StudioError(f"{path}: no model_name_or_path")
    return str(data["model_name_or_path"])


def run_adapter(run_dir: str | Path) -> Path:
    """A run's final adapter folder (or a clear line saying it has none yet)."""
    adapter = Path(run_dir) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise StudioError(f"{Path(run_dir).name}: this run has no adapter (it has not finished training)")
    return adapter


def is_run_ref(ref: str) -> bool:
    """A run name in the runs folder, or a path to a run folder (vs. a model id or model folder)."""
    from studio.access import runs_root, shared_mode

    ref = str(ref or "").strip()
    if not ref:
        return False
    if shared_mode():  # a visitor names a run by its name only (studio.access.resolve)
        return "/" not in ref and ".." not in ref and (runs_root() / ref / "recipe.yaml").exists()
    path = Path(ref).expanduser()
    if (path / "recipe.yaml").exists() and (path / "events.jsonl").exists():
        return True
    return "/" not in ref and (runs_root() / ref / "recipe.yaml").exists()


def resolve_ref(ref: str) -> tuple[Path | None, str]:
    """(run folder or None, base model name) of a run or model named by the page: the access check
    (studio.access) happens here, before anything is looked up or loaded."""
    from studio.access import check_model_source, resolve_run

    if is_run_ref(ref):
        run = resolve_run(ref)
        return run, run_base_model(run)
    base = check_model_source(ref)
    if not base:
        raise StudioError("no model given: pick a run, a preset, a Hub id or a local folder")
    return None, base


def load_for_inference(ref: str, device: str | None = None, adapter: bool = True, cached: bool = False) -> Loaded:
    """`ref` is a run (name or folder: its adapter on its base) or a model (embedded, Hub id, folder).

    With `adapter=False` a run loads its base alone: the "base" column of a comparison is really the
    base, never the adapter switched off on a shared model object.

    `cached=True` shares the loaded model through the process-wide cache (studio.model_cache), keyed by
    what the access check resolved; callers that change the model (load another adapter, switch
    adapters) load their own copy.
    """
    run, base = resolve_ref(ref)
    if not cached:
        return _load(run, base, device, adapter)
    from studio.model_cache import cached as from_cache
    from studio.models import resolve_model_path

    with_adapter = bool(adapter and run is not None)
    # a run's base alone is the base: one entry, whichever run or tab asked for it (Evaluate's base column,
    # Persona Chat's "its base model", the base by name), never a second copy per run
    where = str(run.resolve()) if with_adapter else resolve_model_path(base)
    label = run.name if with_adapter else base
    return from_cache(("transformers", where, with_adapter, device),
                      lambda: _load(run if with_adapter else None, base, device, with_adapter), label=label,
                      kind="transformers", expect=lambda: _weight_bytes(base, run_adapter(run) if with_adapter else None))


def _weight_bytes(base: str, adapter_dir: Path | None) -> int:
    """What loading `base` (+ an adapter) will take, from its weight files (0 when unknown, e.g. a Hub id not yet
    downloaded): the cache makes room first."""
    from studio.models import resolve_model_path

    try:
        folders = [Path(resolve_model_path(base)), adapter_dir]
    except (StudioError, OSError):
        return 0
    return sum(p.stat().st_size for f in folders if f is not None and f.is_dir()
               for ext in ("*.safetensors", "*.bin") for p in f.glob(ext))


def _load(run: Path | None, base: str, device: str | None, adapter: bool) -> Loaded:
    import torch
    from trl import ModelConfig

    from studio.models import load_model, load_tokenizer

    tok_source = str(run_adapter(run)) if run is not None and adapter else base
    tokenizer = load_tokenizer(tok_source) if run is None or not adapter else load_tokenizer(base)
    model = load_model(ModelConfig(model_name_or_path=base))
    adapter_dir = None
    if run is not None and adapter:
        from peft import PeftModel

        adapter_dir = run_adapter(run)
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if device:
        model.to(device)
    elif torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:
        model.to("cuda")
    model.eval()
    info = {}
    if run is not None and (run / "summary.json").exists():
        info = json.loads((run / "summary.json").read_text("utf-8"))
    return Loaded(model=model, tokenizer=tokenizer, base=base, run=run if adapter or run else None,
                  adapter=adapter_dir, info=info)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, *, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0,
             batch_size: int = 16, progress=None, cut: set | None = None, stop: str | None = None) -> list[str]:
    """Continuations of `prompts` (plain strings, already templated), batched with left padding.

    Greedy by default. Greedy outputs equal one-prompt-at-a-time generation (tested); with sampling the
    seed makes a batch reproducible. `progress(done, total)` is called after each batch. `cut`, when given,
    receives the index of every prompt whose continuation stopped at `max_new_tokens`, not at its end token.
    `stop`: a row is done once its continuation holds this text (a caller that cuts there, as Evaluate cuts
    single-line answers at the first newline), and a batch once all its rows are: the text up to `stop` is
    the same, without decoding to `max_new_tokens` the tokens after it that would be thrown away.
    """
    import torch

    if not prompts:
        return []
    device = next(model.parameters()).device
    side, pad = tokenizer.padding_side, tokenizer.pad_token_id
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    outputs: list[str] = [""] * len(prompts)
    # longest first: batches of similar length pad less
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = [prompts[i] for i in idx]
            enc = tokenizer(batch, return_tensors="pt", padding=True,
                            add_special_tokens=not _has_bos(tokenizer, batch)).to(device)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                          repetition_penalty=repetition_penalty)
            if do_sample:
                torch.manual_seed(seed + start)
                kwargs.update(temperature=temperature, top_p=top_p)
            if stop:
                kwargs["stopping_criteria"] = _stop_at(tokenizer, stop, enc["input_ids"].shape[1])
            with torch.no_grad():
                ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1]:]
            ends = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
            for j, i in enumerate(idx):
                outputs[i] = tokenizer.decode(new[j], skip_special_tokens=True)
                if cut is not None and new.shape[1] >= max_new_tokens and not ends & set(new[j].tolist()):
                    cut.add(i)
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side = side
    return outputs


def _stop_at(tokenizer, stop: str, start: int):
    """generate()'s stopping criteria: each row is done once the text it added since `start` holds `stop`."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [stop in tokenizer.decode(row[start:], skip_special_tokens=True) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopAt()])


def continuation_logprobs(model, tokenizer, contexts: list[str], continuations: list[str],
                          batch_size: int = 8) -> list[float]:
    """Σ log p(continuation | context) for each pair, teacher-forced: batched forwards with right padding, the
    log-softmax taken over the continuation's positions only (a batch's full logits would be batch × length ×
    vocabulary floats). Contexts are plain strings, already templated, tokenized as `generate` does."""
    import torch

    device = next(model.parameters()).device
    special = not _has_bos(tokenizer, contexts)
    seqs, spans = [], []
    for context, continuation in zip(contexts, continuations):
        head = tokenizer(context, add_special_tokens=special)["input_ids"]
        tail = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        seqs.append(head + tail)
        spans.append((len(head), len(head) + len(tail)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out: list[float] = []
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, s in enumerate(batch):
            ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
        with torch.no_grad():
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for j, (a, b) in enumerate(spans[start:start + batch_size]):
            if b <= a:
                out.append(0.0)
                continue
            logp = torch.log_softmax(hidden[j, a - 1:b - 1].float(), -1)
            out.append(float(logp.gather(-1, ids[j, a:b].to(device).unsqueeze(-1)).sum()))
    return out


def _has_bos(tokenizer, prompts: list[str]) -> bool:
    """True when every prompt already begins with the start token (a chat template that writes its own, as
    Llama-3's and Gemma's do): tokenizing it with special tokens on would give the model two."""
    bos = tokenizer.bos_token
    return bool(bos) and all(p.startswith(bos) for p in prompts)


EMPTY_REPLY = "(empty reply)"
_LIMIT_MARK = " … [stopped at the {}-token limit]"


def marked_reply(text: str, cut: bool = False, limit: int | None = None) -> str:
    """A reply as a page shows it: an empty one named, one stopped by the token limit marked (chat, Evaluate)."""
    if not str(text).strip():
        return EMPTY_REPLY
    return str(text).rstrip() + (_LIMIT_MARK.format(limit) if cut else "")


def unmarked_reply(text: str) -> str:
    """The model's own words of a reply `marked_reply` showed: what goes back into the next turn's prompt."""
    if text == EMPTY_REPLY:
        return ""
    import re

    return re.sub(r" … \[stopped at the \d+-token limit\]$", "", text)


def is_instruct(tokenizer) -> bool:
    """An instruct model: its end-of-sequence token is its chat template's end of turn (SmolLM2's <|im_end|>),
    so to it a raw prompt is a finished turn and its first token is that end: an empty reply."""
    template, eos = getattr(tokenizer, "chat_template", None), getattr(tokenizer, "eos_token", None)
    return isinstance(template, str) and bool(eos) and eos in template


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """Messages → the prompt string the model continues (its chat template, generation prompt on)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def init_adapter_run(recipe) -> Path | None:
    """The SFT run named by `init_adapter` (its name, or runs/<name>), checked: it has an adapter on our base."""
    from studio.access import resolve_run
    from studio.models import resolve_model_path

    ref = str(recipe.header.get("init_adapter") or "").strip()
    if not ref:
        return None
    where = recipe.path or recipe.name
    parts = Path(ref).parts
    if len(parts) == 2 and parts[0] == "runs":  # `runs/<run>` as the recipe docs write it, wherever runs/ lives
        ref = parts[1]
    try:
        run = resolve_run(ref)
        run_adapter(run)
        base = run_base_model(run)
    except StudioError as e:
        raise StudioError(f"{where}: init_adapter {ref}: {e}") from None
    mine = recipe.model["model_name_or_path"]
    if resolve_model_path(base) != resolve_model_path(mine):
        raise StudioError(f"{where}: init_adapter {run.name} was trained on {base}, but this recipe's model is {mine}; "
                          f"set model_name_or_path: {base}")
    return run
