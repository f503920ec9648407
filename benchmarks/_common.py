"""Shared pieces of the benchmarks: models, recipes, memory sampling."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def random_model_folder(config_name: str, out: Path) -> str:
    """A randomly initialised model of a real architecture (assets/configs/NAME.json), with the
    embedded tokenizer (so vocab_size is the tokenizer's). Seeded: every run builds the same weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from studio.embedded import embedded_model_path

    if (out / "config.json").exists():
        return str(out)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    raw = json.loads((ROOT / "assets" / "configs" / f"{config_name}.json").read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    raw.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**raw))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def recipe(**sets):
    from studio.recipes import load_recipe

    return load_recipe(ROOT / "recipes" / "tiny-quotes.yaml", [f"{k}={v}" for k, v in sets.items()])


class PeakMemory:
    """Peak memory of a block: GPU allocator peak on CUDA, else sampled process RSS above the start."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"
