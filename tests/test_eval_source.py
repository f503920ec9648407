"""`dataset.eval_source` replaces the random held-out split everywhere the studio evaluates (issue 32): Train's
held-out loss, Evaluate's "the run's test split", DPO margins and the LAPDOG table (its CLI `--persona --data` in
tests/test_lapdog.py)."""

import json

import pytest

from conftest import runs_env, tiny_recipe
from studio import data as data_mod
from studio import jobs
from studio.data import heldout_data, prepare_dataset
from studio.recipes import load_recipe

OTHER_QUOTES = [{"quote": f"“Held-out saying number {i}.”", "author": f"Author {i}"} for i in range(12)]


@pytest.fixture
def quotes_file(write):
    return write("other-quotes.jsonl", OTHER_QUOTES)


def test_heldout_data_is_the_whole_eval_source(quotes_file):
    held = heldout_data({"source": "quotes", "format": "quotes", "eval_source": str(quotes_file)})
    assert list(held.splits) == ["test"] and len(held.splits["test"]) == 12
    assert {r["text"].splitlines()[0] for r in held.splits["test"]} == {f"Quote: {q['quote']}" for q in OTHER_QUOTES}
    assert heldout_data({"source": "quotes"}) is None and heldout_data({"source": "quotes", "eval_source": ""}) is None


def test_a_split_name_reads_that_split_of_the_same_hub_dataset(monkeypatch):
    seen = {}

    def fake_prepare(source, fmt=None, template=None, **kw):
        seen.update(source=source, **kw)
        return prepare_dataset("quotes", "quotes", splits="100/0/0")

    monkeypatch.setattr(data_mod, "prepare_dataset", fake_prepare)
    held = heldout_data({"source": "someone/persona-chat", "config": "self", "eval_source": "validation"})
    assert seen["source"] == "someone/persona-chat" and seen["split"] == "validation" and seen["config"] == "self"
    assert list(held.splits) == ["test"]


def test_train_heldout_loss_and_evaluate_use_the_eval_source(quotes_file, tmp_path):
    from studio.evaluate import compare

    recipe = tiny_recipe(max_steps=4, save_steps=4, eval_steps=2, logging_steps=2)
    recipe.dataset["eval_source"] = str(quotes_file)
    with runs_env(tmp_path / "runs") as runs:
        job = jobs.start_job(recipe, runs_dir=runs)
        assert job.wait(300) and job.status == "done", job.error
        assert any("held-out loss on dataset.eval_source other-quotes.jsonl: 12 rows" in line for line in job.logs)
        events = [json.loads(line) for line in (job.run_dir / "events.jsonl").read_text().splitlines()]
        assert any("eval_loss" in e for e in events)
        result = compare([job.id], limit=3, max_new_tokens=4, loss=False, save=False)
    assert result["config"]["data"]["split"] == "eval_source"
    assert result["config"]["data"]["source"] == "other-quotes.jsonl"
    assert {r["reference"] for r in result["rows"]} <= {q["author"] for q in OTHER_QUOTES}


def test_dpo_margins_use_the_eval_source(write, tmp_path, monkeypatch):
    import studio.metrics
    from studio.evaluate import dpo_report

    pairs = [{"prompt": f"Question {i}?\nAnswer:", "chosen": f" Yes {i}.", "rejected": f" Go away {i}."}
             for i in range(5)]
    path = write("held-pairs.jsonl", pairs)
    run = tmp_path / "runs" / "dpo-run"
    run.mkdir(parents=True)
    recipe = load_recipe("tiny-dpo", [f"dataset.eval_source={path}"])
    (run / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    seen = []
    monkeypatch.setattr(studio.metrics, "preference_margins", lambda run_dir, rows: seen.extend(rows) or [
        {"reward_margin": 1.0, "policy_margin": 1.0, "reference_margin": 0.5} for _ in rows])
    with runs_env(tmp_path / "runs"):
        report = dpo_report("dpo-run")
    assert report["split"] == "eval_source" and report["pairs"] == 5
    assert sorted(r["prompt"] for r in seen) == sorted(p["prompt"] for p in pairs)


def test_lapdog_heldout_dialogues_follow_the_eval_source(write):
    from studio.persona import heldout_dialogues

    rows = [{"persona": ["i am unseen.", f"my number is {i}."], "history": [{"role": "user", "content": "hi"}],
             "reply": f"hello {i}"} for i in range(7)]
    path = write("unseen.jsonl", rows)
    recipe = load_recipe("tiny-persona-lapdog", [f"dataset.eval_source={path}"])
    source, split, held = heldout_dialogues(recipe)
    assert (source, split, len(held)) == (str(path), "eval_source", 7)
    plain = load_recipe("tiny-persona-lapdog")
    source, split, held = heldout_dialogues(plain, str(path))  # the CLI's `eval --persona --data`
    assert split == "eval_source" and len(held) == 7
    assert heldout_dialogues(plain)[1] == "validation"
