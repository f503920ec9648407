"""Splits keep dialogues whole: no persona, conversation or `group_by` group is in two splits (issue 32)."""

import json
from pathlib import Path

import pytest

from studio.data import prepare_dataset, split_groups
from studio.errors import StudioError

CONVAI2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "convai2" / "dialogues-0001-0800.jsonl"


def persona_dialogues(n_dialogues: int = 40, turns: int = 6) -> list[dict]:
    """LAPDOG-JSONL rows: one persona per dialogue, each turn a row whose context grows."""
    rows = []
    for d in range(n_dialogues):
        persona = f"persona: i am person {d}. my dog is called rex{d}. i like colour {d % 7}."
        context = ""
        for t in range(turns):
            context += f" Q: question {t} of dialogue {d} ?"
            rows.append({"question": f"{persona} context:{context}", "answers": [f"answer {t} from {d} ."]})
            context += f" R: answer {t} from {d} ."
    return rows


def personas_by_split(data) -> dict[str, set[str]]:
    return {name: {m[0]["content"] for m in split["messages"]} for name, split in data.splits.items()}


def assert_disjoint(groups: dict[str, set]) -> None:
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not groups[a] & groups[b], f"{len(groups[a] & groups[b])} groups in both {a} and {b}"


def test_no_persona_is_in_two_splits(write):
    """Fails on a row-by-row split: 40 dialogues × 6 turns split 80/10/10 by rows put most held-out
    personas in training as well."""
    data = prepare_dataset(str(write("dialogues.jsonl", persona_dialogues())), splits="80/10/10", seed=3)
    by_split = personas_by_split(data)
    assert_disjoint(by_split)
    assert {k: len(v) for k, v in by_split.items()} == {"train": 32, "validation": 4, "test": 4}
    assert sum(len(s) for s in data.splits.values()) == data.rows == 240
    assert data.groups == {"by": "persona", "count": 40, "splits": {"train": 32, "validation": 4, "test": 4}}
    assert data.split_line() == "split by dialogue (same persona): 40 dialogues → 32 / 4 / 4"
    # held-out dialogues keep their turns together and in order
    test_msgs = data.splits["test"]["messages"]
    assert [len(m) for m in test_msgs[:6]] == [3, 5, 7, 9, 11, 13]  # system + turns
    again = prepare_dataset(str(write("dialogues.jsonl", persona_dialogues())), splits="80/10/10", seed=3)
    assert again.splits["test"]["messages"] == test_msgs  # seeded
    rows = prepare_dataset(str(write("dialogues.jsonl", persona_dialogues())), splits="80/10/10", seed=3,
                           group_by="rows")
    assert rows.groups is None and rows.split_line().startswith("split row by row")
    row_split = personas_by_split(rows)
    assert row_split["test"] & row_split["train"]  # what the row-by-row split did: held-out personas seen


def test_conversation_id_and_group_by_column_keep_groups_whole(write):
    rows = [{"conversation_id": f"c{i // 5}", "topic": f"t{i // 10}",
             "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(200)]
    path = str(write("chats.jsonl", rows))
    data = prepare_dataset(path, splits="80/10/10")
    assert data.groups["by"] == "conversation_id" and data.groups["count"] == 40
    convo = {f"q{i}": f"c{i // 5}" for i in range(200)}
    assert_disjoint({k: {convo[m[0]["content"]] for m in v["messages"]} for k, v in data.splits.items()})
    assert "conversation_id" not in data.splits["train"].column_names and "_group" not in data.splits["train"].column_names
    topic = prepare_dataset(path, splits="80/10/10", group_by="topic")
    assert topic.groups == {"by": "topic", "count": 20, "splits": {"train": 16, "validation": 2, "test": 2}}
    with pytest.raises(StudioError, match="group_by 'speaker' is not a column"):
        prepare_dataset(path, group_by="speaker")


def test_split_groups_deals_whole_groups_and_small_data_trains_on_everything():
    assert set(split_groups(["a", "a", "b"], (0.8, 0.1, 0.1), 0)) == {"train"}  # fewer than 10 groups
    keys = [f"g{i // 3}" for i in range(60)]
    parts = split_groups(keys, (0.5, 0.5, 0.0), 1)
    assert sorted(i for idx in parts.values() for i in idx) == list(range(60))
    assert {keys[i] for i in parts["train"]}.isdisjoint({keys[i] for i in parts["validation"]})
    assert len({keys[i] for i in parts["validation"]}) == 10


def test_cached_splits_carry_their_groups_and_old_caches_are_not_reused(write, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_CACHE", str(tmp_path / "cache"))
    path = str(write("dialogues.jsonl", persona_dialogues(20, 3)))
    first = prepare_dataset(path, cache=True)
    again = prepare_dataset(path, cache=True)
    assert again.cache_dir == first.cache_dir and again.groups == first.groups and again.groups["count"] == 20
    assert prepare_dataset(path, cache=True, group_by="rows").cache_dir != first.cache_dir
    assert json.loads((Path(first.cache_dir) / "meta.json").read_text())["groups"]["by"] == "persona"


@pytest.mark.skipif(not CONVAI2.exists(), reason="needs ../shared/data/convai2")
def test_convai2_validation_personas_are_unseen():
    """The issue's finding: split by rows, 631 of 631 validation rows had their persona in training."""
    data = prepare_dataset(str(CONVAI2), splits="90/10/0")
    by_split = personas_by_split(data)
    assert_disjoint(by_split)
    assert data.groups["count"] == 800 and data.groups["splits"] == {"train": 720, "validation": 80}
    assert data.rows == 6309


def test_data_tab_says_how_the_data_was_split(write):
    from studio.ui.data_tab import inspect

    path = str(write("dialogues.jsonl", persona_dialogues()))
    _, info, _, _ = inspect("Local path", None, None, path, "", "", "", "auto", "", "", progress=lambda *a, **k: None)
    assert "split by dialogue (same persona): 40 dialogues → 32 / 4 / 4" in info.splitlines()[0]
