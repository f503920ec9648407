"""Launch the real app on a free local port for API and browser tests."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(runs_dir: Path, timeout: float = 90, extra_args=(), env=None, port: int | None = None):
    """The real app in a subprocess; `extra_args` go to app.py (e.g. --shared), `env` adds variables; `port`
    names the port (a restart on the same one keeps a browser's storage), else a free one."""
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STUDIO_RUNS": str(runs_dir), "PYTHONPATH": str(ROOT),
           "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    log = open(runs_dir.parent / f"app-{port}.log", "w")
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--no-share", *extra_args]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {(runs_dir.parent / f'app-{port}.log').read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("app did not start")


@contextlib.contextmanager
def running_app(runs_dir: Path, **kwargs):
    """`start_app` for a `with` block (a module fixture's body): yields the URL, stops the app after."""
    proc, url = start_app(runs_dir, **kwargs)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def open_tab(browser, url: str, tab: str, height: int = 1000):
    """A fresh visitor (its own browser context, 1400 px wide) on the app, with `tab` opened."""
    page = browser.new_context(viewport={"width": 1400, "height": height}).new_page()
    page.goto(url)
    page.get_by_role("tab", name=tab).click()
    return page


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Browser tests drive Debian's Chromium (a Playwright browser download can't work offline).
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed")


def attribute(page, selector: str, name: str) -> str | None:
    """`name` of the first element matching `selector` now, or None when there is none: one read in the page (a
    locator's count() and then get_attribute() waits 30 s for an element a poll removed between the two)."""
    return page.evaluate("([s, n]) => { const e = document.querySelector(s); return e ? e.getAttribute(n) : null; }",
                         [selector, name])


def wait_for(cond, timeout: float = 60, what="condition", every: float = 0.25) -> None:
    """Poll `cond` until it is true; fail the test naming `what` (or what `what()` says then) after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
