"""GRPO on the page: the reward menu's rows ↔ the recipe's `rewards:` list, the latest sampled completions and the
held-out reward report as text a person reads (never a visitor's text as HTML or Markdown)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from studio.errors import StudioError
from studio.ui.common import text_cell

NONE = "(none)"
REWARD_ROWS = 4  # rows on the form; a recipe with more keeps the rest as its file says (studio.rewards: at most 8)
NUMBER_SETTINGS = {"tolerance", "min", "max"}
LIST_SETTINGS = {"keys"}
# what each type takes, as the settings field spells it (studio.rewards.KEYS)
SETTINGS_HELP = {
    "exact": "nothing (the answer's last line, normalised, equals the reference)",
    "number": "tolerance=0.01 (optional: the final number equals the reference's)",
    "contains": "text=Paris (optional; empty: the reference)",
    "regex": "pattern=^\\d+$",
    "format": "rule=last_line, or rule=tags; tag=answer",
    "length": "min=1; max=40; unit=words (or chars)",
    "json": "keys=name, age (optional)",
    "code": "function=my_reward (from the reward code file)",
}
_SPLIT = re.compile(r";\s*(?=[A-Za-z_]+\s*=)")  # a ';' before the next name=: a pattern may hold a ';' itself


def reward_types(local: bool) -> list[str]:
    """The menu: a shared app never offers `code` (it runs a Python file on the server)."""
    from studio.rewards import TYPES

    return [NONE, *(t for t in TYPES if local or t != "code")]


def legend_markdown(local: bool) -> str:
    types = [t for t in reward_types(local) if t != NONE]
    return ("Each completion is scored by every reward picked below (0 to 1 each, against the row's reference); "
            "TRL sums them by weight and compares each completion with the others sampled for the same prompt. "
            "Settings are `name=value` pairs separated by `;`:\n\n"
            + "\n".join(f"- **{t}**: {text_cell(SETTINGS_HELP[t])}" for t in types))


def settings_text(spec: dict) -> str:
    """A reward's settings as the form's field shows them: `min=1; max=4; unit=words`."""
    parts = []
    for key, value in spec.items():
        if key in ("type", "weight"):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{key}={value}")
    return "; ".join(parts)


def parse_settings(text, at: str) -> dict:
    """`min=1; max=4; unit=words` → {"min": 1, "max": 4, "unit": "words"}; one line naming the row if it is not
    name=value pairs or a number setting is not a number (the reward menu checks the rest)."""
    text = str(text or "").strip()
    out: dict = {}
    if not text:
        return out
    for piece in _SPLIT.split(text):
        key, sep, value = piece.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise StudioError(f"{at}: settings are name=value pairs separated by ';' (e.g. min=1; max=40), "
                              f"got {piece.strip()[:40]!r}")
        value = value.strip()
        if key != "pattern":
            value = value.rstrip(";").strip()
        if key in NUMBER_SETTINGS:
            try:
                number = float(value)
            except ValueError:
                raise StudioError(f"{at}: {key} must be a number, got {value[:40]!r}") from None
            value = int(number) if number.is_integer() else number
        elif key in LIST_SETTINGS:
            value = [v.strip() for v in value.split(",") if v.strip()]
        out[key] = value
    return out


def row_value(rewards, key: str):
    """The form field `rewards.N.type|weight|settings` of a recipe's `rewards:` list."""
    _, n, part = key.split(".")
    entries = rewards if isinstance(rewards, list) else []
    i = int(n) - 1
    if i >= len(entries):  # a free row: a type to pick, weight 1 once picked
        return {"type": NONE, "weight": 1.0}.get(part, "")
    entry = entries[i] if isinstance(entries[i], dict) else {"type": str(entries[i])}
    if part == "type":
        return entry.get("type", NONE)
    if part == "weight":
        return entry.get("weight", 1.0)
    return settings_text(entry)


def rows_to_rewards(rows: dict, kept: list | None = None) -> list[dict]:
    """The form's rows ({n: {type, weight, settings}}) → the recipe's `rewards:` list; rows left at (none) are
    skipped, entries past the form's rows (`kept`, from the recipe) follow as they were."""
    out = []
    for n in sorted(rows):
        row = rows[n]
        kind = row.get("type")
        if kind in (None, "", NONE):
            continue
        at = f"form: reward {n} ({kind})"
        entry = {"type": kind, **parse_settings(row.get("settings"), at)}
        if row.get("weight") is not None:
            entry["weight"] = row["weight"]
        out.append(entry)
    return out + list(kept or [])


# ---- while it trains: the latest sampled completions ---------------------------------------------------------

def completions_markdown(completions: dict | None) -> str:
    """The newest sampled completions (a `completions` event), each reward and the advantage; the prompt once per
    group of completions sampled for it."""
    rows = (completions or {}).get("rows") or []
    if not rows:
        return ""
    names: list[str] = []
    for row in rows:
        names += [n for n in (row.get("rewards") or {}) if n not in names]
    head = ["prompt", "completion", *names, "advantage"]
    lines = ["| " + " | ".join(text_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    previous = None
    for row in rows:
        prompt = str(row.get("prompt") or "")
        shown = text_cell(prompt) if prompt != previous else "<i>same prompt</i>"
        previous = prompt
        text = str(row.get("completion") or "")
        completion = text_cell(text) if text.strip() else "<i>(empty)</i>"
        scores = [f"{row['rewards'][n]:.2f}" if isinstance((row.get("rewards") or {}).get(n), (int, float))
                  else "" for n in names]
        adv = row.get("advantage")
        advantage = f"{adv:+.2f}" if isinstance(adv, (int, float)) else ""
        lines.append("| " + " | ".join([shown, completion, *scores, advantage]) + " |")
    step = (completions or {}).get("step")
    return (f"**Latest sampled completions** (step {step}; each reward from 0 to 1; advantage: how much better "
            "than the others sampled for the same prompt, 0 when they all scored alike)\n\n" + "\n".join(lines))


# ---- after training and in Evaluate: the held-out reward report ----------------------------------------------

def shown_report(report: dict) -> dict:
    """A copy of a reward report whose labels, reward names and sentences are plain text for Markdown (a run
    or model name with '_' or '*' would turn into emphasis)."""
    out = dict(report)
    for key in ("reward", "accuracy"):
        if key in report:
            block = dict(report[key])
            for part in ("means", "intervals"):
                block[part] = {text_cell(k): v for k, v in report[key][part].items()}
            out[key] = block
    if report.get("accuracy_from"):
        out["accuracy_from"] = text_cell(report["accuracy_from"])
    out["words"] = [text_cell(w) for w in report.get("words") or []]
    return out


def report_text(report: dict, examples: bool = True) -> str:
    """The report's table and sentences (studio.evaluate.rewards.report_markdown), where the prompts came from,
    and its first examples side by side."""
    from studio.evaluate.rewards import report_markdown

    text = report_markdown(shown_report(report))
    notes = [report[k] for k in ("source", "base_is") if report.get(k)]
    if report.get("decoding"):
        notes.append(f"{report['decoding']}, at most {report.get('max_new_tokens')} new tokens")
    if notes:
        text += "\n\n<i>" + text_cell("; ".join(str(n) for n in notes)) + "</i>"
    shown = (report.get("examples") or [])[:4] if examples else []
    labels = list(report["reward"]["means"])
    if shown:
        rows = ["| prompt | reference | " + " | ".join(text_cell(lab) for lab in labels) + " |",
                "|" + "---|" * (2 + len(labels))]
        for e in shown:
            cells = [text_cell(e["prompt"]), text_cell(e["reference"])]
            for lab in labels:
                reply = (e.get(lab) or {}).get("completion", "")
                cells.append((text_cell(reply) if str(reply).strip() else "<i>(empty)</i>")
                             + f"<br><i>reward {(e.get(lab) or {}).get('reward', 0):.2f}</i>")
            rows.append("| " + " | ".join(cells) + " |")
        text += "\n\n**First held-out prompts**\n\n" + "\n".join(rows)
    return text


_CACHE: dict = {}


def heldout_markdown(run_dir, summary: dict | None) -> str:
    """A finished GRPO run's held-out reward table (its heldout_rewards.json), read once per change of the file."""
    if not summary or not summary.get("heldout") or run_dir is None:
        return ""
    path = Path(run_dir) / "heldout_rewards.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return ""
    key = str(path)
    if _CACHE.get(key, (None,))[0] != stamp:
        try:
            report = json.loads(path.read_text("utf-8"))
            text = report_text(report, examples=False)  # the samples table above shows the examples
        except (OSError, ValueError, KeyError, TypeError):
            text = ""
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = (stamp, text)
    return _CACHE[key][1]
