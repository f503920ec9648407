"""GRPO from verifiable rewards: the reward menu, the bundled task, a tiny run through TRL's GRPOTrainer (charts'
metrics, the completions table, stop/resume, the held-out table, a plain-PEFT adapter), and the shared app's refusals
and budgets."""

import json
import time

import pytest

from conftest import ROOT
from studio import jobs
from studio import runs as run_folders
from studio.errors import StudioError
from studio.rewards import build, check_rewards, describe, score_table


@pytest.fixture
def runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("STUDIO_RUNS", str(root))
    return root


def grpo_recipe(**overrides):
    from studio.recipes import load_recipe

    sets = {"max_steps": 2, "save_steps": 100, **overrides}
    return load_recipe(ROOT / "recipes" / "tiny-grpo.yaml", [f"{k}={v}" for k, v in sets.items()])


def _wait(job, timeout=300):
    assert job.wait(timeout), f"job still {job.status}"
    return job


def _events(run_dir, kind):
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == kind]


# ---- the reward menu -----------------------------------------------------------------------------------------

def scores(rewards, completions, solutions):
    return score_table(rewards, completions, solutions)


def test_each_reward_type_scores_what_its_name_says():
    refs = ["42", "42", "#### 42", "Paris"]
    got = scores([{"type": "number"}], ["So 40 + 2 = 42.\n42", "It is 41", "42", "no number"], refs)
    assert got["number"] == [1.0, 0.0, 1.0, 0.0]  # GSM8K's '#### 42' reference is read as 42
    assert scores([{"type": "exact"}], ["  paris. ", "The answer is Paris", "Lyon"], ["Paris"] * 3)["exact"] == [1, 1, 0]
    assert scores([{"type": "contains", "text": "capital"}], ["The CAPITAL is", "city"], ["", ""])["contains"] == [1, 0]
    assert scores([{"type": "contains"}], ["I think paris.", "Rome"], ["Paris", "Paris"])["contains"] == [1, 0]
    assert scores([{"type": "regex", "pattern": r"^\d+$"}], ["17", "seventeen"], ["", ""])["regex"] == [1, 0]
    last = scores([{"type": "format", "rule": "last_line"}], ["Work: 3+4=7\n7", "3+4 is 7 and done", ""], [""] * 3)
    assert last["format_last_line"] == [1, 0, 0]
    tags = scores([{"type": "format", "rule": "tags", "tag": "answer"}],
                  ["think <answer>7</answer>", "<answer></answer>", "<answer>1</answer><answer>2</answer>"], [""] * 3)
    assert tags["format_tags"] == [1, 0, 0]
    length = scores([{"type": "length", "min": 2, "max": 4}], ["one two three", "one", " ".join(["w"] * 10)], [""] * 3)
    assert length["length"] == [1.0, 0.5, 0.0]
    js = scores([{"type": "json", "keys": ["answer"]}], ['{"answer": 7}', '```json\n{"answer": 7}\n```', "[1]", "{"],
                [""] * 4)
    assert js["json"] == [1, 1, 0, 0]


def test_weights_combine_as_trl_does_and_names_are_what_trl_logs():
    rewards = [{"type": "number", "weight": 1.0}, {"type": "format", "rule": "last_line", "weight": 0.25},
               {"type": "number", "weight": 2}]
    funcs, weights, names = build(rewards)
    assert names == ["number", "format_last_line", "number_2"] and weights == [1.0, 0.25, 2.0]
    assert [f.__name__ for f in funcs] == names  # TRL logs rewards/<__name__>/mean
    table = scores(rewards, ["7", "8"], ["7", "7"])
    assert table["reward"] == [3.25, 0.25]
    # conversational completions (an instruct model through its chat template) are scored on the assistant's text
    assert funcs[0](prompts=[""], completions=[[{"role": "assistant", "content": "so 7"}]], solution=["7"]) == [1.0]
    assert describe(None) == "number ×1, format_last_line ×0.25"


@pytest.mark.parametrize("rewards, says", [
    ([{"type": "python"}], "type 'python' is not one of"),
    ([{"type": "regex", "pattern": "("}], "pattern does not compile"),
    ([{"type": "number", "pattern": "x"}], "unknown setting 'pattern'"),
    ([{"type": "length", "min": 9, "max": 2}], "min is above max"),
    ([{"type": "number", "weight": "lots"}], "weight must be a number"),
    ([{"type": "format", "rule": "tags", "tag": "a b"}], "tag must be a plain name"),
    ([{"type": "code", "function": "mine"}], "name the file of reward functions in reward_code"),
    ([{"type": "number"}] * 9, "at most 8 reward functions"),
    ("number", "must be a list"),
])
def test_a_bad_rewards_entry_is_one_line_naming_it(rewards, says):
    with pytest.raises(StudioError, match=says) as err:
        check_rewards(rewards, "r.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("r.yaml: rewards")


def test_a_backtracking_pattern_gives_up_instead_of_holding_the_job():
    catastrophic = [{"type": "regex", "pattern": r"^(a+)+$"}]
    started = time.perf_counter()
    got = scores(catastrophic, ["a" * 40 + "b"], [""])
    assert got["regex"] == [0.0] and time.perf_counter() - started < 5


def test_the_owners_reward_code_file_is_loaded_locally(tmp_path):
    code = tmp_path / "my_rewards.py"
    code.write_text("def short(prompts, completions, **kw):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n")
    funcs, weights, names = build([{"type": "code", "function": "short", "weight": 0.5}], str(code))
    assert names == ["short"] and weights == [0.5] and funcs[0](prompts=["", ""], completions=["hi", "hello!"]) == [1, 0]
    with pytest.raises(StudioError, match="has no function 'long'"):
        build([{"type": "code", "function": "long"}], str(code))


def test_a_shared_page_can_not_name_a_reward_code_file(monkeypatch, tmp_path):
    from studio.recipes import recipe_from_flat, recipe_to_flat

    flat = recipe_to_flat(grpo_recipe())
    flat["reward_code"] = str(tmp_path / "evil.py")
    flat["rewards"] = [{"type": "code", "function": "boom"}]
    monkeypatch.setenv("STUDIO_SHARED", "1")
    with pytest.raises(StudioError, match="reward_code runs a Python file on the server; a shared app takes rewards "
                                          "from the menu only"):
        recipe_from_flat(flat)
    monkeypatch.delenv("STUDIO_SHARED")
    recipe = recipe_from_flat(flat)  # locally the owner may (the file is read when the job starts)
    assert recipe.header["reward_code"].endswith("evil.py")


def test_rewards_belong_to_grpo_recipes_only():
    from studio.recipes import load_recipe

    with pytest.raises(StudioError, match="rewards and reward_code are GRPO's settings"):
        load_recipe(ROOT / "recipes" / "tiny-dpo.yaml", ["rewards=[{type: number}]"])


# ---- the bundled task ----------------------------------------------------------------------------------------

def test_the_bundled_arithmetic_file_is_what_its_generator_makes():
    from studio.data.arithmetic import PATH, make

    lines = PATH.read_text("utf-8").splitlines()
    assert [json.loads(line) for line in lines[1:]] == make()
    rows = make()
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert all(str(int(r["solution"])) == r["solution"] for r in rows)


def test_gsm8k_style_question_answer_rows_are_reward_data(write):
    from studio.data import prepare_dataset

    path = write("gsm.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
                               for i in range(20)])
    data = prepare_dataset(str(path), splits="80/10/10")
    assert data.format.name == "reward"
    row = data.splits["train"][0]
    assert row["prompt"].startswith("What is") and row["completion"].strip().endswith(f"#### {row['completion'].split()[-1]}")


def test_grpo_refuses_data_without_references(write):
    from studio.train.grpo import load_reward_data

    path = write("pairs.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(12)])
    with pytest.raises(StudioError, match="GRPO needs prompts with references"):
        load_reward_data(grpo_recipe(**{"dataset.source": str(path), "dataset.format": "auto"}), 42, lambda _: None)


# ---- a run ---------------------------------------------------------------------------------------------------

def test_a_tiny_grpo_run_logs_rewards_shows_completions_and_judges_itself_on_held_out_prompts(runs):
    job = _wait(jobs.start_job(grpo_recipe(max_steps=3, logging_steps=1)))
    assert job.status == "done", job.error
    rows = [e for e in _events(job.run_dir, "metrics") if "reward" in e]
    assert len(rows) == 3
    for key in ("reward", "reward_std", "rewards/number/mean", "rewards/length/mean", "frac_reward_zero_std",
                "completions/mean_length"):
        assert all(key in r for r in rows), key
    assert job.completions and job.completions["step"] == 3
    shown = job.completions["rows"][0]
    assert set(shown["rewards"]) == {"number", "length"} and shown["prompt"].startswith(("Each", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    report = json.loads((job.run_dir / "heldout_rewards.json").read_text())
    assert report["prompts"] == 16 and report["source"] == "the test split"
    assert set(report["reward"]["means"]) == {"base", "tuned"} and report["accuracy_from"] == "number"
    assert report["reward"]["paired"][0]["a"] == "tuned" and len(report["reward"]["paired"][0]["interval"]) == 2
    summary = json.loads((job.run_dir / "summary.json").read_text())
    assert summary["method"] == "grpo" and summary["heldout"]["prompts"] == 16 and len(summary["samples"]) == 8

    from peft import PeftModel  # the adapter loads with plain PEFT on its base
    from studio.inference import run_base_model
    from studio.models import load_model
    from trl import ModelConfig

    base = load_model(ModelConfig(model_name_or_path=run_base_model(job.run_dir)))
    model = PeftModel.from_pretrained(base, str(job.run_dir / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_grpo_stops_with_a_checkpoint_and_resumes_to_the_end(runs):
    job = jobs.start_job(grpo_recipe(max_steps=8, logging_steps=1, **{"studio.heldout_prompts": 4}))
    deadline = time.time() + 120
    while job.step < 2 and time.time() < deadline:
        time.sleep(0.05)
    job.request_stop()
    _wait(job)
    assert job.status == "cancelled" and job.step < 8
    assert run_folders.resumable(job)
    again = _wait(jobs.start_job(None, resume=job.run_dir))
    assert again.status == "done", again.error
    assert json.loads((job.run_dir / "summary.json").read_text())["steps"] == 8


def test_the_cli_rewards_report_scores_a_run_against_its_base(runs, capsys):
    from studio.cli import main

    job = _wait(jobs.start_job(grpo_recipe(max_steps=1, **{"studio.heldout_prompts": 4})))
    assert main(["eval", job.id, "--rewards", "--limit", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["prompts"] == 6 and report["run"] == job.id
    assert set(report["reward"]["means"]) == {"base (embedded/tiny-llama)", job.id}
    assert report["words"] and all(("within noise" in w) or ("better" in w) for w in report["words"])
    assert main(["eval", job.id, "--rewards", "--suite", "instruction"]) == 2
    assert "--rewards takes one GRPO run and no --suite" in capsys.readouterr().err


# ---- budgets on a shared app ---------------------------------------------------------------------------------

def test_the_memory_estimate_counts_the_completions_grpo_samples():
    from studio.memory import estimate_for_recipe

    small = estimate_for_recipe(grpo_recipe(num_generations=2, per_device_train_batch_size=2))
    big = estimate_for_recipe(grpo_recipe(num_generations=8, per_device_train_batch_size=8,
                                          gradient_accumulation_steps=8, max_completion_length=512))
    assert big.activations > 4 * small.activations


def test_a_grpo_job_too_big_for_memory_is_refused_before_it_starts(runs, monkeypatch):
    monkeypatch.setenv("STUDIO_JOB_MEMORY_GB", "0.05")
    with pytest.raises(StudioError, match="this job needs .* allowed per job"):
        jobs.start_job(grpo_recipe(num_generations=8, per_device_train_batch_size=64, max_completion_length=2048))
    assert not any(runs.iterdir())


def test_on_a_shared_app_a_grpo_job_waits_in_the_one_line_and_one_place_per_payer(runs, monkeypatch):
    monkeypatch.setenv("STUDIO_SHARED", "1")
    busy = jobs.Job(runs / "someone-elses-run")
    busy.status = run_folders.RUNNING
    monkeypatch.setattr(jobs, "_current", busy)
    from studio.access import Visitor, acting_for

    minted = [Visitor(frozenset({f"session:s{i}", f"client:{i:032x}"})) for i in range(2)]
    try:
        with acting_for(minted[0]):
            ticket = jobs.start_job(grpo_recipe(), owner=f"{0:032x}", wait=True)
        assert isinstance(ticket, jobs.Ticket) and ticket.kind == "grpo" and ticket.payer == "anonymous"
        with acting_for(minted[1]), pytest.raises(StudioError, match="a job is already waiting for anonymous visitors"):
            jobs.start_job(grpo_recipe(), owner=f"{1:032x}", wait=True)  # a second session buys no second place
        with acting_for(Visitor(frozenset({"session:carol"}), "carol")):  # an account waits on its own
            assert jobs.start_job(grpo_recipe(), owner="carol-browser", wait=True).payer == "user:carol"
    finally:
        with jobs._registry_lock:
            jobs._waiting.clear()


def test_a_visitors_grpo_job_stops_at_the_shared_apps_time_cap_with_a_checkpoint(runs, monkeypatch):
    from studio.access import Visitor, acting_for

    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_MAX_JOB_MINUTES", "0.02")  # 1.2 s: a few tiny steps
    with acting_for(Visitor(frozenset({"session:v", f"client:{7:032x}"}))):
        job = jobs.start_job(grpo_recipe(max_steps=500, logging_steps=1), owner=f"{7:032x}")
    _wait(job, 120)
    assert job.status == "cancelled" and 0 < job.step < 500
    assert any("time limit reached" in line for line in job.logs) and run_folders.resumable(job)


def test_grpo_starts_from_an_sft_runs_adapter(runs):
    from conftest import tiny_recipe

    sft = _wait(jobs.start_job(tiny_recipe(max_steps=2, save_steps=2, eval_strategy="no")))
    assert sft.status == "done", sft.error
    job = _wait(jobs.start_job(grpo_recipe(init_adapter=f"runs/{sft.id}", max_steps=1, **{"studio.heldout_prompts": 4})))
    assert job.status == "done", job.error
    assert any(f"starting from {sft.id}'s adapter" in line for line in job.logs)
    summary = json.loads((job.run_dir / "summary.json").read_text())
    assert summary["init_adapter"] == f"runs/{sft.id}" and "not the SFT run" in json.loads(
        (job.run_dir / "heldout_rewards.json").read_text())["base_is"]
