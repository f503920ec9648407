"""One cache of loaded models for the whole process, bounded by bytes: least recently used goes first.

Chat, DPO labelling and evaluation all load through here (transformers models and llama.cpp handles
alike), so a model two tabs use is in memory once, and the total stays under `STUDIO_MODEL_CACHE_MB`
(default: `default_limit` of the machine's RAM). What it holds is listed by `held()` (the Persona Chat tab
shows it, `python -m studio cache` prints it).

Keys are what the caller resolved AFTER its access check (a run folder, a model folder, a GGUF file):
this module never turns a visitor's text into anything, it only remembers what the caller already had
the right to load. An entry evicted while someone still uses it stays alive in their hands until they
finish; it is only no longer handed out.

What the cache hands out is read-only to its users: nobody trains it, changes its weights or leaves an adapter
switched on or off on it. A report that puts adapters of its own on a cached base (the LAPDOG table, DPO
margins) wraps `shared_weights_copy(model)`: a module tree of its own whose weights are the cached tensors.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

_GB = 1 << 30


RAM_ENV = "STUDIO_MACHINE_RAM_MB"  # the RAM the default is computed from (benchmarks/app_memory.py emulates 16 GB)


def machine_ram() -> int:
    text = os.environ.get(RAM_ENV, "").strip()
    if text:
        try:
            return int(float(text) * (1 << 20))
        except ValueError:
            pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * _GB


def default_limit(ram: int) -> int:
    """A tenth of the RAM, at least 1 GB: 1.6 GB on a 16 GB Space, 1.2 GB on a 12 GB Colab, 2.4 GB on 24 GB.

    The whole app stays within 3 GB over a newcomer's afternoon at this default on a 16 GB machine
    (benchmarks/app_memory.py, docs/performance.md): the cache plus the app itself (~0.7 GB of Python, Gradio
    and torch) plus the work of the moment (activations, lm-eval's requests, a model being loaded)."""
    return max(_GB, ram // 10)


def limit_bytes() -> int:
    """`STUDIO_MODEL_CACHE_MB`, or `default_limit` of the machine's RAM."""
    text = os.environ.get("STUDIO_MODEL_CACHE_MB", "").strip()
    if text:
        try:
            return max(0, int(float(text) * (1 << 20)))
        except ValueError:
            pass
    return default_limit(machine_ram())


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
        self.hits = 0
        self.evictions = 0

    @property
    def limit(self) -> int:
        return limit_bytes() if self._limit is None else self._limit

    def get(self, key: tuple, load, *, size=None, label: str = "", kind: str = "", expect=0):
        """The value under `key`, loading it with `load()` on a miss; `size(value)` its bytes (default: estimated).

        `expect`: the bytes the load will take (or a function giving them, called on a miss only), when the caller
        knows (a model folder's weight files): room is made before loading, so the process does not hold the
        evicted entries and the new one at once."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.used_at = time.monotonic()
                self.hits += 1
                return entry.value
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry.value
            room = int((expect() if callable(expect) else expect) or 0)
            with self._lock:
                evicted = self._evict(keep=None, room=room)
            if evicted:
                gc.collect()  # a model's modules hold cycles: free the evicted weights before the next load
            value = load()
            nbytes = int((size or estimate_bytes)(value))
            with self._lock:
                self._entries[key] = Entry(value, nbytes, label or str(key[-1]), kind or str(key[0]))
                self.loads += 1
                evicted = self._evict(keep=key)
                self._loading.pop(key, None)
            if evicted:
                gc.collect()
            return value

    def _evict(self, keep, room: int = 0) -> int:
        """Least recently used first until the entries (+ `room`) fit the limit; how many went."""
        total, limit, gone = sum(e.nbytes for e in self._entries.values()), self.limit, 0
        for key in list(self._entries):
            if total + room <= limit:
                break
            if key == keep:
                continue
            total -= self._entries.pop(key).nbytes
            self.evictions += 1
            gone += 1
        return gone

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


def shared_weights_copy(model):
    """A module tree of its own over `model`'s very tensors (no weight is copied): an adapter loaded onto it,
    switched or dropped, changes only this tree, never the cached model. Its parameters are new `Parameter`
    objects (frozen) over the same storage, so not even `requires_grad` changes on the cached one; tied
    weights stay tied. Read-only: nothing may write into the shared tensors."""
    import copy

    import torch

    memo = {}
    for p in model.parameters():
        memo.setdefault(id(p), torch.nn.Parameter(p.detach(), requires_grad=False))
    for b in model.buffers():
        memo.setdefault(id(b), b)
    return copy.deepcopy(model, memo)


CACHE = ModelCache()


def cached(key: tuple, load, **kwargs):
    return CACHE.get(key, load, **kwargs)
