"""Data: read a source, detect its format, render to TRL's forms, clean and split."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from studio.data.formats import FORMATS, Format, RowError, detect_format, get_format
from studio.data.sources import SAMPLES, RawData, read_source
from studio.errors import StudioError

__all__ = ["FORMATS", "SAMPLES", "Format", "PreparedData", "detect_format", "prepare_dataset", "read_source",
           "parse_splits", "render_example"]


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
            "example": self.example,
        }
        if self.lengths:
            out["token_lengths"] = self.length_stats()
        return out


def token_length(row: dict, tokenizer) -> int:
    """Tokens the trainer will see for one rendered row (longest side for preference pairs)."""
    if "chosen" in row:
        return max(token_length({"prompt": row["prompt"], "completion": row[k]}, tokenizer) for k in ("chosen", "rejected"))
    if "messages" in row or (isinstance(row.get("prompt"), list)):
        messages = row.get("messages") or row["prompt"] + row["completion"]
        if getattr(tokenizer, "chat_template", None):
            return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    return len(tokenizer(render_example(row, tokenizer), add_special_tokens=True)["input_ids"])


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
) -> PreparedData:
    import datasets

    raw: RawData = read_source(source, config, split)
    columns = list(dict.fromkeys(k for row in raw.rows[:50] for k in row))
    fmt = get_format(format or raw.hint, columns, raw.name)
    template = template or None
    rendered, dropped = [], {}
    for i, row in enumerate(raw.rows):
        try:
            out = fmt.render(row, template)
        except RowError as e:
            raise StudioError(f"{raw.name} {raw.label(i)}: {e}") from None
        except (KeyError, TypeError) as e:
            raise StudioError(f"{raw.name} {raw.label(i)}: missing or malformed field {e}") from None
        if out is None:
            dropped["empty target"] = dropped.get("empty target", 0) + 1
        else:
            rendered.append(out)
    if max_rows:
        rendered = rendered[:max_rows]
    lengths = []
    if tokenizer is not None:
        lengths = [token_length(r, tokenizer) for r in rendered]
        if max_length:
            keep = [n <= max_length for n in lengths]
            too_long = keep.count(False)
            if too_long:
                dropped[f"longer than {max_length} tokens"] = too_long
            rendered = [r for r, k in zip(rendered, keep) if k]
            lengths = [n for n, k in zip(lengths, keep) if k]
    if not rendered:
        reasons = ", ".join(f"{v} {k}" for k, v in dropped.items()) or "none left"
        raise StudioError(f"{raw.name}: no usable rows after cleaning ({reasons})")

    train_f, val_f, test_f = parse_splits(splits)
    ds = datasets.Dataset.from_list(rendered)
    if lengths:
        ds = ds.add_column("_length", lengths)
    n = len(ds)
    n_val = int(round(n * val_f)) if n >= 10 else 0
    n_test = int(round(n * test_f)) if n >= 10 else 0
    out = {}
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
    train_lengths = out["train"]["_length"] if lengths else []
    if lengths:
        out = {k: v.remove_columns("_length") for k, v in out.items()}
    return PreparedData(
        source=raw.name,
        format=fmt,
        template=template or fmt.template,
        rows=len(rendered),
        dropped=dropped,
        splits=out,
        example=render_example(rendered[0], tokenizer),
        lengths=list(train_lengths),
    )
