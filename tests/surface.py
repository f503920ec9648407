"""The surface fuzzer's machinery (tests/test_surface_fuzz.py): cases generated from a running app's own API
description, raw HTTP calls as one visitor, and the witnesses that see an effect (a file read or written, a
URL fetched, code run) and tell it to the call that caused it.

Nothing here knows the app's endpoints: every named endpoint in `/gradio_api/info` is attacked, so one added
tomorrow is attacked too. A payload class is one entry in `PAYLOADS` (see docs/security.md, "Surface fuzzer")."""

from __future__ import annotations

import html
import http.server
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CALL_TIMEOUT = 120  # seconds for one call's answer; a slower one is noted, not failed (timing is not asserted)


# ---- talking to the app as one visitor --------------------------------------------------------------------------
@dataclass
class Answer:
    kind: str  # "ok" (the event completed), "error" (gradio's error event), "http" (refused before the queue),
    #            "timeout", "down" (no connection: the app stopped answering)
    data: object = None
    text: str = ""  # every string in the answer, HTML-unescaped, file outputs' contents included

    @property
    def refused(self) -> bool:
        return self.kind in ("error", "http") or "studio-error" in json.dumps(self.data)


def _strings(value, out: list, files: list) -> None:
    if isinstance(value, str):
        out.append(html.unescape(value))
    elif isinstance(value, dict):
        if "path" in value and ("url" in value or value.get("meta", {}).get("_type") == "gradio.FileData"):
            files.append(value)  # a file output: Gradio's own temp path is its protocol; its contents are checked
            out.append(str(value.get("orig_name") or ""))
            return
        for v in value.values():
            _strings(v, out, files)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strings(v, out, files)


class Api:
    """Raw HTTP against one app, as the page's JavaScript client does: `/gradio_api/call/<name>` with the
    visitor's own session hash, then its event stream."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") + "/"
        self.http = httpx.Client(timeout=httpx.Timeout(30, read=CALL_TIMEOUT))

    def info(self) -> dict:
        return self.http.get(self.url + "gradio_api/info").json()

    def config(self) -> dict:
        return self.http.get(self.url + "config").json()

    def alive(self) -> bool:
        try:
            return self.http.get(self.url, timeout=20).status_code == 200
        except httpx.HTTPError:
            return False

    def upload(self, path: Path) -> str:
        """`/gradio_api/upload` (no session needed): the server path Gradio hands back."""
        with open(path, "rb") as f:
            r = self.http.post(self.url + "gradio_api/upload", files=[("files", (path.name, f))])
        r.raise_for_status()
        return r.json()[0]

    def call(self, api_name: str, data: list, session: str) -> Answer:
        name = api_name.lstrip("/")
        try:
            r = self.http.post(self.url + f"gradio_api/call/{name}", json={"data": data, "session_hash": session})
            if r.status_code != 200:
                return self._answer("http", r.text)
            event_id = r.json()["event_id"]
            kind, payload, event = "timeout", None, None
            with self.http.stream("GET", self.url + f"gradio_api/call/{name}/{event_id}") as stream:
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event in ("complete", "generating", "error"):
                        try:
                            payload = json.loads(line[5:])
                        except ValueError:
                            payload = line[5:]
                        if event == "complete":
                            kind = "ok"
                            break
                        if event == "error":
                            kind = "error"
                            break
        except httpx.TimeoutException:
            return Answer("timeout")
        except httpx.TransportError as e:
            return Answer("down", str(e), str(e))
        return self._answer(kind, payload)

    def _answer(self, kind: str, payload) -> Answer:
        out, files = [], []
        if kind == "error" and isinstance(payload, dict):
            payload = payload.get("error")  # gradio's error event: the message (and a title, "Error")
        _strings(payload, out, files)
        for f in files:  # what a file output holds is part of the answer
            url = f.get("url") or ""
            if url.startswith("http"):
                try:
                    r = self.http.get(url, timeout=30)
                    if len(r.content) < 2_000_000:
                        out.append(r.content.decode("utf-8", "replace"))
                except httpx.HTTPError:
                    pass
        return Answer(kind, payload, "\n".join(out))


# ---- a server on this machine that must never be asked anything -------------------------------------------------
class Recorder:
    """A tiny local HTTP server recording every request (a server-side fetch of a visitor's URL)."""

    def __init__(self):
        self.requests: list[tuple[float, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                recorder.requests.append((time.time(), self.path))
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---- witnesses of an effect on disk -----------------------------------------------------------------------------
class Watcher:
    """Watches folders that no call may change (another visitor's run, the owner's run and pairs) and files no
    call may read (another visitor's weights and data, the owner's data): every read and write is an event with
    its time, so it can be told to the calls in flight then. A read is seen through the file's access time,
    set back to 0 after each look (ext4 `relatime` updates an access time older than the file's change)."""

    def __init__(self, no_write: list[Path], no_read: list[Path], runs: Path, base: Path):
        self.no_write, self.no_read, self.runs, self.base = no_write, no_read, runs, base
        self.events: list[tuple[float, str]] = []  # (when, what happened)
        self._lock = threading.Lock()
        self._files = self._snapshot()
        self._runs = {p.name for p in runs.iterdir() if not p.name.startswith(".")}
        for p in self.no_read:
            self._reset(p)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _reset(p: Path) -> None:
        try:
            os.utime(p, ns=(0, p.stat().st_mtime_ns))  # the change time stays as it was, to the nanosecond
        except OSError:
            pass

    def _snapshot(self) -> dict:
        files = {}
        for folder in self.no_write:
            for p in ([folder] if folder.is_file() else folder.rglob("*")):
                try:
                    st = p.stat()
                except OSError:
                    continue
                files[p] = (st.st_size, st.st_mtime_ns)
        return files

    @classmethod
    def settle(cls, no_write: list[Path], quiet: float = 1.0, at_most: float = 60) -> float:
        """Wait until nothing in `no_write` has changed for `quiet` seconds (a job that wrote its summary still
        appends its last events, a slower machine later): a write the sweep sees is then the sweep's. Returns
        the seconds waited."""
        started, probe = time.time(), cls.__new__(cls)
        probe.no_write = no_write
        last = probe._snapshot()
        while time.time() - started < at_most:
            time.sleep(quiet)
            now = probe._snapshot()
            if now == last:
                break
            last = now
        return time.time() - started

    def _name(self, p: Path) -> str:
        for folder, shown in ((self.runs, "runs"), (self.base, "")):
            if folder in p.parents:
                return f"{shown}/{p.relative_to(folder)}".lstrip("/")
        return str(p)

    def look(self) -> None:
        with self._lock:
            self._look()

    def _look(self) -> None:
        for p in self.no_read:
            try:
                atime = p.stat().st_atime
            except OSError:
                continue
            if atime > 0:
                self.events.append((atime, f"READ {self._name(p)}"))
                self._reset(p)
        now = self._snapshot()
        for p, sig in now.items():
            if self._files.get(p) != sig:
                self.events.append((sig[1] / 1e9, f"{'CHANGED' if p in self._files else 'WROTE'} {self._name(p)}"))
        self._files = now
        names = {p.name for p in self.runs.iterdir() if not p.name.startswith(".")}
        for name in sorted(names - self._runs):
            try:
                made = (self.runs / name).stat().st_mtime
            except OSError:
                made = time.time()
            self.events.append((made, f"new run folder runs/{name}"))
        self._runs = names

    def _loop(self):
        while not self._stop.wait(0.2):
            self.look()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.look()


# ---- the cases ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    endpoint: str
    param: str  # the parameter attacked; "*" = every text parameter at once; "-" = the endpoint as it comes
    cls: str  # the payload class
    data: list
    payload: object = None
    variant: str = ""  # which choice of a selector the call was made with ("kind=Local path")
    tag: str = ""  # unique per call: names its canary file and its URL
    session: str = ""  # the Gradio session (B's tab) it was sent from
    started: float = 0.0
    ended: float = 0.0
    answer: Answer | None = None
    problems: list[str] = field(default_factory=list)


def param_kind(p: dict) -> str | None:
    """How a parameter is attacked: "text", "list" (a list of names), "file", "client" (the page's browser id);
    None: left at its example (numbers, booleans, chat histories)."""
    comp = (p.get("component") or "").lower()
    t = p.get("type") or {}
    t = t.get("type") if isinstance(t, dict) else t
    if comp == "browserstate":
        return "client"
    if comp in ("file", "uploadbutton") or (t == "object" and "file" in json.dumps(p.get("python_type", ""))):
        return "file"
    if t == "string":
        return "text"
    if t == "array" and comp in ("dropdown", "checkboxgroup"):
        return "list"
    return None


def base_value(p: dict, visitor_id: str):
    """The value a parameter gets when another one is attacked: the page's own browser id, a text's default
    (what the page starts with), else the API's example (small numbers: refused or quick)."""
    kind = param_kind(p)
    if kind == "client":
        return visitor_id
    if kind == "file":
        return None
    if kind in ("text", "list") and p.get("parameter_has_default"):
        return p.get("parameter_default")
    return p.get("example_input")


def components(config: dict) -> dict[str, list[dict]]:
    """Per endpoint, the component behind each API parameter (in the API's order), from the app's `/config`."""
    comps = {c["id"]: c for c in config.get("components", [])}
    out: dict[str, list] = {}
    for dep in config.get("dependencies", []):
        name = dep.get("api_name")
        if not name or dep.get("api_visibility", "public") != "public":
            continue
        shown = [comps.get(i, {}) for i in dep.get("inputs", [])]
        out["/" + name] = [c for c in shown if not c.get("skip_api") and c.get("type") != "state"]
    return out


def closed(comp: dict) -> bool:
    """A component that refuses any value outside its fixed choices (Gradio checks before the handler runs)."""
    props = comp.get("props", {})
    return comp.get("type") in ("radio", "checkboxgroup") or (
        comp.get("type") == "dropdown" and not props.get("allow_custom_value"))


def radios(comp_list: list[dict]) -> list[tuple[int, str, list]]:
    """The Radio parameters (a choice of branch, e.g. where the data comes from) with their choices: a text
    field only one choice reads is attacked under that choice too."""
    out = []
    for pos, c in enumerate(comp_list):
        props = c.get("props", {})
        if c.get("type") == "radio":
            out.append((pos, props.get("label") or f"param {pos}", [v for _l, v in (props.get("choices") or [])]))
    return out
