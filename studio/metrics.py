"""Text metrics from the established libraries, on the 0–100 scale papers print.

BLEU is sacrebleu's (corpus level; sentence level with its own smoothing for per-row views), ROUGE is
Google's rouge-score (stemming off unless asked), F1 and exact match follow SQuAD/ParlAI's
normalisation (lower case, punctuation and the articles a/an/the removed, whitespace collapsed).
An empty prediction scores 0 and never raises.
"""

from __future__ import annotations

import re
import string
from collections import Counter

DEFINITIONS = {
    "bleu": "BLEU (sacrebleu, corpus level, 13a tokenizer): n-gram precision up to 4 with a brevity penalty, 0–100.",
    "rouge1": "ROUGE-1 F (rouge-score, no stemming): unigram overlap with the reference, 0–100.",
    "rouge2": "ROUGE-2 F (rouge-score, no stemming): bigram overlap with the reference, 0–100.",
    "rougeL": "ROUGE-L F (rouge-score, no stemming): longest common subsequence with the reference, 0–100.",
    "f1": "Unigram F1 as in SQuAD/ParlAI: lower case, punctuation and articles removed, 0–100.",
    "exact_match": "Exact match after the same normalisation as F1, 0–100.",
}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in str(text or "").lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1_score(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if not pred or not ref or same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def _rouge(use_stemmer: bool = False):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)


def sentence_scores(prediction: str, reference: str, scorer=None) -> dict:
    """Per-row scores (sentence BLEU with sacrebleu's default exp smoothing)."""
    import sacrebleu

    scorer = scorer or _rouge()
    prediction, reference = str(prediction or ""), str(reference or "")
    rouge = scorer.score(reference, prediction) if prediction.strip() and reference.strip() else None
    bleu = sacrebleu.sentence_bleu(prediction, [reference]).score if prediction.strip() else 0.0
    return {
        "bleu": bleu,
        "rouge1": 100.0 * rouge["rouge1"].fmeasure if rouge else 0.0,
        "rouge2": 100.0 * rouge["rouge2"].fmeasure if rouge else 0.0,
        "rougeL": 100.0 * rouge["rougeL"].fmeasure if rouge else 0.0,
        "f1": f1_score(prediction, reference),
        "exact_match": exact_match(prediction, reference),
    }


def corpus_scores(predictions: list[str], references: list[str], use_stemmer: bool = False) -> dict:
    """Corpus BLEU; ROUGE, F1 and EM averaged over rows."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {k: 0.0 for k in DEFINITIONS}
    scorer = _rouge(use_stemmer)
    rows = [sentence_scores(p, r, scorer) for p, r in zip(predictions, references)]
    out = {k: sum(r[k] for r in rows) / len(rows) for k in ("rouge1", "rouge2", "rougeL", "f1", "exact_match")}
    preds = [str(p or "") for p in predictions]
    out["bleu"] = sacrebleu.corpus_bleu(preds, [[str(r or "") for r in references]]).score if any(
        p.strip() for p in preds) else 0.0
    return {k: out[k] for k in DEFINITIONS}
