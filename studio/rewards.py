"""Reward functions for GRPO, picked from a menu: no visitor's code ever runs.

A recipe lists them under `rewards:`, each a mapping with a `type`, an optional `weight` and its own settings:

    rewards:
      - {type: number, weight: 1.0}              # the completion's final number equals the reference's
      - {type: format, rule: last_line, weight: 0.25}

Types (each scores one completion from 0 to 1, against the row's reference in TRL's `solution` column):
  exact     the answer, normalised (case, spaces, end punctuation), equals the reference
  number    the final number of the answer equals the reference's (GSM8K's "#### 42" or its last number)
  contains  the completion contains `text` (default: the reference), ignoring case
  regex     `pattern` is found in the completion (the `regex` module, with a time limit per match)
  format    `rule: last_line` (the answer alone on its last line) or `rule: tags` (one <tag>…</tag>, `tag`)
  length    1 inside [min, max] (`unit`: words or chars), falling linearly to 0 at twice the distance
  json      the completion is a JSON object (a ```json fence allowed), with `keys` if given
  code      the owner's own function `function` from the file `reward_code` (a local app only, never shared)

Each becomes a plain function TRL calls as `f(prompts, completions, solution, **columns) -> list[float]`,
named so TRL logs it as `rewards/<name>/mean`; the weights go to GRPOConfig's `reward_weights`, and TRL
combines them (weighted sum, then the group-relative advantage).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Callable

from studio.errors import StudioError

TYPES = ("exact", "number", "contains", "regex", "format", "length", "json", "code")
KEYS = {"exact": set(), "number": {"tolerance"}, "contains": {"text"}, "regex": {"pattern"},
        "format": {"rule", "tag"}, "length": {"min", "max", "unit"}, "json": {"keys"}, "code": {"function"}}
FORMAT_RULES = ("last_line", "tags")
CORRECTNESS = ("exact", "number", "contains", "regex", "code")  # the rewards that say right or wrong
MAX_REWARDS = 8
MAX_PATTERN_CHARS = 200
REGEX_TIMEOUT_S = 0.05  # per completion: a pattern that backtracks for longer scores 0
MAX_SCORED_CHARS = 20_000  # a completion is scored on its first characters (generation is capped far below this)
DEFAULT = [{"type": "number", "weight": 1.0}, {"type": "format", "rule": "last_line", "weight": 0.25}]
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,30}")
_WORDS = re.compile(r"\S+")


def text_of(completion) -> str:
    """A completion as TRL hands it: a string, or (conversational) a list of messages; the assistant's text."""
    if isinstance(completion, list):
        completion = "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion or "")[:MAX_SCORED_CHARS]


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).casefold().strip()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .,;:!?\"'`*")


def answer_line(text: str) -> str:
    """The answer a completion gives: its last non-empty line, without a leading 'Answer:' or 'The answer is'."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return re.sub(r"^(final answer|the final answer is|the answer is|answer)\s*[:=-]?\s*", "", last, flags=re.I)


def final_number(text: str) -> float | None:
    """The number a text ends on: after GSM8K's '####' when there is one, else its last number."""
    text = str(text)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def reference_text(solution) -> str:
    return "" if solution is None else str(solution)


# ---- the scorers: (completion text, reference, settings) → a score from 0 to 1 ------------------------------

def _exact(text, ref, spec):
    return float(bool(ref.strip()) and normalise(answer_line(text)) == normalise(answer_line(ref)))


def _number(text, ref, spec):
    want, got = final_number(ref), final_number(text)
    if want is None or got is None:
        return 0.0
    tol = float(spec.get("tolerance", 1e-6))
    return float(abs(got - want) <= tol * max(1.0, abs(want)))


def _contains(text, ref, spec):
    needle = spec.get("text") or ref
    return float(bool(str(needle).strip()) and normalise(needle) in normalise(text))


def _regex(text, ref, spec):
    import regex

    try:
        return float(regex.search(spec["_compiled"], text, timeout=REGEX_TIMEOUT_S) is not None)
    except TimeoutError:
        return 0.0


def _format(text, ref, spec):
    if spec.get("rule", "last_line") == "tags":
        tag = spec.get("tag", "answer")
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)
        return float(len(found) == 1 and bool(found[0].strip()))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    last = answer_line(lines[-1]).strip(" .*")
    return float(bool(_NUMBER.fullmatch(last)) or (len(lines) > 1 and 0 < len(last) <= 40 and len(last.split()) <= 4))


def _length(text, ref, spec):
    size = len(_WORDS.findall(text)) if spec.get("unit", "words") == "words" else len(text)
    low, high = float(spec.get("min", 0)), float(spec.get("max", 100))
    if low <= size <= high:
        return 1.0
    distance = low - size if size < low else size - high
    return max(0.0, 1.0 - distance / max(high - low, 1.0))


def _json(text, ref, spec):
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.S)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return 0.0
    return float(isinstance(value, dict) and all(k in value for k in spec.get("keys") or []))


SCORERS: dict[str, Callable] = {"exact": _exact, "number": _number, "contains": _contains, "regex": _regex,
                                "format": _format, "length": _length, "json": _json}


# ---- checking a recipe's list ------------------------------------------------------------------------------

def check_rewards(rewards, where: str = "recipe", reward_code=None) -> list[dict]:
    """The `rewards:` list, checked: known types and settings, sane numbers, a regex that compiles. One line
    naming the entry on any problem. A `code` entry needs `reward_code` (the owner's file)."""
    if rewards is None:
        rewards = DEFAULT
    if not isinstance(rewards, list) or not rewards:
        raise StudioError(f"{where}: rewards must be a list of reward functions, e.g. [{{type: number}}]")
    if len(rewards) > MAX_REWARDS:
        raise StudioError(f"{where}: rewards: at most {MAX_REWARDS} reward functions, got {len(rewards)}")
    out = []
    for i, entry in enumerate(rewards, 1):
        at = f"{where}: rewards entry {i}"
        if isinstance(entry, str):
            entry = {"type": entry}
        if not isinstance(entry, dict):
            raise StudioError(f"{at} must be a mapping like {{type: number, weight: 1}}")
        kind = entry.get("type")
        if kind not in TYPES:
            raise StudioError(f"{at}: type {str(kind)[:40]!r} is not one of {', '.join(TYPES)}")
        extra = set(entry) - {"type", "weight"} - KEYS[kind]
        if extra:
            raise StudioError(f"{at} ({kind}): unknown setting '{sorted(extra)[0]}'"
                              + (f"; it takes {', '.join(sorted(KEYS[kind]))}" if KEYS[kind] else ""))
        spec = dict(entry)
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or abs(weight) > 100:
            raise StudioError(f"{at} ({kind}): weight must be a number from -100 to 100, got {str(weight)[:40]}")
        spec["weight"] = float(weight)
        _check_settings(kind, spec, at, reward_code)
        out.append(spec)
    return out


def _check_settings(kind: str, spec: dict, at: str, reward_code) -> None:
    if kind == "regex":
        pattern = spec.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise StudioError(f"{at} (regex): pattern must be text of 1 to {MAX_PATTERN_CHARS} characters")
        import regex

        try:
            regex.compile(pattern)
        except (regex.error, RecursionError) as e:
            raise StudioError(f"{at} (regex): pattern does not compile ({str(e)[:80]})") from None
    elif kind == "format":
        if spec.get("rule", "last_line") not in FORMAT_RULES:
            raise StudioError(f"{at} (format): rule must be one of {', '.join(FORMAT_RULES)}")
        if not _TAG.fullmatch(str(spec.get("tag", "answer"))):
            raise StudioError(f"{at} (format): tag must be a plain name like answer")
    elif kind == "length":
        for key in ("min", "max"):
            value = spec.get(key, 0 if key == "min" else 100)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100_000:
                raise StudioError(f"{at} (length): {key} must be a number from 0 to 100000")
        if spec.get("min", 0) > spec.get("max", 100):
            raise StudioError(f"{at} (length): min is above max")
        if spec.get("unit", "words") not in ("words", "chars"):
            raise StudioError(f"{at} (length): unit must be words or chars")
    elif kind == "number":
        tol = spec.get("tolerance", 1e-6)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol <= 1:
            raise StudioError(f"{at} (number): tolerance must be a number from 0 to 1")
    elif kind == "contains":
        if "text" in spec and (not isinstance(spec["text"], str) or len(spec["text"]) > 1000):
            raise StudioError(f"{at} (contains): text must be text of at most 1000 characters")
    elif kind == "json":
        keys = spec.get("keys") or []
        if not isinstance(keys, list) or len(keys) > 50 or not all(isinstance(k, str) and len(k) <= 100 for k in keys):
            raise StudioError(f"{at} (json): keys must be a list of up to 50 names")
    elif kind == "code":
        if not reward_code:
            raise StudioError(f"{at} (code): name the file of reward functions in reward_code")
        if not isinstance(spec.get("function"), str) or not spec["function"].isidentifier():
            raise StudioError(f"{at} (code): function must be the name of a function in {reward_code}")


def check_reward_code(reward_code, where: str = "form") -> None:
    """A file of reward functions runs Python on the server: the owner's recipe files and CLI only. The page and
    its API never name one on a shared app (like trust_remote_code)."""
    from studio.access import shared_mode

    if reward_code and shared_mode():
        raise StudioError(f"{where}: reward_code runs a Python file on the server; a shared app takes rewards "
                          "from the menu only (exact, number, contains, regex, format, length, json)")


# ---- building TRL's reward functions ------------------------------------------------------------------------

def spec_name(spec: dict) -> str:
    kind = spec["type"]
    if kind == "format":
        return f"format_{spec.get('rule', 'last_line')}"
    if kind == "code":
        return spec["function"]
    return kind


def _names(specs: list[dict]) -> list[str]:
    names, seen = [], {}
    for spec in specs:
        name = spec_name(spec)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def named_specs(rewards, reward_code=None) -> list[tuple[dict, str]]:
    """The checked entries with the names TRL logs them under (rewards/<name>/mean)."""
    specs = check_rewards(rewards, reward_code=reward_code or ("-" if any(
        isinstance(r, dict) and r.get("type") == "code" for r in (rewards or [])) else None))
    return list(zip(specs, _names(specs)))


def _load_code(path: str, functions: list[str]) -> dict[str, Callable]:
    import importlib.util

    file = Path(path).expanduser()
    if not file.is_file() or file.suffix != ".py":
        raise StudioError(f"reward_code: {path}: no such Python file")
    module_spec = importlib.util.spec_from_file_location(f"studio_rewards_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the owner's file: say what broke, in one line
        raise StudioError(f"reward_code: {file.name} failed to import ({type(e).__name__}: {str(e)[:120]})") from None
    out = {}
    for name in functions:
        fn = getattr(module, name, None)
        if not callable(fn):
            raise StudioError(f"reward_code: {file.name} has no function '{name}'")
        out[name] = fn
    return out


def build(rewards, reward_code=None) -> tuple[list[Callable], list[float], list[str]]:
    """(TRL reward functions, their weights, their names) from a recipe's checked `rewards` list."""
    specs = check_rewards(rewards, reward_code=reward_code)
    code = _load_code(reward_code, [s["function"] for s in specs if s["type"] == "code"]) if reward_code else {}
    funcs, names = [], _names(specs)
    for spec, name in zip(specs, names):
        if spec["type"] == "code":
            funcs.append(code[spec["function"]])
            continue
        if spec["type"] == "regex":
            import regex

            spec = {**spec, "_compiled": regex.compile(spec["pattern"])}
        funcs.append(_scorer(SCORERS[spec["type"]], spec, name))
    return funcs, [s["weight"] for s in specs], names


def _scorer(score: Callable, spec: dict, name: str) -> Callable:
    def reward(prompts=None, completions=(), solution=None, **_columns) -> list[float]:
        refs = solution if solution is not None else [None] * len(completions)
        return [score(text_of(c), reference_text(r), spec) for c, r in zip(completions, refs)]

    reward.__name__ = reward.__qualname__ = name
    return reward


def score_table(rewards, completions: list[str], solutions: list, reward_code=None) -> dict[str, list[float]]:
    """Each reward function's score of each completion, and `reward`: their weighted sum (how TRL combines them);
    Evaluate and the run's held-out table score base and tuned replies with this."""
    funcs, weights, names = build(rewards, reward_code)
    table = {name: [float(v) if v is not None else float("nan") for v in
                    fn(prompts=[""] * len(completions), completions=completions, solution=list(solutions))]
             for fn, name in zip(funcs, names)}
    table["reward"] = [sum(w * table[n][i] for w, n in zip(weights, names) if not math.isnan(table[n][i]))
                       for i in range(len(completions))]
    return table


def describe(rewards, reward_code=None) -> str:
    """One line for logs and pages: 'number ×1, format_last_line ×0.25'."""
    return ", ".join(f"{name} ×{spec['weight']:g}" for spec, name in named_specs(rewards, reward_code))
