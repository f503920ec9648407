"""Comparisons: the base column is the base, batched = sequential, suites, results files, judge, lm-eval, CLI."""

import csv
import json

import pytest

from conftest import tiny_recipe
from studio import cli, jobs
from studio.errors import StudioError
from studio.evaluate import (Item, compare, dataset_items, export_result, generate_items, judge, list_results,
                             load_result, lora_vs_full, run_lm_eval, suite_items)
from studio.inference import chat_prompt, generate, load_for_inference


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import os

    runs = tmp_path_factory.mktemp("eval") / "runs"
    old = os.environ.get("STUDIO_RUNS")
    os.environ["STUDIO_RUNS"] = str(runs)
    job = jobs.start_job(tiny_recipe(max_steps=30, save_steps=30, eval_steps=30), runs_dir=runs)
    assert job.wait(300) and job.status == "done", job.error
    yield job
    if old is None:
        os.environ.pop("STUDIO_RUNS")
    else:
        os.environ["STUDIO_RUNS"] = old


@pytest.fixture(scope="module")
def base():
    return load_for_inference("embedded/tiny-llama")


def test_base_column_is_the_base_and_the_result_is_saved(run):
    result = compare([run.id], limit=4, max_new_tokens=10, name="quotes-test")
    base_label = "base (embedded/tiny-llama)"
    assert result["labels"] == [base_label, run.id]
    assert result["config"]["data"]["split"] == "test" and result["config"]["data"]["source"] == "quotes.jsonl"
    # the base column equals the base model loaded on its own, the run's column does not
    items, _ = dataset_items("quotes", "quotes", limit=4)
    alone = load_for_inference("embedded/tiny-llama")
    expected = [o.split("\n")[0].strip() for o in generate(alone.model, alone.tokenizer,
                                                          [it.turns[0] for it in items], 10)]
    assert [r["outputs"][base_label] for r in result["rows"]] == expected
    assert [r["outputs"][run.id] for r in result["rows"]] != expected
    assert [r["reference"] for r in result["rows"]] == [it.reference for it in items]
    # results file: config, metrics and every row; listed, reopened, exported
    path = run.run_dir / "eval" / "quotes-test.json"
    saved = json.loads(path.read_text())
    assert {"config", "metrics", "rows", "definitions"} <= set(saved) and len(saved["rows"]) == 4
    assert {"rougeL", "bleu", "f1", "distinct2", "perplexity"} <= set(saved["metrics"][run.id])
    row = saved["rows"][0]
    assert row["delta"] == pytest.approx(row["scores"][run.id]["rougeL"] - row["scores"][base_label]["rougeL"])
    # issue 32: the run paired with its base, 95 % intervals over rows (quotes have no dialogues)
    assert [(p["a"], p["b"], p["metric"]) for p in saved["intervals"]["paired"]] == [
        (run.id, base_label, k) for k in ("f1", "bleu", "rougeL")]
    assert saved["intervals"]["dialogues"] == saved["intervals"]["rows"] == 4
    assert f"{run.id}/quotes-test" in list_results()
    assert load_result(f"{run.id}/quotes-test")["rows"] == saved["rows"]
    csv_path, json_path = export_result(saved, run.run_dir.parent.parent / "export")
    lines = list(csv.reader(csv_path.open()))
    assert lines[0][:5] == ["id", "prompt", "reference", base_label, run.id] and len(lines) == 5
    assert json.loads(json_path.read_text())["name"] == "quotes-test"


def test_batched_generation_equals_sequential_across_turns(base):
    items = suite_items("multi-turn")
    batched = generate_items(base.model, base.tokenizer, items, 12, batch_size=8)
    single = generate_items(base.model, base.tokenizer, items, 12, batch_size=1)
    assert batched == single and all(len(a) == 2 for a in batched)


def test_second_turn_sees_the_models_own_first_answer(base):
    item = Item(["Tell me a fact about the Moon.", "Turn your fact into a question."], chat=True)
    first, second = generate_items(base.model, base.tokenizer, [item], 12)[0]
    messages = [{"role": "user", "content": item.turns[0]}, {"role": "assistant", "content": first},
                {"role": "user", "content": item.turns[1]}]
    assert second == generate(base.model, base.tokenizer, [chat_prompt(base.tokenizer, messages)], 12)[0].strip()


def test_suites_and_their_errors(write):
    assert len(suite_items("instruction")) >= 10 and all(it.reference for it in suite_items("instruction"))
    assert all(len(it.turns) == 2 for it in suite_items("multi-turn"))
    good = write("mine.jsonl", [{"prompt": "Say hi"}, {"turns": ["Hi", "And again?"], "reference": "Hi"}])
    assert [it.turns for it in suite_items(str(good))] == [["Say hi"], ["Hi", "And again?"]]
    bad = write("bad.jsonl", [{"prompt": "ok"}, {"question": "no prompt"}])
    with pytest.raises(StudioError, match=r'bad.jsonl line 2: expected "prompt" \(a string\) or "turns"'):
        suite_items(str(bad))
    with pytest.raises(StudioError, match="line 1: malformed JSON"):
        suite_items(str(write("broken.jsonl", "{nope\n")))
    with pytest.raises(StudioError, match="recipe has no eval_prompts"):
        suite_items("recipe-prompts", [])


def test_bad_inputs_are_one_line(run, write, tmp_path):
    with pytest.raises(StudioError, match="no reference column"):
        dataset_items(str(write("plain.jsonl", [{"text": f"line {i}"} for i in range(12)])))
    with pytest.raises(StudioError, match="no reference column"):
        dataset_items(str(write("prompts.jsonl", [{"prompt_only": f"q {i}"} for i in range(12)])))
    unfinished = run.run_dir.parent / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text((run.run_dir / "recipe.yaml").read_text())
    (unfinished / "events.jsonl").write_text("")
    with pytest.raises(StudioError, match="unfinished: this run has no adapter"):
        compare(["unfinished"], limit=2)
    with pytest.raises(StudioError, match="not allowed"):
        compare([run.id], suite="instruction", limit=1, name="../escape")


def test_recipe_prompts_and_instruction_suite_without_a_run_save_under_evals(run):
    result = compare(["embedded/tiny-llama"], suite="instruction", limit=3, max_new_tokens=8, name="inst")
    assert result["owner"] == "evals" and result["path"].endswith("evals/inst.json")
    assert "rougeL" in result["metrics"]["embedded/tiny-llama"]
    prompts = compare([run.id], suite="recipe-prompts", max_new_tokens=8, save=False)
    assert [r["prompt"] for r in prompts["rows"]] == run.recipe.header["eval_prompts"]
    assert "rougeL" not in prompts["metrics"][run.id] and "distinct1" in prompts["metrics"][run.id]


def test_judge_shows_both_orders(run):
    result = compare([run.id], suite="instruction", limit=4, max_new_tokens=8, save=False)
    a, b = result["labels"]
    ab, ba = judge(result, "embedded/tiny-llama", a, b), judge(result, "embedded/tiny-llama", b, a)
    assert (ab["wins_a"], ab["wins_b"], ab["ties"]) == (ba["wins_b"], ba["wins_a"], ba["ties"])
    assert ab["win_rate_a"] + ba["win_rate_a"] == pytest.approx(100.0)
    # the same answer on both sides: whichever position the judge likes, the swap turns it into a tie
    for row in result["rows"]:
        row["outputs"][b] = row["outputs"][a]
    same = judge(result, "embedded/tiny-llama", a, b)
    assert same["ties"] == same["rows"] == 4 and same["win_rate_a"] == 50.0


def test_local_lm_eval_task_on_base_and_adapter(run):
    base_scores = run_lm_eval(run.id, ["quote_authors"], limit=4, adapter=False)["quote_authors"]
    tuned = run_lm_eval(run.id, ["quote_authors"], limit=4)["quote_authors"]
    plain = run_lm_eval("embedded/tiny-llama", ["quote_authors"], limit=4)["quote_authors"]
    assert 0.0 <= tuned["acc"] <= 1.0 and base_scores == plain
    assert tuned["sample_len"] == 4


def test_lora_vs_full_report_from_the_config(run):
    out = lora_vs_full(run.id)
    assert out["lora"]["trainable"] == run.params["trainable"] and out["lora"]["total"] == run.params["total"]
    assert out["lora"]["checkpoint_measured"] and out["lora"]["checkpoint_bytes"] > out["lora"]["trainable"] * 4 * 0.9
    assert out["full"]["total"] == run.params["total"] - run.params["trainable"]
    assert out["full"]["optimizer_bytes"] == 8 * out["full"]["total"]


def test_eval_cli_prints_the_results_file(run, capsys):
    assert cli.main(["eval", run.id, "--limit", "2", "--max-new-tokens", "6", "--name", "cli", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"].endswith(f"{run.id}/eval/cli.json") and len(out["rows"]) == 2
    assert cli.main(["eval", "unfinished-nope", "--limit", "2"]) == 2
    assert "error:" in capsys.readouterr().err
