"""Story retrieval speed: index build per 1,000 stories, top-5 latency at 10k and 100k stories.

Build time embeds real stories (the bundled corpus, repeated with numbered variants to 1,000) with the
default embedder, through `studio.retrieval.build_index` (cache off). The 10k/100k indexes are synthetic:
random unit vectors of the embedder's width (384) in the same `IndexFlatIP`, since only the index size
matters to search time. Two searches are timed on each, one query at a time (as a chat sends them):
  flat scan   faiss `IndexFlatIP.search` alone, the exact reference
  studio      `StoryIndex.search`, what the chat and LAPDOG call: the flat scan below 20k stories, above it
              the 8-bit shards + exact re-scoring with its error bound (see studio/retrieval.py)
and every studio result is checked against the flat scan's (ids, best first): "exact" counts the matches.
"embed+search" adds embedding one persona query with the real embedder.
Prints a table, then one JSON line. Goal: search alone < 5 ms median at 100k stories on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import _common  # noqa: F401  (path and offline environment)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="timed queries per index size")
    parser.add_argument("--build-stories", type=int, default=1000)
    args = parser.parse_args()

    import faiss
    import numpy as np

    from studio.retrieval import Corpus, StoryIndex, build_index, embed, load_corpus, load_embedder

    model = load_embedder()
    base = load_corpus().stories
    stories = [{**base[i % len(base)], "id": f"b{i}", "text": f"{base[i % len(base)]['text']} ({i})"}
               for i in range(args.build_stories)]
    embed(model, ["warm up"])
    t0 = time.perf_counter()
    build_index(Corpus(stories, "bench"), cache=False)
    build_s_per_1k = (time.perf_counter() - t0) * 1000 / len(stories)

    personas = [f"i love to ski. i have {n} dogs. i work as a nurse." for n in range(args.queries)]
    rng = np.random.default_rng(0)
    rows, out = [], {"build_s_per_1k": round(build_s_per_1k, 2), "threads": faiss.omp_get_max_threads()}
    for n in (10_000, 100_000):
        vectors = rng.standard_normal((n, 384), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        flat = faiss.IndexFlatIP(384)
        flat.add(vectors)
        index = StoryIndex(Corpus([{"id": str(i), "title": "", "text": ""} for i in range(n)], "synthetic", "x"),
                           "synthetic", flat)
        queries = embed(model, personas[:50])
        t = time.perf_counter()
        index.search(queries[:1], 5)  # warm; builds the 8-bit shards above 20k stories
        first_ms = (time.perf_counter() - t) * 1000
        flat_ms, search_ms, both_ms, exact = [], [], [], 0
        for i in range(args.queries):
            q = queries[i % len(queries)][None, :]
            t = time.perf_counter()
            _, want = flat.search(q, 5)
            flat_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            _, got = index.search(q, 5)
            search_ms.append((time.perf_counter() - t) * 1000)
            exact += got[0] == want[0].tolist()
        for text in personas[:50]:
            t = time.perf_counter()
            index.search(embed(model, [text]), 5)
            both_ms.append((time.perf_counter() - t) * 1000)
        tag = f"{n // 1000}k"
        fallbacks = index.fast.fallbacks if index.fast else 0
        rows.append((tag, statistics.median(flat_ms), statistics.median(search_ms), percentile(search_ms, 99),
                     statistics.median(both_ms), exact, fallbacks, first_ms))
        out[f"flat_median_ms_{tag}"] = round(statistics.median(flat_ms), 3)
        out[f"search_median_ms_{tag}"] = round(statistics.median(search_ms), 3)
        out[f"search_p99_ms_{tag}"] = round(percentile(search_ms, 99), 3)
        out[f"embed_and_search_median_ms_{tag}"] = round(statistics.median(both_ms), 2)
        out[f"exact_{tag}"] = f"{exact}/{args.queries}"
        out[f"fallbacks_{tag}"] = fallbacks

    print(f"index build: {build_s_per_1k:.2f} s per 1,000 stories ({args.build_stories} embedded, all-MiniLM-L6-v2); "
          f"faiss threads {faiss.omp_get_max_threads()}; {args.queries} queries, top-5, one at a time")
    print(f"{'stories':>8} {'flat scan med':>14} {'studio med':>11} {'studio p99':>11} {'embed+search':>13} "
          f"{'exact':>8} {'fallbacks':>9} {'first query':>12}")
    for tag, flat_med, med, p99, both, exact, fallbacks, first in rows:
        print(f"{tag:>8} {flat_med:>11.3f} ms {med:>8.3f} ms {p99:>8.3f} ms {both:>10.2f} ms "
              f"{exact:>4}/{args.queries} {fallbacks:>9} {first:>9.0f} ms")
    print("goal: search alone < 5 ms median at 100k (studio column); 'first query' includes building the 8-bit copy")
    print(json.dumps({"benchmark": "retrieval", **out}))


if __name__ == "__main__":
    main()
