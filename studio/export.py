"""Export a run: its adapter, the merged model, GGUF files, each with a model card; check each one loads.

One output folder (default ``runs/<run>/export``) holds what was asked for:

    adapter/   adapter_model.safetensors + adapter_config.json + tokenizer + README.md
    merged/    the base with the adapter merged in (sharded safetensors) + tokenizer + README.md
    gguf/      <run>-f16.gguf, <run>-q8_0.gguf, <run>-q4_k_m.gguf … + Modelfile + README.md

Each part is written to a temporary sibling folder and renamed into place, so a part is either
complete or absent. The checks load every part back with plain transformers / PEFT and compare
greedy output with the run's adapter on its base; each GGUF is judged by llama.cpp itself when
llama-cpp-python is installed (prompt ids and 16 greedy tokens against the merged model in transformers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError
from studio.gguf_export import CHECK_NEW_TOKENS as GGUF_CHECK_TOKENS
from studio.gguf_export import check_gguf, check_gguf_types, gguf_unsupported, write_gguf_files
from studio.gguf_export import reference as gguf_reference
from studio.gguf_export import write_modelfile

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")
CHECK_PROMPTS = ["Quote:"]
CHECK_TOKENS = 24


@dataclass
class ExportResult:
    run: str
    out: Path
    parts: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)  # part → one line: what was compared, what came out

    def files(self) -> list[Path]:
        return sorted(p for part in self.parts.values() for p in part.rglob("*") if p.is_file())

    def describe(self) -> list[str]:
        lines = [f"{name}: {path} ({size_text(path)})" for name, path in self.parts.items()]
        return lines + [f"check {k}: {v}" for k, v in self.checks.items()] + self.notes


def size_text(path: Path) -> str:
    n = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


# ---- the run ------------------------------------------------------------------------------------
def run_recipe(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "recipe.yaml").read_text("utf-8")) or {}


def merge_dtype(base_config):
    """The base's own 16-bit dtype on a GPU (bf16 if it has none, fp16 where bf16 is missing); fp32 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype in (torch.float16, torch.bfloat16):
        return dtype if dtype != torch.bfloat16 or torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_adapter_model(run_dir: Path):
    """(PeftModel on the base in its 16-bit dtype, tokenizer, note). A 4-/8-bit-trained adapter goes on the
    unquantized base: merging into quantized weights would round the merge away."""
    from peft import PeftModel
    from transformers import AutoConfig
    from trl import ModelConfig

    from studio.inference import run_adapter, run_base_model
    from studio.models import load_model, load_tokenizer, resolve_model_path

    base = run_base_model(run_dir)
    adapter = run_adapter(run_dir)
    recipe = run_recipe(run_dir)
    from studio.access import hub_token

    config = AutoConfig.from_pretrained(resolve_model_path(base), token=hub_token())
    dtype = merge_dtype(config)
    note = None
    if recipe.get("load_in_4bit") or recipe.get("load_in_8bit"):
        bits = 4 if recipe.get("load_in_4bit") else 8
        note = (f"trained on a {bits}-bit base: the adapter is merged onto the base reloaded in "
                f"{str(dtype).replace('torch.', '')} (not quantized), so the merged model is a full-precision model")
    model = load_model(ModelConfig(model_name_or_path=base, dtype=str(dtype).replace("torch.", "")))
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, load_tokenizer(str(adapter)), note


# ---- parts --------------------------------------------------------------------------------------
class _Part:
    """Write into a temporary sibling; rename into place only when complete."""

    def __init__(self, out: Path, name: str):
        self.final = out / name
        out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}-"))

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return False


def write_adapter(run_dir: Path, folder: Path) -> None:
    from studio.inference import run_adapter

    src = run_adapter(run_dir)
    for name in ADAPTER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, folder / name)
    if not (folder / "adapter_model.safetensors").exists():
        raise StudioError(f"{run_dir.name}: the adapter has no adapter_model.safetensors")


# ---- checks: load each part back with plain libraries -------------------------------------------
def _greedy(model, tokenizer, prompts) -> list[str]:
    from studio.inference import generate

    return generate(model, tokenizer, prompts, max_new_tokens=CHECK_TOKENS)


def _compare(got: list[str], want: list[str]) -> str:
    same = sum(a == b for a, b in zip(got, want))
    line = f"greedy output ({CHECK_TOKENS} new tokens) identical to the adapter's on {same}/{len(want)} prompts"
    if same < len(want):
        i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        line += f"; first difference on prompt {i + 1}: {got[i][:60]!r} vs {want[i][:60]!r}"
    return line


def check_adapter(folder: Path, prompts, want) -> str:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(folder), dtype="float32")
    return _compare(_greedy(model.eval(), AutoTokenizer.from_pretrained(str(folder)), prompts), want)


def check_merged(folder: Path, prompts, want) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    return _compare(_greedy(model.eval(), AutoTokenizer.from_pretrained(str(folder)), prompts), want)


# ---- model cards --------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _public(value):
    """What may appear in a card: absolute local paths become their last part (the embedded model its id),
    token-like strings go."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str):
        return public_base(_TOKEN.sub("hf_***", value))
    return value


PATH_KEYS = ("base_model_name_or_path", "_name_or_path", "name_or_path")  # where libraries record a base's folder


def public_base(value: str) -> str:
    """What a pushed file says its base is: the embedded model's id for its cache folder, a local folder's
    name for any other absolute path (this machine's paths are never published), anything else as is."""
    from studio.embedded import EMBEDDED_MODEL_ID, embedded_model_path

    if not (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return value
    if Path(value).expanduser().resolve() == embedded_model_path().resolve():
        return EMBEDDED_MODEL_ID
    return Path(value).name


def public_json(path: Path) -> bytes | None:
    """A JSON file as it should be pushed when it records a local base path (PEFT's adapter_config.json
    keeps the absolute folder of an embedded or local base); None when the file can go as it is."""
    if path.suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    changed = {k: public_base(data[k]) for k in PATH_KEYS if isinstance(data.get(k), str)}
    changed = {k: v for k, v in changed.items() if v != data[k]}
    if not changed:
        return None
    return (json.dumps({**data, **changed}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _base_licence(base: str) -> str | None:
    """The base model's licence from its own card, when it is at hand (a local folder or the Hub cache)."""
    from huggingface_hub import ModelCard, hf_hub_download

    from studio.models import resolve_model_path

    path = Path(resolve_model_path(base)) / "README.md"
    try:
        if not path.exists() and _HUB_ID.match(base):
            path = Path(hf_hub_download(base, "README.md", local_files_only=True))
        return ModelCard.load(path).data.license if path.exists() else None
    except Exception:  # noqa: BLE001 - no licence known: the card says nothing rather than guess
        return None


def data_label(source) -> str:
    """The run's data as a reader of its card knows it: a bundled sample, a Hub dataset or a file's name."""
    from studio.data import SAMPLES

    text = str(source or "").strip()
    if text.removeprefix("sample:") in SAMPLES:
        return f"the bundled `{text.removeprefix('sample:')}` sample"
    if _HUB_ID.match(text) and not Path(text).exists():
        return f"the Hub dataset [{text}](https://huggingface.co/datasets/{text})"
    return f"a local file, `{Path(text).name}`" if text else "data not recorded by this run"


def example_prompt(run_dir: Path, recipe: dict) -> tuple[str, bool]:
    """(a prompt from the run's own data, whether it is a chat message): the first held-out row as training
    split it, else the recipe's first sample prompt. The card's usage example asks what the model learned."""
    ds = recipe.get("dataset") or {}
    try:
        from studio.evaluate.items import dataset_items

        items, _ = dataset_items(str(ds.get("source") or ""), ds.get("format"), ds.get("template"),
                                 ds.get("splits", "80/10/10"), int(recipe.get("seed", 42)), limit=1)
        if items and items[0].turns and isinstance(items[0].turns[0], str) and items[0].turns[0].strip():
            return items[0].turns[0], bool(items[0].chat)
    except Exception:  # noqa: BLE001 - the data may be gone (a temp upload) or unreadable offline: fall back
        pass
    prompts = [str(p) for p in recipe.get("eval_prompts") or [] if str(p).strip()]
    return (prompts[0] if prompts else "Hello"), False


def _eval_results(run_dir: Path) -> list[dict]:
    """The run's saved evaluations, read by `studio.evaluate.results` (the module that writes them): for each,
    what it ran on, its columns and, per metric, each column's number; `own` is this run's column."""
    from studio.evaluate.results import run_results

    found = []
    for result in run_results(run_dir):
        labels = [lab for lab in result["labels"] if isinstance(result["metrics"].get(lab), dict)]
        own = run_dir.name if run_dir.name in labels else (labels[-1] if labels and result.get("owner") == run_dir.name
                                                            else None)
        if own is None:
            continue
        names = [k for k, v in result["metrics"][own].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        config = result.get("config") or {}
        data = config.get("data") or {}
        source = data.get("source") or (f"suite {config['suite']}" if config.get("suite") else "?")
        found.append({"name": str(result.get("name")), "source": str(source), "split": data.get("split"),
                      "chat": [lab for lab in config.get("chat_template_for") or [] if lab in labels],
                      "rows": data.get("rows") or len(result.get("rows") or []), "labels": labels, "own": own,
                      "metrics": {k: {lab: result["metrics"][lab].get(k) for lab in labels} for k in names}})
    return found


def _eval_section(evals: list[dict]) -> list[str]:
    lines = ["## Evaluation", "", "Greedy decoding, the same rows for every column; each base is loaded on its own, "
             "each run is its adapter on that base (LoRA Studio's Evaluate tab or `python -m studio eval`).", ""]
    for ev in evals:
        rows = f", {ev['split']} split" if ev["split"] else ""
        lines += [f"**{ev['name']}**: {_public(ev['source'])}{rows}, {ev['rows']} rows", "",
                  "| metric | " + " | ".join("**this model**" if lab == ev["own"] else _public(lab)
                                             for lab in ev["labels"]) + " |",
                  "|---|" + "---:|" * len(ev["labels"])]
        for metric, values in ev["metrics"].items():
            cells = [f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"
                     for v in values.values()]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        if ev["chat"]:
            lines += ["", f"{', '.join(_public(lab) for lab in ev['chat'])}: an instruct model, asked each row through "
                          "its chat template (a raw prompt is a finished turn to it)."]
        lines.append("")
    return lines


def _eval_index(evals: list[dict]) -> list:
    """model-index entries (what the Hub shows as a model's results): this model's own column only, from the
    latest evaluation on each dataset and split (the Hub keeps one entry per dataset and split: an older one would
    merge into it under the older name). The card's text keeps every evaluation's table."""
    from huggingface_hub import EvalResult

    out, taken = [], set()
    for ev in reversed(evals):  # newest first
        source = _public(ev["source"])
        dataset = source if _HUB_ID.match(source) else re.sub(r"[^\w.-]+", "-", Path(source).stem or source).strip("-")
        if (dataset, ev["split"]) in taken:
            continue
        taken.add((dataset, ev["split"]))
        for metric, values in ev["metrics"].items():
            value = values.get(ev["own"])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(EvalResult(task_type="text-generation", dataset_type=dataset or "data",
                                      dataset_name=f"{dataset or 'data'} ({ev['name']})",
                                      dataset_split=ev["split"], metric_type=metric, metric_name=metric,
                                      metric_value=round(float(value), 4)))
    return out


def _usage(kind: str, repo: str, base: str, gguf_files=(), prompt: str = "Hello", chat: bool = False) -> str:
    said = json.dumps(prompt, ensure_ascii=False)
    if chat:
        encode = (f"messages = [{{\"role\": \"user\", \"content\": {said}}}]\n"
                  "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                  "return_dict=True)\n")
    else:
        encode = f"inputs = tokenizer({said}, return_tensors=\"pt\")\n"
    decode = ("reply = model.generate(**inputs, max_new_tokens=40)[0][inputs[\"input_ids\"].shape[1]:]\n"
              "print(tokenizer.decode(reply, skip_special_tokens=True))\n```")
    if kind == "adapter":
        return (f"```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo}\")  # loads {base} and puts the adapter on\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n" + encode + decode)
    if kind == "merged":
        return (f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n" + encode + decode)
    import shlex

    first = gguf_files[0] if gguf_files else "model.gguf"
    name = "my-model" if repo.startswith("path/to/") else Path(repo).name.lower()
    if chat:
        cli = f"llama-cli -m {first} -cnv"
        python = (f"llm = Llama(model_path=\"{first}\")\n"
                  f"out = llm.create_chat_completion(messages=[{{\"role\": \"user\", \"content\": {said}}}], max_tokens=40)\n"
                  f"print(out[\"choices\"][0][\"message\"][\"content\"])\n```")
    else:
        cli = f"llama-cli -m {first} -p {shlex.quote(prompt)} -n 40"
        python = (f"llm = Llama(model_path=\"{first}\")\n"
                  f"print(llm({said}, max_tokens=40)[\"choices\"][0][\"text\"])\n```")
    return (f"With [llama.cpp](https://github.com/ggml-org/llama.cpp):\n\n"
            f"```bash\n{cli}\n```\n\n"
            f"or from Python with llama-cpp-python:\n\n"
            f"```python\nfrom llama_cpp import Llama\n\n" + python + "\n\n"
            f"With [Ollama](https://ollama.com) (the `Modelfile` here carries the chat template and stop tokens):\n\n"
            f"```bash\nollama create {name} -f Modelfile\nollama run {name}\n```\n\n"
            f"With transformers (dequantized to full precision):\n\n"
            f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\", gguf_file=\"{first}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\", gguf_file=\"{first}\")\n```")


def model_card(run_dir: Path, kind: str, repo_id: str | None = None, notes=(), gguf_files=()):
    """A `huggingface_hub.ModelCard` for one part of an export (kind: adapter, merged or gguf)."""
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    from studio.embedded import EMBEDDED_MODEL_ID
    from studio.inference import run_base_model

    recipe = run_recipe(run_dir)
    base = run_base_model(run_dir)
    embedded = base in ("embedded", EMBEDDED_MODEL_ID)
    base_public = base if _HUB_ID.match(base) and not embedded and not Path(base).exists() else None
    base_label = EMBEDDED_MODEL_ID if embedded else base_public or Path(base).name
    summary = {}
    if (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    source = str((recipe.get("dataset") or {}).get("source") or "")
    method = str(recipe.get("method") or summary.get("method") or "sft")
    tags = ["lora-studio", "lora", "trl", method] + (["qlora"] if recipe.get("load_in_4bit") else [])
    if kind == "gguf":
        tags.append("gguf")
    from studio.recipes import own_data

    evals = _eval_results(run_dir)
    data = ModelCardData(
        model_name=run_dir.name if evals else None,
        eval_results=_eval_index(evals) or None,
        base_model=base_public,
        library_name={"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[kind],
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[source] if _HUB_ID.match(source) and not Path(source).exists() else None,
        license=_base_licence(base),
    )
    repo = repo_id or {"adapter": "path/to/adapter", "merged": "path/to/merged", "gguf": "path/to/gguf"}[kind]
    what = {"adapter": f"a LoRA adapter for {base_label}",
            "merged": f"{base_label} with a LoRA adapter merged in (a standalone model)",
            "gguf": f"{base_label} with a LoRA adapter merged in, as GGUF for llama.cpp"}[kind]
    lines = [f"# {run_dir.name}", "", f"This is {what}, trained with LoRA Studio "
             f"({method.upper()} with TRL and PEFT) on {_public(data_label(source))}.", ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    prompt, chat = example_prompt(run_dir, recipe)
    lines += ["## Usage", "", _usage(kind, repo, base_label, gguf_files, prompt, chat), "", "## Training", ""]
    hardware = summary.get("hardware") or "not recorded by this run"
    facts = [("dataset", _public(source) or "?"), ("steps", summary.get("steps")),
             ("first loss", summary.get("first_loss")), ("final loss", summary.get("final_loss")),
             ("best eval loss", summary.get("best_eval_loss")), ("runtime (s)", summary.get("runtime_s")),
             ("tokens seen", summary.get("tokens_seen")), ("trainable parameters", summary.get("trainable_params")),
             ("hardware", hardware)]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                                       for k, v in facts if v is not None] + [""]
    if evals:
        lines += _eval_section(evals)
    shown, origin = dict(recipe), []
    if not own_data(str(recipe.get("name") or ""), source):
        # the recipe's name and description name the data it came with: the block is named after this run and
        # says which recipe it started from, on which data
        shown = {k: v for k, v in shown.items() if k not in ("description", "source_notebook")}
        if shown.get("name") and shown["name"] != run_dir.name:
            origin = [f"# recipe {_public(str(shown['name']))}, its data swapped for {_public(data_label(source))}"]
            shown["name"] = run_dir.name
    lines += ["## Recipe", "", "```yaml", *origin,
              yaml.safe_dump(_public(shown), sort_keys=False, allow_unicode=True).strip(), "```", ""]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))


def write_card(folder: Path, run_dir: Path, kind: str, repo_id: str | None = None, notes=(), gguf_files=()) -> Path:
    path = Path(folder) / "README.md"
    model_card(run_dir, kind, repo_id, notes, gguf_files).save(path)
    return path


def _card_notes(path: Path) -> list[str]:
    """The export's notes an earlier card carries (its "> …" lines before Usage), so a rewrite keeps them."""
    notes = []
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("## "):
            break
        if line.startswith("> "):
            notes.append(line[2:])
    return notes


def _gguf_files(folder: Path) -> list[str]:
    """The folder's GGUF files, the one its Modelfile names first (the card's usage examples name that one)."""
    names = sorted(p.name for p in folder.glob("*.gguf"))
    modelfile = folder / "Modelfile"
    if modelfile.is_file():
        first = next((line[len("FROM ./"):].strip() for line in modelfile.read_text("utf-8").splitlines()
                      if line.startswith("FROM ./")), None)
        if first in names:
            names = [first] + [n for n in names if n != first]
    return names


def update_cards(run: str | os.PathLike) -> list[str]:
    """Rewrite the model card of every part exported from `run` (adapter/, merged/, gguf/ under its export folder)
    from what the run holds now: an evaluation saved after the export is in each card and its `model-index`.
    Nothing is loaded or converted: only the README.md files change. Returns the parts rewritten."""
    from studio.access import require_write, resolve_run

    run_dir = resolve_run(run)
    require_write(run_dir, f"run {run_dir.name!r}")
    out = default_out(run_dir)
    parts = [kind for kind in ("adapter", "merged", "gguf") if (out / kind / "README.md").is_file()]
    if not parts:
        raise StudioError(f"run {run_dir.name!r} has no exported part yet: press Export first")
    for kind in parts:
        folder = out / kind
        write_card(folder, run_dir, kind, notes=_card_notes(folder / "README.md"),
                   gguf_files=_gguf_files(folder) if kind == "gguf" else ())
    return parts


def card_evaluations(run: str | os.PathLike) -> list[str]:
    """The names of the evaluations a run's cards carry (what update_cards brought in), oldest first."""
    from studio.access import resolve_run

    return [ev["name"] for ev in _eval_results(resolve_run(run))]


# ---- the whole export ---------------------------------------------------------------------------
def default_out(run_dir: Path) -> Path:
    return run_dir / "export"


def export_run(run: str | os.PathLike, out: str | os.PathLike | None = None, *, adapter: bool = True,
               merge: bool = False, gguf: tuple[str, ...] | list[str] = (), check: bool = True,
               max_shard_size: str = "2GB", log=print) -> ExportResult:
    """Export `run` (a name in the runs folder or a run folder) into `out` (default runs/<run>/export)."""
    from studio.access import require_write, resolve_run
    from studio.work import heavy

    run_dir = resolve_run(run)
    require_write(run_dir, f"run {run_dir.name!r}")  # an export is written into the run's folder
    gguf = [g.lower() for g in gguf]
    check_gguf_types(gguf)
    if not (adapter or merge or gguf):
        raise StudioError("nothing to export: choose the adapter, the merged model or a GGUF type")
    out = Path(out) if out else default_out(run_dir)
    # loading, merging, converting and checking are heavy work (studio.work): on a shared app queued, billed,
    # at low priority, and stopped at the next step (each `log` line) when the page that asked is gone
    return heavy("export", _export, run_dir, out, adapter, merge, gguf, check, max_shard_size, log)


def _export(run_dir: Path, out: Path, adapter: bool, merge: bool, gguf: list[str], check: bool, max_shard_size: str,
            log) -> ExportResult:
    import torch

    from studio.work import checked

    log = checked(log)  # every step it reports is a checkpoint
    result = ExportResult(run=run_dir.name, out=out)
    recipe = run_recipe(run_dir)
    prompts = [str(p) for p in (recipe.get("eval_prompts") or CHECK_PROMPTS)][:4]

    log(f"loading {run_dir.name}'s adapter on its base")
    model, tokenizer, note = load_adapter_model(run_dir)
    if note:
        result.notes.append(note)
        log(note)
    reason = gguf_unsupported(model.get_base_model().config, tokenizer) if gguf else None
    if reason:  # refuse before writing anything
        raise StudioError(reason)
    want = _greedy(model, tokenizer, prompts) if check else None

    if adapter:
        log("writing adapter/")
        with _Part(out, "adapter") as folder:
            write_adapter(run_dir, folder)
            write_card(folder, run_dir, "adapter", notes=result.notes)
        result.parts["adapter"] = out / "adapter"
    if merge or gguf:
        log("merging the adapter into the base (merge_and_unload)")
        merged = model.merge_and_unload()
        if merge:
            log("writing merged/")
            with _Part(out, "merged") as folder:
                merged.save_pretrained(str(folder), max_shard_size=max_shard_size)
                tokenizer.save_pretrained(str(folder))
                write_card(folder, run_dir, "merged", notes=result.notes)
            result.parts["merged"] = out / "merged"
        if gguf:
            want_gguf = gguf_reference(merged, tokenizer, prompts) if check else None
            with _Part(out, "gguf") as folder:
                files = write_gguf_files(merged, tokenizer, folder, gguf, run_dir.name, log=log)
                write_modelfile(folder, files[0].name, tokenizer)
                write_card(folder, run_dir, "gguf", notes=result.notes, gguf_files=[f.name for f in files])
            result.parts["gguf"] = out / "gguf"
        del merged
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    if check:
        log("checking each part loads with plain transformers / PEFT and gives the adapter's greedy output")
        if "adapter" in result.parts:
            result.checks["adapter"] = check_adapter(result.parts["adapter"], prompts, want)
        if "merged" in result.parts:
            result.checks["merged"] = check_merged(result.parts["merged"], prompts, want)
        for qtype in gguf:
            path = out / "gguf" / f"{run_dir.name}-{qtype}.gguf"
            log(f"checking {path.name} (prompt ids and {GGUF_CHECK_TOKENS} greedy tokens against the merged model)")
            result.checks[path.name] = check_gguf(path, prompts, want_gguf, tokenizer, qtype)
    return result


def zip_export(result: ExportResult) -> Path:
    """The export as one zip in a fresh temp folder (what the page offers for download)."""
    folder = Path(tempfile.mkdtemp(prefix="lora-studio-export-"))
    target = folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', result.run)}-export.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path in result.files():
            z.write(path, path.relative_to(result.out))
    return target
