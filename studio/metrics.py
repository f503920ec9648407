"""Text metrics from the established libraries, on the 0–100 scale papers print.

BLEU is sacrebleu's (corpus level; sentence level with its own smoothing for per-row views), ROUGE is
Google's rouge-score (stemming off unless asked), F1 and exact match follow SQuAD/ParlAI's
normalisation (lower case, punctuation and the articles a/an/the removed, whitespace collapsed).
An empty prediction scores 0 and never raises. Average length and distinct-1/2 (Li et al., 2016) need no
reference; loss and perplexity come from the model itself on held-out text (`heldout_loss`).
"""

from __future__ import annotations

import contextlib
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
# Reference-free statistics of the generated text, and the model's own fit to held-out text.
TEXT_DEFINITIONS = {
    "avg_length": "Average length of the outputs in whitespace-separated words.",
    "distinct1": "Distinct-1 (Li et al., 2016): distinct unigrams / all unigrams over every output, 0–100.",
    "distinct2": "Distinct-2: distinct bigrams / all bigrams over every output, 0–100.",
}
LOSS_DEFINITIONS = {
    "loss": "Mean cross-entropy (nats per token) of the held-out answers given their prompts, tokenized as "
            "training tokenizes them (chat template, end-of-sequence token).",
    "perplexity": "exp(loss): perplexity of the held-out answers given their prompts.",
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


def text_stats(predictions: list[str]) -> dict:
    """Average length and distinct-1/2 over all outputs (lower-cased whitespace tokens)."""
    tokens = [str(p or "").lower().split() for p in predictions]
    out = {"avg_length": sum(map(len, tokens)) / len(tokens) if tokens else 0.0}
    for n in (1, 2):
        grams = [tuple(t[i:i + n]) for t in tokens for i in range(len(t) - n + 1)]
        out[f"distinct{n}"] = 100.0 * len(set(grams)) / len(grams) if grams else 0.0
    return out


def heldout_loss(model, tokenizer, prompts: list, references: list) -> dict:
    """Loss and perplexity of each reference given its prompt (prompt tokens are not scored).

    Tokenized as TRL's SFT tokenizes a prompt/completion row: strings as they are (`prompt + reference`),
    message lists through the chat template (the prompt with its generation prompt); the reference's tokens
    start where the two token lists part (TRL's `common_prefix_length`). Summed over every reference token of
    every row, then divided once: long rows weigh by their length, as a corpus perplexity should. Rows are
    scored one at a time, so padding never enters the sums.
    """
    import math

    import torch
    from trl.data_utils import common_prefix_length

    def ids(value, **kwargs):
        if isinstance(value, list):
            if not value:
                return []
            return list(tokenizer.apply_chat_template(value, tokenize=True, return_dict=True, **kwargs)["input_ids"])
        return tokenizer(value, add_special_tokens=True)["input_ids"] if value else []

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for prompt, reference in zip(prompts, references):
        p_ids = ids(prompt, add_generation_prompt=True) if isinstance(prompt, list) else ids(prompt)
        full = ids(prompt + reference)
        start = common_prefix_length(p_ids, full)
        if not full or len(full) <= start:
            continue
        input_ids = torch.tensor([full], device=device)
        labels = input_ids.clone()
        labels[0, :max(start, 1)] = -100  # the first token has no context to be predicted from
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels[0, 1:] != -100).sum())
    if not count:
        return {"loss": None, "perplexity": None, "tokens": 0}
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


# ---- log-probability margins: the dashboard's held-out table, and the Evaluate tab's -----------------

def _as_text(tokenizer, prompt, completion) -> tuple[str, str]:
    """A pair side as (prompt text, completion text); conversational rows through the chat template."""
    if not isinstance(prompt, list):
        return str(prompt), completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
    from studio.inference import chat_prompt

    head = chat_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    return head, full[len(head):] if full.startswith(head) else "".join(m["content"] for m in completion)


def completion_logp(model, tokenizer, prompt, completion) -> float:
    """log p(completion | prompt), summed over the completion's tokens."""
    import torch

    head, tail = _as_text(tokenizer, prompt, completion)
    p_ids = tokenizer(head)["input_ids"]
    c_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not c_ids:
        return 0.0
    ids = torch.tensor([p_ids + c_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(logps[len(p_ids) - 1:].sum())


def margin_table(model, tokenizer, rows: list[dict], reference_adapter: str | None = None,
                 beta: float = 0.1) -> list[dict]:
    """Per pair: the policy's and the reference's log p(chosen) − log p(rejected), and DPO's reward margin
    β·(policy − reference) — positive when training moved the policy towards `chosen`.

    `model` is a PeftModel; the reference is its `reference_adapter` (an SFT start) or the base (adapter off).
    Summed log-probs favour short replies, so `prefers_chosen` (policy margin > 0) can stay false on pairs
    whose chosen reply is much longer even when the reward margin is large.
    """
    def margin(row):
        return (completion_logp(model, tokenizer, row["prompt"], row["chosen"])
                - completion_logp(model, tokenizer, row["prompt"], row["rejected"]))

    was_training = model.training
    model.eval()
    active = model.active_adapter
    policy = [margin(r) for r in rows]
    if reference_adapter:
        model.set_adapter(reference_adapter)
        ctx = contextlib.nullcontext()
    else:
        ctx = model.disable_adapter()
    try:
        with ctx:
            reference = [margin(r) for r in rows]
    finally:
        if reference_adapter:
            model.set_adapter(active)
        model.train(was_training)

    def show(v):
        return v if isinstance(v, str) else "\n".join(f"{m['role']}: {m['content']}" for m in v)

    return [{"prompt": show(r["prompt"]), "chosen": show(r["chosen"]), "rejected": show(r["rejected"]),
             "policy_margin": round(p, 4), "reference_margin": round(q, 4), "reward_margin": round(beta * (p - q), 4),
             "prefers_chosen": p > 0}
            for r, p, q in zip(rows, policy, reference)]


def preference_margins(run: str, rows: list[dict]) -> list[dict]:
    """A finished DPO run's margin table on `rows` (prompt/chosen/rejected), its adapter read from disk with PEFT.

    The reference is what the run trained against: its `init_adapter` run's adapter, or the base. The adapters
    go on a tree of this report's own over the cached base's tensors (studio.model_cache.shared_weights_copy):
    `margin_table` switches adapters on and off, which a cached model shared with chat and Evaluate must never
    see, and a copy of its own would hold the base's weights twice.
    """
    import yaml
    from peft import PeftModel

    from studio.access import resolve_run
    from studio.inference import init_adapter_run, load_for_inference, run_adapter
    from studio.model_cache import shared_weights_copy

    run_dir = resolve_run(run)
    base = load_for_inference(str(run_dir), adapter=False, cached=True)  # the base alone: one entry for all tabs
    model = PeftModel.from_pretrained(shared_weights_copy(base.model), str(run_adapter(run_dir)), is_trainable=False)
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text("utf-8")) or {}
    reference, beta = None, float(recipe.get("beta", 0.1))
    if recipe.get("init_adapter"):
        from studio.recipes import recipe_from_dict

        init_run = init_adapter_run(recipe_from_dict(recipe, str(run_dir / "recipe.yaml")))
        model.load_adapter(str(run_adapter(init_run)), adapter_name="ref", is_trainable=False)
        reference = "ref"
    return margin_table(model.eval(), base.tokenizer, rows, reference, beta=beta)
