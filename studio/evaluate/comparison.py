"""The base-vs-runs comparison: plan the columns (each base alone, then each run's adapter on it), generate
greedily in batches, score with `studio.metrics`, and save the result (`compare`)."""

from __future__ import annotations

import time
from pathlib import Path

from studio.inference import is_instruct  # noqa: F401 - also what callers of this module ask
from studio.errors import StudioError
from studio.evaluate.items import Item, RECIPE_SUITE, SUITES, dataset_items, suite_items
from studio.evaluate.results import save_result


SCORE_KEY = "rougeL"  # the per-row score whose difference sorts the side-by-side table


def plan_models(refs: list[str]) -> list[dict]:
    """Columns: each distinct base of the runs (loaded on its own), each run, then each other model."""
    from studio.access import check_model_source, resolve_run
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
            check_model_source(ref)  # a Hub id, the embedded model or a run: checked before anything loads
            others.append(ref)
    columns = [{"label": f"base ({b})", "ref": run, "adapter": False, "base": b} for b, run in bases.items()]
    columns += runs
    columns += [{"label": m, "ref": m, "adapter": False, "base": m} for m in others if m not in bases]
    return columns


def _cut(text: str, stop: str | None) -> str:
    return text.split(stop)[0].strip() if stop else text.strip()


def generate_items(model, tokenizer, items: list[Item], max_new_tokens: int = 48, stop: str | None = None,
                   batch_size: int = 16, progress=None, cut: set | None = None, **sampling) -> list[list[str]]:
    """Every item's answers, turn by turn, batched; turn k+1 sees the model's own answer to turn k. `cut`
    receives the index of each item whose last answer stopped at the token limit (not cut short by `stop`)."""
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
        limit: set = set()
        outs = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, progress=progress,
                        cut=limit, stop=stop, **sampling)  # a row ends at `stop`: what follows is cut anyway
        for n, (i, out) in enumerate(zip(idx, outs)):
            answers[i].append(_cut(out, stop))
            if cut is not None and k == len(items[i].turns) - 1 and n in limit and not (stop and stop in out):
                cut.add(i)
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


def as_chat(items: list[Item]) -> list[Item]:
    """Plain items as one user message each: how an instruct base is asked fairly (see docs/evaluation.md)."""
    return [it if it.chat else Item(list(it.turns), it.reference, chat=True, context=list(it.context), target=it.target)
            for it in items]


def _check_same_data(columns: list[dict]) -> None:
    """"The run's own" test split is one dataset: runs trained on different data are refused, never scored
    silently on the first run's."""
    sources = {}
    for col in columns:
        if col["adapter"]:
            ds = _run_recipe(col["ref"]).dataset or {}
            sources.setdefault(str(ds.get("source") or "?"), col["ref"])
    if len(sources) > 1:
        from studio.access import shown_path

        named = ", ".join(f"{run} on {shown_path(src)}" for src, run in sources.items())
        raise StudioError(f"the runs were trained on different data ({named}): name one dataset for all of them, "
                          "pick a suite, or evaluate them apart")


def _run_recipe(run_name: str):
    from studio.access import resolve_run
    from studio.recipes import load_recipe

    return load_recipe(resolve_run(run_name) / "recipe.yaml")


def _answer_and_score(columns, items, config, max_new_tokens, stop, batch_size, progress, loss, has_refs,
                      outputs, metrics, cut_rows) -> None:
    """Each column's answers to `items` and their scores, into `outputs`, `metrics` and `cut_rows`."""
    from studio.inference import load_for_inference
    from studio.metrics import corpus_scores, heldout_loss, text_stats
    from studio.work import checked, checkpoint

    for n, col in enumerate(columns):
        checkpoint()
        loaded = load_for_inference(col["ref"], adapter=col["adapter"], cached=True)  # shared, read-only
        step = checked((lambda done, total, n=n: progress((n + done / total) / len(columns),
                                                          f"{columns[n]['label']}: {done}/{total}")) if progress else None)
        asked = items
        if not col["adapter"] and is_instruct(loaded.tokenizer) and not all(it.chat for it in items):
            asked = as_chat(items)  # an instruct base gets its chat template; the runs see the rows as trained
            config.setdefault("chat_template_for", []).append(col["label"])
        limit: set = set()
        answers = generate_items(loaded.model, loaded.tokenizer, asked, max_new_tokens, stop, batch_size, step, limit)
        outputs[col["label"]] = answers
        cut_rows[col["label"]] = limit
        finals = [a[-1] for a in answers]
        m = text_stats(finals)
        if has_refs:
            m.update(corpus_scores(finals, [it.reference for it in items]))
            if loss and not any(len(it.turns) > 1 for it in items):
                m.update({k: v for k, v in heldout_loss(loaded.model, loaded.tokenizer,
                                                        *_loss_inputs(loaded.tokenizer, items)).items() if k != "tokens"})
        metrics[col["label"]] = m
        del loaded


def compare(refs: list[str], data: str | None = None, suite: str | None = None, limit: int | None = None,
            max_new_tokens: int = 48, loss: bool = True, name: str | None = None, batch_size: int = 16,
            progress=None, save: bool = True) -> dict:
    """Base vs runs (and any other models) on the same rows; returns the result, saved unless `save=False`.

    `data` (a dataset: its test split) or `suite` (instruction, multi-turn, recipe-prompts, or a JSONL
    file). With neither, the first run's own dataset, split exactly as it was for training.
    """
    from studio.access import check_run_name
    from studio.metrics import DEFINITIONS, LOSS_DEFINITIONS, TEXT_DEFINITIONS, sentence_scores
    from studio.work import heavy

    columns = plan_models(refs)
    if not suite and not data:
        _check_same_data(columns)
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
                                    seed, limit, eval_source=ds.get("eval_source"), group_by=ds.get("group_by"))
        config["data"] = info
    if not items:
        raise StudioError("no rows to evaluate")
    has_refs = all(it.reference.strip() for it in items)
    # single-line references: answers are cut at the first newline, as lm-eval's `until` does
    stop = "\n" if has_refs and not any("\n" in it.reference.strip() for it in items) else None
    config["stop"] = stop
    outputs, metrics, cut_rows = {}, {}, {}
    # the models' generation and scoring is heavy work (studio.work): on a shared app it waits its turn, runs at
    # low priority, is billed to the visitor's payer and stops at the next batch when its page is gone
    heavy("evaluation", _answer_and_score, columns, items, config, max_new_tokens, stop, batch_size, progress,
          loss, has_refs, outputs, metrics, cut_rows)
    labels = [c["label"] for c in columns]
    rows = []
    for i, it in enumerate(items):
        row = {"id": i, "prompt": it.shown(), "reference": it.reference,
               "outputs": {lab: (outputs[lab][i] if len(it.turns) > 1 else outputs[lab][i][-1]) for lab in labels}}
        cut = [lab for lab in labels if i in cut_rows[lab]]
        if cut:
            row["cut"] = cut  # these replies stopped at max_new_tokens: the page marks them
        if has_refs:
            row["scores"] = {lab: sentence_scores(outputs[lab][i][-1], it.reference) for lab in labels}
            row["delta"] = row["scores"][labels[-1]][SCORE_KEY] - row["scores"][labels[0]][SCORE_KEY]
        rows.append(row)
    intervals = None
    pairs = [(c["label"], f"base ({c['base']})") for c in columns if c["adapter"] and f"base ({c['base']})" in labels]
    if has_refs:  # 95 % intervals over dialogues; each run paired with its base on the same resampled rows
        from studio.evaluate.intervals import bootstrap_table, dialogue_key

        intervals = bootstrap_table({lab: [o[-1] for o in outputs[lab]] for lab in labels},
                                    [it.reference for it in items],
                                    [dialogue_key(it.context, i) for i, it in enumerate(items)], pairs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = check_run_name(name or f"{config['suite'] or 'test'}-{stamp}".replace("/", "-"), "result name")
    definitions = {**TEXT_DEFINITIONS, **(DEFINITIONS if has_refs else {}), **(LOSS_DEFINITIONS if has_refs else {})}
    result = {"name": name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "owner": first_run or "evals",
              "config": config, "labels": labels, "score_key": SCORE_KEY if has_refs else None,
              "definitions": definitions, "metrics": metrics, "rows": rows}
    if intervals:
        result["intervals"] = intervals
    if save:
        result["path"] = str(save_result(result))
    return result
