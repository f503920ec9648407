import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def embedded_path():
    from studio.embedded import embedded_model_path

    return embedded_model_path()


@pytest.fixture
def write(tmp_path):
    """write("name.jsonl", rows_or_text) → path; lists of dicts become JSON Lines."""

    def _write(name, content, mode="w"):
        path = tmp_path / name
        if isinstance(content, list):
            content = "\n".join(json.dumps(r) for r in content) + "\n"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


def tiny_recipe(**overrides):
    """The tiny-quotes recipe with fast settings for tests."""
    from studio.recipes import load_recipe

    sets = {"max_steps": 12, "save_steps": 4, "eval_steps": 6, "logging_steps": 2, **overrides}
    return load_recipe(ROOT / "recipes" / "tiny-quotes.yaml", [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for every browser test (flags: see ../shared/notes/stack.md)."""
    from playwright.sync_api import sync_playwright

    from app_server import CHROMIUM

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()
