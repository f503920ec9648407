import json
import os
import re
import subprocess
import sys

from conftest import ROOT


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=300)


def test_data_json_shape():
    out = run_cli("data", "dolly", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["format"] == "dolly" and data["dropped"] == 1 and data["rows"] == 29
    assert set(data["splits"]) == {"train", "validation", "test"} and data["example"].startswith("### Instruction:")


def test_data_human_output_and_errors(tmp_path):
    out = run_cli("data", str(ROOT / "assets" / "samples" / "quotes.jsonl"))
    assert out.returncode == 0 and "format:   quotes" in out.stdout and "Quote: “" in out.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n{"text": \n')
    out = run_cli("data", str(bad))
    assert out.returncode == 2 and out.stderr.strip().startswith("error: bad.jsonl line 2: malformed JSON")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    out = run_cli("data", str(bad), "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["error"].startswith("bad.jsonl line 2")


def test_recipes_lists_each(tmp_path):
    out = run_cli("recipes")
    assert out.returncode == 0
    assert {line.split()[0] for line in out.stdout.splitlines()} >= {"tiny-quotes", "gemma-2b-quotes-qlora"}
    lines = out.stdout.splitlines()  # one column per field, whatever the longest model id
    assert len({re.match(r"(\S+\s+){3}", line).end() for line in lines}) == 1, out.stdout


def test_train_prints_run_folder(tmp_path):
    out = run_cli("train", "recipes/tiny-quotes.yaml", "--runs-dir", str(tmp_path), "--set", "max_steps=6",
                  "--set", "eval_steps=3", "--set", "save_steps=3", "--run-name", "my-run")
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = out.stdout.strip().splitlines()[-1]
    assert run_dir == str(tmp_path / "my-run")
    again = run_cli("train", "recipes/tiny-quotes.yaml", "--runs-dir", str(tmp_path), "--run-name", "my-run")
    assert again.returncode == 2 and "a finished run already has this name" in again.stderr
    assert json.loads(open(os.path.join(run_dir, "summary.json")).read())["steps"] == 6
    out = run_cli("train", "recipes/tiny-quotes.yaml", "--set", "bogus_key=1")
    assert out.returncode == 2 and "unknown key 'bogus_key'" in out.stderr
