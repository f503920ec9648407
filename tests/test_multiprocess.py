"""Issue 7: the tiny recipe on 2 CPU processes (torchrun, gloo): one writer, no duplicated steps, the recipe's
effective batch kept across processes, a loadable adapter."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "STUDIO_DATA_CACHE": str(tmp / "cache"),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "studio", "train", "recipes/tiny-quotes.yaml", "--run-name", "two", "--runs-dir", str(tmp / "runs"),
           "--set", "max_steps=8", "--set", "save_steps=4", "--set", "eval_steps=4", "--set", "logging_steps=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "runs" / "two"
    return run, [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()], proc.stdout


def test_one_writer_and_no_duplicated_steps(two_process_run):
    run, events, stdout = two_process_run
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps == list(range(0, 9))  # train begin, then every step once
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "done"]
    assert sum(e["type"] == "summary" for e in events) == 1
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [4, 8]
    assert stdout.strip().splitlines() == [str(run)]  # only the main process reports
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and len(summary["samples"]) == 2


def test_effective_batch_is_kept_across_processes(two_process_run):
    run, events, _ = two_process_run
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert (recipe["per_device_train_batch_size"], recipe["gradient_accumulation_steps"]) == (2, 1)  # 2 × 1 × 2 = 4
    assert any("× 2 processes (effective batch 4 kept)" in e.get("line", "") for e in events)
    # 52 training examples: 8 steps of a global batch of 4 are 32 examples, 32/52 of an epoch
    last = [e for e in events if e["type"] == "progress"][-1]
    assert last["epoch"] == pytest.approx(32 / 52, abs=0.01)
    state = json.loads((run / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2


def test_adapter_loads_on_its_base(two_process_run, embedded_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _, _ = two_process_run
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(embedded_path)), str(run / "adapter"))
    assert any("lora_A" in name for name, _ in model.named_parameters())
