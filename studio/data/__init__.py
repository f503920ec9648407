"""Data: read a source, detect its format, render to TRL's forms, clean and split.

Rows stay in Arrow throughout: rendering, dropping empty targets and length filtering are batched
`Dataset.map`/`filter` calls, splits are index mappings. Prepared splits can be cached on disk, keyed by the
source's content and every setting that shapes them, so a second run or a resume skips the work (and the
tokenized copies TRL derives from them are found again in the same cache folder).

"Held out" is a property of a dialogue, not of a row: rows of one group (a persona, a conversation id, or the
column a recipe names in `dataset.group_by`) go to one split only (`split_groups`), so a persona's dialogue is
never half in training and half in the test split.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from studio.data.formats import FORMATS, Format, RowError, detect_format, get_format, text_pieces
from studio.data.sources import SAMPLES, RawData, read_source, row_label
from studio.errors import StudioError

DATA_VERSION = 2  # bump when rendering changes, so cached prepared data is not reused
OUTPUT_COLUMNS = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "messages": ["messages"],
                  "preference": ["prompt", "chosen", "rejected"]}
BATCH = 1000
# Columns that name a conversation: rows sharing one are turns of one dialogue and are split together.
CONVERSATION_IDS = ("conversation_id", "conversation_hash", "conv_id", "dialogue_id", "dialog_id", "thread_id")
NO_GROUPS = {"rows", "none", "false", "off"}  # dataset.group_by: rows → split row by row
GROUP_COLUMN = "_group"  # carried through rendering, removed before the splits are returned

__all__ = ["FORMATS", "SAMPLES", "Format", "PreparedData", "clip_example", "detect_format", "prepare_dataset",
           "read_source", "parse_splits", "render_example", "split_groups", "heldout_data"]


def parse_splits(splits) -> tuple[float, float, float]:
    """'80/10/10', [0.8, 0.1, 0.1] or [80, 10, 10] → fractions that sum to 1."""
    if isinstance(splits, str):
        parts = splits.replace(",", "/").split("/")
    else:
        parts = list(splits)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise StudioError(f"splits {splits!r}: expected three numbers like 80/10/10") from None
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0 or values[0] <= 0:
        raise StudioError(f"splits {splits!r}: expected train/validation/test like 80/10/10 with train > 0")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


MAX_EXAMPLE_CHARS = 2000  # an example printed (`studio data`, --json included) or shown on the Data tab


def clip_example(text: str, limit: int = MAX_EXAMPLE_CHARS) -> str:
    """`text` cut to `limit` characters, with a line saying so (a 10 MB row is not printed whole)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[… cut: {len(text):,} characters in all, the first {limit:,} shown]"


def render_example(row: dict, tokenizer=None) -> str:
    """One rendered example as a person should read it (what the model is trained on)."""
    if "text" in row:
        return row["text"]
    if "chosen" in row:
        show = lambda v: render_example({"messages": v}, tokenizer) if isinstance(v, list) else v  # noqa: E731
        return f"PROMPT:\n{show(row['prompt'])}\n\nCHOSEN:\n{show(row['chosen'])}\n\nREJECTED:\n{show(row['rejected'])}"
    if "prompt" in row:
        if isinstance(row["prompt"], list):
            return render_example({"messages": row["prompt"] + row["completion"]}, tokenizer)
        return row["prompt"] + row["completion"]
    messages = row["messages"]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@dataclass
class PreparedData:
    source: str
    format: Format
    template: str | None
    rows: int  # usable rows after cleaning
    dropped: dict[str, int]  # reason → count
    splits: dict  # name → datasets.Dataset
    example: str
    lengths: list[int] = field(default_factory=list)  # token lengths of the train split, if a tokenizer was given
    cache_dir: str | None = None  # where the prepared splits are cached (None: not cached)
    # how rows were kept together: {"by": "persona" | a column, "count": groups, "splits": {split: groups}};
    # None: split row by row
    groups: dict | None = None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def length_stats(self) -> dict:
        if not self.lengths:
            return {}
        s = sorted(self.lengths)
        return {"min": s[0], "median": int(statistics.median(s)), "p95": s[int(0.95 * (len(s) - 1))],
                "max": s[-1], "mean": round(statistics.fmean(s), 1)}

    def summary(self) -> dict:
        out = {
            "source": self.source,
            "format": self.format.name,
            "kind": self.format.kind,
            "rows": self.rows,
            "dropped": self.dropped_total,
            "dropped_reasons": self.dropped,
            "splits": {k: len(v) for k, v in self.splits.items()},
            "example": clip_example(self.example),
        }
        if self.groups:
            out["groups"] = self.groups
        if self.lengths:
            out["token_lengths"] = self.length_stats()
        return out

    def split_line(self) -> str:
        """'split by dialogue (same persona): 800 dialogues → 640 / 80 / 80', or how rows were split."""
        if not self.groups:
            return "split row by row: " + " / ".join(str(len(v)) for v in self.splits.values()) + " rows"
        g = self.groups
        by = "same persona" if g["by"] == "persona" else g["by"]
        return (f"split by dialogue ({by}): {g['count']} dialogues → "
                + " / ".join(str(g["splits"].get(k, 0)) for k in self.splits))


def token_length(row: dict, tokenizer) -> int:
    """Tokens the trainer will see for one rendered row (longest side for preference pairs)."""
    if "chosen" in row:
        return max(token_length({"prompt": row["prompt"], "completion": row[k]}, tokenizer) for k in ("chosen", "rejected"))
    if "messages" in row or (isinstance(row.get("prompt"), list)):
        messages = row.get("messages") or row["prompt"] + row["completion"]
        if getattr(tokenizer, "chat_template", None):
            return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    return len(tokenizer(render_example(row, tokenizer), add_special_tokens=True)["input_ids"])


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*batch.values())]


def _renderer(fmt: Format, template: str | None, name: str, path: Path | None, pieces: bool = False,
              group: str | None = None):
    """A batched map function: source rows → TRL rows; rows with an empty target are left out.
    `pieces`: text rows come cut into the prompt and the answer (`formats.text_pieces`). `group`: a source
    column whose value each kept row carries on as `GROUP_COLUMN` (the dialogue it belongs to)."""
    columns = OUTPUT_COLUMNS["prompt_completion" if pieces and fmt.kind == "text" else fmt.kind]
    render_row = (lambda row, t: text_pieces(fmt, row, t)) if pieces and fmt.kind == "text" else fmt.render
    if fmt.render_batch is not None and not template and not pieces and group is None:
        return lambda batch, indices: fmt.render_batch(batch)
    if group is not None:
        columns = [*columns, GROUP_COLUMN]
        plain = render_row
        render_row = lambda row, t: (None if (r := plain(row, t)) is None  # noqa: E731
                                     else {**r, GROUP_COLUMN: json.dumps(row.get(group), sort_keys=True, default=str)})

    def render(batch: dict, indices: list[int]) -> dict:
        out = {c: [] for c in columns}
        for i, row in zip(indices, _rows(batch)):
            try:
                rendered = render_row(row, template)
            except RowError as e:
                raise StudioError(f"{name} {row_label(path, i)}: {e}") from None
            except (KeyError, TypeError) as e:
                raise StudioError(f"{name} {row_label(path, i)}: missing or malformed field {e}") from None
            if rendered is not None:
                for c in columns:
                    out[c].append(rendered[c])
        return out

    return render


def _lengths(tokenizer):
    def lengths(batch: dict) -> dict:
        rows = _rows(batch)
        if "text" in batch or ("completion" in batch and all(isinstance(p, str) for p in batch["prompt"])):
            texts = batch["text"] if "text" in batch else [p + c for p, c in zip(batch["prompt"], batch["completion"])]
            return {"_length": [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]}
        return {"_length": [token_length(r, tokenizer) for r in rows]}

    return lengths


def _column_list(ds, column: str) -> list:
    return ds.with_format("arrow")[column].to_pylist()


# ---- the prepared-data cache ---------------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("STUDIO_DATA_CACHE") or Path.home() / ".cache" / "lora-studio" / "data")


def _source_identity(raw_source: str) -> str | None:
    """A local file's content hash (xxh3, GB/s); None for Hub ids and folders (their fingerprint is used)."""
    import xxhash

    from studio.data.sources import SAMPLES as samples

    key = raw_source.removeprefix("sample:")
    path = samples.get(key) or Path(raw_source).expanduser()
    if not Path(path).is_file():
        return None
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(identity: str, settings: dict, tokenizer) -> str:
    from datasets.fingerprint import Hasher

    tok = None if tokenizer is None else Hasher.hash(tokenizer)
    return Hasher.hash({"identity": identity, "settings": settings, "tokenizer": tok, "version": DATA_VERSION})


def _load_cached(folder: Path) -> PreparedData | None:
    import datasets

    if not (folder / "meta.json").exists():
        return None
    meta = json.loads((folder / "meta.json").read_text("utf-8"))
    splits = datasets.load_from_disk(str(folder / "splits"))
    return PreparedData(source=meta["source"], format=FORMATS[meta["format"]], template=meta["template"],
                        rows=meta["rows"], dropped=meta["dropped"], splits=dict(splits), example=meta["example"],
                        lengths=meta["lengths"], cache_dir=str(folder), groups=meta.get("groups"))


def _save_cached(folder: Path, data: PreparedData) -> None:
    """Write beside, then rename: a crash or a second process never leaves half a cache entry."""
    import datasets

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        datasets.DatasetDict(data.splits).save_to_disk(str(tmp / "splits"))
        meta = {"source": data.source, "format": data.format.name, "template": data.template, "rows": data.rows,
                "dropped": data.dropped, "example": data.example, "lengths": data.lengths, "groups": data.groups}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, folder)
    except OSError:  # another process got there first (or the disk is full): the data is still usable
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_dataset(
    source: str,
    format: str | None = None,
    template: str | None = None,
    *,
    config: str | None = None,
    split: str | None = None,
    splits="80/10/10",
    seed: int = 42,
    tokenizer=None,
    max_length: int | None = None,
    max_rows: int | None = None,
    streaming: bool = False,
    cache: bool = False,
    pieces: bool = False,
    group_by: str | None = None,
) -> PreparedData:
    """Read, detect, render, clean, split. `streaming` reads a Hub dataset in streaming mode and keeps the first
    `max_rows` rows. `cache` reuses (or stores) the prepared splits under `cache_root()`. `pieces` renders text
    formats as prompt/completion (the same rows and splits, each text cut where its answer begins).
    `group_by`: the column whose rows are split together; None: persona data by persona, data with a
    conversation id column (`CONVERSATION_IDS`) by it, anything else row by row; "rows": row by row."""
    if streaming and not max_rows:
        raise StudioError("streaming needs a row limit: set max_rows (--max-rows)")
    template = template or None
    settings = {"source": str(source), "format": format, "template": template, "config": config, "split": split,
                "splits": str(splits), "seed": seed, "max_length": max_length, "max_rows": max_rows,
                "streaming": streaming, "pieces": pieces,
                # the split keeps dialogues whole since group_by came: a cache from before is never reused
                "group_by": None if group_by is None else str(group_by), "split_layout": "by-group"}
    identity = _source_identity(str(source).strip()) if cache else None
    folder = cache_root() / _cache_key(identity, settings, tokenizer) if identity else None
    if folder is not None and (hit := _load_cached(folder)) is not None:
        return hit

    raw: RawData = read_source(source, config, split, streaming_rows=max_rows if streaming else None)
    if cache and folder is None:  # Hub or folder: the loaded dataset's own fingerprint names its content
        folder = cache_root() / _cache_key(raw.dataset._fingerprint, settings, tokenizer)
        if (hit := _load_cached(folder)) is not None:
            return hit
    data = _prepare(raw, format, template, splits, seed, tokenizer, max_length, max_rows, pieces, group_by)
    if folder is not None:
        _save_cached(folder, data)
        data = _load_cached(folder) or data  # memory-mapped from the cache: TRL's tokenized copies land beside it
    return data


def _group_column(raw: RawData, fmt: Format, group_by) -> str | None:
    """The source column to split by: the one the recipe names, else a conversation id; None: none (persona
    data is then grouped by its persona after rendering)."""
    columns = raw.columns
    if group_by is not None and str(group_by).strip().lower() not in NO_GROUPS:
        if group_by == "persona" and fmt.name == "persona" and "persona" not in columns:
            return None
        if group_by not in columns:
            raise StudioError(f"{raw.name}: dataset.group_by '{group_by}' is not a column; found "
                              f"[{', '.join(columns[:20])}]")
        return str(group_by)
    if group_by is None:
        return next((c for c in CONVERSATION_IDS if c in columns), None)
    return None


def split_groups(keys: list, fractions: tuple[float, float, float], seed: int) -> dict[str, list[int]]:
    """Row indices per split, every group's rows in one split: groups (in order of first appearance) are
    shuffled with `seed` and dealt out by count of groups (fewer than 10 groups: all train). Held-out splits
    keep each dialogue's rows together and in their order; the train split's rows are shuffled."""
    members: dict = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    order = list(members)
    random.Random(seed).shuffle(order)
    _, val_f, test_f = fractions
    g = len(order)
    g_val = int(round(g * val_f)) if g >= 10 else 0
    g_test = int(round(g * test_f)) if g >= 10 else 0
    if g_val + g_test >= g:  # train keeps at least one group
        g_val = min(g_val, g - 1)
        g_test = max(0, g - 1 - g_val)
    chosen = {"validation": order[:g_val], "test": order[g_val:g_val + g_test], "train": order[g_val + g_test:]}
    out = {}
    for name in ("train", "validation", "test"):
        if chosen[name]:
            out[name] = [i for key in chosen[name] for i in members[key]]
    random.Random(seed).shuffle(out["train"])
    return out


def heldout_data(dataset: dict, seed: int = 42, **kwargs) -> PreparedData | None:
    """A recipe's `dataset.eval_source` prepared whole as held-out rows (its one split is `test`), or None when
    the recipe has none. `eval_source` is a file, a bundled sample or a Hub id, or a split name of the Hub
    dataset `dataset.source` names (`validation`): then that split of the same dataset. Format, template,
    config and grouping are the training data's; `kwargs` go to `prepare_dataset` (tokenizer, pieces, …)."""
    eval_source = str(dataset.get("eval_source") or "").strip()
    if not eval_source:
        return None
    source, split = eval_source, None
    train_source = str(dataset.get("source") or "")
    if _is_split_name(eval_source) and "/" in train_source and not _is_local(train_source):
        source, split = train_source, eval_source
    else:
        from studio.access import check_data_source

        source = check_data_source(source)  # on a shared app, only what the visitor may read
    data = prepare_dataset(source, dataset.get("format"), dataset.get("template"),
                           config=dataset.get("config") if split else None, split=split, splits="100/0/0",
                           seed=seed, group_by=dataset.get("group_by"), **kwargs)
    data.splits = {"test": data.splits["train"]}
    if data.groups:
        data.groups = {**data.groups, "splits": {"test": data.groups["count"]}}
    return data


def _is_split_name(text: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z][\w.-]*", text)) and text not in SAMPLES and not _is_local(text)


def _is_local(text: str) -> bool:
    return Path(text).expanduser().exists() or text.removeprefix("sample:") in SAMPLES


def _prepare(raw: RawData, format, template, splits, seed, tokenizer, max_length, max_rows,
             pieces: bool = False, group_by: str | None = None) -> PreparedData:
    import datasets
    import pyarrow as pa
    from datasets.fingerprint import Hasher

    fmt = get_format(format or raw.hint, raw.columns, raw.name)
    group = _group_column(raw, fmt, group_by)
    render = _renderer(fmt, template, raw.name, raw.path, pieces, group)
    if raw.rows is not None:  # a small file Arrow could not type: render in Python, then into Arrow
        keys = list(dict.fromkeys(k for row in raw.rows for k in row))
        columns = render({k: [row.get(k) for row in raw.rows] for k in keys}, list(range(len(raw.rows))))
        try:
            ds = datasets.Dataset.from_dict(columns)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise StudioError(f"{raw.name}: rows mix kinds of values in one field ({str(e).splitlines()[0][:160]})") from None
        n_in = len(raw.rows)
    else:
        n_in = len(raw.dataset)
        fingerprint = Hasher.hash([raw.dataset._fingerprint, fmt.name, template, pieces, group, DATA_VERSION])
        try:
            ds = raw.dataset.map(render, batched=True, batch_size=BATCH, with_indices=True,
                                 remove_columns=raw.dataset.column_names, new_fingerprint=fingerprint,
                                 desc="rendering")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise StudioError(f"{raw.name}: rows mix kinds of values in one field ({str(e).splitlines()[0][:160]})") from None
    dropped = {"empty target": n_in - len(ds)} if n_in > len(ds) else {}
    if max_rows and len(ds) > max_rows:
        ds = ds.select(range(max_rows))
    if tokenizer is not None and len(ds):
        ds = ds.map(_lengths(tokenizer), batched=True, batch_size=BATCH, desc="measuring")
        if max_length:
            before = len(ds)
            ds = ds.filter(lambda b: [n <= max_length for n in b["_length"]], batched=True, batch_size=10_000)
            if before > len(ds):
                dropped[f"longer than {max_length} tokens"] = before - len(ds)
    if not len(ds):
        reasons = ", ".join(f"{v} {k}" for k, v in dropped.items()) or "none left"
        raise StudioError(f"{raw.name}: no usable rows after cleaning ({reasons})")

    fractions = parse_splits(splits)
    train_f, val_f, test_f = fractions
    n = len(ds)
    keys, by = None, None
    if group is not None:
        keys, by = _column_list(ds, GROUP_COLUMN), group
        ds = ds.remove_columns(GROUP_COLUMN)
    elif fmt.name == "persona" and (group_by is None or group_by == "persona"):
        keys, by = [m[0]["content"] for m in _column_list(ds, "messages")], "persona"
    out, groups = {}, None
    if keys is not None:
        parts = split_groups(keys, fractions, seed)
        out = {name: ds.select(idx) for name, idx in parts.items()}
        groups = {"by": by, "count": len(set(keys)),
                  "splits": {name: len({keys[i] for i in idx}) for name, idx in parts.items()}}
    else:
        n_val = int(round(n * val_f)) if n >= 10 else 0
        n_test = int(round(n * test_f)) if n >= 10 else 0
        if n_val + n_test:
            parts = ds.train_test_split(test_size=n_val + n_test, seed=seed, shuffle=True)
            out["train"] = parts["train"]
            rest = parts["test"]
            if n_val and n_test:
                rest = rest.train_test_split(test_size=n_test, seed=seed, shuffle=True)
                out["validation"], out["test"] = rest["train"], rest["test"]
            elif n_val:
                out["validation"] = rest
            else:
                out["test"] = rest
        else:
            out["train"] = ds.shuffle(seed=seed)
    lengths = []
    if "_length" in ds.column_names:
        lengths = _column_list(out["train"], "_length")
        out = {k: v.remove_columns("_length") for k, v in out.items()}
    return PreparedData(
        source=raw.name,
        format=fmt,
        template=template or fmt.template,
        rows=n,
        dropped=dropped,
        splits=out,
        example=render_example(ds[0], tokenizer),
        lengths=lengths,
        groups=groups,
    )
