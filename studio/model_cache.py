"""One cache of loaded models for the whole process, bounded by bytes: least recently used goes first.

Chat, DPO labelling and evaluation all load through here (transformers models and llama.cpp handles
alike), so a model two tabs use is in memory once, and the total stays under `STUDIO_MODEL_CACHE_MB`
(default: a quarter of the machine's RAM, at least 1 GB). What it holds is listed by `held()` (the Persona
Chat tab shows it, `python -m studio cache` prints it).

Keys are what the caller resolved AFTER its access check (a run folder, a model folder, a GGUF file):
this module never turns a visitor's text into anything, it only remembers what the caller already had
the right to load. An entry evicted while someone still uses it stays alive in their hands until they
finish; it is only no longer handed out.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

_GB = 1 << 30


def machine_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * _GB


def limit_bytes() -> int:
    """`STUDIO_MODEL_CACHE_MB`, or a quarter of the RAM (at least 1 GB): 6 GB on 24 GB, 3 GB on a 12 GB Colab."""
    text = os.environ.get("STUDIO_MODEL_CACHE_MB", "").strip()
    if text:
        try:
            return max(0, int(float(text) * (1 << 20)))
        except ValueError:
            pass
    return max(_GB, machine_ram() // 4)


@dataclass
class Entry:
    value: object
    nbytes: int
    label: str
    kind: str
    loaded_at: float = field(default_factory=time.time)
    used_at: float = field(default_factory=time.monotonic)


class ModelCache:
    def __init__(self, limit: int | None = None):
        self._limit = limit
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict = {}  # key → lock: two sessions asking for one model load it once
        self.loads = 0
        self.evictions = 0

    @property
    def limit(self) -> int:
        return limit_bytes() if self._limit is None else self._limit

    def get(self, key: tuple, load, *, size=None, label: str = "", kind: str = ""):
        """The value under `key`, loading it with `load()` on a miss; `size(value)` its bytes (default: estimated)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.used_at = time.monotonic()
                return entry.value
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry.value
            value = load()
            nbytes = int((size or estimate_bytes)(value))
            with self._lock:
                self._entries[key] = Entry(value, nbytes, label or str(key[-1]), kind or str(key[0]))
                self.loads += 1
                self._evict(keep=key)
                self._loading.pop(key, None)
            return value

    def _evict(self, keep) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        for key in list(self._entries):
            if total <= self.limit:
                break
            if key == keep:
                continue
            total -= self._entries.pop(key).nbytes
            self.evictions += 1

    def drop(self, key=None) -> None:
        """Forget one entry (or all)."""
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)

    def held(self) -> list[dict]:
        """What is held, most recently used first: kind, label, MB, seconds since last use."""
        now = time.monotonic()
        with self._lock:
            return [{"kind": e.kind, "label": e.label, "mb": round(e.nbytes / (1 << 20), 1),
                     "idle_s": round(now - e.used_at, 1)} for e in reversed(self._entries.values())]

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def describe(self, visible=None, shown=str) -> str:
        """One line a person reads: what is loaded and how much of the budget it takes.

        `visible(key)` says whether the reader may see an entry (a shared page: only what they may read; the key
        holds what the loader resolved, e.g. a run folder or a story file); the others are counted, never named.
        `shown(label)` turns a label into what the page may show (no server folders)."""
        with self._lock:
            entries = [(k, e) for k, e in reversed(self._entries.items())]
        used, limit = self.total_bytes() / (1 << 20), self.limit / (1 << 20)
        if not entries:
            return f"model cache: empty (limit {limit:,.0f} MB, STUDIO_MODEL_CACHE_MB)"
        seen = [e for k, e in entries if visible is None or visible(k)]
        items = [f"{shown(e.label)} ({e.kind}, {e.nbytes / (1 << 20):,.0f} MB)" for e in seen]
        if len(seen) < len(entries):
            items.append(f"{len(entries) - len(seen)} loaded by other visitors")
        return f"model cache: {used:,.0f} of {limit:,.0f} MB: {', '.join(items)}"


def estimate_bytes(value) -> int:
    """Bytes a loaded thing holds: a torch module's parameters and buffers, a value's own `nbytes`, or the
    sum over a tuple/list or an object's `parts` of those."""
    if hasattr(value, "nbytes") and isinstance(getattr(value, "nbytes"), int):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(estimate_bytes(v) for v in value)
    model = getattr(value, "model", value)
    params = getattr(model, "parameters", None)
    if callable(params):
        seen, total = set(), 0
        for t in list(model.parameters()) + list(model.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total
    return 0


CACHE = ModelCache()


def cached(key: tuple, load, **kwargs):
    return CACHE.get(key, load, **kwargs)
