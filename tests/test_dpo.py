"""DPO: pair formats through TRL, from the base and from an SFT adapter, stop/resume, margins, pairs, bad input."""

import json
import time

import pytest

from conftest import ROOT, tiny_recipe
from studio import jobs
from studio import runs as run_folders
from studio.errors import StudioError


@pytest.fixture
def runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("STUDIO_RUNS", str(root))
    return root


def dpo_recipe(**overrides):
    from studio.recipes import load_recipe

    sets = {"max_steps": 2, "logging_steps": 1, "eval_strategy": "no", "save_steps": 100, **overrides}
    return load_recipe(ROOT / "recipes" / "tiny-dpo.yaml", [f"{k}={v}" for k, v in sets.items()])


def _wait(job, timeout=300):
    assert job.wait(timeout), f"job still {job.status}"
    return job


def _metrics(run_dir):
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "metrics"]


PROMPTS = [f"Question: what is {i} plus {i}?\nAnswer:" for i in range(12)]
FORMATS = {
    "explicit prompt": [{"prompt": p, "chosen": f" {2 * i}.", "rejected": " Who cares?"} for i, p in enumerate(PROMPTS)],
    "conversational": [{"prompt": [{"role": "user", "content": p}],
                        "chosen": [{"role": "assistant", "content": f"{2 * i}."}],
                        "rejected": [{"role": "assistant", "content": "Who cares?"}]} for i, p in enumerate(PROMPTS)],
    "implicit prompt (HH)": [{"chosen": f"\n\nHuman: {p}\n\nAssistant: {2 * i}.",
                              "rejected": f"\n\nHuman: {p}\n\nAssistant: Who cares?"} for i, p in enumerate(PROMPTS)],
}


@pytest.mark.parametrize("layout", list(FORMATS))
def test_each_pair_format_trains_through_dpo(layout, write, tmp_path):
    from studio.train.dpo import build_dpo_trainer

    path = write("pairs.jsonl", FORMATS[layout])
    trainer, _tok, data = build_dpo_trainer(dpo_recipe(**{"dataset.source": str(path)}), tmp_path / "run", log=lambda _: None)
    assert data.format.name == "preference" and data.rows == 12
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert len(logged) == 2 and all("rewards/accuracies" in h and "logps/chosen" in h for h in logged)


def test_tiny_dpo_from_base_job_summary_adapter_and_margin_table(runs, embedded_path):
    recipe = dpo_recipe(max_steps=12, logging_steps=2, eval_strategy="steps", eval_steps=12, save_steps=12)
    job = _wait(jobs.start_job(recipe))
    assert job.status == "done", job.error
    metrics = [m for m in _metrics(job.run_dir) if "loss" in m]
    assert metrics and all(all(f"rewards/{k}" in m for k in ("chosen", "rejected", "margins", "accuracies"))
                           for m in metrics)
    s = json.loads((job.run_dir / "summary.json").read_text())
    assert s["train_rewards/accuracies"] > 0.5 and s["train_rewards/margins"] > s["first_train_rewards/margins"]
    assert s["eval_rewards/accuracies"] is not None and s["eval_rewards/margins"] is not None
    assert s["loss_type"] == ["sigmoid"] and s["beta"] == 0.1
    # the adapter loads with plain PEFT, without TRL's frozen reference copy
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert not (job.run_dir / "adapter" / "ref").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(embedded_path)),
                                      str(job.run_dir / "adapter"))
    assert list(model.peft_config) == ["default"]
    # the held-out table: written after training, and the same numbers from disk through preference_margins
    table = json.loads((job.run_dir / "heldout_margins.json").read_text())
    assert len(table) == s["heldout"]["rows"] > 0
    assert set(table[0]) == {"prompt", "chosen", "rejected", "policy_margin", "reference_margin", "reward_margin",
                             "prefers_chosen"}
    assert s["heldout"]["reward_accuracy"] > 0.5
    from studio.metrics import preference_margins

    again = preference_margins(job.id, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in table[:3]])
    for a, b in zip(again, table[:3]):
        assert a["policy_margin"] == pytest.approx(b["policy_margin"], rel=1e-2, abs=1e-2)
        assert a["reference_margin"] == pytest.approx(b["reference_margin"], rel=1e-2, abs=1e-2)
    # the Evaluate tab's DPO row: the same held-out pairs, policy vs reference
    from studio.evaluate import dpo_report

    report = dpo_report(job.id, limit=4)
    assert report["split"] == s["heldout"]["split"] and report["pairs"] == min(4, len(table))
    assert report["preference_accuracy"] > 50 and report["mean_reward_margin"] > 0
    assert report["rows"][0]["policy_margin"] == pytest.approx(table[0]["policy_margin"], rel=1e-2, abs=1e-2)


def test_dpo_from_an_sft_adapter_uses_it_as_the_reference(runs):
    sft = _wait(jobs.start_job(tiny_recipe(max_steps=8, save_steps=8, eval_strategy="no")))
    assert sft.status == "done", sft.error
    job = _wait(jobs.start_job(dpo_recipe(init_adapter=f"runs/{sft.id}", max_steps=1, save_steps=1)))
    assert job.status == "done", job.error
    first = _metrics(job.run_dir)[0]
    # policy == reference (the SFT adapter) at the first step: every reward is zero
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    # …and the base would not have been: the SFT adapter moved the log-probs away from it
    from studio.inference import load_for_inference
    from studio.metrics import margin_table

    rows = [{"prompt": "Question: Who wrote Hamlet?\nAnswer:", "chosen": " Shakespeare.", "rejected": " Who cares?"}]
    loaded = load_for_inference(sft.id)
    t = margin_table(loaded.model, loaded.tokenizer, rows)[0]
    assert abs(t["policy_margin"] - t["reference_margin"]) > 1e-2
    # the run's own table scores against the SFT adapter, not the base
    from studio.metrics import preference_margins

    assert preference_margins(job.id, rows)[0]["reference_margin"] == pytest.approx(t["policy_margin"], abs=1e-3)


def test_init_adapter_problems_are_one_line(runs):
    from studio.inference import init_adapter_run

    (runs / "half").mkdir()
    (runs / "half" / "recipe.yaml").write_text("model_name_or_path: embedded/tiny-llama\n")
    with pytest.raises(StudioError, match="init_adapter half: half: this run has no adapter"):
        init_adapter_run(dpo_recipe(init_adapter="half"))
    with pytest.raises(StudioError, match="no such run"):
        init_adapter_run(dpo_recipe(init_adapter="missing"))
    (runs / "other" / "adapter").mkdir(parents=True)
    (runs / "other" / "adapter" / "adapter_config.json").write_text("{}")
    (runs / "other" / "recipe.yaml").write_text("model_name_or_path: gpt2\n")
    with pytest.raises(StudioError, match="was trained on gpt2, but this recipe's model is embedded/tiny-llama"):
        init_adapter_run(dpo_recipe(init_adapter="other"))


def test_stop_checkpoints_and_resume_finishes(runs):
    job = jobs.start_job(dpo_recipe(max_steps=12, save_steps=100, logging_steps=2))
    deadline = time.time() + 120
    while job.step < 2 and time.time() < deadline:
        time.sleep(0.1)
    job.request_stop()
    _wait(job)
    assert job.status == "cancelled" and job.step < 12
    assert run_folders.resumable(job)
    again = _wait(jobs.start_job(None, resume=job.run_dir))
    assert again.status == "done", again.error
    assert json.loads((job.run_dir / "summary.json").read_text())["steps"] == 12


def test_a_dpo_start_while_another_job_runs_gets_the_busy_line(runs, monkeypatch):
    busy = jobs.Job(runs / "sft-run")
    busy.status = run_folders.RUNNING
    monkeypatch.setattr(jobs, "_current", busy)
    with pytest.raises(StudioError, match="a training job is already running: sft-run"):
        jobs.start_job(dpo_recipe())


# ---- bad input -------------------------------------------------------------------------------------

def _load(source, **sets):
    from studio.pairs import load_pairs

    return load_pairs(dpo_recipe(**{"dataset.source": str(source), **sets}))


def test_identical_pairs_are_dropped_and_counted_all_identical_is_an_error(write):
    rows = FORMATS["explicit prompt"][:10] + [{"prompt": "Q", "chosen": " same", "rejected": " same"}] * 3
    data = _load(write("some.jsonl", rows))
    assert data.dropped == {"chosen equals rejected": 3} and data.rows == 10
    assert all(r["chosen"] != r["rejected"] for split in data.splits.values() for r in split)
    with pytest.raises(StudioError, match="all.jsonl: no usable pairs: in all 3 training pairs chosen equals rejected"):
        _load(write("all.jsonl", [{"prompt": "Q", "chosen": "x", "rejected": "x"}] * 3))


def test_missing_rejected_empty_prompt_and_non_preference_data(write):
    with pytest.raises(StudioError, match=r"half.jsonl: no 'rejected' column"):
        _load(write("half.jsonl", [{"prompt": "Q", "chosen": "A"}]))
    rows = FORMATS["explicit prompt"][:3] + [{"prompt": "  ", "chosen": "A", "rejected": "B"}]
    with pytest.raises(StudioError, match="empty.jsonl line 4: empty prompt"):
        _load(write("empty.jsonl", rows))
    for fmt in ("auto", "preference"):  # detected, or named by the recipe: the message says what the data is
        with pytest.raises(StudioError, match=r"dolly.jsonl holds Instructions \(Dolly.*, not preference pairs; DPO "
                                              r"needs prompt / chosen / rejected.*python -m studio pairs build dolly"):
            _load("dolly", **{"dataset.format": fmt})


# ---- pairs: the builder, the _meta line, labelling ---------------------------------------------------------

def test_pairs_build_cli_writes_meta_and_a_preference_file(tmp_path, capsys):
    from studio.cli import main
    from studio.data import prepare_dataset, read_source
    from studio.pairs import read_meta

    out = tmp_path / "built.jsonl"
    assert main(["pairs", "build", "dolly", "--out", str(out), "--max-rows", "6", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    meta = read_meta(out)
    assert meta["how"].startswith("chosen = the dataset's gold response; rejected = the model's own sampled reply")
    assert meta["model"] == "embedded/tiny-llama" and meta["source"] == "dolly"
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    gold = [r["response"] for r in read_source("dolly").records(["response"], limit=6)]
    assert rows and all(r["chosen"] in gold and r["rejected"] != r["chosen"] for r in rows)
    data = prepare_dataset(str(out), splits="100/0/0")
    assert data.format.name == "preference" and data.rows == len(rows) and data.dropped_total == 0
    assert main(["pairs", "build", "quotes", "--out", str(tmp_path / "q.jsonl")]) == 2
    assert "no prompt / response split" in capsys.readouterr().err


def test_bundled_sample_meta_line_is_not_a_row():
    from studio.data import prepare_dataset
    from studio.data.sources import SAMPLES
    from studio.pairs import read_meta

    data = prepare_dataset("pairs")
    assert data.rows == 84 and data.dropped_total == 0
    assert "dismissive" in read_meta(SAMPLES["pairs"])["how"]


def test_labelling_appends_each_decision_and_resumes(runs):
    from studio import pairs
    from studio.data import prepare_dataset

    prompts = ["Question: How do I make tea?\nAnswer:", "Question: What is rain?\nAnswer:",
               "Question: What is a noun?\nAnswer:"]
    s = pairs.start_labelling("mine", "embedded/tiny-llama", prompts, max_new_tokens=8)
    assert (s["pairs"], s["position"], s["prompt"]) == (0, 0, prompts[0])
    a, b = pairs.candidates("mine")
    assert (a, b) == pairs.candidates("mine") and a != b  # seeded: a reload shows the same two replies
    s = pairs.record_decision("mine", 0, "B", (a, b), (a, " Put a tea bag in hot water."))  # B, edited
    assert s["pairs"] == 1 and s["position"] == 1
    with pytest.raises(StudioError, match="prompt 1 was already labelled"):
        pairs.record_decision("mine", 0, "A", (a, b), (a, b))  # a stale tab
    # an empty side (the model wrote nothing) is refused until the person writes it; what each box holds is kept
    with pytest.raises(StudioError, match="reply B is empty"):
        pairs.record_decision("mine", 1, "A", ("Rain is water.", ""), ("Rain is water falling.", ""))
    with pytest.raises(StudioError, match="reply B is empty"):
        pairs.record_decision("mine", 1, "A", ("Rain is water.", ""), ("Rain is water falling.", "(empty reply)"))
    s = pairs.record_decision("mine", 1, "A", ("Rain is water.", ""), ("Rain is water falling.", "Dunno."))
    assert (s["pairs"], s["position"]) == (2, 2)
    # a "reload": a fresh look at the disk resumes at the third prompt; starting the same name again resumes too
    assert pairs.latest_session() == "mine"
    assert pairs.open_labelling("mine")["position"] == 2
    assert pairs.start_labelling("mine", "embedded/tiny-llama", ["other"])["prompt"] == prompts[2]
    s = pairs.record_decision("mine", 2, "skip", ("x", "y"), ("x", "y"))
    assert (s["pairs"], s["skipped"], s["done"]) == (2, 1, True)
    rows = [json.loads(line) for line in (runs / "pairs" / "mine.jsonl").read_text().splitlines()]
    assert (rows[2]["chosen"], rows[2]["rejected"]) == ("Rain is water falling.", "Dunno.")  # both boxes as written
    assert "labelled by a person" in rows[0]["_meta"]["made_by"]
    assert rows[1] == {"prompt": prompts[0], "chosen": " Put a tea bag in hot water.", "rejected": a}
    assert prepare_dataset(str(runs / "pairs" / "mine.jsonl")).format.name == "preference"
    with pytest.raises(StudioError, match="pairs name '../x' is not allowed"):
        pairs.start_labelling("../x", "embedded/tiny-llama", prompts)
