"""Promise 6: a flaky network. A local HTTP server stands in for the Hub (HF_ENDPOINT) and stalls or fails;
each model load and each Hub dataset load ends in one clear line within the timeout, a cached model loads
offline, and offline mode falls back to the embedded model without waiting."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT

TIMEOUT = 2  # HF_HUB_ETAG_TIMEOUT for the child process (default 10 s)
ANSWERS = {  # repo name → (status, headers); "stall" never answers
    "error500": (500, {}),
    "gated": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted."}),
    "badtoken": (401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
    "missing": (401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}),
}


@pytest.fixture
def fake_hub():
    release = threading.Event()
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            hits.append((self.command, self.path))
            parts = self.path.split("?")[0].strip("/").split("/")
            parts = parts[2:] if parts[:2] == ["api", "datasets"] else parts  # dataset_info: /api/datasets/org/name
            repo = parts[1] if len(parts) > 1 else ""
            if repo in ("stall", "cached"):
                release.wait(60)  # a server that accepted the connection and never answers
                return
            status, headers = ANSWERS.get(repo, (404, {"X-Error-Code": "RepoNotFound"}))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    release.set()
    server.shutdown()
    server.server_close()


def _cache_model(hf_home, repo, embedded_path):
    """A model as huggingface_hub would have cached it on an earlier, online day."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(embedded_path, folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


TIMED_LOADS = """
import json, sys, time
from studio.errors import StudioError

def timed_loads(load, names):
    \"\"\"One JSON line per name: the StudioError's line (or "ok") and how long the load took.\"\"\"
    for name in names:
        start = time.time()
        try:
            load(name)
            line = "ok"
        except StudioError as e:
            line = str(e)
        print(json.dumps({"name": name, "line": line, "seconds": round(time.time() - start, 2)}), flush=True)
"""

CHILD = TIMED_LOADS + """
from huggingface_hub import constants
from studio.models import default_model, hub_reachable, load_tokenizer

load_tokenizer("embedded/tiny-llama")  # the imports, outside the timings
timed_loads(load_tokenizer, sys.argv[1:])
print(json.dumps({"name": "reachable", "line": hub_reachable()}), flush=True)
constants.ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port
start = time.time()
print(json.dumps({"name": "default", "line": default_model(), "seconds": round(time.time() - start, 2)}), flush=True)
"""


def test_stalling_failing_and_refusing_hub_each_give_one_line_in_bounded_time(fake_hub, tmp_path, embedded_path):
    url, hits = fake_hub
    _cache_model(tmp_path / "hf", "org/cached", embedded_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": str(TIMEOUT), "HF_HUB_DOWNLOAD_TIMEOUT": str(TIMEOUT)}
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(var, None)
    names = ["org/stall", "org/error500", "org/gated", "org/badtoken", "org/missing", "org/cached"]
    out = subprocess.run([sys.executable, "-c", CHILD, *names], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = {r["name"]: r for r in map(json.loads, out.stdout.splitlines())}
    for name in names:
        assert "\n" not in got[name]["line"], got[name]
        assert got[name]["seconds"] < TIMEOUT + 6, got[name]  # without the preflight a stall costs 2 s + 60 s a file
    assert f"no answer from the Hub within {TIMEOUT} s" in got["org/stall"]["line"]
    assert "try again" in got["org/stall"]["line"] and "embedded/tiny-llama" in got["org/stall"]["line"]
    assert "answered 500" in got["org/error500"]["line"] and "try again" in got["org/error500"]["line"]
    assert "gated" in got["org/gated"]["line"] and "HF_TOKEN" in got["org/gated"]["line"]
    assert "refused the token (401)" in got["org/badtoken"]["line"]
    assert "not found on the Hub" in got["org/missing"]["line"]
    assert got["org/cached"]["line"] == "ok"  # the Hub stalls, the cached copy loads
    assert got["reachable"]["line"] is True
    assert got["default"]["line"] == "embedded/tiny-llama" and got["default"]["seconds"] < 3
    assert len([h for h in hits if "error500" in h[1]]) == 1  # one bounded request each, no retry storm


SHARED_CHILD = TIMED_LOADS + """
from studio.models import load_tokenizer

load_tokenizer("embedded/tiny-llama")  # the imports, outside the timings
timed_loads(load_tokenizer, sys.argv[1:])
"""


@pytest.mark.parametrize("hub", ["stalls", "offline"])
def test_on_a_shared_studio_a_cached_hub_model_is_no_answer(fake_hub, tmp_path, embedded_path, hub):
    """The owner's private model, downloaded once with HF_TOKEN, sits in the server's cache: a visitor gets it
    only when the Hub says this visitor may (as for Hub datasets). The studio's own models still load offline."""
    url, _ = fake_hub
    _cache_model(tmp_path / "hf", "org/cached", embedded_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1" if hub == "offline" else "0",
           "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": str(TIMEOUT),
           "STUDIO_SHARED": "1"}
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(var, None)
    names = ["org/cached", "embedded/tiny-llama"] + (["HuggingFaceTB/SmolLM2-135M-Instruct"] if hub == "offline" else [])
    out = subprocess.run([sys.executable, "-c", SHARED_CHILD, *names], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = {r["name"]: r["line"] for r in map(json.loads, out.stdout.splitlines())}
    assert "only when the Hub confirms you may" in got["org/cached"] and "\n" not in got["org/cached"], got
    assert ("out of reach" if hub == "offline" else f"no answer from the Hub within {TIMEOUT} s") in got["org/cached"]
    assert all(got[name] == "ok" for name in names[1:]), got


def test_offline_falls_back_without_waiting():
    from studio.errors import StudioError
    from studio.models import default_model, hub_reachable, load_tokenizer

    assert load_tokenizer("embedded/tiny-llama").pad_token  # the imports, outside the timing
    start = time.time()
    assert not hub_reachable() and default_model() == "embedded/tiny-llama"
    with pytest.raises(StudioError, match="not in the local cache and the Hub can't be reached"):
        load_tokenizer("org/never-downloaded")
    assert time.time() - start < 5


def test_a_download_that_times_out_says_so_in_one_line():
    import httpx2

    from studio.models import _load_error

    err = _load_error("org/big", httpx2.ReadTimeout("The read operation timed out"))
    assert str(err).startswith("model org/big: the download timed out; try again")


DATASET_CHILD = TIMED_LOADS + """
import datasets  # the imports, outside the timings
from studio.data.sources import read_source

timed_loads(read_source, sys.argv[1:])
"""


def test_hub_datasets_that_stall_fail_or_refuse_give_one_line_in_bounded_time(fake_hub, tmp_path):
    url, hits = fake_hub
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": url,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": str(TIMEOUT), "HF_HUB_DOWNLOAD_TIMEOUT": str(TIMEOUT)}
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        env.pop(var, None)
    names = ["org/stall", "org/error500", "org/gated", "org/badtoken", "org/missing"]
    out = subprocess.run([sys.executable, "-c", DATASET_CHILD, *names], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = {r["name"]: r for r in map(json.loads, out.stdout.splitlines())}
    for name in names:
        assert "\n" not in got[name]["line"] and got[name]["line"].startswith(name), got[name]
        assert got[name]["seconds"] < TIMEOUT + 6, got[name]
    assert f"no answer from the Hub within {TIMEOUT} s" in got["org/stall"]["line"]
    assert "answered 500" in got["org/error500"]["line"] and "try again" in got["org/error500"]["line"]
    assert "terms" in got["org/gated"]["line"] and "HF_TOKEN" in got["org/gated"]["line"]
    assert "refused access (401)" in got["org/badtoken"]["line"]
    assert "not found on the Hub" in got["org/missing"]["line"]
    assert len([h for h in hits if "error500" in h[1]]) == 1  # one bounded request each
