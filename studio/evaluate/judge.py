"""A judge model's verdict on two columns of a saved result, from its log-probabilities of "A" and "B"."""

from __future__ import annotations

from studio.errors import StudioError


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


def _verdicts(result: dict, judge_ref: str, a: str, b: str) -> list[str]:
    """Per row: the answer the judge prefers in both orders, else "tie" (a row at a time: a checkpoint each)."""
    from studio.inference import load_for_inference
    from studio.work import checkpoint

    loaded = load_for_inference(judge_ref, cached=True)
    verdicts = []
    for row in result["rows"]:
        checkpoint()
        ans = {k: row["outputs"][k] if isinstance(row["outputs"][k], str) else row["outputs"][k][-1] for k in (a, b)}
        picks = []
        for first, second in ((a, b), (b, a)):
            lp = _choice_logprobs(loaded.model, loaded.tokenizer,
                                  JUDGE_TEMPLATE.format(question=row["prompt"], a=ans[first], b=ans[second]),
                                  [" A", " B"])
            picks.append(first if lp[0] >= lp[1] else second)
        verdicts.append(picks[0] if picks[0] == picks[1] else "tie")
    return verdicts


def judge(result: dict, judge_ref: str, a: str, b: str) -> dict:
    """Win rate of `a` over `b` by a judge model, each pair shown in both orders.

    A row counts as a win only when the judge prefers the same answer in both orders; otherwise it is a
    tie (the judge followed the position, not the answer). Win rate = (wins + ties / 2) / rows.
    """
    from studio.work import heavy

    if a not in result["labels"] or b not in result["labels"] or a == b:
        raise StudioError(f"judge: pick two different models of this result ({', '.join(result['labels'])})")
    verdicts = heavy("judge", _verdicts, result, judge_ref, a, b)  # queued, billed, stopped with its page
    wins_a, wins_b = verdicts.count(a), verdicts.count(b)
    n = len(verdicts)
    out = {"judge": judge_ref, "a": a, "b": b, "rows": n, "wins_a": wins_a, "wins_b": wins_b,
           "ties": verdicts.count("tie"), "win_rate_a": 100.0 * (wins_a + 0.5 * (n - wins_a - wins_b)) / n if n else 0.0,
           "verdicts": verdicts}
    return out
