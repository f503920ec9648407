"""How sure a table is: 95 % bootstrap intervals over dialogues, and paired differences between set-ups.

One home for "is this better or is it noise", used by the LAPDOG three-way table and by Evaluate's base-vs-run
comparison. Rows are resampled by dialogue (every row of a drawn dialogue comes along), since turns of one
dialogue are not independent. Each resample recomputes the corpus metric itself: F1 and ROUGE-L as means of
the row scores, BLEU from sacrebleu's summed n-gram statistics (as `corpus_bleu` does). A paired difference
draws the same dialogues for both set-ups, so what they share cancels. Seeded: the same rows give the same
intervals.
"""

from __future__ import annotations

SAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
KEYS = ("f1", "bleu", "rougeL")
NAMES = {"f1": "F1", "bleu": "BLEU", "rougeL": "ROUGE-L"}


def _group_sums(predictions: list[str], references: list[str], index: list[int], n_groups: int):
    """Per dialogue: [Σ F1, Σ ROUGE-L, rows] and sacrebleu's summed BLEU statistics."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    from studio.metrics import _rouge, sentence_scores

    scorer = _rouge()
    means = np.zeros((n_groups, 3))
    for p, r, g in zip(predictions, references, index):
        s = sentence_scores(p, r, scorer)
        means[g] += (s["f1"], s["rougeL"], 1.0)
    preds = [str(p or "") for p in predictions]
    stats = np.asarray(BLEU()._extract_corpus_statistics(preds, [[str(r or "") for r in references]]), dtype=float)
    bleu = np.zeros((n_groups, stats.shape[1]))
    np.add.at(bleu, index, stats)
    return means, bleu, any(p.strip() for p in preds)


def _metrics(weights, means, bleu, any_text: bool) -> dict:
    """Each metric for every row of `weights` (resamples × dialogues: how often each dialogue was drawn)."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    sums = weights @ means
    rows = np.maximum(sums[:, 2], 1e-12)
    stats = weights @ bleu
    scorer = BLEU()
    bleus = np.array([scorer._compute_score_from_stats([int(round(x)) for x in s]).score if any_text else 0.0
                      for s in stats])
    return {"f1": sums[:, 0] / rows, "rougeL": sums[:, 1] / rows, "bleu": bleus}


def _verdict(a: str, b: str, name: str, lo: float, hi: float) -> str:
    if lo > 0:
        return f"{a} is better than {b} on {name}"
    if hi < 0:
        return f"{b} is better than {a} on {name}"
    return f"{a} vs {b} on {name}: within noise (the interval holds 0)"


def bootstrap_table(outputs: dict[str, list[str]], references: list[str], groups: list, pairs: list[tuple[str, str]],
                    samples: int = SAMPLES, seed: int = SEED, confidence: float = CONFIDENCE) -> dict:
    """95 % intervals of each set-up's F1 / BLEU / ROUGE-L and of the paired differences `a − b` in `pairs`,
    resampling dialogues (`groups`: one key per row). Returns a JSON-able dict with a sentence per pair."""
    import numpy as np

    keys = list(dict.fromkeys(groups))
    where = {k: i for i, k in enumerate(keys)}
    index = [where[g] for g in groups]
    n_groups = len(keys)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(samples, n_groups))
    weights = np.zeros((samples + 1, n_groups))
    for s in range(samples):
        weights[s] = np.bincount(draws[s], minlength=n_groups)
    weights[samples] = 1.0  # the last row: the data as it is (the point estimate)
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    per_label = {lab: _metrics(weights, *_group_sums(out, references, index, n_groups)) for lab, out in outputs.items()}
    intervals = {lab: {k: [round(float(np.percentile(v[k][:-1], lo_q)), 2), round(float(np.percentile(v[k][:-1], hi_q)), 2)]
                       for k in KEYS} for lab, v in per_label.items()}
    paired, words = [], []
    for a, b in pairs:
        for k in KEYS:
            diff = per_label[a][k] - per_label[b][k]
            lo, hi = float(np.percentile(diff[:-1], lo_q)), float(np.percentile(diff[:-1], hi_q))
            verdict = _verdict(a, b, NAMES[k], lo, hi)
            paired.append({"a": a, "b": b, "metric": k, "delta": round(float(diff[-1]), 2),
                           "interval": [round(lo, 2), round(hi, 2)],
                           "share_a_better": round(float(np.mean(diff[:-1] > 0)), 3), "verdict": verdict})
            words.append(f"{a} − {b}, {NAMES[k]}: {diff[-1]:+.2f} [{lo:+.2f}, {hi:+.2f}]: "
                         + ("within noise" if lo <= 0 <= hi else verdict))
    return {"method": f"bootstrap over dialogues (rows grouped by dialogue), {samples} resamples, seed {seed}",
            "confidence": confidence, "samples": samples, "seed": seed, "dialogues": n_groups, "rows": len(groups),
            "intervals": intervals, "paired": paired, "words": words}


def dialogue_key(context: list, i: int):
    """Which dialogue a row belongs to: rows of one persona dialogue share their system message ('Your persona:
    …'); any other row is its own dialogue."""
    first = context[0] if context else None
    if isinstance(first, dict) and first.get("role") == "system" and str(first.get("content", "")).startswith(
            "Your persona:"):
        return first["content"]
    return i


def _item(text: str) -> str:
    """A Markdown list item whose text may begin with a list marker of its own (the persona table's "+ fixed
    retriever"): escaped, or "- + …" renders as a list nested in the item."""
    return "- " + ("\\" + text if text[:1] in "+-*" else text)


def intervals_markdown(result: dict) -> str:
    """The intervals and paired differences of a result, as lines a person reads ('' when it has none)."""
    iv = result.get("intervals")
    if not iv:
        return ""
    pct = round(100 * iv["confidence"])
    lines = [f"**{pct} % intervals** ({iv['method']}, {iv['dialogues']} dialogues, {iv['rows']} rows):"]
    for lab, m in iv["intervals"].items():
        lines.append(_item(f"{lab}: " + ", ".join(f"{NAMES[k]} [{lo:.2f}, {hi:.2f}]" for k, (lo, hi) in m.items())))
    lines += [_item(w) for w in iv["words"]]
    ll = iv.get("likelihood")  # the persona table: the gold reply's log-likelihood per token (higher: likelier)
    if ll:
        lines.append("- gold reply log-likelihood per token (teacher-forced, nats; higher is better), "
                     + ", ".join(f"{lab}: {ll['means'][lab]:.3f} [{lo:.3f}, {hi:.3f}]"
                                 for lab, (lo, hi) in ll["intervals"].items()))
        lines += [_item(w) for w in ll["words"]]
    return "\n".join(lines)


def mean_intervals(scores: dict[str, list[float]], pairs: list[tuple[str, str]], samples: int = SAMPLES,
                   seed: int = SEED, confidence: float = CONFIDENCE, name: str = "mean reward") -> dict:
    """95 % bootstrap intervals of each set-up's mean score over items (prompts), and of the paired differences
    `a − b` (the same resampled prompts for both), with a sentence each. Scores are per item, one list per label,
    all of one length."""
    import numpy as np

    labels = list(scores)
    n = len(scores[labels[0]])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    values = {lab: np.asarray(scores[lab], dtype=float) for lab in labels}
    out = {"method": f"bootstrap over {n} items, {samples} resamples, seed {seed}", "confidence": confidence,
           "items": n, "means": {}, "intervals": {}, "paired": [], "words": []}
    for lab in labels:
        boot = values[lab][draws].mean(axis=1)
        out["means"][lab] = round(float(values[lab].mean()), 4)
        out["intervals"][lab] = [round(float(np.percentile(boot, lo_q)), 4), round(float(np.percentile(boot, hi_q)), 4)]
    for a, b in pairs:
        diff_items = values[a] - values[b]
        boot = diff_items[draws].mean(axis=1)
        delta, lo, hi = float(diff_items.mean()), float(np.percentile(boot, lo_q)), float(np.percentile(boot, hi_q))
        verdict = _verdict(a, b, name, lo, hi)
        out["paired"].append({"a": a, "b": b, "metric": name, "delta": round(delta, 4),
                              "interval": [round(lo, 4), round(hi, 4)], "verdict": verdict})
        out["words"].append(f"{a} − {b}, {name}: {delta:+.3f} [{lo:+.3f}, {hi:+.3f}]: "
                            + ("within noise" if lo <= 0 <= hi else verdict))
    return out
