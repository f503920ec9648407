"""Preference pairs where none exist: built from an SFT dataset, or labelled by a person.

Both write an ordinary preference JSONL (prompt / chosen / rejected) whose first line is
``{"_meta": {...}}`` saying how its pairs were made; the data layer skips that line, so the Data tab
reads the file and a DPO run trains on it like any other.

Labelling lives under ``runs/pairs/``: ``<name>.jsonl`` gets each decision appended at once, and
``<name>.session.json`` holds the prompts, the model and the position, so a reload resumes where it
stopped. Candidates are sampled with a seed per prompt, so the same prompt shows the same two replies.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from studio.errors import StudioError

CHOICES = ("A", "B", "skip")


# ---- the file -------------------------------------------------------------------------------------

def pairs_dir() -> Path:
    from studio.access import runs_root

    return runs_root() / "pairs"


def pairs_path(name: str) -> Path:
    from studio.access import check_run_name

    return pairs_dir() / f"{check_run_name(name, 'pairs name')}.jsonl"


def read_meta(path: str | os.PathLike) -> dict | None:
    """The `_meta` first line of a pairs file, if it has one."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return first.get("_meta") if isinstance(first, dict) and set(first) == {"_meta"} else None


def describe(meta: dict | None) -> str:
    """One line a person reads: how the pairs were made."""
    if not meta:
        return "no description line: pairs made outside the studio"
    parts = [meta.get("made_by", "?")]
    if meta.get("model"):
        parts.append(f"model {meta['model']}")
    if meta.get("how"):
        parts.append(meta["how"])
    return "; ".join(parts)


def count_pairs(path: str | os.PathLike) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip() and not line.startswith('{"_meta"'))


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())  # a decision survives a crash or a reload the moment it is made


# ---- prompts and responses from an SFT dataset -------------------------------------------------------

def sft_examples(source: str, tokenizer, max_rows: int | None = None) -> list[tuple[str, str]]:
    """(prompt text, gold response) per row of a prompt/completion, instruction or chat dataset."""
    from studio.data import read_source
    from studio.data.formats import RowError, get_format
    from studio.inference import chat_prompt

    raw = read_source(source)
    columns = raw.columns
    fmt = get_format(raw.hint, columns, raw.name)
    if fmt.kind == "preference":
        raise StudioError(f"{raw.name} already holds preference pairs: train DPO on it directly")
    if fmt.kind == "text":
        raise StudioError(f"{raw.name} is {fmt.label}: no prompt / response split to build pairs from; use a "
                          "prompt/completion, instruction or chat dataset")
    out = []
    for i, row in enumerate(raw.records()):  # lazily: stops at max_rows
        try:
            r = fmt.render(row, None)
        except (RowError, KeyError, TypeError) as e:
            raise StudioError(f"{raw.name} {raw.label(i)}: {e}") from None
        if r is None:
            continue
        if "messages" in r:
            msgs = r["messages"]
            last = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
            prompt, response = chat_prompt(tokenizer, msgs[:last]), msgs[last]["content"]
        elif isinstance(r["prompt"], list):
            prompt, response = chat_prompt(tokenizer, r["prompt"]), "".join(m["content"] for m in r["completion"])
        else:
            prompt, response = r["prompt"], r["completion"]
        if prompt.strip() and response.strip():
            out.append((prompt, response))
        if max_rows and len(out) >= max_rows:
            break
    if not out:
        raise StudioError(f"{raw.name}: no rows with both a prompt and a response")
    return out


def _model(ref: str):
    """(Loaded, llama.cpp engine or None, backend line) through the process-wide model cache, after the
    access check (studio.llama_backend.load_generation)."""
    from studio.llama_backend import load_generation

    return load_generation(ref)


def build_pairs(source: str, out: str | os.PathLike, model: str, *, max_rows: int | None = None, seed: int = 0,
                max_new_tokens: int = 48, temperature: float = 1.0, progress=None) -> dict:
    """Gold response = chosen; the model's own sampled reply to the same prompt = rejected.

    Rows where the sample equals the gold response (or is empty) are skipped and counted.
    """
    from studio.access import claim, require_write
    from studio.work import heavy

    out = Path(out)
    require_write(out, out.name)  # never over another visitor's (or the owner's) pairs file
    # sampling the replies is heavy work (studio.work): queued, billed, low priority, stopped with its page
    examples, replies, label, backend = heavy("pair building", _sample_rejected, source, model, max_rows,
                                              max_new_tokens, temperature, seed, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    claim(out)
    meta = {"made_by": "python -m studio pairs build", "source": str(source), "model": label,
            "how": "chosen = the dataset's gold response; rejected = the model's own sampled reply",
            "seed": seed, "temperature": temperature, "max_new_tokens": max_new_tokens, "backend": backend,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    written = skipped = 0
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"_meta": meta}, ensure_ascii=False) + "\n")
        for (prompt, gold), reply in zip(examples, replies):
            if not reply.strip() or reply.strip() == gold.strip():
                skipped += 1
                continue
            f.write(json.dumps({"prompt": prompt, "chosen": gold, "rejected": reply}, ensure_ascii=False) + "\n")
            written += 1
    if not written:
        raise StudioError(f"{source}: every sampled reply was empty or equal to the gold response; no pairs written")
    return {"out": str(out), "pairs": written, "skipped": skipped, "meta": meta}


def _sample_rejected(source, model, max_rows, max_new_tokens, temperature, seed, progress):
    """The rows' prompts and gold responses, and the model's sampled reply to each (a checkpoint per batch or
    per reply); → (examples, replies, the model's label, the backend line)."""
    from studio.inference import generate
    from studio.llama_backend import sample_replies
    from studio.work import checked

    progress = checked(progress)
    loaded, engine, backend = _model(model)
    examples = sft_examples(source, loaded.tokenizer, max_rows)
    if engine is None:
        replies = generate(loaded.model, loaded.tokenizer, [p for p, _ in examples], max_new_tokens, do_sample=True,
                           temperature=temperature, seed=seed, progress=progress)
    else:
        replies = []
        for i, (p, _) in enumerate(examples):
            replies += sample_replies(loaded, engine, [p], max_new_tokens, temperature=temperature, seed=seed + i)
            progress(i + 1, len(examples))
    return examples, replies, loaded.label, backend


# ---- labelling in the browser ---------------------------------------------------------------------------

def _session_path(name: str) -> Path:
    return pairs_path(name).with_suffix(".session.json")


def _save_session(session: dict) -> None:
    path = _session_path(session["name"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(session, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


MAX_PROMPT_CHARS = 4000  # a typed prompt; the model's context is far shorter anyway
MAX_TYPED_PROMPTS = 200


def prompts_from_text(text: str) -> list[str]:
    """Typed prompts: one per blank-line-separated block (a prompt may span lines)."""
    text = str(text or "")
    if len(text) > MAX_TYPED_PROMPTS * MAX_PROMPT_CHARS:
        raise StudioError(f"prompts: {len(text):,} characters; at most {MAX_TYPED_PROMPTS * MAX_PROMPT_CHARS:,}")
    blocks = [b.strip("\n") for b in text.replace("\r\n", "\n").split("\n\n")]
    prompts = [b for b in blocks if b.strip()]
    if len(prompts) > MAX_TYPED_PROMPTS:
        raise StudioError(f"prompts: {len(prompts)} typed; at most {MAX_TYPED_PROMPTS} per labelling session")
    for i, p in enumerate(prompts, 1):
        if len(p) > MAX_PROMPT_CHARS:
            raise StudioError(f"prompt {i}: {len(p):,} characters; at most {MAX_PROMPT_CHARS:,}")
    return prompts


def dataset_prompts(source: str, model: str, max_rows: int = 20) -> list[str]:
    """The prompts of an SFT dataset, rendered as the model will see them."""
    from studio.access import check_data_source, check_model_source

    check_data_source(source)
    check_model_source(model)
    return [p for p, _ in sft_examples(source, _model(model)[0].tokenizer, max_rows)]


def start_labelling(name: str, model: str, prompts: list[str], *, seed: int = 0, max_new_tokens: int = 48,
                    temperature: float = 1.0) -> dict:
    """A new labelling session; an existing name is resumed instead (its prompts are kept).

    On a shared studio it is the visitor's who started it (studio.access): nobody else may open or continue it."""
    from studio.access import check_model_source, claim

    path = pairs_path(name)
    if _session_path(name).exists():
        return open_labelling(name)
    if path.exists():
        raise StudioError(f"{path.name} already exists and was not made by labelling here; pick another name")
    check_model_source(model)
    if not str(model or "").strip():
        raise StudioError("pick a model or a run to generate the candidate replies")
    if not prompts:
        raise StudioError("no prompts: type some (a blank line between prompts) or load them from a dataset")
    path.parent.mkdir(parents=True, exist_ok=True)
    session = {"name": name, "model": model, "prompts": prompts, "position": 0, "skipped": 0, "seed": int(seed),
               "max_new_tokens": int(max_new_tokens), "temperature": float(temperature)}
    meta = {"made_by": "labelled by a person in the LoRA Studio DPO tab", "model": model,
            "how": "two sampled replies per prompt; the one picked (possibly edited) = chosen, the other = rejected",
            "seed": int(seed), "temperature": float(temperature),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    claim(path)
    path.write_text(json.dumps({"_meta": meta}, ensure_ascii=False) + "\n", encoding="utf-8")
    _save_session(session)
    return status(session)


def _mine(name: str) -> bool:
    """Labelling a session changes its file: only whoever started it may (the current visitor, studio.access)."""
    from studio.access import may_write

    return may_write(pairs_path(name))


def open_labelling(name: str) -> dict:
    path = _session_path(name)
    if not path.exists():
        raise StudioError(f"no labelling session named {name!r} in the pairs folder")
    if not _mine(name):
        raise StudioError(f"the labelling session {name!r} belongs to another visitor; pick another name")
    return status(json.loads(path.read_text("utf-8")))


def latest_session() -> str | None:
    """The labelling session this visitor touched last (a reloaded page picks it up); on a shared studio,
    never another visitor's."""
    from studio.access import may_write_each

    folder = pairs_dir()
    try:
        with os.scandir(folder) as entries:  # one pass; names on disk were checked when they were made
            found = [(e.stat().st_mtime, e.name.removesuffix(".session.json")) for e in entries
                     if e.name.endswith(".session.json")]
    except (FileNotFoundError, NotADirectoryError):
        return None
    names = [name for _, name in sorted(found, reverse=True)]
    # `_mine` for all at once: one ownership look-up, matched in SQLite (issue 25: 5,000 sessions on disk)
    for name, mine in zip(names, may_write_each(folder / f"{name}.jsonl" for name in names)):
        if mine:
            return name
    return None


def status(session: dict) -> dict:
    pos, total = session["position"], len(session["prompts"])
    return {**session, "file": str(pairs_path(session["name"])), "pairs": count_pairs(pairs_path(session["name"])),
            "total": total, "done": pos >= total, "prompt": session["prompts"][pos] if pos < total else None}


def candidates(name: str) -> tuple[str, str]:
    """Two sampled replies to the session's current prompt (seeded by its index: a reload shows the same),
    from llama.cpp when it can answer (studio.llama_backend), else transformers."""
    from studio.work import heavy

    s = open_labelling(name)
    if s["done"]:
        raise StudioError(f"all {s['total']} prompts of {name} are labelled")
    # sampling is heavy work (studio.work): on a shared app queued, billed, at low priority, stopped with its page
    return heavy("labelling", _two_replies, s)


def _two_replies(s: dict) -> tuple[str, str]:
    from studio.llama_backend import sample_replies
    from studio.work import checkpoint

    loaded, engine, _ = _model(s["model"])
    replies: list[str] = []
    for attempt in range(4):  # an empty or repeated sample can't be either side of a pair: draw again
        checkpoint()
        drawn = sample_replies(loaded, engine, [s["prompt"]] * 2, s["max_new_tokens"], temperature=s["temperature"],
                               seed=s["seed"] + 1000 * s["position"] + 100 * attempt)
        for reply in drawn:
            if reply.strip() and reply.strip() not in {r.strip() for r in replies} and len(replies) < 2:
                replies.append(reply)
        if len(replies) == 2:
            break
    return tuple(replies + [""] * (2 - len(replies)))


def record_decision(name: str, index: int, choice: str, shown: tuple[str, str], edited: tuple[str, str]) -> dict:
    """Append one decision: the picked reply is chosen and the other rejected, each as the person left it in its
    box (a side the model left empty can be written in; an edit of either side is kept). `shown` is what the
    model wrote, kept for the page's own bookkeeping.

    `index` is the prompt the page showed: a stale page (another tab went on) is refused, never double-counted.
    """
    session = json.loads(_session_path(name).read_text("utf-8")) if _session_path(name).exists() else None
    if session is None:
        raise StudioError(f"no labelling session named {name!r}")
    if not _mine(name):
        raise StudioError(f"the labelling session {name!r} belongs to another visitor")
    if choice not in CHOICES:
        raise StudioError(f"unknown choice {choice!r}; one of {', '.join(CHOICES)}")
    if int(index) != session["position"]:
        raise StudioError(f"prompt {int(index) + 1} was already labelled (in another tab?); showing the current one")
    if choice == "skip":
        session["skipped"] += 1
    else:
        from studio.inference import unmarked_reply

        pick = 0 if choice == "A" else 1
        boxes = [unmarked_reply(str(text if text is not None else "")) for text in edited]
        chosen, rejected = boxes[pick], boxes[1 - pick]
        if not chosen.strip() or not rejected.strip():
            raise StudioError(f"reply {choice if not chosen.strip() else 'AB'[1 - pick]} is empty: a pair needs two "
                              "replies; write one in or skip this prompt")
        if chosen.strip() == rejected.strip():
            raise StudioError("the two replies are the same: edit the one you prefer, or skip this prompt")
        _append(pairs_path(name), {"prompt": session["prompts"][session["position"]], "chosen": chosen,
                                   "rejected": rejected})
    session["position"] += 1
    _save_session(session)
    return status(session)


# ---- a DPO recipe's pairs ----------------------------------------------------------------------------
def load_pairs(recipe, tokenizer=None, seed: int = 42):
    """The recipe's dataset as preference pairs, or one line saying why it can't be.

    Pairs whose chosen equals rejected teach nothing: they are dropped and counted.
    """
    from studio.data import prepare_dataset, read_source
    from studio.data.formats import detect_format, get_format

    ds = recipe.dataset
    raw = read_source(ds["source"], ds.get("config"), ds.get("split"))
    columns = raw.columns
    if "chosen" in columns and "rejected" not in columns:
        raise StudioError(f"{raw.name}: no 'rejected' column (found {', '.join(columns)}); DPO needs prompt / chosen / "
                          "rejected")
    not_pairs = StudioError(
        f"{raw.name} holds {{}}, not preference pairs; DPO needs prompt / chosen / rejected. Make pairs with the "
        f"DPO tab's pair builder or `python -m studio pairs build {ds['source']} --out FILE`")
    if not {"chosen", "rejected"} <= set(columns):
        try:
            what = detect_format(columns, raw.name).label
        except StudioError:
            what = f"the columns {', '.join(columns)}"
        raise StudioError(str(not_pairs).format(what))
    fmt = get_format(ds.get("format") or raw.hint, columns, raw.name)
    if fmt.kind != "preference":
        raise StudioError(str(not_pairs).format(fmt.label))
    for i, row in enumerate(raw.records(["prompt"]) if "prompt" in columns else ()):
        if "prompt" in row and (row["prompt"] is None or not (str(row["prompt"]).strip() if not isinstance(
                row["prompt"], list) else row["prompt"])):
            raise StudioError(f"{raw.name} {raw.label(i)}: empty prompt")
    data = prepare_dataset(ds["source"], ds.get("format"), ds.get("template"), config=ds.get("config"),
                           split=ds.get("split"), splits=ds.get("splits", "80/10/10"), seed=seed,
                           tokenizer=tokenizer if ds.get("max_length") else None, max_length=ds.get("max_length"),
                           max_rows=ds.get("max_rows"), group_by=ds.get("group_by"))
    identical = 0
    for name, split in list(data.splits.items()):
        kept = split.filter(lambda r: r["chosen"] != r["rejected"])
        identical += len(split) - len(kept)
        data.splits[name] = kept
    if identical:
        data.dropped["chosen equals rejected"] = identical
        data.rows -= identical
    if not len(data.splits["train"]):
        raise StudioError(f"{raw.name}: no usable pairs: in all {identical} training pairs chosen equals rejected")
    return data
