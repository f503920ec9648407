"""Import the ML stack once, under one lock.

transformers' lazy module is not safe to import from two threads at once (seen here:
``cannot import name 'AutoTokenizer'``), and the app imports it both in a warm-up
thread and in request handlers. Everything goes through `import_ml_stack`.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_ready = False


def import_ml_stack() -> None:
    global _ready
    if _ready:
        return
    with _lock:
        if not _ready:
            import datasets  # noqa: F401
            import peft  # noqa: F401
            import plotly.graph_objects  # noqa: F401 - the dashboard's charts
            import transformers
            import trl  # noqa: F401

            transformers.AutoTokenizer  # noqa: B018 - resolve the lazy attributes while we hold the lock
            transformers.AutoModelForCausalLM  # noqa: B018
            from studio.machine import cap_torch_threads

            cap_torch_threads()  # a container's CPU quota, not its host's cores
            _ready = True
