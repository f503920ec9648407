"""A LAPDOG run's table (F1 / BLEU / ROUGE-L): closed-book vs fixed retriever vs LAPDOG retriever."""

from __future__ import annotations

import time

from studio.errors import StudioError
from studio.evaluate.comparison import SCORE_KEY, _cut
from studio.evaluate.results import save_result


PERSONA_ARMS = ("closed-book (stage 1)", "+ fixed retriever", "+ LAPDOG retriever")
GOLD_LL = ("Gold reply log-likelihood per token (nats, teacher-forced, higher is better): how likely the arm's model, "
           "with the arm's stories in its prompt, finds the real reply; a mean per dialogue, intervals over dialogues.")


def _run_on_cached_base(run_dir, stage1):
    """The run's two adapters (final as "default", stage 1 as "stage1") over the cached base's own tensors
    (studio.model_cache.shared_weights_copy): only the adapters' weights are new, however many tabs hold the base.
    The arms switch adapters on this tree of their own, never on a cached model."""
    from peft import PeftModel

    from studio.inference import load_for_inference, run_adapter
    from studio.model_cache import shared_weights_copy

    base = load_for_inference(str(run_dir), adapter=False, cached=True)  # the base alone: one entry for all tabs
    model = PeftModel.from_pretrained(shared_weights_copy(base.model), str(run_adapter(run_dir)), is_trainable=False)
    model.load_adapter(str(stage1), adapter_name="stage1", is_trainable=False)
    return model.eval(), base.tokenizer


def _three_arms(run_dir, recipe, cfg, rows, queries, k, corpus, stage1, batch_size, progress):
    """The fixed and the trained retriever's stories, then each arm's greedy replies and scores."""
    from studio.inference import chat_prompt, generate
    from studio.metrics import corpus_scores, text_stats
    from studio.persona import persona_messages
    from studio.retrieval import load_retriever
    from studio.work import checked, checkpoint

    fixed = load_retriever(corpus, cfg["embedder"]).search(queries, k)
    learned = load_retriever(corpus, cfg["embedder"], run_dir).search(queries, k)
    checkpoint()
    model, tok = _run_on_cached_base(run_dir, stage1)
    budget = int(recipe.train.get("max_length") or 1024) - int(cfg["reply_max_new_tokens"])
    arms = [(PERSONA_ARMS[0], "stage1", [[] for _ in rows]), (PERSONA_ARMS[1], "default", fixed),
            (PERSONA_ARMS[2], "default", learned)]
    references = [r["reply"] for r in rows]
    outputs, metrics, gold_ll = {}, {}, {}
    for n, (label, adapter, found) in enumerate(arms):
        model.set_adapter(adapter)
        prompts = [chat_prompt(tok, persona_messages(tok, r["persona"], s, r["history"], budget)[0])
                   for r, s in zip(rows, found)]
        step = (lambda done, total, n=n, label=label: progress((n + done / total) / len(arms),
                                                               f"{label}: {done}/{total}")) if progress else None
        replies = [_cut(o, "\n") for o in generate(model, tok, prompts, int(cfg["reply_max_new_tokens"]), stop="\n",
                                                    batch_size=batch_size, progress=checked(step))]
        outputs[label] = replies
        metrics[label] = {**corpus_scores(replies, references), **text_stats(replies)}
        checkpoint()
        gold_ll[label] = gold_loglik(model, tok, prompts, references)
        metrics[label]["gold_ll"] = round(sum(gold_ll[label]) / max(1, len(rows)), 4)
    del model
    return fixed, learned, outputs, metrics, gold_ll


def gold_loglik(model, tok, prompts: list[str], references: list[str]) -> list[float]:
    """Each row's gold reply log-likelihood per token under the arm's prompt (teacher-forced, nats): how much the
    arm's stories make the real reply likelier, a finer measure than the overlap of one greedy reply."""
    from studio.inference import continuation_logprobs

    sums = continuation_logprobs(model, tok, prompts, references)
    lengths = [max(1, len(tok(r, add_special_tokens=False)["input_ids"])) for r in references]
    return [s / n for s, n in zip(sums, lengths)]


def persona_report(run: str, limit: int = 32, batch_size: int = 16, name: str | None = None, progress=None,
                   save: bool = True, data: str | None = None) -> dict:
    """A LAPDOG run on its held-out persona dialogues: the paper's table (F1 / BLEU / ROUGE-L) for one run.

    Three set-ups answer the same dialogues, greedily, replies up to the run's `reply_max_new_tokens`:
    the stage-1 adapter with no stories (closed-book, the supervised row); the final adapter with the top-k
    stories of the untrained embedder (fixed retriever); the final adapter with the top-k stories of the
    trained query encoder (LAPDOG). The last two differ only in the retriever. Shaped like `compare`'s
    result, so the tab's tables, chart, downloads and saved results work the same. The dialogues: `data` if
    given, else the recipe's `dataset.eval_source`, else the run's own held-out split (`heldout_dialogues`);
    `limit` rows spread over as many dialogues as it allows.
    """
    from studio.access import check_run_name, resolve_run
    from studio.metrics import DEFINITIONS, TEXT_DEFINITIONS, sentence_scores
    from studio.evaluate.intervals import bootstrap_table, mean_intervals
    from studio.persona import dialogue_rows, heldout_dialogues, query_text, settings, spread_over_dialogues
    from studio.recipes import load_recipe
    from studio.retrieval import run_retriever_dir
    from studio.work import heavy

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
    source, split, heldout = heldout_dialogues(recipe, data)
    rows = spread_over_dialogues(dialogue_rows(heldout), max(1, int(limit)))  # as many dialogues as fit
    k, corpus = int(cfg["k"]), cfg["corpus"] or None
    queries = [query_text(r["persona"], r["history"], cfg["query"] == "persona+turn") for r in rows]
    # retrieval, the three arms' generation and their scores are heavy work (studio.work): queued, billed, low
    # priority, stopped at the next batch when the page is gone
    fixed, learned, outputs, metrics, gold_ll = heavy("evaluation", _three_arms, run_dir, recipe, cfg, rows, queries, k,
                                             corpus, stage1, batch_size, progress)
    labels = list(PERSONA_ARMS)
    table = []
    for i, r in enumerate(rows):
        turns = "\n".join(f"{m['role']}: {m['content']}" for m in r["history"])
        scores = {lab: sentence_scores(outputs[lab][i], r["reply"]) for lab in labels}
        table.append({"id": i, "prompt": f"persona: {r['persona']}\n{turns}", "reference": r["reply"],
                      "gold_ll": {lab: round(gold_ll[lab][i], 4) for lab in labels},
                      "outputs": {lab: outputs[lab][i] for lab in labels}, "scores": scores,
                      "delta": scores[labels[-1]][SCORE_KEY] - scores[labels[0]][SCORE_KEY],
                      "stories": {"fixed": [s["id"] for s in fixed[i]], "lapdog": [s["id"] for s in learned[i]]}})
    changed = sum(a[0]["id"] != b[0]["id"] for a, b in zip(fixed, learned)) / len(rows)
    # 95 % intervals over dialogues (one persona = one dialogue), LAPDOG vs fixed and fixed vs closed-book paired
    pairs = [(PERSONA_ARMS[2], PERSONA_ARMS[1]), (PERSONA_ARMS[1], PERSONA_ARMS[0])]
    intervals = bootstrap_table(outputs, [r["reply"] for r in rows], [r["persona"] for r in rows], pairs)
    # the gold reply's likelihood per token: a mean per dialogue, then intervals over dialogues
    by_dialogue: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_dialogue.setdefault(r["persona"], []).append(i)
    intervals["likelihood"] = mean_intervals(
        {lab: [sum(gold_ll[lab][i] for i in idx) / len(idx) for idx in by_dialogue.values()] for lab in labels},
        pairs, name="gold log-likelihood per token")
    config = {"models": [{"label": PERSONA_ARMS[0], "ref": run_dir.name, "adapter": "stage1/adapter", "stories": 0},
                         {"label": PERSONA_ARMS[1], "ref": run_dir.name, "adapter": "adapter", "stories": k,
                          "retriever": cfg["embedder"]},
                         {"label": PERSONA_ARMS[2], "ref": run_dir.name, "adapter": "adapter", "stories": k,
                          "retriever": "retriever/"}],
              "data": {"source": source, "split": split, "rows": len(rows),
                       "dialogues": intervals["dialogues"]},
              "suite": None, "limit": limit, "max_new_tokens": int(cfg["reply_max_new_tokens"]),
              "decoding": "greedy", "stop": "\n", "persona": {"k": k, "query": cfg["query"],
                                                             "top1_changed": round(changed, 4)}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"name": check_run_name(name or f"persona-{stamp}", "result name"),
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "owner": run_dir.name, "config": config,
              "labels": labels, "score_key": SCORE_KEY, "definitions": {**TEXT_DEFINITIONS, **DEFINITIONS, "gold_ll": GOLD_LL},
              "metrics": metrics, "rows": table, "intervals": intervals}
    if save:
        result["path"] = str(save_result(result))
    return result
