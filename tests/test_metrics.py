"""Metrics on hand-checked examples, empty predictions, and `studio score` against the libraries themselves."""

import json
import math

import pytest

from studio import cli
from studio.metrics import corpus_scores, exact_match, f1_score, heldout_loss, sentence_scores, text_stats


def test_f1_and_exact_match_follow_squad_normalisation():
    # "the"/"a" and punctuation dropped, lower-cased: pred {cat, sat}, ref {cat, sat, down} -> P 1, R 2/3
    assert f1_score("The cat sat.", "a cat sat down") == pytest.approx(80.0)
    assert exact_match("The Cat!", "cat") == 100.0 and exact_match("cat", "dog") == 0.0
    assert f1_score("", "cat") == 0.0 and exact_match("", "cat") == 0.0


def test_rouge_and_bleu_on_a_hand_checked_pair():
    s = sentence_scores("the cat sat on the mat", "the cat is on the mat")
    assert s["rouge1"] == pytest.approx(100 * 5 / 6)  # 5 of 6 unigrams shared
    assert s["rouge2"] == pytest.approx(60.0)  # the-cat, on-the, the-mat of 5 bigrams
    assert s["rougeL"] == pytest.approx(100 * 5 / 6)  # LCS "the cat on the mat"
    assert sentence_scores("a b c d e", "a b c d e")["bleu"] == pytest.approx(100.0)


def test_empty_predictions_score_zero_and_never_raise():
    assert all(v == 0.0 for v in sentence_scores("", "the cat").values())
    assert all(v == 0.0 for v in corpus_scores(["", "  "], ["a cat", "a dog"]).values())
    assert all(v == 0.0 for v in corpus_scores([], []).values())
    assert text_stats([""]) == {"avg_length": 0.0, "distinct1": 0.0, "distinct2": 0.0}


def test_average_length_and_distinct_n():
    stats = text_stats(["a b a", "A b"])
    assert stats["avg_length"] == 2.5
    assert stats["distinct1"] == pytest.approx(40.0)  # {a, b} of 5 unigrams
    assert stats["distinct2"] == pytest.approx(100 * 2 / 3)  # {(a,b), (b,a)} of 3 bigrams


def test_heldout_loss_matches_the_models_own_loss(embedded_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_path))
    model = AutoModelForCausalLM.from_pretrained(str(embedded_path)).eval()
    prompt, ref = "Quote: So many books, so little time.\nAuthor:", " Frank Zappa"  # the cut: formats.cut_prompt
    out = heldout_loss(model, tok, [prompt], [ref])
    ids = tok(prompt + ref, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[0, :len(tok(prompt)["input_ids"])] = -100
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss.item()
    assert out["loss"] == pytest.approx(expected, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5) and out["tokens"] > 0


PREDS = ["The cat sat on the mat.", "", "Paris is the capital of France", "it rains a lot in spring"]
REFS = ["The cat is on the mat.", "Nothing at all", "The capital of France is Paris.", "spring is rainy"]


def test_score_cli_agrees_with_sacrebleu_and_rouge_score(write, capsys):
    import sacrebleu
    from rouge_score import rouge_scorer

    p, r = write("p.txt", "\n".join(PREDS) + "\n"), write("r.txt", "\n".join(REFS) + "\n")
    assert cli.main(["score", "--predictions", str(p), "--references", str(r), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"bleu", "rouge1", "rouge2", "rougeL", "f1", "exact_match"}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = {"bleu": sacrebleu.corpus_bleu(PREDS, [REFS]).score}
    for key in ("rouge1", "rouge2", "rougeL"):
        direct[key] = 100 * sum(scorer.score(ref, pred)[key].fmeasure for pred, ref in zip(PREDS, REFS)) / len(PREDS)
    for key, value in direct.items():
        assert round(got[key], 2) == round(value, 2), key


def test_score_cli_errors_are_one_line(write, capsys):
    p, r = write("p.txt", "a\nb\n"), write("r.txt", "a\n")
    assert cli.main(["score", "--predictions", str(p), "--references", str(r)]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 predictions" in err and "1 references" in err and len(err.splitlines()) == 1
    empty = write("empty.txt", "")
    assert cli.main(["score", "--predictions", str(p), "--references", str(empty)]) == 2
    assert "empty.txt: the references file is empty" in capsys.readouterr().err
