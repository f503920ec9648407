"""Story retrieval speed: index build per 1,000 stories, top-5 latency at 10k and 100k stories.

Build time embeds real stories (the bundled corpus, repeated with numbered variants to 1,000) with the
default embedder, through `studio.retrieval.build_index` (cache off). The 10k/100k indexes are synthetic:
random unit vectors of the embedder's width (384) in the same `IndexFlatIP`, since only the index size
matters to search time. "embed+search" adds embedding one persona query with the real embedder.
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

    from studio.retrieval import Corpus, build_index, embed, load_corpus, load_embedder

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
        index = faiss.IndexFlatIP(384)
        index.add(vectors)
        queries = embed(model, personas[:50])
        index.search(queries[:1], 5)  # warm
        search_ms, both_ms = [], []
        for i in range(args.queries):
            q = queries[i % len(queries)][None, :]
            t = time.perf_counter()
            index.search(q, 5)
            search_ms.append((time.perf_counter() - t) * 1000)
        for text in personas[:50]:
            t = time.perf_counter()
            index.search(embed(model, [text]), 5)
            both_ms.append((time.perf_counter() - t) * 1000)
        tag = f"{n // 1000}k"
        rows.append((tag, statistics.median(search_ms), percentile(search_ms, 99), statistics.median(both_ms)))
        out[f"search_median_ms_{tag}"] = round(statistics.median(search_ms), 3)
        out[f"search_p99_ms_{tag}"] = round(percentile(search_ms, 99), 3)
        out[f"embed_and_search_median_ms_{tag}"] = round(statistics.median(both_ms), 2)

    print(f"index build: {build_s_per_1k:.2f} s per 1,000 stories ({args.build_stories} embedded, all-MiniLM-L6-v2)")
    print(f"{'stories':>8} {'search median (ms)':>19} {'search p99 (ms)':>16} {'embed+search median (ms)':>25}")
    for tag, med, p99, both in rows:
        print(f"{tag:>8} {med:>19.3f} {p99:>16.3f} {both:>25.2f}")
    print("goal: search alone < 5 ms median at 100k")
    print(json.dumps({"benchmark": "retrieval", **out}))


if __name__ == "__main__":
    main()
