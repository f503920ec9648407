"""Export: adapter / merged / GGUF equivalence, model cards, token order and secrecy, pushes to a fake Hub."""

import json
import logging
import time
import zipfile
from pathlib import Path

import pytest

from conftest import runs_env, tiny_recipe
from fake_hub import FakeHub
from studio import access, export, gguf_export, hub
from studio.errors import StudioError

PLANTED = "hf_PLANTEDsecretLoRAStudio0123456789"
GOOD = "hf_goodtoken0000000000"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with runs_env(tmp_path_factory.mktemp("export") / "runs") as root:
        yield root


def _train(runs, name, **overrides):
    from studio import jobs

    sets = {"max_steps": 10, "save_steps": 100, "eval_strategy": "no", "logging_steps": 2, **overrides}
    job = jobs.start_job(tiny_recipe(**sets), runs_dir=runs, run_name=name)
    assert job.wait(300) and job.status == "done", job.error
    return job.run_dir


@pytest.fixture(scope="module")
def run(runs):
    return _train(runs, "quotes")


@pytest.fixture(scope="module")
def exported(run):
    """All parts, merged sharded into several files, each part checked by the export itself."""
    return export.export_run(run.name, merge=True, gguf=["f16", "q8_0"], max_shard_size="200KB", log=lambda _: None)


@pytest.fixture(scope="module")
def reference(run):
    """The run's adapter on its base, as every other tab loads it, and its greedy output."""
    from studio.inference import generate, load_for_inference

    loaded = load_for_inference(run.name)
    prompts = export.run_recipe(run)["eval_prompts"]
    return prompts, generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=24)


def _greedy(model, tok, prompts):
    from studio.inference import generate

    return generate(model.eval(), tok, prompts, max_new_tokens=24)


def test_adapter_and_merged_load_with_plain_libraries_and_match(exported, reference, embedded_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts, want = reference
    adapter, merged = exported.parts["adapter"], exported.parts["merged"]
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(adapter)
    assert _greedy(AutoPeftModelForCausalLM.from_pretrained(adapter), tok, prompts) == want
    on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_path), adapter)
    assert _greedy(on_base, tok, prompts) == want
    # merged: sharded safetensors, fp32 on this CPU, no LoRA modules left
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert str(model.dtype) == "torch.float32" and not any("lora" in n for n, _ in model.named_parameters())
    assert _greedy(model, AutoTokenizer.from_pretrained(merged), prompts) == want
    assert all("identical to the adapter's on 2/2" in line for k, line in exported.checks.items()
               if not k.endswith(".gguf")), exported.checks
    # GGUF: judged by llama.cpp when installed, against the merged model's prompt ids and greedy tokens
    assert all("prompt ids identical on 2/2" in line and "identical to the merged model's (transformers) on 2/2"
               in line for k, line in exported.checks.items() if k.endswith(".gguf")), exported.checks


def test_gguf_round_trip_through_transformers_loader(exported, reference):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts, want = reference
    folder = exported.parts["gguf"]
    f16, q8 = folder / "quotes-f16.gguf", folder / "quotes-q8_0.gguf"
    reader = gguf.GGUFReader(str(q8))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert q8.stat().st_size < f16.stat().st_size
    # the tokenizer round-trips: same ids for text, specials and the chat template
    hf_tok = AutoTokenizer.from_pretrained(exported.parts["merged"])
    merged = AutoModelForCausalLM.from_pretrained(exported.parts["merged"]).eval()
    text = ["Quote: Don’t stop — 123 wörds 😀", hf_tok.apply_chat_template(
        [{"role": "user", "content": "hi there"}], tokenize=False, add_generation_prompt=True)]
    for path in (f16, q8):
        model, tok = gguf_export.load_gguf(path)
        assert [tok(t)["input_ids"] for t in text] == [hf_tok(t)["input_ids"] for t in text]
        assert tok.chat_template == hf_tok.chat_template and tok.eos_token == hf_tok.eos_token
        got = _greedy(model, tok, prompts)
        # f16: greedy text identical to the adapter's. q8_0 (8-bit blocks) may drift: we compare the
        # next-token choice at every position of the prompts (teacher-forced), and here also the text.
        enc = hf_tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            a = merged(**enc).logits.argmax(-1)[enc["attention_mask"].bool()]
            b = model(**enc).logits.argmax(-1)[enc["attention_mask"].bool()]
        agree = (a == b).float().mean().item()
        if path == f16:
            assert got == want and agree == 1.0
        else:
            assert agree >= 0.95, agree
            assert got == want  # holds for this model; the export's own check reports it either way


def test_qlora_adapter_merges_onto_the_16bit_base(runs):
    from transformers import AutoModelForCausalLM

    run = _train(runs, "quotes-qlora", load_in_4bit=True, max_steps=4)
    result = export.export_run(run.name, merge=True, adapter=False, log=lambda _: None)
    assert any("4-bit base" in n and "float32" in n for n in result.notes)
    merged = AutoModelForCausalLM.from_pretrained(result.parts["merged"])
    assert getattr(merged.config, "quantization_config", None) is None
    assert str(merged.dtype) == "torch.float32"
    assert result.checks["merged"].startswith("greedy output (24 new tokens) identical to the adapter's on 2/2")
    card = (result.parts["merged"] / "README.md").read_text()
    assert "qlora" in card and "4-bit base" in card


def test_model_cards_parse_and_hold_no_paths_or_tokens(run, exported, tmp_path):
    from huggingface_hub import ModelCard

    (run / "eval").mkdir(exist_ok=True)
    from studio.evaluate.results import save_result  # what the Evaluate tab saves, as it saves it

    save_result({"name": "quotes-test", "owner": run.name, "labels": ["base (x)", run.name], "config": {},
                 "metrics": {"base (x)": {"bleu": 1.0}, run.name: {"bleu": 12.5, "rougeL": 30.25}}, "rows": []})
    export.write_card(tmp_path, run, "adapter", repo_id="me/quotes")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"lora", "trl", "sft", "lora-studio"} <= set(card.data.tags)
    assert card.data.base_model is None  # the embedded model is no Hub id: named in the text instead
    assert "embedded/tiny-llama" in card.text and "me/quotes" in card.text
    assert "final loss" in card.text and "bleu" in card.text and "model_name_or_path: embedded/tiny-llama" in card.text
    for kind, part in exported.parts.items():
        meta = ModelCard.load(part / "README.md").data
        assert meta.library_name == {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[kind]
    for text in [(tmp_path / "README.md").read_text()] + [(p / "README.md").read_text() for p in exported.parts.values()]:
        assert str(run.parent) not in text and str(Path.home()) not in text and "/tmp/" not in text
        assert "hf_" not in text


def test_card_strips_local_paths_and_secrets_from_the_recipe(runs, tmp_path):
    run = runs / "by-hand"
    run.mkdir()
    (run / "recipe.yaml").write_text(f"name: x\nmethod: sft\nmodel_name_or_path: {tmp_path}/my-model\n"
                                     f"dataset:\n  source: {tmp_path}/data.jsonl\nnote: hf_inTheRecipe0123456789\n")
    text = str(export.model_card(run, "merged"))
    assert str(tmp_path) not in text and "inTheRecipe" not in text and "data.jsonl" in text and "my-model" in text


def test_update_cards_brings_a_later_evaluation_into_every_exported_card(run, exported):
    """Issue 34: cards exported before an evaluation learn of it by Update cards (no re-export); each card still
    loads with huggingface_hub, keeps its usage (GGUF: the first file) and the export's notes."""
    from huggingface_hub import ModelCard

    from studio.evaluate.results import save_result
    from studio.ui.export_tab import cards_html

    before = {kind: (part / "README.md").read_text() for kind, part in exported.parts.items()}
    assert all("after-export" not in text for text in before.values())
    time.sleep(0.01)  # results are read oldest first by modification time
    save_result({"name": "after-export", "owner": run.name, "labels": ["base (x)", run.name], "config": {},
                 "metrics": {"base (x)": {"f1": 3.0}, run.name: {"f1": 41.5}}, "rows": []})
    assert export.update_cards(run.name) == ["adapter", "merged", "gguf"]
    for kind, part in exported.parts.items():
        card = ModelCard.load(part / "README.md")
        results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results or []}
        assert results.get(("data (after-export)", "f1")) == 41.5, (kind, results)
        assert "**after-export**" in card.text and "| f1 | 3 | 41.5 |" in card.text
        assert card.data.library_name == {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[kind]
        usage = before[kind].split("## Usage")[1].split("## Training")[0]
        assert usage in card.text  # the same usage block (GGUF: the Modelfile's first file)
    assert "quotes-f16.gguf" in (exported.parts["gguf"] / "README.md").read_text()
    assert "after-export" in export.card_evaluations(run.name)
    assert "after-export" in cards_html(["adapter"], export.card_evaluations(run.name))


def test_update_cards_refuses_a_run_with_no_export_in_one_line(runs):
    run = _train(runs, "not-exported", max_steps=2)
    with pytest.raises(StudioError, match=r"^run 'not-exported' has no exported part yet: press Export first$"):
        export.update_cards(run.name)


def test_card_names_the_runs_own_data_and_hardware(runs, tmp_path):
    """Issue 34: a recipe run on other data shows a block named after the run and the recipe it started from,
    not `name: tiny-quotes` for capitals data; the hardware the run recorded is in the card."""
    from huggingface_hub import ModelCard

    from studio.train.common import describe_hardware

    run = runs / "capitals-run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: tiny-quotes\ndescription: Embedded tiny Llama + LoRA on the bundled English "
                                     "quotes sample\nmethod: sft\nmodel_name_or_path: embedded/tiny-llama\n"
                                     f"dataset:\n  source: {tmp_path}/capitals.jsonl\n")
    hardware = describe_hardware()
    assert hardware.startswith("CPU only: ") and "threads" in hardware and "torch " in hardware
    (run / "summary.json").write_text(json.dumps({"steps": 2, "hardware": hardware}))
    export.write_card(tmp_path, run, "merged")
    card = ModelCard.load(tmp_path / "README.md")
    recipe_block = card.text.split("## Recipe")[1]
    assert "name: capitals-run" in recipe_block and "name: tiny-quotes" not in recipe_block
    assert "# recipe tiny-quotes, its data swapped for a local file, `capitals.jsonl`" in recipe_block
    assert "source: capitals.jsonl" in recipe_block and "English quotes" not in card.text
    assert f"| hardware | {hardware} |" in card.text and "not recorded" not in card.text
    # the recipe's own data: the block is the recipe as it was
    (run / "recipe.yaml").write_text("name: tiny-quotes\nmethod: sft\nmodel_name_or_path: embedded/tiny-llama\n"
                                     "dataset:\n  source: quotes\n")
    (run / "summary.json").write_text(json.dumps({"steps": 2}))
    text = str(export.model_card(run, "adapter"))
    assert "name: tiny-quotes" in text and "# recipe" not in text and "| hardware | not recorded by this run |" in text


def test_gguf_refuses_other_architectures_in_one_line(exported):
    from transformers import AutoTokenizer, PhiConfig

    tok = AutoTokenizer.from_pretrained(exported.parts["merged"])
    line = export.gguf_unsupported(PhiConfig(), tok)
    assert "'phi'" in line and "\n" not in line and "convert_hf_to_gguf" in line


def test_zip_and_cli(run, exported, tmp_path, capsys):
    from studio.cli import main

    zipped = export.zip_export(exported)
    names = zipfile.ZipFile(zipped).namelist()
    assert "adapter/adapter_model.safetensors" in names and "gguf/quotes-f16.gguf" in names
    assert "merged/model.safetensors.index.json" in names
    assert main(["export", "quotes", "--gguf", "--out", str(tmp_path / "out"), "--no-check"]) == 0
    out = capsys.readouterr().out
    assert f"adapter: {tmp_path / 'out' / 'adapter'}" in out and "gguf:" in out
    assert (tmp_path / "out" / "gguf" / "quotes-f16.gguf").exists() and not (tmp_path / "out" / "merged").exists()
    assert main(["export", "quotes", "--gguf", "q4_k"]) == 2
    assert "q4_k" in capsys.readouterr().err


# ---- tokens ---------------------------------------------------------------------------------------
@pytest.fixture
def no_tokens(monkeypatch):
    import huggingface_hub

    for name in ("HF_TOKEN", "STUDIO_DEMO", "STUDIO_SHARED", "SPACE_ID", "STUDIO_OWNERS", "SPACE_AUTHOR_NAME",
                 "STUDIO_DEMO_SIGNED_IN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    return monkeypatch


def test_token_order(no_tokens):
    import huggingface_hub

    class OAuth:
        token = "hf_oauthoauthoauth"

    with pytest.raises(StudioError, match="no Hugging Face token"):
        hub.resolve_token()
    no_tokens.setattr(huggingface_hub, "get_token", lambda: "hf_cachedcachedcached")
    assert hub.resolve_token().source == "the cached `hf auth login` token"
    no_tokens.setenv("HF_TOKEN", "hf_envenvenvenvenv")
    assert hub.resolve_token().value == "hf_envenvenvenvenv"
    assert hub.resolve_token(typed=" hf_typedtypedtyped ").value == "hf_typedtypedtyped"
    assert hub.resolve_token(OAuth(), typed="hf_typedtypedtyped").value == "hf_oauthoauthoauth"
    assert "hf_" not in repr(hub.resolve_token(OAuth()))
    # a shared page never borrows the owner's HF_TOKEN / cached login; the command line still does
    no_tokens.setenv("STUDIO_SHARED", "1")
    with pytest.raises(StudioError, match="not lent to visitors"):
        hub.resolve_token(from_page=True)
    assert hub.resolve_token(typed="hf_typedtypedtyped", from_page=True).source == "the token typed in this tab"
    assert hub.resolve_token().value == "hf_envenvenvenvenv"
    # a demo Space: the visitor's own sign-in and nothing else
    no_tokens.setenv("STUDIO_DEMO", "1")
    with pytest.raises(StudioError, match="your own Hugging Face account"):
        hub.resolve_token(typed="hf_typedtypedtyped", from_page=True)
    assert hub.resolve_token(OAuth(), from_page=True).source == "your Hugging Face sign-in"


def test_demo_mode_permissions(no_tokens):
    assert access.can_work(None)  # not a demo: the person at the keyboard is the owner
    no_tokens.setenv("STUDIO_DEMO", "1")
    no_tokens.setenv("SPACE_AUTHOR_NAME", "Owner")
    no_tokens.setenv("STUDIO_OWNERS", "friend, colleague")
    assert not access.can_train(None) and not access.can_export({"preferred_username": "stranger"})
    assert access.can_push({"preferred_username": "owner"}) and access.can_see_logs("friend")
    with pytest.raises(StudioError, match="sign in with Hugging Face first"):
        access.require_work(None, "training")
    with pytest.raises(StudioError, match="only to the owner of this demo"):
        access.require_work("stranger", "export")
    no_tokens.setenv("STUDIO_DEMO_SIGNED_IN", "1")
    assert access.can_train("stranger") and not access.can_train(None)


# ---- pushes against a stand-in Hub --------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest runs everything offline
    with FakeHub(good=(GOOD, PLANTED)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_push_creates_the_repo_and_uploads_in_one_commit(exported, fake_hub):
    token = hub.Token(GOOD, "the token typed in this tab")
    seen = []
    url = hub.push({"adapter": exported.parts["adapter"]}, "me/quotes-adapter", token, private=True,
                   message="first adapter", progress=seen.append)
    repo = fake_hub.repos["me/quotes-adapter"]
    assert repo["private"] and repo["commits"] == ["first adapter"] and url.startswith(fake_hub.url)
    assert set(repo["files"]) == {p.name for p in exported.parts["adapter"].iterdir()}
    assert repo["files"]["adapter_model.safetensors"] == (exported.parts["adapter"] / "adapter_model.safetensors").read_bytes()
    # PEFT recorded the embedded base's absolute cache folder: the local export keeps it (it loads from there),
    # the pushed copy names the base instead, and no pushed file carries a path of this machine
    local = json.loads((exported.parts["adapter"] / "adapter_config.json").read_text())
    pushed = json.loads(repo["files"]["adapter_config.json"])
    assert local["base_model_name_or_path"].startswith("/") and pushed["base_model_name_or_path"] == "embedded/tiny-llama"
    assert {k: v for k, v in pushed.items() if k != "base_model_name_or_path"} == \
        {k: v for k, v in local.items() if k != "base_model_name_or_path"}
    home = str(Path(local["base_model_name_or_path"]).parent.parent).encode()
    assert [name for name, data in repo["files"].items() if home in data] == []
    commits = [r for r in fake_hub.requests if "/commit/" in r["path"]]
    assert len(commits) == 1 and all(r["auth"] == f"Bearer {GOOD}" for r in fake_hub.requests)
    assert any("private" in s for s in seen) and any(s.startswith("pushed:") for s in seen)
    # several parts: merged at the root, the others in sub-folders; public
    hub.push(exported.parts, "me/quotes", token)
    files = fake_hub.repos["me/quotes"]["files"]
    assert not fake_hub.repos["me/quotes"]["private"]
    assert {"config.json", "README.md", "adapter/adapter_config.json", "gguf/quotes-q8_0.gguf"} <= set(files)


def test_failed_pushes_are_one_line_fast_and_keep_the_export(exported, fake_hub, monkeypatch):
    from huggingface_hub import constants

    before = {k: _snapshot(p) for k, p in exported.parts.items()}
    cases = [(hub.Token("hf_wrongwrongwrongwrong", "the token typed in this tab"), "me/x", "refused"),
             (hub.Token(GOOD, "HF_TOKEN"), "someone-else/x", "no rights to write someone-else/x")]
    for token, repo, expect in cases:
        t = time.time()
        with pytest.raises(StudioError, match=expect) as e:
            hub.push({"adapter": exported.parts["adapter"]}, repo, token)
        assert time.time() - t < 5 and "\n" not in str(e.value) and token.value not in str(e.value)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network
    t = time.time()
    with pytest.raises(StudioError, match="can't reach the Hub"):
        hub.push({"adapter": exported.parts["adapter"]}, "me/x", hub.Token(GOOD, "HF_TOKEN"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StudioError, match="offline mode is on"):
        hub.push({"adapter": exported.parts["adapter"]}, "me/x", hub.Token(GOOD, "HF_TOKEN"))
    assert time.time() - t < 10
    with pytest.raises(StudioError, match="your-name/model-name"):
        hub.push({"adapter": exported.parts["adapter"]}, "../etc", hub.Token(GOOD, "HF_TOKEN"))
    assert {k: _snapshot(p) for k, p in exported.parts.items()} == before
    # and the same push works once the Hub answers again
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    hub.push({"adapter": exported.parts["adapter"]}, "me/x", hub.Token(GOOD, "HF_TOKEN"))
    assert "me/x" in fake_hub.repos


def test_typed_and_env_tokens_never_reach_disk_logs_or_cards(run, runs, fake_hub, no_tokens, caplog, capfd, tmp_path):
    from studio.cli import main

    caplog.set_level(logging.DEBUG)
    no_tokens.setenv("HF_TOKEN", PLANTED)
    no_tokens.setenv("TMPDIR", str(tmp_path))  # the zip and any temp file land where we can read them
    import tempfile

    no_tokens.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["export", run.name, "--merge", "--no-check", "--push", "me/leak-env", "--private"]) == 0
    no_tokens.delenv("HF_TOKEN")
    typed = hub.resolve_token(typed=PLANTED, from_page=True)
    hub.push({"adapter": export.default_out(run) / "adapter"}, "me/leak-typed", typed)
    with pytest.raises(StudioError) as e:  # a refused token is not echoed back either
        hub.push({"adapter": export.default_out(run) / "adapter"}, "me/x", hub.Token(PLANTED + "x", "typed"))
    export.zip_export(export.export_run(run.name, log=lambda _: None, check=False))
    produced = [str(e.value), caplog.text, *capfd.readouterr()]
    for folder in (runs, tmp_path):
        produced += [p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()]
    for repo in fake_hub.repos.values():  # what reached the Hub: cards and files
        produced += [b.decode("utf-8", "replace") for b in repo["files"].values()]
    assert fake_hub.repos["me/leak-env"]["private"] and fake_hub.repos["me/leak-typed"]["files"]
    assert not [text[:80] for text in produced if "PLANTEDsecret" in text]


def test_colab_notebook_keeps_colab_torch_mounts_drive_and_shares():
    from conftest import ROOT

    nb = json.loads((ROOT / "assets" / "colab.ipynb").read_text())
    assert nb["nbformat"] == 4 and all(c["cell_type"] in ("markdown", "code") for c in nb["cells"])
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    install = next(c for c in code if "pip install" in c)
    assert "grep -v '^torch'" in install and "-c /tmp/keep-torch.txt" in install and "torch==" not in install.replace(
        "torch=={torch.__version__}", "")
    assert any("drive.mount" in c and 'os.environ["STUDIO_RUNS"]' in c for c in code)
    assert "--share" in code[-1] and "app.py" in code[-1]
    for c in code:  # every code cell is valid Python once IPython's ! and % lines stand for a statement
        lines = [line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("!", "%")) else line
                 for line in c.splitlines()]
        compile("\n".join(lines), "cell", "exec")


def _notebook_cells(params: dict, content: str) -> list[str]:
    """The Colab notebook's code cells as plain Python: `!cmd` and `%magic arg` lines call recorders (what IPython
    would run), a `#@param` field takes the value given in `params` (what a person types into the form), and Colab's
    /content folder is `content`."""
    import re

    from conftest import ROOT

    nb = json.loads((ROOT / "assets" / "colab.ipynb").read_text())
    cells = []
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        lines = []
        for line in "".join(cell["source"]).replace("/content", content).splitlines():
            indent, body = line[:len(line) - len(line.lstrip())], line.lstrip()
            field = re.match(r"(\w+) = .*#@param", body)
            if field and field.group(1) in params:
                body = f"{field.group(1)} = {params[field.group(1)]!r}"
            elif body.startswith("!"):
                body = f"_system({body[1:]!r})"
            elif body.startswith("%"):
                name, _, arg = body[1:].partition(" ")
                body = f"_magic({name!r}, {arg!r})"
            lines.append(indent + body)
        cells.append("\n".join(lines))
    return cells


def _run_notebook(cells, tmp_path, monkeypatch):
    """Run the cells in order with the network and Colab stubbed: shell lines are recorded (a clone makes the
    folder), `%cd` changes folder, google.colab's drive and secrets are fakes. Returns the shell lines run."""
    import os
    import re
    import sys
    import types

    ran = []

    def system(cmd):
        ns = sys._getframe(1).f_globals
        expanded = re.sub(r"\{(\w+)\}", lambda m: str(ns[m.group(1)]), cmd)
        expanded = re.sub(r"\$(\w+)", lambda m: os.environ.get(m.group(1), ""), expanded)
        ran.append(expanded)
        if expanded.startswith("git clone"):
            (tmp_path / expanded.split()[-1]).mkdir()

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=lambda path: os.makedirs(path, exist_ok=True))
    colab.userdata = types.SimpleNamespace(get=lambda name: "hf_PLANTEDnotebook")
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    for name in ("STUDIO_RUNS", "HF_TOKEN", "STUDIO_AUTH", "STUDIO_OWNERS"):
        monkeypatch.setenv(name, "")
    monkeypatch.chdir(tmp_path)
    ns = {"_system": system, "_magic": lambda name, arg: os.chdir(arg) if name == "cd" else None}
    for cell in cells:
        exec(compile(cell, "cell", "exec"), ns)
    return ran, ns


def test_colab_notebook_refuses_the_placeholder_repository_in_one_line(tmp_path, monkeypatch):
    cells = _notebook_cells({}, str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        _run_notebook(cells[:1], tmp_path, monkeypatch)
    said = str(stopped.value)
    assert "placeholder" in said and "REPO" in said and "\n" not in said
    assert not (tmp_path / "lora-studio").exists()  # nothing cloned, no %cd into a folder that is not there


def test_colab_notebook_runs_cell_by_cell_with_a_repository_and_accounts(tmp_path, monkeypatch):
    import os

    cells = _notebook_cells({"REPO": "https://example.org/me/lora-studio", "USE_DRIVE": True,
                             "ACCOUNTS": "me:pw-me, friend:pw-friend"}, str(tmp_path))
    ran, ns = _run_notebook(cells, tmp_path, monkeypatch)
    assert ran[0] == "git clone --depth 1 https://example.org/me/lora-studio lora-studio"
    assert any(cmd.startswith("pip install") and "-c /tmp/keep-torch.txt" in cmd for cmd in ran)
    runs = tmp_path / "drive" / "MyDrive" / "lora-studio" / "runs"
    assert os.environ["STUDIO_RUNS"] == str(runs) and runs.is_dir()  # on Drive: survives a runtime reset
    assert os.environ["STUDIO_AUTH"] == "me:pw-me,friend:pw-friend" and os.environ["STUDIO_OWNERS"] == "me"
    assert ran[-1] == f'python app.py --share --runs-dir "{runs}"'
    assert "hf_PLANTEDnotebook" not in "".join(ran)  # the secret reaches the environment, never a command line
