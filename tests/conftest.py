import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import contextlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# The slowest files first (measured with --durations on the 2-core machine): with `-n 2 --dist loadfile` each
# worker takes the next file when it is free, so a long file started last would hold the run alone at the end.
SLOW_FIRST = ["test_surface_fuzz.py", "test_llama_backend.py", "test_fuzz.py", "test_queue.py", "test_sybil.py",
              "test_identity.py", "test_heavy_work.py",
              "test_crash.py", "test_jobs.py", "test_load.py", "test_fsdp.py", "test_browser.py", "test_fuzz_fields.py",
              "test_newcomer27_browser.py", "test_real_eval.py", "test_cli.py", "test_chat_browser.py",
              "test_dpo_browser.py", "test_grpo_browser.py", "test_export_browser.py"]


def pytest_configure(config):
    # pytest-xdist's loadfile scheduler would reorder the files by test count (most first), which put the
    # one-test surface fuzzer last, alone: keep the order above
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture(scope="session")
def embedded_path():
    from studio.embedded import embedded_model_path

    return embedded_model_path()


@contextlib.contextmanager
def runs_env(root: Path):
    """`root` as the studio's runs folder (STUDIO_RUNS) inside the block, the old value back after it: for a
    module's runs fixture (`with runs_env(tmp_path_factory.mktemp(...) / "runs") as root: yield root`)."""
    old = os.environ.get("STUDIO_RUNS")
    os.environ["STUDIO_RUNS"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("STUDIO_RUNS", None)
        else:
            os.environ["STUDIO_RUNS"] = old


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
