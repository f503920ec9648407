"""What an evaluation generates for: `Item`s from a dataset's test split (`dataset_items`) or a prompt suite
(`suite_items`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError


ASSETS = Path(__file__).resolve().parents[2] / "assets"
SUITES = {"instruction": ASSETS / "suites" / "instruction.jsonl", "multi-turn": ASSETS / "suites" / "multi_turn.jsonl"}
RECIPE_SUITE = "recipe-prompts"


@dataclass
class Item:
    """One row to generate for: what the user says at each turn, and the reference for the last answer.

    `chat` items go through each model's own chat template (earlier turns carry the model's own answers);
    plain items are continued as they are, like the data they come from was trained.
    """

    turns: list
    reference: str = ""
    chat: bool = False
    context: list = field(default_factory=list)  # messages before the first turn (system, dialogue history)
    target: str | list | None = None  # the completion exactly as trained (leading space, messages); None: reference

    def shown(self) -> str:
        head = "\n".join(f"{m['role']}: {m['content']}" for m in self.context)
        turns = [t for t in self.turns if t is not None]
        body = "\n— next turn —\n".join(turns)
        return f"{head}\n{body}".strip() if head else body


def _chat_item(messages: list[dict], reference: str, target: list | None = None) -> Item:
    if messages and messages[-1]["role"] == "user":
        return Item([messages[-1]["content"]], reference, chat=True, context=list(messages[:-1]), target=target)
    return Item([None], reference, chat=True, context=list(messages), target=target)


def _first_assistant(value) -> str:
    if isinstance(value, list):
        return next((m["content"] for m in value if m["role"] == "assistant"), "")
    return str(value or "")


def _row_item(row: dict) -> Item:
    """A rendered row (TRL's forms, cut by `studio.data.formats`) → an item; the reference is the answer stripped
    for scoring, the target the answer as trained."""
    if "messages" in row:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return _chat_item(msgs[:last], msgs[last]["content"].strip(), [msgs[last]])
    answer = row["chosen"] if "chosen" in row else row["completion"]
    ref = _first_assistant(answer).strip()
    if isinstance(row["prompt"], list):
        return _chat_item(row["prompt"], ref, answer if isinstance(answer, list) else None)
    return Item([row["prompt"]], ref, target=str(answer))


def dataset_items(source: str, fmt: str | None = None, template: str | None = None, splits="80/10/10",
                  seed: int = 42, limit: int | None = None, eval_source: str | None = None,
                  group_by: str | None = None) -> tuple[list[Item], dict]:
    """The test split's rows (validation, then train, when the data is too small to have one), cut into prompt
    and answer by the format itself: the same rows, splits and text as training. `eval_source` (a recipe's
    `dataset.eval_source`): all of that source's rows instead."""
    from studio.access import check_data_source
    from studio.data import heldout_data, prepare_dataset

    source = check_data_source(source)
    try:
        data = heldout_data({"source": source, "format": fmt, "template": template, "eval_source": eval_source,
                             "group_by": group_by}, seed, pieces=True) if eval_source else None
        data = data or prepare_dataset(source, fmt, template, splits=splits, seed=seed, pieces=True,
                                       group_by=group_by)
    except StudioError as e:
        if "no column looks like" in str(e):
            raise StudioError(f"{source}: no reference column to score against ({e})") from None
        raise
    split = next(s for s in ("test", "validation", "train") if s in data.splits)
    items = [_row_item(r) for r in data.splits[split]]
    if limit:
        items = items[:int(limit)]
    info = {"source": data.source, "format": data.format.name, "split": split, "rows": len(items),
            "splits": splits, "seed": seed}
    if eval_source:
        info.update(split="eval_source", splits=None)
    return items, info


MAX_SUITE_ROW_CHARS = 20_000  # one suite row's prompt turns and reference together


def load_suite(path: str | Path) -> list[Item]:
    """A JSONL suite: one object per line with "prompt" (a string) or "turns" (strings); "reference" optional."""
    from studio.data.sources import iter_jsonl

    path = Path(path)
    items = []
    for n, row in iter_jsonl(path):
        turns = [row["prompt"]] if "prompt" in row else row.get("turns")
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) and t.strip() for t in turns)):
            raise StudioError(f'{path.name} line {n}: expected "prompt" (a string) or "turns" (a list of strings)')
        reference = row.get("reference", "")
        if not isinstance(reference, str):
            raise StudioError(f'{path.name} line {n}: "reference" must be a string')
        if sum(map(len, turns)) + len(reference) > MAX_SUITE_ROW_CHARS:
            raise StudioError(f"{path.name} line {n}: more than {MAX_SUITE_ROW_CHARS:,} characters of prompt and "
                              "reference")
        items.append(Item(turns, reference, chat=True))
    if not items:
        raise StudioError(f"{path.name}: the suite is empty")
    return items


def suite_items(suite: str, recipe_prompts: list[str] | None = None) -> list[Item]:
    """A shipped suite by name, the recipe's before/after prompts, or an uploaded JSONL file."""
    from studio.access import check_data_source

    if suite == RECIPE_SUITE:
        if not recipe_prompts:
            raise StudioError("the recipe has no eval_prompts: pick another suite")
        return [Item([p]) for p in recipe_prompts]
    if suite in SUITES:
        return load_suite(SUITES[suite])
    path = Path(check_data_source(suite)).expanduser()
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        raise StudioError(f"{suite}: no such suite; use {', '.join([*SUITES, RECIPE_SUITE])} or a .jsonl file")
    return load_suite(path)
