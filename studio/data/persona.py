"""Persona dialogue (ConvAI2): the original ParlAI text format and LAPDOG's JSONL form.

Both become rows of ``persona`` (list of sentences), ``history`` (chat messages,
the partner as "user", the persona bot as "assistant") and ``reply`` (gold).
"""

from __future__ import annotations

import re

from studio.errors import StudioError

_LINE = re.compile(r"^(\d+) (.*)$")
_PERSONA = re.compile(r"^(your|partner's) persona:\s*(.*)$")
_TURN_MARK = re.compile(r"(?:^|\s)(Q|R):\s")


def parse_convai2_text(text: str, name: str = "data.txt") -> list[dict]:
    rows: list[dict] = []
    persona: list[str] = []
    history: list[dict] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise StudioError(f"{name} line {n}: expected a numbered ConvAI2 line ('N text'), got {line[:40]!r}")
        num, body = int(m.group(1)), m.group(2)
        if num == 1:  # a new dialogue
            persona, history = [], []
        p = _PERSONA.match(body)
        if p:
            if p.group(1) == "your":
                persona.append(p.group(2).strip())
            continue
        parts = body.split("\t")
        if len(parts) < 2:
            raise StudioError(f"{name} line {n}: expected '<partner utterance><TAB><reply>', found no tab")
        partner, reply = parts[0].strip(), parts[1].strip()
        candidates = [c for c in parts[3].split("|") if c] if len(parts) > 3 else []
        history.append({"role": "user", "content": partner})
        rows.append({"persona": list(persona), "history": list(history), "reply": reply, "candidates": candidates})
        history.append({"role": "assistant", "content": reply})
    return rows


def parse_lapdog_question(question: str) -> tuple[list[str], list[dict]]:
    """``"persona: … context: Q: … R: … Q: …"`` → (persona sentences, history messages)."""
    q = question.strip()
    if not q.lower().startswith("persona:"):
        raise ValueError("does not start with 'persona:'")
    body = q[len("persona:"):]
    persona_part, _, context = body.partition("context:")
    persona = [s.strip() + "." for s in re.split(r"\.\s*", persona_part.strip()) if s.strip()]
    history = []
    marks = list(_TURN_MARK.finditer(context))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(context)
        content = context[m.end():end].strip()
        if content:
            history.append({"role": "user" if m.group(1) == "Q" else "assistant", "content": content})
    return persona, history


def format_persona(persona: list[str]) -> str:
    return "Your persona: " + " ".join(persona)
