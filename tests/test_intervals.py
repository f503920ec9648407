"""Bootstrap intervals over dialogues and paired differences (issue 32): seeded, exact at the point estimate,
honest about noise."""

import random

import pytest

from studio.evaluate.intervals import bootstrap_table, dialogue_key, intervals_markdown
from studio.metrics import corpus_scores


def replies(n=120, seed=0):
    rng = random.Random(seed)
    refs = [f"i like {rng.choice(['dogs', 'cats', 'skiing', 'tea', 'books'])} on {rng.choice(['sunday', 'monday'])}"
            for _ in range(n)]
    good = [r if rng.random() < 0.6 else "i do not know" for r in refs]
    bad = [r if rng.random() < 0.2 else "hello there" for r in refs]
    noisy = [r if rng.random() < 0.2 else "hello there" for r in refs]
    return refs, good, bad, noisy


def test_point_estimates_are_the_corpus_metrics_and_the_result_is_seeded():
    refs, good, bad, _ = replies()
    groups = [i // 4 for i in range(len(refs))]
    a = bootstrap_table({"good": good, "bad": bad}, refs, groups, [("good", "bad")], samples=300)
    b = bootstrap_table({"good": good, "bad": bad}, refs, groups, [("good", "bad")], samples=300)
    assert a == b and a["dialogues"] == 30 and a["rows"] == 120
    exact = {lab: corpus_scores(out, refs) for lab, out in (("good", good), ("bad", bad))}
    for p in a["paired"]:
        assert p["delta"] == pytest.approx(exact["good"][p["metric"]] - exact["bad"][p["metric"]], abs=0.01)
    for lab in ("good", "bad"):
        for k, (lo, hi) in a["intervals"][lab].items():
            assert lo <= round(exact[lab][k], 2) <= hi
    assert all(p["verdict"] == f"good is better than bad on {name}" and p["interval"][0] > 0
               for p, name in zip(a["paired"], ("F1", "BLEU", "ROUGE-L")))


def test_a_difference_inside_the_noise_says_so():
    refs, _, bad, noisy = replies(60, seed=3)
    out = bootstrap_table({"A": noisy, "B": bad}, refs, [i // 3 for i in range(60)], [("A", "B")], samples=300)
    f1 = next(p for p in out["paired"] if p["metric"] == "f1")
    assert f1["interval"][0] <= 0 <= f1["interval"][1]
    assert "within noise" in f1["verdict"]
    text = intervals_markdown({"intervals": out})
    assert "95 % intervals" in text and "A − B, F1:" in text and "within noise" in text
    # a label that begins with a list marker ("+ fixed retriever") stays one item, not a nested list
    plus = intervals_markdown({"intervals": {**out, "words": ["+ fixed − closed-book, F1: +1.00"]}})
    assert "- \\+ fixed − closed-book" in plus and "\n- + " not in plus


def test_rows_of_one_dialogue_are_drawn_together():
    """Ten dialogues of 10 identical rows: resampling dialogues gives a wider interval than 100 independent
    rows would (rows of one dialogue are not independent evidence)."""
    refs = ["a b c"] * 100
    outs = [("a b c" if (i // 10) % 2 else "x y z") for i in range(100)]
    by_dialogue = bootstrap_table({"m": outs}, refs, [i // 10 for i in range(100)], [], samples=400)
    by_row = bootstrap_table({"m": outs}, refs, list(range(100)), [], samples=400)
    width = lambda r: r["intervals"]["m"]["f1"][1] - r["intervals"]["m"]["f1"][0]  # noqa: E731
    assert width(by_dialogue) > 2 * width(by_row)


def test_dialogue_key_groups_persona_rows_only():
    persona = [{"role": "system", "content": "Your persona: i ski."}, {"role": "user", "content": "hi"}]
    assert dialogue_key(persona, 3) == dialogue_key(persona, 4) == "Your persona: i ski."
    assert dialogue_key([{"role": "system", "content": "You are helpful."}], 5) == 5
    assert dialogue_key([], 7) == 7
