"""The persona prompt layout: what a persona model is trained on, chatted with and evaluated on.

One home below chat (`studio.chat`), LAPDOG training (`studio.train.lapdog`) and evaluation
(`studio.evaluate.persona`), so all three build exactly the same prompt: the retriever's query
(`query_text`), the system message (`system_text`), the prompt budget (`context_budget`), the assembly
cut to that budget (`persona_messages`), a run's persona dialogues (`persona_data`, `dialogue_rows`)
and its retrieval settings (`settings`). Not in `studio/data/persona.py`: that module parses dialogue
files and sits under `studio.data`, which `studio.inference` (used here for the chat template) already
imports through `studio.access`, so putting the layout there would close an import circle.
"""

from __future__ import annotations

from studio.errors import StudioError

DEFAULTS = {
    "corpus": None,  # None: the bundled assets/stories.jsonl
    "embedder": "all-MiniLM-L6-v2",
    "k": 6,
    "tau_score": 0.8,
    "tau_gold": 0.85,
    "candidate_random": 0.0,  # fraction of the k candidates replaced by random stories while training
    "query": "persona",  # or persona+turn
    "retriever_learning_rate": 5.0e-4,
    "retriever_batch": 2,  # training examples per retriever step
    "reply_max_new_tokens": 32,
    "stage1_steps": None,  # None: max_steps
    "stage2_steps": None,
    "story_side": "frozen",
    "refresh_steps": 10,
    "signal": "metric",  # the retriever's target: metric (greedy reply per story, F1+ROUGE-L+BLEU: the paper's) or likelihood  # stage 2: the generator's stories come again from the query encoder every N steps (0: never)
}


def settings(recipe) -> dict:
    cfg = {**DEFAULTS, **(recipe.header.get("retrieval") or {})}
    steps = int(recipe.train.get("max_steps", -1))
    for key in ("stage1_steps", "stage2_steps"):
        cfg[key] = int(cfg[key] if cfg[key] is not None else steps)
        if cfg[key] < 1:
            raise StudioError(f"{recipe.path or recipe.name}: retrieval.{key} (or max_steps) must be ≥ 1 for lapdog")
    return cfg



def query_text(persona: str, history: list[dict], with_turn: bool = False) -> str:
    """The retriever's query: the persona (LAPDOG's default), optionally + the last user turn."""
    last = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
    return f"{persona} {last}".strip() if with_turn and last else persona


def system_text(persona: str, stories: list[dict]) -> str:
    text = f"Your persona: {persona.strip()}"
    if stories:
        text += "\nStories you remember:\n" + "\n".join(
            f"- {s['title']}: {s['text']}" if s.get("title") else f"- {s['text']}" for s in stories)
    return text


def context_budget(tokenizer, model, max_new_tokens: int) -> int:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(limit, tokenizer.model_max_length or limit)) - int(max_new_tokens)


def persona_messages(tokenizer, persona: str, stories: list[dict], history: list[dict],
                     budget: int | None = None) -> tuple[list[dict], list[dict], int]:
    """System(persona + stories) + history, cut to `budget` prompt tokens.

    Cut the least relevant stories first, then the oldest turns; never the persona or the last turn.
    Returns (messages, the stories kept, the turns dropped).
    """
    from studio.inference import chat_prompt

    persona = str(persona or "").strip()
    if not persona:
        raise StudioError("the persona is empty: write a few sentences about who the bot is")
    stories, history = list(stories), list(history)
    dropped_turns = 0

    def build():
        return [{"role": "system", "content": system_text(persona, stories)}, *history]

    def size(messages):
        return len(tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])

    if budget is None:
        return build(), stories, 0
    while size(build()) > budget:
        if stories:
            stories.pop()
        elif len(history) > 1:
            history.pop(0)
            dropped_turns += 1
        else:
            raise StudioError(f"the persona and the message take more than the model's context ({budget} tokens "
                              "for the prompt): shorten the persona")
    return build(), stories, dropped_turns


def dialogue_rows(dataset) -> list[dict]:
    """Persona-format training rows (system persona, history, gold reply) → persona/history/reply."""
    rows = []
    for messages in dataset["messages"]:
        if not messages or messages[0]["role"] != "system" or messages[-1]["role"] != "assistant":
            continue
        persona = messages[0]["content"].removeprefix("Your persona:").strip()
        rows.append({"persona": persona, "history": [dict(m) for m in messages[1:-1]], "reply": messages[-1]["content"]})
    if not rows:
        raise StudioError("lapdog needs persona dialogues (ConvAI2 text, LAPDOG JSONL or persona/history/reply rows)")
    return rows


def spread_over_dialogues(rows: list[dict], limit: int, seed: int = 0) -> list[dict]:
    """At most `limit` rows taken across as many dialogues (personas) as possible: one turn of each dialogue
    (a seeded pick), then a second of each, and so on; so 300 rows of 160 dialogues cover all 160, and a
    bootstrap over dialogues has as many of them as the budget allows."""
    import random

    by_persona: dict[str, list[dict]] = {}
    for r in rows:
        by_persona.setdefault(r["persona"], []).append(r)
    rng = random.Random(seed)
    queues = [rng.sample(turns, len(turns)) for turns in by_persona.values()]
    out: list[dict] = []
    depth = 0
    while len(out) < limit and any(len(q) > depth for q in queues):
        out += [q[depth] for q in queues if len(q) > depth][: limit - len(out)]
        depth += 1
    return out


def heldout_dialogues(recipe, source: str | None = None) -> tuple[str, str, object]:
    """(source, split name, rows) a LAPDOG run is judged on: `source` if given (the CLI's `eval --data`), else
    the recipe's `dataset.eval_source`, all of it; else the run's own test (or validation) split."""
    from studio.data import heldout_data

    ds = dict(recipe.dataset)
    if source:
        ds["eval_source"] = source
    seed = int(recipe.train.get("seed", 42))
    held = heldout_data(ds, seed)
    if held is not None:
        return str(ds["eval_source"]), "eval_source", held.splits["test"]
    data = persona_data(recipe)
    split = next((s for s in ("test", "validation") if s in data.splits and len(data.splits[s])), None)
    if split is None:
        raise StudioError(f"{recipe.name}: its dataset has no held-out dialogues (too few rows for a test split)")
    return str(ds.get("source")), split, data.splits[split]


def persona_data(recipe):
    """The run's persona dialogues, split exactly as stage 1 split them (same source, splits and seed)."""
    from studio.data import prepare_dataset

    ds = recipe.dataset
    return prepare_dataset(ds["source"], ds.get("format"), ds.get("template"), config=ds.get("config"),
                           split=ds.get("split"), splits=ds.get("splits", "80/10/10"),
                           seed=int(recipe.train.get("seed", 42)), max_rows=ds.get("max_rows"),
                           group_by=ds.get("group_by"))
