"""Issue 21, a newcomer's afternoon: the backend side of each finding, in process (the browser side is in
test_newcomer_browser.py). One CLI training run on a 5-row upload serves findings 3, 5, 8, 11 and 12."""

import contextlib
import io
import json
import warnings

import pytest

from conftest import ROOT

FIVE = [{"prompt": f"Which planet is number {i}?", "completion": f" Planet {i}."} for i in range(1, 6)]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """`python -m studio train` (in process, stderr to a file, not a TTY) on a 5-row upload with the default
    recipe (eval_strategy: steps): (run folder, stderr text, exit code)."""
    from studio import cli

    tmp = tmp_path_factory.mktemp("newcomer")
    data = tmp / "five.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FIVE), encoding="utf-8")
    runs = tmp / "runs"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        code = cli.main(["train", str(ROOT / "recipes" / "tiny-quotes.yaml"), "--runs-dir", str(runs),
                         "--set", f"dataset.source={data}", "--set", "dataset.format=auto",
                         "--set", "max_steps=4", "--set", "logging_steps=1", "--set", "save_steps=4"])
    [run_dir] = [d for d in runs.iterdir() if d.is_dir()]
    return run_dir, err.getvalue(), code


def test_small_data_trains_without_eval_and_says_so(small_run):  # finding 3
    run_dir, text, code = small_run
    assert code == 0, text
    assert "no validation split: 5 rows are too few" in text and "training without evaluation" in text
    assert (run_dir / "adapter" / "adapter_config.json").exists()


def test_run_name_says_model_and_data_and_log_says_where_the_adapter_is(small_run):  # findings 5, 8
    run_dir, text, _ = small_run
    assert run_dir.name.startswith("tiny-llama-five-sft-"), run_dir.name  # not the recipe's own data (issue 27)
    assert "finished: 4 steps" in text and f"adapter saved in {run_dir / 'adapter'}" in text


def test_cli_output_to_a_file_has_a_line_per_logged_step_and_no_bar(small_run):  # finding 12
    _, text, _ = small_run
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/4", "2/4", "3/4", "4/4"], steps
    assert "\r" not in text and "it/s" not in text and "step/s" not in text
    assert len(text.splitlines()) < 40


def test_training_config_does_not_warn_about_gradient_checkpointing():  # finding 12: the cause, not a filter
    from studio.recipes import load_recipe

    for name in ("tiny-quotes", "tiny-dpo"):
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args, _ = recipe.training_config("/tmp/unused", validate_only=True)
        assert args.activation_checkpointing is True  # TRL's default kept
        recipe.train["gradient_checkpointing"] = False  # the old name in a recipe still means the same
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args, _ = recipe.training_config("/tmp/unused", validate_only=True)
        assert args.activation_checkpointing is False and args.gradient_checkpointing is False


def test_every_command_takes_runs_dir_and_a_run_path_or_name(small_run, tmp_path, monkeypatch):  # finding 11
    from studio import cli

    run_dir = small_run[0]
    parser = cli.build_parser()
    for argv in (["data", "x"], ["train", "r"], ["eval", "a"], ["export", "a"], ["recipes"],
                 ["chat", "--persona", "p", "--message", "m"], ["score", "--predictions", "a", "--references", "b"],
                 ["pairs", "build", "s", "--out", "o"]):
        assert parser.parse_args(argv + ["--runs-dir", "/r"]).runs_dir == "/r", argv
    answers = []
    for ref in (str(run_dir), run_dir.name):
        monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "elsewhere"))  # the run is not in the runs folder
        out = io.StringIO()
        args = ["chat", "--model", ref, "--persona", "i like planets.", "--message", "hello", "--k", "0",
                "--max-new-tokens", "4", "--json"]
        if ref == run_dir.name:
            args += ["--runs-dir", str(run_dir.parent)]
        with contextlib.redirect_stdout(out):
            assert cli.main(args) == 0, out.getvalue()
        answers.append(json.loads(out.getvalue())["reply"])
    assert answers[0] == answers[1]  # greedy: the same run, named two ways
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "elsewhere"))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["eval", str(run_dir), "--suite", "instruction", "--limit", "1", "--max-new-tokens", "2"])
    assert code == 0 and "no such run" not in err.getvalue(), err.getvalue()


def test_failed_start_leaves_no_run_folder_and_logs_the_error(tmp_path):  # findings 5, 7
    from conftest import tiny_recipe
    from studio.jobs import latest_job, start_job

    runs = tmp_path / "runs"
    job = start_job(tiny_recipe(model_name_or_path="nobody/no-such-model"), runs_dir=runs, owner="browser-a")
    assert job.wait(120) and job.status == "failed"
    assert not job.run_dir.exists() and not any(runs.iterdir())
    assert job.logs[-1].startswith("failed: ") and job.error in job.logs[-1]
    # a fresh page does not show it; the page that started it does
    assert latest_job(("sft", "lapdog")) is not job and latest_job(("sft", "lapdog"), job.id) is job
    # and its browser, when a poll that crossed the start overwrote the page's record of it (seen once in CI: the
    # failed status never came); another browser does not
    assert latest_job(("sft", "lapdog"), owner="browser-a") is job
    assert latest_job(("sft", "lapdog"), owner="browser-b") is not job
    shown = latest_job(("dpo",), job.id)  # never another tab's run (earlier tests in this process may have DPO runs)
    assert shown is not job and (shown is None or shown.kind == "dpo")


def test_a_poll_that_crossed_a_start_leaves_the_pages_record_of_it():
    """The Train and DPO pages keep the job they started in a State that both the start and the 1 s poll write. A
    poll that read the State before the start wrote it used to write its stale copy back after, and the page lost
    its job: a failed start never showed "failed" (seen once in CI). A poll now writes the State only to change it."""
    from studio.ui.train_tab import watch_slot, written

    started = {"id": "some-run", "banner": True}
    _, _, _, after = watch_slot(("sft",), "browser-x", {})  # the crossing poll: it read {} (no job of its own)
    assert after == {} and written({}, after) == {"__type__": "update"}  # leaves `started` in place
    assert written(None, {}) == {"__type__": "update"}
    assert written(started, {**started, "banner": False}) == {**started, "banner": False}  # a real change is written


def test_data_preview_shows_prompt_and_completion_apart_and_small_data_warning(write):  # findings 3, 4
    from studio.ui.data_tab import inspect

    path = write("planets.jsonl", [{"prompt": "Which planet is called the red planet?", "completion": "Mars."}] * 1
                 + [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)])
    status, info, _, chosen = inspect("Local path", None, None, str(path), "", "", "", "auto", "", "")
    assert "Loaded" in status
    assert "red planet?Mars." not in info
    assert "prompt (context, no loss):" in info and "completion (what the model learns to write):" in info
    assert "too few for a validation split" in info
    assert chosen["prompts"] and all(p.endswith("?") for p in chosen["prompts"])  # this data's prompts


def test_dpo_heldout_rows_show_reward_margin_once_per_prompt(tmp_path):  # finding 6
    from studio.ui.dpo_tab import TABLE_HEADERS, heldout_rows

    row = {"prompt": "p", "chosen": "c", "rejected": "r", "policy_margin": -3.0, "reference_margin": -3.5,
           "reward_margin": 0.05, "prefers_chosen": False}
    (tmp_path / "heldout_margins.json").write_text(json.dumps([row, {**row, "chosen": "c2"}]))
    rows = heldout_rows(tmp_path)
    assert len(rows) == 1 and rows[0][TABLE_HEADERS.index("reward margin")] == 0.05
    assert rows[0][TABLE_HEADERS.index("moved towards chosen")] == "yes"
    assert not any("prefers" in h or "policy" in h for h in TABLE_HEADERS)


def test_token_stream_updates_per_token_and_never_shows_a_cut_character(embedded_path):  # finding 10
    import torch
    from transformers import AutoTokenizer

    from studio.chat import TokenStream

    tok = AutoTokenizer.from_pretrained(embedded_path)
    ids = tok("héllo wörld 😀 done", add_special_tokens=False)["input_ids"]
    stream = TokenStream(tok)
    stream.put(torch.tensor([[1, 2, 3]]))  # the prompt: skipped
    for i in ids:
        stream.put(torch.tensor([i]))
    stream.end()
    updates = list(stream)
    assert updates[-1] == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in u for u in updates)
    assert len(updates) >= len(updates[-1].split()) + 2  # more updates than words: token by token


def test_chat_turns_are_sampled_with_fresh_seeds(monkeypatch):  # finding 10
    from studio.ui import chat_tab

    seeds = []

    def fake_stream(setup, persona, history, k, **kw):
        seeds.append(kw["seed"])
        yield "hi", []

    class Setup:
        backend = "fake backend"

        def describe(self):
            return "fake"

    monkeypatch.setattr("studio.chat.stream_reply", fake_stream)
    monkeypatch.setattr(chat_tab, "_setups", lambda *a: [("A", lambda: Setup(), 0)])
    for _ in range(2):
        *_, last = chat_tab.send("p", "hello", [], [], "m", "", chat_tab.COMPARE[0], "", 0, False, 0.7, 0.9, 1.1, 8)
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert f"seed {seeds[1]}" in last[-1]
