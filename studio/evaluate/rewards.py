"""Models scored by reward functions on held-out prompts: mean reward and accuracy with intervals over prompts.

The GRPO run's own held-out table and Evaluate's "rewards" report both come from here, so a run is judged by the
same functions it trained on, and base and tuned answer the same prompts (greedy, so the table is repeatable).
"""

from __future__ import annotations

from studio.rewards import CORRECTNESS, named_specs, score_table

MAX_NEW_TOKENS = 96


def prompts_and_solutions(rows) -> tuple[list[str], list[str]]:
    """Held-out rows as the data layer renders them (prompt/completion) → plain prompts and references."""
    prompts, solutions = [], []
    for row in rows:
        prompt = row["prompt"]
        if isinstance(prompt, list):  # conversational: the last user turn is the question
            prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
        completion = row.get("completion", row.get("solution", ""))
        if isinstance(completion, list):
            completion = "".join(str(m.get("content") or "") for m in completion)
        prompts.append(str(prompt))
        solutions.append(str(completion).strip())
    return prompts, solutions


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS, chat: bool = False,
           progress=None) -> list[str]:
    """Greedy completions of `prompts`, asked through the chat template when `chat` (how GRPO asked them)."""
    from studio.inference import chat_prompt, generate

    texts = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts] if chat else prompts
    model.eval()
    return generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, progress=progress)


def accuracy_name(rewards, reward_code=None) -> str | None:
    """The reward that says right or wrong (the first exact / number / contains / regex / code one)."""
    for spec, name in named_specs(rewards, reward_code):
        if spec["type"] in CORRECTNESS:
            return name
    return None


def reward_report(completions: dict[str, list[str]], prompts: list[str], solutions: list[str], rewards,
                  pairs: list[tuple[str, str]], reward_code=None, examples: int = 8) -> dict:
    """Each label's mean reward, accuracy and per-function means, with 95 % bootstrap intervals over prompts and
    paired differences for `pairs` (e.g. tuned − base). JSON-able; `words` says each comparison in a sentence."""
    from studio.evaluate.intervals import mean_intervals

    tables = {label: score_table(rewards, outs, solutions, reward_code) for label, outs in completions.items()}
    acc = accuracy_name(rewards, reward_code)
    report = {"prompts": len(prompts), "rewards": rewards, "accuracy_from": acc,
              "reward": mean_intervals({lab: t["reward"] for lab, t in tables.items()}, pairs, name="mean reward"),
              "functions": {lab: {k: round(sum(v) / len(v), 4) for k, v in t.items() if k != "reward" and v}
                            for lab, t in tables.items()}}
    if acc:
        report["accuracy"] = mean_intervals({lab: t[acc] for lab, t in tables.items()}, pairs, name="accuracy")
    report["examples"] = [{"prompt": prompts[i], "reference": solutions[i],
                           **{lab: {"completion": completions[lab][i], "reward": round(tables[lab]["reward"][i], 3)}
                              for lab in completions}}
                          for i in range(min(examples, len(prompts)))]
    report["words"] = report["reward"]["words"] + report.get("accuracy", {}).get("words", [])
    return report


def report_markdown(report: dict) -> str:
    """The report as lines a person reads: a table of labels × mean reward / accuracy with intervals, then words."""
    labels = list(report["reward"]["means"])
    acc = report.get("accuracy")
    head = "| | mean reward [95 % CI] |" + (f" accuracy ({report['accuracy_from']}) [95 % CI] |" if acc else "")
    rows = [head, "|---|---|" + ("---|" if acc else "")]
    for lab in labels:
        lo, hi = report["reward"]["intervals"][lab]
        line = f"| {lab} | {report['reward']['means'][lab]:.3f} [{lo:.3f}, {hi:.3f}] |"
        if acc:
            alo, ahi = acc["intervals"][lab]
            line += f" {acc['means'][lab]:.1%} [{alo:.1%}, {ahi:.1%}] |"
        rows.append(line)
    words = "\n".join(f"- {w}" for w in report["words"])
    return (f"**Rewards on {report['prompts']} held-out prompts** (greedy; bootstrap over prompts)\n\n"
            + "\n".join(rows) + ("\n\n" + words if words else ""))


def grpo_report(run: str, limit: int = 200, data: str | None = None, batch_size: int = 16, progress=None) -> dict:
    """A GRPO run against its base on held-out prompts, scored by the run's own reward functions: each model's
    mean reward and accuracy with 95 % intervals over prompts, and the paired difference run − base.

    The prompts: `data` (a dataset: its test split) when given, else the run's dataset.eval_source, else its own
    test split (validation when there is none), exactly as it was split for training."""
    from studio.access import resolve_run
    from studio.data import heldout_data, prepare_dataset
    from studio.errors import StudioError
    from studio.inference import load_for_inference, run_base_model
    from studio.recipes import load_recipe
    from studio.work import checked, checkpoint, heavy

    run_dir = resolve_run(run)
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.method != "grpo":
        raise StudioError(f"{run_dir.name} is a {recipe.method} run: the rewards report needs a GRPO run")
    seed = int(recipe.train.get("seed", 42))
    ds = recipe.dataset
    if data:
        from studio.access import check_data_source, shown_path

        data = check_data_source(data)  # a visitor names only what the server handed them
        held, where = prepare_dataset(data, splits="80/10/10", seed=42), f"the test split of {shown_path(data)}"
    else:
        held = heldout_data(ds, seed)
        where = f"dataset.eval_source {held.source}" if held is not None else None
        if held is None:
            held = prepare_dataset(ds["source"], ds.get("format"), ds.get("template"), config=ds.get("config"),
                                   split=ds.get("split"), splits=ds.get("splits", "80/10/10"), seed=seed,
                                   max_rows=ds.get("max_rows"), cache=True, group_by=ds.get("group_by"))
    if held.format.kind != "prompt_completion":
        raise StudioError(f"{held.source}: the rewards report needs prompts with references; this data is "
                          f"{held.format.label}")
    split = next((s for s in ("test", "validation") if s in held.splits and len(held.splits[s])), None)
    if split is None:
        raise StudioError(f"{held.source}: no held-out prompts (too few rows for a test split)")
    where = where or f"the run's {split} split"
    rows = held.splits[split]
    prompts, solutions = prompts_and_solutions(rows.select(range(min(int(limit), len(rows)))))
    limit_tokens = int(recipe.train.get("max_completion_length") or MAX_NEW_TOKENS)
    base = run_base_model(run_dir)
    labels = {f"base ({base})": False, run_dir.name: True}

    def answer_all(outs: dict) -> None:
        from studio.inference import is_instruct

        for n, (label, adapter) in enumerate(labels.items()):
            checkpoint()
            loaded = load_for_inference(run_dir.name, adapter=adapter, cached=True)  # shared, read-only
            step = checked((lambda done, total, n=n, label=label: progress(
                (n + done / total) / len(labels), f"{label}: {done}/{total}")) if progress else None)
            outs[label] = answer(loaded.model, loaded.tokenizer, prompts, limit_tokens, is_instruct(loaded.tokenizer),
                                 progress=step)
            del loaded

    outs: dict = {}
    # generation over every prompt with two models is heavy work (studio.work): queued, billed, stopped
    heavy("evaluation", answer_all, outs)
    report = reward_report(outs, prompts, solutions, recipe.header.get("rewards"),
                           [(run_dir.name, f"base ({base})")], recipe.header.get("reward_code"))
    report.update(run=run_dir.name, source=where, max_new_tokens=limit_tokens, decoding="greedy")
    return report
