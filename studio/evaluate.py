"""Evaluation: base vs tuned on the same rows, prompt suites, a judge, lm-eval tasks, LoRA vs full.

Every comparison is one linear path: pick the rows (a dataset's test split or a prompt suite) → for each
model (the base loaded on its own, then each run's adapter on that base) generate greedily in batches →
score with `studio.metrics` → save ``runs/<run>/eval/<name>.json`` (config, metrics, every row).
Everything a visitor names goes through `studio.access` first.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SUITES = {"instruction": ASSETS / "suites" / "instruction.jsonl", "multi-turn": ASSETS / "suites" / "multi_turn.jsonl"}
RECIPE_SUITE = "recipe-prompts"
LM_EVAL_DIR = ASSETS / "lm_eval"
LOCAL_TASKS = {p.stem: p for p in sorted(LM_EVAL_DIR.glob("*.yaml"))}
SCORE_KEY = "rougeL"  # the per-row score whose difference sorts the side-by-side table
PERSONA_ARMS = ("closed-book (stage 1)", "+ fixed retriever", "+ LAPDOG retriever")


@dataclass
class Item:
    """One row to generate for: what the user says at each turn, and the reference for the last answer.

    `chat` items go through each model's own chat template (earlier turns carry the model's own answers);
    plain items are continued as they are, like the data they come from was trained.
    """

    turns: list
    reference: str = ""
    chat: bool = False
    context: list = field(default_factory=list)  # messages before the first turn (system, dialogue history)
    target: str | list | None = None  # the completion exactly as trained (leading space, messages); None: reference

    def shown(self) -> str:
        head = "\n".join(f"{m['role']}: {m['content']}" for m in self.context)
        turns = [t for t in self.turns if t is not None]
        body = "\n— next turn —\n".join(turns)
        return f"{head}\n{body}".strip() if head else body


# ---- rows -----------------------------------------------------------------------------------------------------
def _chat_item(messages: list[dict], reference: str, target: list | None = None) -> Item:
    if messages and messages[-1]["role"] == "user":
        return Item([messages[-1]["content"]], reference, chat=True, context=list(messages[:-1]), target=target)
    return Item([None], reference, chat=True, context=list(messages), target=target)


def _first_assistant(value) -> str:
    if isinstance(value, list):
        return next((m["content"] for m in value if m["role"] == "assistant"), "")
    return str(value or "")


def _row_item(row: dict) -> Item:
    """A rendered row (TRL's forms, cut by `studio.data.formats`) → an item; the reference is the answer stripped
    for scoring, the target the answer as trained."""
    if "messages" in row:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return _chat_item(msgs[:last], msgs[last]["content"].strip(), [msgs[last]])
    answer = row["chosen"] if "chosen" in row else row["completion"]
    ref = _first_assistant(answer).strip()
    if isinstance(row["prompt"], list):
        return _chat_item(row["prompt"], ref, answer if isinstance(answer, list) else None)
    return Item([row["prompt"]], ref, target=str(answer))


def dataset_items(source: str, fmt: str | None = None, template: str | None = None, splits="80/10/10",
                  seed: int = 42, limit: int | None = None) -> tuple[list[Item], dict]:
    """The test split's rows (validation, then train, when the data is too small to have one), cut into prompt
    and answer by the format itself: the same rows, splits and text as training."""
    from studio.access import check_data_source
    from studio.data import prepare_dataset

    source = check_data_source(source)
    try:
        data = prepare_dataset(source, fmt, template, splits=splits, seed=seed, pieces=True)
    except StudioError as e:
        if "no column looks like" in str(e):
            raise StudioError(f"{source}: no reference column to score against ({e})") from None
        raise
    split = next(s for s in ("test", "validation", "train") if s in data.splits)
    items = [_row_item(r) for r in data.splits[split]]
    if limit:
        items = items[:int(limit)]
    info = {"source": data.source, "format": data.format.name, "split": split, "rows": len(items),
            "splits": splits, "seed": seed}
    return items, info


def load_suite(path: str | Path) -> list[Item]:
    """A JSONL suite: one object per line with "prompt" (a string) or "turns" (strings); "reference" optional."""
    from studio.data.sources import iter_jsonl

    path = Path(path)
    items = []
    for n, row in iter_jsonl(path):
        turns = [row["prompt"]] if "prompt" in row else row.get("turns")
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) and t.strip() for t in turns)):
            raise StudioError(f'{path.name} line {n}: expected "prompt" (a string) or "turns" (a list of strings)')
        reference = row.get("reference", "")
        if not isinstance(reference, str):
            raise StudioError(f'{path.name} line {n}: "reference" must be a string')
        items.append(Item(turns, reference, chat=True))
    if not items:
        raise StudioError(f"{path.name}: the suite is empty")
    return items


def suite_items(suite: str, recipe_prompts: list[str] | None = None) -> list[Item]:
    """A shipped suite by name, the recipe's before/after prompts, or an uploaded JSONL file."""
    from studio.access import check_data_source

    if suite == RECIPE_SUITE:
        if not recipe_prompts:
            raise StudioError("the recipe has no eval_prompts: pick another suite")
        return [Item([p]) for p in recipe_prompts]
    if suite in SUITES:
        return load_suite(SUITES[suite])
    path = Path(check_data_source(suite)).expanduser()
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        raise StudioError(f"{suite}: no such suite; use {', '.join([*SUITES, RECIPE_SUITE])} or a .jsonl file")
    return load_suite(path)


# ---- models -----------------------------------------------------------------------------------------------------
def plan_models(refs: list[str]) -> list[dict]:
    """Columns: each distinct base of the runs (loaded on its own), each run, then each other model."""
    from studio.access import resolve_run
    from studio.inference import is_run_ref, run_adapter, run_base_model

    refs = [str(r).strip() for r in refs if str(r or "").strip()]
    if not refs:
        raise StudioError("pick at least one run or model to evaluate")
    bases, runs, others = {}, [], []
    for ref in refs:
        if is_run_ref(ref):
            run = resolve_run(ref)
            run_adapter(run)  # a run with no adapter fails here, before any model is loaded
            base = run_base_model(run)
            bases.setdefault(base, run.name)
            runs.append({"label": run.name, "ref": run.name, "adapter": True, "base": base})
        elif ref not in others:
            others.append(ref)
    columns = [{"label": f"base ({b})", "ref": run, "adapter": False, "base": b} for b, run in bases.items()]
    columns += runs
    columns += [{"label": m, "ref": m, "adapter": False, "base": m} for m in others if m not in bases]
    return columns


def _cut(text: str, stop: str | None) -> str:
    return text.split(stop)[0].strip() if stop else text.strip()


def generate_items(model, tokenizer, items: list[Item], max_new_tokens: int = 48, stop: str | None = None,
                   batch_size: int = 16, progress=None, **sampling) -> list[list[str]]:
    """Every item's answers, turn by turn, batched; turn k+1 sees the model's own answer to turn k."""
    from studio.inference import chat_prompt, generate

    answers: list[list[str]] = [[] for _ in items]
    for k in range(max(len(it.turns) for it in items)):
        idx = [i for i, it in enumerate(items) if len(it.turns) > k]
        prompts = []
        for i in idx:
            it = items[i]
            if not it.chat:
                prompts.append(it.turns[k])
                continue
            messages = list(it.context)
            for q, a in zip(it.turns[:k], answers[i]):
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if it.turns[k] is not None:
                messages.append({"role": "user", "content": it.turns[k]})
            prompts.append(chat_prompt(tokenizer, messages))
        outs = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, progress=progress, **sampling)
        for i, out in zip(idx, outs):
            answers[i].append(_cut(out, stop))
    return answers


def _loss_inputs(tokenizer, items: list[Item]) -> tuple[list, list]:
    """Each item's prompt and completion as the trainer renders them (TRL's SFT): messages through the chat
    template, plain text as it is with the end-of-sequence token TRL appends to every completion."""
    prompts, completions = [], []
    eos = tokenizer.eos_token or ""
    for it in items:
        if it.chat:
            user = [{"role": "user", "content": it.turns[0]}] if it.turns[0] is not None else []
            prompts.append(it.context + user)
            completions.append(it.target or [{"role": "assistant", "content": it.reference}])
        else:
            target = it.reference if it.target is None else it.target
            prompts.append(it.turns[0])
            completions.append(target if target.endswith(eos) else target + eos)
    return prompts, completions


# ---- comparison -----------------------------------------------------------------------------------------------
def _run_recipe(run_name: str):
    from studio.access import resolve_run
    from studio.recipes import load_recipe

    return load_recipe(resolve_run(run_name) / "recipe.yaml")


def compare(refs: list[str], data: str | None = None, suite: str | None = None, limit: int | None = None,
            max_new_tokens: int = 48, loss: bool = True, name: str | None = None, batch_size: int = 16,
            progress=None, save: bool = True) -> dict:
    """Base vs runs (and any other models) on the same rows; returns the result, saved unless `save=False`.

    `data` (a dataset: its test split) or `suite` (instruction, multi-turn, recipe-prompts, or a JSONL
    file). With neither, the first run's own dataset, split exactly as it was for training.
    """
    from studio.access import check_run_name
    from studio.inference import load_for_inference
    from studio.metrics import DEFINITIONS, LOSS_DEFINITIONS, TEXT_DEFINITIONS, corpus_scores, heldout_loss, \
        sentence_scores, text_stats

    columns = plan_models(refs)
    first_run = next((c["ref"] for c in columns if c["adapter"]), None)
    recipe = _run_recipe(first_run) if first_run else None
    config = {"models": columns, "data": None, "suite": suite or None, "limit": limit,
              "max_new_tokens": int(max_new_tokens), "decoding": "greedy"}
    if suite:
        items = suite_items(suite, recipe.header.get("eval_prompts") if recipe else None)[:limit or None]
        config["suite"] = suite if suite in SUITES or suite == RECIPE_SUITE else Path(suite).name
    else:
        ds = dict(recipe.dataset) if recipe else {}
        seed = int(recipe.train.get("seed", 42)) if recipe else 42
        if data and data != ds.get("source"):
            ds, seed = {"source": data}, 42
        if not ds.get("source"):
            raise StudioError("no data to evaluate on: give a dataset (its test split is used) or pick a suite")
        items, info = dataset_items(ds["source"], ds.get("format"), ds.get("template"), ds.get("splits", "80/10/10"),
                                    seed, limit)
        config["data"] = info
    if not items:
        raise StudioError("no rows to evaluate")
    has_refs = all(it.reference.strip() for it in items)
    # single-line references: answers are cut at the first newline, as lm-eval's `until` does
    stop = "\n" if has_refs and not any("\n" in it.reference.strip() for it in items) else None
    config["stop"] = stop
    outputs, metrics = {}, {}
    for n, col in enumerate(columns):
        loaded = load_for_inference(col["ref"], adapter=col["adapter"])
        step = (lambda done, total, n=n: progress((n + done / total) / len(columns),
                                                  f"{columns[n]['label']}: {done}/{total}")) if progress else None
        answers = generate_items(loaded.model, loaded.tokenizer, items, max_new_tokens, stop, batch_size, step)
        outputs[col["label"]] = answers
        finals = [a[-1] for a in answers]
        m = text_stats(finals)
        if has_refs:
            m.update(corpus_scores(finals, [it.reference for it in items]))
            if loss and not any(len(it.turns) > 1 for it in items):
                m.update({k: v for k, v in heldout_loss(loaded.model, loaded.tokenizer,
                                                        *_loss_inputs(loaded.tokenizer, items)).items() if k != "tokens"})
        metrics[col["label"]] = m
        del loaded
    labels = [c["label"] for c in columns]
    rows = []
    for i, it in enumerate(items):
        row = {"id": i, "prompt": it.shown(), "reference": it.reference,
               "outputs": {lab: (outputs[lab][i] if len(it.turns) > 1 else outputs[lab][i][-1]) for lab in labels}}
        if has_refs:
            row["scores"] = {lab: sentence_scores(outputs[lab][i][-1], it.reference) for lab in labels}
            row["delta"] = row["scores"][labels[-1]][SCORE_KEY] - row["scores"][labels[0]][SCORE_KEY]
        rows.append(row)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = check_run_name(name or f"{config['suite'] or 'test'}-{stamp}".replace("/", "-"), "result name")
    definitions = {**TEXT_DEFINITIONS, **(DEFINITIONS if has_refs else {}), **(LOSS_DEFINITIONS if has_refs else {})}
    result = {"name": name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "owner": first_run or "evals",
              "config": config, "labels": labels, "score_key": SCORE_KEY if has_refs else None,
              "definitions": definitions, "metrics": metrics, "rows": rows}
    if save:
        result["path"] = str(save_result(result))
    return result


# ---- results ----------------------------------------------------------------------------------------------------
def result_path(owner: str, name: str) -> Path:
    """runs/<run>/eval/<name>.json, or runs/evals/<name>.json for an evaluation without a run."""
    from studio.access import check_run_name, runs_root

    owner, name = check_run_name(owner, "run"), check_run_name(name, "result name")
    root = runs_root()
    return root / "evals" / f"{name}.json" if owner == "evals" else root / owner / "eval" / f"{name}.json"


def save_result(result: dict) -> Path:
    path = result_path(result["owner"], result["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in result.items() if k != "path"}
    path.write_text(json.dumps(body, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def list_results() -> list[str]:
    """Saved results as "owner/name", newest first."""
    from studio.access import runs_root

    root = runs_root()
    paths = [*root.glob("*/eval/*.json"), *root.glob("evals/*.json")]
    paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [f"{'evals' if p.parent.name == 'evals' else p.parent.parent.name}/{p.stem}" for p in paths]


def load_result(ref: str) -> dict:
    owner, _, name = str(ref or "").strip().partition("/")
    if not name:
        raise StudioError(f"{ref!r}: name a saved result as RUN/NAME (see the list)")
    path = result_path(owner, name)
    if not path.is_file():
        raise StudioError(f"{ref}: no such saved result")
    result = json.loads(path.read_text("utf-8"))
    result["path"] = str(path)
    return result


def export_result(result: dict, folder: str | Path | None = None) -> tuple[Path, Path]:
    """(CSV, JSON) copies in a temp folder: one CSV line per row with each model's output and score."""
    folder = Path(folder or tempfile.mkdtemp(prefix="studio-eval-"))
    folder.mkdir(parents=True, exist_ok=True)
    labels, key = result["labels"], result.get("score_key")
    json_path = folder / f"{result['name']}.json"
    json_path.write_text(json.dumps({k: v for k, v in result.items() if k != "path"}, ensure_ascii=False, indent=1),
                         encoding="utf-8")
    csv_path = folder / f"{result['name']}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "reference", *labels, *([f"{lab} {key}" for lab in labels] + ["delta"] if key else [])])
        for row in result["rows"]:
            outs = [o if isinstance(o, str) else "\n— next turn —\n".join(o) for o in row["outputs"].values()]
            scores = [round(row["scores"][lab][key], 2) for lab in labels] + [round(row["delta"], 2)] if key else []
            w.writerow([row["id"], row["prompt"], row["reference"], *outs, *scores])
    return csv_path, json_path


# ---- judge --------------------------------------------------------------------------------------------------------
JUDGE_TEMPLATE = ("Which answer to the question is better?\n\nQuestion: {question}\n\nAnswer A: {a}\n\n"
                  "Answer B: {b}\n\nThe better answer is Answer")


def _choice_logprobs(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    import torch

    device = next(model.parameters()).device
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    out = []
    for choice in choices:
        ids = tokenizer(context + choice, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids], device=device)).logits[0].float(), -1)
        out.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(ctx), len(ids))))
    return out


def judge(result: dict, judge_ref: str, a: str, b: str) -> dict:
    """Win rate of `a` over `b` by a judge model, each pair shown in both orders.

    A row counts as a win only when the judge prefers the same answer in both orders; otherwise it is a
    tie (the judge followed the position, not the answer). Win rate = (wins + ties / 2) / rows.
    """
    from studio.inference import load_for_inference

    if a not in result["labels"] or b not in result["labels"] or a == b:
        raise StudioError(f"judge: pick two different models of this result ({', '.join(result['labels'])})")
    loaded = load_for_inference(judge_ref)
    verdicts = []
    for row in result["rows"]:
        ans = {k: row["outputs"][k] if isinstance(row["outputs"][k], str) else row["outputs"][k][-1] for k in (a, b)}
        picks = []
        for first, second in ((a, b), (b, a)):
            lp = _choice_logprobs(loaded.model, loaded.tokenizer,
                                  JUDGE_TEMPLATE.format(question=row["prompt"], a=ans[first], b=ans[second]),
                                  [" A", " B"])
            picks.append(first if lp[0] >= lp[1] else second)
        verdicts.append(picks[0] if picks[0] == picks[1] else "tie")
    wins_a, wins_b = verdicts.count(a), verdicts.count(b)
    n = len(verdicts)
    out = {"judge": judge_ref, "a": a, "b": b, "rows": n, "wins_a": wins_a, "wins_b": wins_b,
           "ties": verdicts.count("tie"), "win_rate_a": 100.0 * (wins_a + 0.5 * (n - wins_a - wins_b)) / n if n else 0.0,
           "verdicts": verdicts}
    return out


# ---- lm-evaluation-harness -----------------------------------------------------------------------------------------
def _lm_eval_task(task: str):
    """A shipped local task as a config dict (its data file resolved here), or a harness task name."""
    import yaml

    if task in LOCAL_TASKS:
        cfg = yaml.safe_load(LOCAL_TASKS[task].read_text("utf-8"))
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        cfg["dataset_kwargs"]["data_files"] = {k: str(LM_EVAL_DIR / v) for k, v in files.items()}
        return cfg
    return task


def run_lm_eval(ref: str, tasks: list[str], limit: int | None = None, batch_size: int = 8, adapter: bool = True) -> dict:
    """lm-eval's own HF model (`peft=` for a run's adapter) on the tasks; {task: {metric: value}}.

    A run with `adapter=False` is its base alone."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from studio.access import check_model_source, resolve_run
    from studio.inference import is_run_ref, run_adapter, run_base_model
    from studio.models import resolve_model_path

    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise StudioError("lm-eval: name at least one task")
    if is_run_ref(ref):
        run = resolve_run(ref)
        model_args = {"pretrained": resolve_model_path(run_base_model(run))}
        if adapter:
            model_args["peft"] = str(run_adapter(run))
    else:
        model_args = {"pretrained": resolve_model_path(check_model_source(ref))}
    model_args.update(device="cuda" if torch.cuda.is_available() else "cpu", dtype="auto")
    local = all(t in LOCAL_TASKS for t in tasks)
    manager = TaskManager(include_path=str(LM_EVAL_DIR), include_defaults=not local)
    try:
        out = simple_evaluate(model="hf", model_args=model_args, tasks=[_lm_eval_task(t) for t in tasks],
                              limit=limit, batch_size=batch_size, task_manager=manager, log_samples=False,
                              verbosity="ERROR")
    except (KeyError, ValueError) as e:
        raise StudioError(f"lm-eval: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                          f"(local tasks: {', '.join(LOCAL_TASKS)}; Hub tasks need a connection)") from None
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
            for task, metrics in out["results"].items()}


def lm_eval_compare(refs: list[str], tasks: list[str], limit: int | None = None) -> dict:
    """The same tasks on the base (alone) and on each run: a table with one line per model and task."""
    columns = plan_models(refs)
    headers, rows, results = ["model", "task"], [], {}
    for col in columns:
        results[col["label"]] = run_lm_eval(col["ref"], tasks, limit, adapter=col["adapter"])
    metric_names = sorted({m for r in results.values() for t in r.values() for m in t})
    headers += metric_names
    for label, per_task in results.items():
        for task, metrics in per_task.items():
            rows.append([label, task, *[round(metrics[m], 4) if m in metrics else None for m in metric_names]])
    return {"headers": headers, "rows": rows, "results": results}


# ---- LoRA vs full fine-tuning ----------------------------------------------------------------------------------------
def lora_vs_full(ref: str) -> dict:
    """Trainable vs total parameters, checkpoint sizes and grad + optimizer-state memory, from the config.

    Memory assumes fp32 gradients and AdamW's two fp32 moments per trainable parameter (8 bytes); a
    full checkpoint stores every weight at the config's dtype, an adapter only the LoRA weights (fp32).
    When the run has an adapter on disk its real size is reported.
    """
    from transformers import AutoConfig

    from studio.access import resolve_run
    from studio.inference import is_run_ref
    from studio.models import estimate_parameters, folder_size, resolve_model_path
    from studio.recipes import RECIPES_DIR, load_recipe

    adapter_bytes = None
    if is_run_ref(ref):
        run = resolve_run(ref)
        recipe = load_recipe(run / "recipe.yaml")
        if (run / "adapter" / "adapter_config.json").exists():
            adapter_bytes = sum(folder_size(p) if p.is_dir() else p.stat().st_size
                                for p in (run / "adapter").glob("adapter_model.*"))
    elif (RECIPES_DIR / f"{ref}.yaml").exists():
        recipe = load_recipe(RECIPES_DIR / f"{ref}.yaml")
    else:
        raise StudioError(f"{ref}: pick a run or a recipe name for the LoRA vs full report")
    model_args = recipe.model_config()
    lora = estimate_parameters(model_args)
    config = AutoConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path))
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32").replace("torch.", "")
    width = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)
    total, trainable = lora["total"], lora["trainable"]
    base_total = total - trainable  # the model's own weights (LoRA adds its matrices on top)
    return {
        "model": model_args.model_name_or_path, "dtype": dtype,
        "lora": {"trainable": trainable, "total": total, "percent": lora["percent"],
                 "checkpoint_bytes": adapter_bytes if adapter_bytes is not None else trainable * 4,
                 "checkpoint_measured": adapter_bytes is not None,
                 "grad_bytes": trainable * 4, "optimizer_bytes": trainable * 8},
        "full": {"trainable": base_total, "total": base_total, "percent": 100.0,
                 "checkpoint_bytes": base_total * width, "checkpoint_measured": False,
                 "grad_bytes": base_total * 4, "optimizer_bytes": base_total * 8},
    }


def dpo_report(run: str, limit: int = 32) -> dict:
    """A DPO run on its own held-out pairs (test split, else validation): how often the policy's implicit
    reward prefers `chosen` (reward margin β·(policy − reference) > 0), the mean reward margin, and the
    policy's and the reference's mean log-probability margins. The reference is what the run trained
    against (its SFT start, or the base)."""
    import statistics

    from studio.access import resolve_run
    from studio.recipes import load_recipe
    from studio.train.dpo import load_pairs, preference_margins

    run_dir = resolve_run(run)
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.method != "dpo":
        raise StudioError(f"{run_dir.name} is a {recipe.method} run: the preference report needs a DPO run")
    data = load_pairs(recipe, seed=int(recipe.train.get("seed", 42)))
    split = next((s for s in ("test", "validation") if s in data.splits and len(data.splits[s])), None)
    if split is None:
        raise StudioError(f"{run_dir.name}: its dataset has no held-out pairs (too few rows for a test split)")
    part = data.splits[split]
    table = preference_margins(str(run_dir), part.select(range(min(int(limit), len(part)))).to_list())
    mean = lambda key: round(statistics.fmean(r[key] for r in table), 4)  # noqa: E731
    return {"run": run_dir.name, "split": split, "pairs": len(table),
            "preference_accuracy": round(100 * sum(r["reward_margin"] > 0 for r in table) / len(table), 2),
            "mean_reward_margin": mean("reward_margin"), "policy_logp_margin": mean("policy_margin"),
            "reference_logp_margin": mean("reference_margin"), "rows": table}


def persona_report(run: str, limit: int = 32, batch_size: int = 16, name: str | None = None, progress=None,
                   save: bool = True) -> dict:
    """A LAPDOG run on its held-out persona dialogues: the paper's table (F1 / BLEU / ROUGE-L) for one run.

    Three set-ups answer the same dialogues, greedily, replies up to the run's `reply_max_new_tokens`:
    the stage-1 adapter with no stories (closed-book, the supervised row); the final adapter with the top-k
    stories of the untrained embedder (fixed retriever); the final adapter with the top-k stories of the
    trained query encoder (LAPDOG). The last two differ only in the retriever. Shaped like `compare`'s
    result, so the tab's tables, chart, downloads and saved results work the same.
    """
    from studio.access import check_run_name, resolve_run
    from studio.chat import persona_messages, query_text
    from studio.inference import chat_prompt, generate, load_for_inference
    from studio.metrics import DEFINITIONS, TEXT_DEFINITIONS, corpus_scores, sentence_scores, text_stats
    from studio.recipes import load_recipe
    from studio.retrieval import load_retriever, run_retriever_dir
    from studio.train.lapdog import dialogue_rows, persona_data, settings

    run_dir = resolve_run(run)
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.method != "lapdog":
        raise StudioError(f"{run_dir.name} is a {recipe.method} run: the persona table needs a LAPDOG run")
    stage1 = run_dir / "stage1" / "adapter"
    finished = [stage1 / "adapter_config.json", run_dir / "adapter" / "adapter_config.json"]
    if not all(p.exists() for p in finished) or run_retriever_dir(run_dir) is None:
        raise StudioError(f"{run_dir.name} has not finished both stages (it needs stage1/adapter, adapter/ and "
                          "retriever/): resume it on the Train tab")
    cfg = settings(recipe)
    data = persona_data(recipe)
    split = next((s for s in ("test", "validation") if s in data.splits and len(data.splits[s])), None)
    if split is None:
        raise StudioError(f"{run_dir.name}: its dataset has no held-out dialogues (too few rows for a test split)")
    rows = dialogue_rows(data.splits[split])[: max(1, int(limit))]
    k, corpus = int(cfg["k"]), cfg["corpus"] or None
    queries = [query_text(r["persona"], r["history"], cfg["query"] == "persona+turn") for r in rows]
    fixed = load_retriever(corpus, cfg["embedder"]).search(queries, k)
    learned = load_retriever(corpus, cfg["embedder"], run_dir).search(queries, k)
    loaded = load_for_inference(str(run_dir))
    model, tok = loaded.model, loaded.tokenizer
    model.load_adapter(str(stage1), adapter_name="stage1")
    budget = int(recipe.train.get("max_length") or 1024) - int(cfg["reply_max_new_tokens"])
    arms = [(PERSONA_ARMS[0], "stage1", [[] for _ in rows]), (PERSONA_ARMS[1], "default", fixed),
            (PERSONA_ARMS[2], "default", learned)]
    references = [r["reply"] for r in rows]
    outputs, metrics = {}, {}
    for n, (label, adapter, found) in enumerate(arms):
        model.set_adapter(adapter)
        prompts = [chat_prompt(tok, persona_messages(tok, r["persona"], s, r["history"], budget)[0])
                   for r, s in zip(rows, found)]
        step = (lambda done, total, n=n, label=label: progress((n + done / total) / len(arms),
                                                               f"{label}: {done}/{total}")) if progress else None
        replies = [_cut(o, "\n") for o in generate(model, tok, prompts, int(cfg["reply_max_new_tokens"]),
                                                    batch_size=batch_size, progress=step)]
        outputs[label] = replies
        metrics[label] = {**corpus_scores(replies, references), **text_stats(replies)}
    del loaded, model
    labels = list(PERSONA_ARMS)
    table = []
    for i, r in enumerate(rows):
        turns = "\n".join(f"{m['role']}: {m['content']}" for m in r["history"])
        scores = {lab: sentence_scores(outputs[lab][i], r["reply"]) for lab in labels}
        table.append({"id": i, "prompt": f"persona: {r['persona']}\n{turns}", "reference": r["reply"],
                      "outputs": {lab: outputs[lab][i] for lab in labels}, "scores": scores,
                      "delta": scores[labels[-1]][SCORE_KEY] - scores[labels[0]][SCORE_KEY],
                      "stories": {"fixed": [s["id"] for s in fixed[i]], "lapdog": [s["id"] for s in learned[i]]}})
    changed = sum(a[0]["id"] != b[0]["id"] for a, b in zip(fixed, learned)) / len(rows)
    config = {"models": [{"label": PERSONA_ARMS[0], "ref": run_dir.name, "adapter": "stage1/adapter", "stories": 0},
                         {"label": PERSONA_ARMS[1], "ref": run_dir.name, "adapter": "adapter", "stories": k,
                          "retriever": cfg["embedder"]},
                         {"label": PERSONA_ARMS[2], "ref": run_dir.name, "adapter": "adapter", "stories": k,
                          "retriever": "retriever/"}],
              "data": {"source": recipe.dataset.get("source"), "split": split, "rows": len(rows)},
              "suite": None, "limit": limit, "max_new_tokens": int(cfg["reply_max_new_tokens"]),
              "decoding": "greedy", "stop": "\n", "persona": {"k": k, "query": cfg["query"],
                                                             "top1_changed": round(changed, 4)}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"name": check_run_name(name or f"persona-{stamp}", "result name"),
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "owner": run_dir.name, "config": config,
              "labels": labels, "score_key": SCORE_KEY, "definitions": {**TEXT_DEFINITIONS, **DEFINITIONS},
              "metrics": metrics, "rows": table}
    if save:
        result["path"] = str(save_result(result))
    return result
