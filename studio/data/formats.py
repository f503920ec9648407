"""Format detection and rendering onto TRL's standard dataset forms.

Every known layout maps to one of TRL's forms: ``text``, ``prompt``/``completion``,
``messages`` or ``prompt``/``chosen``/``rejected``. Detection looks at the
columns; the user can override the format and the template. This module is the
one place that knows the layouts, and serves the CLI, the UI and the trainers.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable

from studio.data.persona import format_persona, parse_lapdog_question
from studio.errors import StudioError

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "model": "assistant", "system": "system", "tool": "tool"}


class RowError(ValueError):
    """A problem with one row; the caller adds the source name and row number."""


@dataclass(frozen=True)
class Format:
    name: str
    label: str
    kind: str  # text | prompt_completion | messages | preference
    template: str | None  # the default template (text, or the prompt of prompt/completion)
    render: Callable[[dict, str | None], dict | None]  # None = row has an empty target, drop it
    # the same rendering over a whole batch of columns, when no template is given (the common big-file case)
    render_batch: Callable[[dict], dict] | None = None


MAX_TEMPLATE_CHARS = 4000  # a template is a line or two of text with {field} slots
MAX_FORMAT_NUMBER = 200  # the largest width or precision a template's format spec may ask for
_formatter = string.Formatter()


def _show(template: str) -> str:
    return repr(template if len(template) <= 80 else template[:80] + "…")


def check_template(template: str) -> list[tuple[str, str, str | None, str | None]]:
    """A template is data, not code: plain {field} slots, optionally with !r/!s/!a and a format spec whose
    widths and precisions are at most MAX_FORMAT_NUMBER; no attribute or index access, no nested fields."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise StudioError(f"template: {len(template)} characters; at most {MAX_TEMPLATE_CHARS}")
    try:
        parts = list(_formatter.parse(template))
    except ValueError as e:
        raise StudioError(f"template {_show(template)} is not valid: {e}") from None
    for _, field, spec, _ in parts:
        if field is None:
            continue
        if not field or not field.replace("_", "a").replace("-", "a").replace(" ", "a").isalnum():
            raise StudioError(f"template {_show(template)}: {{{field}}} is not a plain field name "
                              "(attribute, index and positional access are not allowed)")
        if spec and ("{" in spec or any(int(n) > MAX_FORMAT_NUMBER for n in re.findall(r"\d+", spec))):
            raise StudioError(f"template {_show(template)}: format spec '{spec[:40]}' of {{{field}}} is not allowed "
                              f"(widths and precisions up to {MAX_FORMAT_NUMBER}, no nested fields)")
    return parts


def _fill(template: str, row: dict) -> str:
    out = []
    for literal, field, spec, conversion in check_template(template):
        out.append(literal)
        if field is None:
            continue
        value = row.get(field)
        value = "" if value is None else value
        try:
            value = _formatter.convert_field(value, conversion)
            out.append(format(value, spec or ""))
        except (ValueError, TypeError) as e:
            raise RowError(f"field {field!r} does not fit the template's {{{field}:{spec}}} ({e})") from None
    return "".join(out)


def cut_prompt(prompt: str, completion: str) -> tuple[str, str]:
    """Spaces that end a prompt belong to its completion: a byte-level BPE writes " Einstein" as one token,
    so a prompt ending in " " would make the model start the word without its space (a token it rarely
    saw). Newlines stay: every pre-tokenizer keeps a line end as its own token."""
    kept = prompt.rstrip(" \t")
    return kept, prompt[len(kept):] + completion


def _target_template(template: str) -> tuple[str, str] | None:
    """'Quote: {quote}\nAuthor: {author}' → ('Quote: {quote}\nAuthor: ', '{author}'): the template of the text
    before the last field, and that field; None when a literal follows the last field or nothing precedes it."""
    parsed = check_template(template)
    if len(parsed) < 2 or parsed[-1][1] is None:
        return None

    def field(name, spec, conv):
        return "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"

    head = "".join(lit.replace("{", "{{").replace("}", "}}") + (field(*rest) if rest[0] is not None else "")
                   for lit, *rest in parsed[:-1])
    head += parsed[-1][0].replace("{", "{{").replace("}", "}}")
    return head, field(*parsed[-1][1:])


def text_pieces(fmt: "Format", row: dict, template: str | None) -> dict | None:
    """A text row as {"prompt", "completion"}: the text cut where its template's last field (the answer) begins,
    with `cut_prompt`'s rule. prompt + completion is exactly the text the model is trained on."""
    rendered = fmt.render(row, template)
    if rendered is None:
        return None
    text = rendered["text"]
    parts = _target_template(template or fmt.template or "")
    prompt = _fill(parts[0], row) if parts else ""
    if not parts or not text.startswith(prompt):
        raise RowError("no reference column to score against (plain text): use prompt/completion, instruction/"
                       "response, messages, or a template whose last field is the answer")
    prompt, completion = cut_prompt(prompt, text[len(prompt):])
    return {"prompt": prompt, "completion": completion}


def _s(row: dict, key: str) -> str:
    v = row.get(key)
    return "" if v is None else str(v).strip()


def _text(row, template):
    text = _fill(template, row) if template else _s(row, "text")
    return {"text": text} if _s(row, "text") and text.strip() else None


def _quotes(row, template):
    if not _s(row, "quote"):
        return None
    return {"text": _fill(template or "Quote: {quote}\nAuthor: {author}", row)}


def _instruction_prompt(instruction: str, context: str) -> str:
    prompt = f"### Instruction:\n{instruction}\n\n"
    if context:
        prompt += f"### Context:\n{context}\n\n"
    return prompt + "### Response:\n"


def _dolly(row, template):
    if not _s(row, "response"):
        return None
    prompt = _fill(template, row) if template else _instruction_prompt(_s(row, "instruction"), _s(row, "context"))
    return dict(zip(("prompt", "completion"), cut_prompt(prompt, _s(row, "response"))))


def _instruction_columns(context_key: str, answer_key: str):
    """`_dolly` / `_alpaca` without a template over a whole batch: the same rows, in one loop over the columns
    (a row dict and five calls per row made a million rows render in ~13 s instead of ~2)."""
    def render(batch: dict) -> dict:
        none = [None] * len(next(iter(batch.values()), []))
        prompts, completions = [], []
        for ins, ctx, ans in zip(batch.get("instruction", none), batch.get(context_key, none),
                                 batch.get(answer_key, none)):
            ans = "" if ans is None else str(ans).strip()
            if not ans:
                continue
            ins = "" if ins is None else str(ins).strip()
            ctx = "" if ctx is None else str(ctx).strip()
            # ends in a line end: cut_prompt leaves it as it is
            prompts.append(f"### Instruction:\n{ins}\n\n" + (f"### Context:\n{ctx}\n\n" if ctx else "")
                           + "### Response:\n")
            completions.append(ans)
        return {"prompt": prompts, "completion": completions}

    return render


def _alpaca(row, template):
    if not _s(row, "output"):
        return None
    prompt = _fill(template, row) if template else _instruction_prompt(_s(row, "instruction"), _s(row, "input"))
    return dict(zip(("prompt", "completion"), cut_prompt(prompt, _s(row, "output"))))


def _prompt_completion(row, template):
    if not _s(row, "completion"):
        return None
    prompt = row["prompt"]
    if isinstance(prompt, list) or isinstance(row["completion"], list):  # conversational prompt/completion
        return {"prompt": check_messages(prompt), "completion": check_messages(row["completion"])}
    prompt = _fill(template, row) if template else str(prompt)
    completion = str(row["completion"])
    if prompt and not prompt[-1].isspace() and not completion[0].isspace():
        completion = " " + completion  # TRL trains on prompt + completion: "planet?Mars." would glue two words
    return dict(zip(("prompt", "completion"), cut_prompt(prompt, completion)))


def _reward(row, template):
    """Prompts with references for reward training (GRPO's `solution` column): prompt/solution or GSM8K's
    question/answer. As prompt/completion the same rows also train SFT and feed Evaluate's metrics."""
    keys = ("prompt", "solution") if "solution" in row else ("question", "answer")
    prompt, solution = row.get(keys[0]), row.get(keys[1])
    if prompt is None or solution is None or not str(solution).strip() or not str(prompt).strip():
        return None
    prompt = _fill(template, row) if template else str(prompt)
    return {"prompt": prompt, "completion": " " + str(solution).strip()}


def _e2e(row, template):
    if not _s(row, "ref"):
        return None
    prompt = _fill(template or "Data: {mr}\nText: ", row)
    return dict(zip(("prompt", "completion"), cut_prompt(prompt, _s(row, "ref"))))


def check_messages(messages, sharegpt: bool = False) -> list[dict]:
    if not isinstance(messages, list):
        raise RowError(f"expected a list of messages, got {type(messages).__name__}")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise RowError(f"expected a message object, got {type(m).__name__}")
        if sharegpt:
            role, content = str(m.get("from", "")).lower(), m.get("value")
            if role not in SHAREGPT_ROLES:
                raise RowError(f'unknown role "{m.get("from")}" (expected human, gpt or system)')
            role = SHAREGPT_ROLES[role]
        else:
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise RowError(f'unknown role "{role}" (expected system, user or assistant)')
        if isinstance(content, list):  # content blocks: keep the text ones
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        out.append({"role": role, "content": "" if content is None else str(content)})
    return out


def _chat(row, template):
    sharegpt = "messages" not in row
    messages = check_messages(row.get("messages") if not sharegpt else row.get("conversations"), sharegpt)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return None
    return {"messages": messages}


def persona_parts(row: dict) -> tuple[list[str], list[dict], str]:
    """(persona, history, reply) from either persona layout."""
    if "question" in row:
        try:
            persona, history = parse_lapdog_question(str(row["question"]))
        except ValueError as e:
            raise RowError(f"question {e}") from None
        answers = row.get("answers") or []
        reply = str(answers[0]).strip() if isinstance(answers, list) and answers else _s(row, "answers")
        return persona, history, reply
    return list(row["persona"]), check_messages(row["history"]), _s(row, "reply")


def _persona(row, template):
    persona, history, reply = persona_parts(row)
    if not reply:
        return None
    return {"messages": [{"role": "system", "content": format_persona(persona)}, *history,
                         {"role": "assistant", "content": reply}]}


def _implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split Anthropic-HH style dialogues at the last shared 'Assistant:' turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind("Assistant:", 0, n)
    if cut < 0:
        raise RowError("chosen and rejected share no 'Assistant:' turn to split the prompt at")
    cut += len("Assistant:")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _preference(row, template):
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, list) or isinstance(rejected, list):
        chosen, rejected = check_messages(chosen), check_messages(rejected)
        if "prompt" in row and row["prompt"] is not None:
            prompt = row["prompt"]
            prompt = check_messages(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        else:  # implicit prompt: the shared leading messages
            k = 0
            while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
                k += 1
            prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if not chosen or not rejected or not any(m["content"].strip() for m in chosen + rejected):
            return None
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen, rejected = "" if chosen is None else str(chosen), "" if rejected is None else str(rejected)
    if not chosen.strip() or not rejected.strip():
        return None
    if "prompt" in row and row["prompt"] is not None:
        prompt = _fill(template, row) if template else str(row["prompt"])
    else:
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
    kept, _ = cut_prompt(prompt, "")
    space = prompt[len(kept):]
    return {"prompt": kept, "chosen": space + chosen, "rejected": space + rejected}


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("preference", "Preference pairs (prompt / chosen / rejected)", "preference", None, _preference),
    Format("chat", "Chat (OpenAI messages or ShareGPT conversations)", "messages", None, _chat),
    Format("persona", "Persona dialogue (ConvAI2)", "messages", None, _persona),
    Format("dolly", "Instructions (Dolly: instruction / context / response)", "prompt_completion", None, _dolly,
           _instruction_columns("context", "response")),
    Format("alpaca", "Instructions (Alpaca: instruction / input / output)", "prompt_completion", None, _alpaca,
           _instruction_columns("input", "output")),
    Format("quotes", "Quotes (quote / author)", "text", "Quote: {quote}\nAuthor: {author}", _quotes),
    Format("e2e", "Data-to-text (E2E: mr / ref)", "prompt_completion", "Data: {mr}\nText: ", _e2e),
    Format("reward", "Prompts with references (prompt / solution, question / answer)", "prompt_completion", None,
           _reward),
    Format("prompt_completion", "Prompt / completion", "prompt_completion", None, _prompt_completion),
    Format("text", "Plain text", "text", "{text}", _text),
]}

# Detection: the first rule whose columns are all present wins.
_RULES = [
    ("preference", {"chosen", "rejected"}),
    ("chat", {"messages"}),
    ("chat", {"conversations"}),
    ("persona", {"question", "answers"}),
    ("persona", {"persona", "history", "reply"}),
    ("dolly", {"instruction", "response"}),
    ("alpaca", {"instruction", "output"}),
    ("quotes", {"quote"}),
    ("e2e", {"mr", "ref"}),
    ("reward", {"prompt", "solution"}),
    ("reward", {"question", "answer"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("text", {"text"}),
]
REQUIRED = {name: [cols for n, cols in _RULES if n == name] for name in FORMATS}


def detect_format(columns: list[str], name: str = "data") -> Format:
    cols = set(columns)
    for fmt, needed in _RULES:
        if needed <= cols:
            return FORMATS[fmt]
    raise StudioError(
        f"{name}: no column looks like a prompt or text, found [{', '.join(columns)}]; "
        "expected e.g. text, prompt/completion, instruction/response, messages or chosen/rejected"
    )


def get_format(fmt: str | None, columns: list[str], name: str = "data") -> Format:
    if not fmt or fmt == "auto":
        return detect_format(columns, name)
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise StudioError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    options = REQUIRED[fmt]
    if not any(set(c) <= set(columns) for c in options):
        want = " or ".join("/".join(sorted(c)) for c in options)
        raise StudioError(f"{name}: format '{fmt}' needs the columns {want}, found [{', '.join(columns)}]")
    return FORMATS[fmt]
