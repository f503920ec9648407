"""The surface fuzzer (issue 24): every named endpoint of a `--shared` and a `--demo` app, read from the app's own
`/gradio_api/info`, × every text, name-list, file and browser-id parameter × payload classes, sent by visitor B
while visitor A and the owner have things of their own. A new endpoint is attacked the day it is added.

Per call it asserts no effect (no canary file from uploaded code, no request to a local server, nothing read from
A's or the owner's weights and data, nothing written into their runs, no run folder from a refused start), no
leak (A's canary, run name and upload, the owner's canary, the planted HF_TOKEN, a server path, a traceback, an
"unexpected error"), a one-line refusal, and that the app still answers. Failures are collected and shown at the
end as one table; a summary names every endpoint and payload class tried. Machinery: tests/surface.py;
docs/security.md "Surface fuzzer"."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app_server import ROOT, start_app, wait_for
from surface import Api, Case, Recorder, Watcher, base_value, closed, components, param_kind, radios

# Unique to this run: another test file (another pytest worker beside this one) or another run of the fuzzer on
# the machine never writes, caches or shows them (a file, a prepared-data or index cache keyed by content, a
# GGUF keyed by the weights trained on it: the same bytes in every run would share those across processes).
_RUN = uuid.uuid4().hex[:8]
A_CANARY = f"acanary{_RUN}"  # in A's uploaded rows and its file name
OWNER_CANARY = f"ownercanary{_RUN[::-1]}"  # in the owner's own training data (a server file no visitor names)
TOKEN = f"hf_fuzzcanary{_RUN}" + "7" * 16  # planted as the app's HF_TOKEN
WORKERS = 4  # calls in flight per app
AGAIN_AT_MOST = 80  # calls made again alone to tell an effect to its call
STARTED: list[float] = []  # when the set-up began (the wall time printed includes it)


# ---- the environment the apps and the owner's command start with: this test's own ---------------------------------
@pytest.fixture(scope="module", autouse=True)
def own_environment():
    """Nothing another test file left in this worker's environment reaches the apps or the owner's command (they
    start with os.environ): a budget, a mode, an owner list, a runs or upload folder, a token, a proxy setting set
    in-process by the code under test (app.main sets STUDIO_SHARED / STUDIO_DEMO / FORWARDED_ALLOW_IPS, the CLI
    STUDIO_RUNS) would change what B is answered. The shared model cache (STUDIO_CACHE) is kept."""
    import os

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if (name.startswith(("STUDIO_", "GRADIO_")) and name != "STUDIO_CACHE") or name in (
                    "FORWARDED_ALLOW_IPS", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN"):
                mp.delenv(name)
        yield


# ---- the owner's material, made from the command line before the app is shared ---------------------------------
@pytest.fixture(scope="module")
def owner(own_environment, tmp_path_factory):
    STARTED.append(time.time())
    tmp = tmp_path_factory.mktemp("fuzz-owner")
    data = tmp / "owner-private.jsonl"
    data.write_text("".join(json.dumps({"quote": f"{OWNER_CANARY} private row {i}", "author": "Owner"}) + "\n"
                            for i in range(40)))
    cmd = [sys.executable, "-m", "studio", "train", "recipes/tiny-quotes.yaml", "--runs-dir", str(tmp / "runs"),
           "--run-name", "owner-run", "--set", "max_steps=2", "--set", "save_steps=1", "--set", "eval_steps=100",
           "--set", f"dataset.source={data}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                              "STUDIO_DATA_CACHE": str(tmp / "data-cache")})
    run = tmp / "runs" / "owner-run"
    assert (run / "adapter").is_dir(), out.stdout[-2000:] + out.stderr[-2000:]
    return {"run": run, "data": data}


@pytest.fixture(scope="module")
def recorder():
    r = Recorder()
    yield r
    r.close()


def _form(**changes) -> list:
    """The Train form's values, as the page fills it from a recipe."""
    from studio.recipes import RECIPES_DIR, load_recipe, recipe_to_flat
    from studio.ui.train_tab import ADVANCED, BASIC, LAPDOG, _flat_to_widget, form_value

    flat = recipe_to_flat(load_recipe(RECIPES_DIR / "tiny-quotes.yaml"))
    flat.update(changes)
    from studio.ui.grpo import REWARD_ROWS
    from studio.ui.train_tab import GRPO

    keys = ["model_name_or_path", "dataset.source", "dataset.format", "dataset.template"] + [k for k, _ in BASIC] + [
        k for k, _ in ADVANCED] + ["eval_prompts"] + [k for k, _ in LAPDOG] + [
        f"rewards.{n}.{part}" for n in range(1, REWARD_ROWS + 1) for part in ("type", "weight", "settings")] + [
        k for k, _ in GRPO] + ["dataset.eval_source", "retrieval.signal"]  # no reward-code field on a shared app;
    # held-out data and the retriever signal are last
    return [_flat_to_widget(k, form_value(flat, k)) for k in keys]


def _file(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}


class Target:
    """One app with the owner's run and pairs, visitors A and B, and what A made."""

    def __init__(self, mode: str, tmp: Path, owner: dict, recorder: Recorder):
        self.mode, self.tmp, self.recorder = mode, tmp, recorder
        self.runs, self.uploads, self.canaries = tmp / "runs", tmp / "uploads", tmp / "canaries"
        for d in (self.runs / "pairs", self.uploads, self.canaries):
            d.mkdir(parents=True)
        shutil.copytree(owner["run"], self.runs / "owner-run")
        # the owner's private data: this app's own copy, named in its copy of the owner's run (a file both apps
        # watched told one app's read to the other's calls)
        self.owner_data = tmp / owner["data"].name
        shutil.copyfile(owner["data"], self.owner_data)
        for text in (self.runs / "owner-run").rglob("*"):
            if text.suffix in (".yaml", ".json", ".jsonl", ".log", ".md") and text.is_file():
                body = text.read_text("utf-8", "replace")
                if str(owner["data"]) in body:
                    text.write_text(body.replace(str(owner["data"]), str(self.owner_data)), "utf-8")
        # the owner's pairs file: visitors may read it (the owner's things are public), never change it
        (self.runs / "pairs" / "owners.jsonl").write_text(json.dumps(
            {"prompt": "owner's prompt", "chosen": "c", "rejected": "r"}) + "\n")
        # everything this app writes is its own: Gradio's temp folder, and the studio's prepared-data cache (keyed
        # by content and settings: the bundled samples' entries were shared with every other test's processes,
        # which write TRL's tokenized copies beside them while they train)
        self.proc, url = start_app(self.runs, extra_args=[f"--{mode}"], env={
            "HF_TOKEN": TOKEN, "GRADIO_TEMP_DIR": str(self.uploads), "STUDIO_DATA_CACHE": str(tmp / "data-cache")})
        # the app answering is this one (a port picked free can be taken by another worker's app before ours
        # binds it; that app would answer start_app's probe)
        port = url.rstrip("/").rsplit(":", 1)[1]
        try:  # a set-up that fails stops its app: the fixture's teardown closes only the targets it got
            wait_for(lambda: f"Running on local URL:  http://127.0.0.1:{port}" in (
                self.runs.parent / f"app-{port}.log").read_text("utf-8", "replace"), 60,
                f"this app to say it serves {port}")
            assert self.proc.poll() is None, (self.runs.parent / f"app-{port}.log").read_text()[-2000:]
            self.api = Api(url)
            self.a_session, self.b_session = f"fuzz-a-{uuid.uuid4().hex[:10]}", f"fuzz-b-{uuid.uuid4().hex[:10]}"
            self.a_id, self.b_id = self._page_id(self.a_session), self._page_id(self.b_session)
            self._visitor_a()
        except BaseException:
            self.close()
            raise

    def _page_id(self, session: str) -> str:
        """The browser id a page gets on its first load (the page sends nothing yet)."""
        ans = self.api.call("/on_load", [None, "tiny-quotes"], session)
        if ans.kind == "ok" and isinstance(ans.data, list) and isinstance(ans.data[0], str):
            return ans.data[0]
        return uuid.uuid4().hex

    def _visitor_a(self) -> None:
        src = self.tmp / f"{A_CANARY}.jsonl"
        src.write_text("".join(json.dumps({  # quotes for the Data tab and training, and stories for Persona Chat
            "quote": f"{A_CANARY} A's private row {i}", "author": "A", "id": f"a{i}", "title": f"{A_CANARY} story {i}",
            "text": f"{A_CANARY} A's private story {i}"}) + "\n" for i in range(40)))
        self.a_upload = self.api.upload(src)  # the handle Gradio gave A
        ans = self.api.call("/inspect_data", ["Upload", "quotes", _file(self.a_upload), "", "", "", "", "auto", "",
                                              ""], self.a_session)
        assert A_CANARY in ans.text, ans.text[:500]
        # A's own copy: beside Gradio's raw upload (uploads/visitor-<mark>/…) or in the runs folder
        # (runs/.uploads/<payer>/<home>/…, where the raw upload leaves Gradio's folder at hand-over)
        copies = [p for p in [*self.uploads.rglob(src.name), *self.runs.rglob(src.name)] if str(p) != self.a_upload]
        self.a_copy = str(copies[0]) if copies else self.a_upload
        self.a_run = None
        if self.mode != "demo":  # visitors can't train on a demo: A's run is the owner's there
            self._a_trains()
        self._a_uses_everything()

    def _a_trains(self) -> None:
        # A follows the API docs: the browser id is their example, "test" (the page would send its own id)
        for client in ("test", self.a_id):
            ans = self.api.call("/start_training", [client, *_form(**{
                "dataset.source": self.a_copy, "max_steps": 2, "save_steps": 1, "eval_steps": 100,
                "logging_steps": 1})], self.a_session)
            found = re.search(r"Started (\S+?)\.", ans.text)
            if found:
                self.a_run = found.group(1)
                break
        assert self.a_run, ans.text[:500]
        run = self.runs / self.a_run
        wait_for(lambda: (run / "adapter" / "adapter_model.safetensors").exists() and json.loads(
            (run / "summary.json").read_text()).get("status") == "done" if (run / "summary.json").exists() else False,
            timeout=240, what="A's run to finish")

    def _a_uses_everything(self) -> None:
        """Before B comes, A uses every feature once, so the panels and caches B's calls can show hold A's things:
        Persona Chat with A's upload as the story corpus (the model cache holds A's retriever, and A's run's
        model on --shared), an evaluation saved under a name with A's canary, an export of A's run, a labelling
        session named with A's canary and one pair labelled. On --demo A does what a visitor may (what is
        refused there is left: B sees what A could make). `self.a_did` says what each answered."""
        from studio.chat import TOY_MODEL

        did, s = {}, self.a_session
        ans = self.api.call("/send", ["a persona", "hello", [], [], self.a_run or TOY_MODEL, None, "off", self.a_copy,
                                      2, False, 0, 1, 1, 8, ""], s)
        did["chat"] = ans
        if self.mode == "shared":  # A's own corpus and run: A's chat is answered and the cache names them to A
            assert ans.kind == "ok" and "studio-error" not in ans.text and A_CANARY in ans.text, ans.text[:800]
        # the run as the extra model (the runs list takes only the choices its tab showed this session)
        did["evaluate"] = self.api.call("/evaluate", [[], self.a_run or TOY_MODEL, "test split", "" if self.a_run else
                                                      "quotes", 2, 4, f"a-{A_CANARY}", None, "row order"], s)
        if self.a_run:
            did["export"] = self.api.call("/export_run", [self.a_run, ["adapter"], [], False], s)
        did["label"] = self.api.call("/start_labelling", [self.a_id, f"a-{A_CANARY}", self.a_run or TOY_MODEL, 0, 8,
                                                          f"{A_CANARY} A's prompt", ""], s)
        if did["label"].kind == "ok" and isinstance(did["label"].data, list) and len(did["label"].data) >= 5:
            did["pair"] = self.api.call("/label_a", [did["label"].data[3], did["label"].data[4]], s)
        if self.mode == "shared":
            assert "pair" in did, did["label"].text[:800]
            for what, ans in did.items():
                assert ans.kind == "ok" and "studio-error" not in ans.text, (what, ans.text[:800])
        self.a_did = did

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # a server stuck in a request: it goes anyway
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def targets(tmp_path_factory, owner, recorder):
    """A --shared and a --demo app, set up side by side (each app's server is mostly one busy core)."""
    with ThreadPoolExecutor(2) as pool:
        made = [pool.submit(Target, mode, tmp_path_factory.mktemp(f"fuzz-{mode}"), owner, recorder)
                for mode in ("shared", "demo")]
    apps = []
    try:
        for f in made:
            apps.append(f.result())
        yield apps
    finally:
        for f in made:
            if f.exception() is None:
                f.result().close()


# ---- payload classes -----------------------------------------------------------------------------------------------
# A class is a name and a function (target, case tag, i) → the value, or None where it does not apply; `i` rotates
# through a class's variants across parameters. Text classes feed text, name-list and browser-id parameters; file
# classes feed file parameters. Add one here and every endpoint gets it.
def _a_run(t: Target) -> str:
    return t.a_run or "owner-run"


def _pick(options: list, i: int):
    return options[i % len(options)]


TEXT_PAYLOADS = {
    "absolute path": lambda t, tag, i: _pick(["/etc/passwd", str(ROOT / "README.md"), "/proc/self/environ",
                                              str(t.owner_data)], i),
    "runs/ path into A's run": lambda t, tag, i: _pick([f"runs/{_a_run(t)}/adapter",
                                                        f"runs/{_a_run(t)}/checkpoints/checkpoint-1",
                                                        "runs/owner-run/adapter"], i),
    "absolute path into A's run": lambda t, tag, i: _pick([str(t.runs / _a_run(t) / "adapter"),
                                                           str(t.runs / _a_run(t) / "checkpoints" / "checkpoint-2"),
                                                           str(t.runs / "owner-run" / "adapter")], i),
    ".. traversal": lambda t, tag, i: _pick([f"runs/pairs/../{_a_run(t)}/adapter", "../" * 12 + "etc/passwd",
                                             f"{t.uploads}/../../../etc/passwd"], i),
    "uploaded YAML with !function": lambda t, tag, i: t.evil_yaml(tag),
    "http://127.0.0.1 URL": lambda t, tag, i: f"http://127.0.0.1:{t.recorder.port}/{tag}/data.jsonl",
    "A's run name": lambda t, tag, i: t.a_run,  # None on a demo (A can't train there)
    "A's upload handle": lambda t, tag, i: _pick([t.a_upload, t.a_copy], i),
    "docs' example id": lambda t, tag, i: "test",
}
FILE_PAYLOADS = {
    "absolute path": lambda t, tag, i: _file(_pick(["/etc/passwd", str(ROOT / "README.md"), str(t.owner_data)], i)),
    "runs/ path into A's run": lambda t, tag, i: _file(str(t.runs / _a_run(t) / "adapter" / "adapter_config.json")),
    "uploaded YAML with !function": lambda t, tag, i: _file(t.evil_yaml(tag)),
    "A's upload handle": lambda t, tag, i: _file(_pick([t.a_upload, t.a_copy], i)),
}


def _evil_yaml(self: Target, tag: str) -> str:
    """B uploads a .py that writes a canary file when imported, and an lm-eval task YAML whose `!function`
    names it by its server path (lm-eval imports it while reading the YAML): the YAML's server path."""
    folder = self.tmp / "evil" / tag
    folder.mkdir(parents=True, exist_ok=True)
    mod = f"fz_{tag}"
    (folder / f"{mod}.py").write_text(
        f"from pathlib import Path\nPath({str(self.canaries / tag)!r}).write_text('ran')\n"
        "def doc_to_text(doc):\n    return ''\n")
    py = self.api.upload(folder / f"{mod}.py")
    (folder / f"{mod}.yaml").write_text(
        f"task: {mod}\ndataset_path: json\noutput_type: generate_until\n"
        f"doc_to_text: !function {py[:-3]}.doc_to_text\ndoc_to_target: ''\n")
    return self.api.upload(folder / f"{mod}.yaml")


Target.evil_yaml = _evil_yaml


def _payloads(kind: str) -> dict:
    return FILE_PAYLOADS if kind == "file" else TEXT_PAYLOADS


CLOSED_CLASSES = ("absolute path", "A's run name")  # a fixed-choice field: Gradio refuses the rest itself


def generate(t: Target) -> list[Case]:
    """Every named endpoint: as it comes (B's defaults), and each attackable parameter alone under each class
    (a field with fixed choices: two classes, as Gradio refuses what is not a choice); and, for endpoints with
    several attackable parameters and a Radio, all of them at once under each other choice of the Radio (a field
    only that choice reads, e.g. a local path under "Local path")."""
    info, comps = t.api.info()["named_endpoints"], components(t.api.config())
    cases: list[Case] = []
    n = 0
    for endpoint, spec in info.items():
        params = spec["parameters"]
        shown = comps.get(endpoint, [])
        shown = shown if len(shown) == len(params) else [{}] * len(params)
        base = [base_value(p, t.b_id) for p in params]
        kinds = [param_kind(p) for p in params]
        cases.append(Case(endpoint, "-", "as it comes", list(base)))
        for pos, (p, kind) in enumerate(zip(params, kinds)):
            if kind is None:
                continue
            for cls, make in _payloads(kind).items():
                if closed(shown[pos]) and cls not in CLOSED_CLASSES:
                    continue
                n += 1
                tag = f"{t.mode[0]}{n}"
                value = make(t, tag, pos)
                if value is None:
                    continue
                data = list(base)
                data[pos] = [value] if kind == "list" else value
                cases.append(Case(endpoint, p.get("parameter_name") or f"param {pos}", cls, data, value, tag=tag))
        attackable = [pos for pos, k in enumerate(kinds) if k in ("text", "list", "file") and not closed(shown[pos])]
        if len(attackable) < 2:
            continue
        variants = [(f"{label}={c}", pos, c) for pos, label, choices in radios(shown) for c in choices
                    if c != base[pos]]
        for variant, fixed, choice in variants:
            for cls in TEXT_PAYLOADS:
                n += 1
                tag = f"{t.mode[0]}{n}"
                data = list(base)
                data[fixed] = choice
                values = []
                for pos in attackable:
                    make = _payloads(kinds[pos]).get(cls)
                    value = make(t, tag, pos) if make else None
                    if value is not None:
                        data[pos] = [value] if kinds[pos] == "list" else value
                        values.append(value)
                if values:
                    cases.append(Case(endpoint, "*", cls, data, values, variant=variant, tag=tag))
    return cases


# ---- the checks ------------------------------------------------------------------------------------------------------
def _payload_strings(payload) -> list[str]:
    if isinstance(payload, dict):
        return [payload.get("path", "")]
    if isinstance(payload, list):
        return [s for v in payload for s in _payload_strings(v)]
    return [str(payload)] if payload else []


def _shown(t: Target, case: Case) -> str:
    """B's answer less what B sent (B's own words may come back)."""
    text = case.answer.text
    sent = _payload_strings(case.payload)
    # a refusal may name B's path as pages show it (runs/…), cut (…), or only by its file name
    sent += [s.replace(str(t.runs), "runs") for s in sent if str(t.runs) in s]
    sent += [s[:k] + "…" for s in list(sent) for k in range(20, len(s))]
    sent += [Path(s).name for s in sent if "/" in s and not s.endswith("…")]
    for s in sorted(sent, key=len, reverse=True):
        text = text.replace(s, "<payload>")
    return text


def excerpt(t: Target, case: Case, width: int = 160) -> str:
    """The part of B's answer that went wrong, on one line (for the table and FINDINGS)."""
    if not case.answer:
        return ""
    text = " ".join(_shown(t, case).split())
    marks = [A_CANARY, t.a_run or A_CANARY, OWNER_CANARY, TOKEN, "root:x", str(t.tmp), str(ROOT), "Traceback",
             "unexpected error"]
    at = min([i for m in marks if (i := text.find(m)) >= 0] or [0])
    start = max(0, at - width // 3)
    return text[start:start + width]


def leaks(t: Target, case: Case) -> list[str]:
    """What B's answer shows that B did not send: A's things, the owner's secrets, the server's paths, a crash."""
    text = _shown(t, case)
    found = []
    if A_CANARY in text:
        found.append("shows A's data or upload")
    if t.a_run and t.a_run in text:
        found.append(f"names A's run {t.a_run}")
    if OWNER_CANARY in text:
        found.append("shows the owner's private data")
    if TOKEN in text or "HF_TOKEN=" in text:
        found.append("shows the HF_TOKEN")
    if "root:x:0:0" in text:
        found.append("shows /etc/passwd")
    for path, what in ((str(t.tmp), "the runs/upload folder"), (str(ROOT), "the checkout")):
        if path in text:
            found.append(f"shows a server path ({what})")
    if "Traceback" in text:
        found.append("shows a traceback")
    if "unexpected error" in text:
        found.append("an unexpected error (a crash, not a refusal)")
    if case.answer.kind in ("error", "http"):
        message = text.strip().strip('"')
        if "\n" in message.strip():
            found.append("a refusal of more than one line")
    return found


def run_sweep(t: Target) -> tuple[list[Case], list[tuple], float]:
    a_run = t.runs / _a_run(t)
    weights = [p for p in (a_run.rglob("adapter_model.safetensors")) if p.is_file()]
    weights += [p for p in (t.runs / "owner-run").rglob("adapter_model.safetensors")]
    no_read = list(dict.fromkeys(weights + [Path(t.a_upload), Path(t.a_copy), t.owner_data]))
    no_write = [t.runs / "owner-run", t.runs / "pairs" / "owners.jsonl"] + ([a_run] if t.a_run else [])
    no_write += [p for p in t.runs.rglob(f"*{A_CANARY}*") if a_run not in p.parents]  # A's pairs, results, upload
    cases = generate(t)
    Watcher.settle(no_write)  # what A's and the owner's own work still wrote is not the sweep's
    started = time.time()
    watcher = Watcher(no_write, no_read, t.runs, t.tmp)
    seen_requests = len(t.recorder.requests)

    tabs = threading.local()  # B's calls go from WORKERS tabs (sessions) of B's page, each one call at a time:
    # Gradio's /call stream of one session may hand over another event's answer when one session has several

    def one(case: Case) -> Case:
        if not hasattr(tabs, "session"):
            tabs.session = f"{t.b_session}-{threading.get_ident() % 100000}"
        case.session = tabs.session
        case.started = time.time()
        case.answer = t.api.call(case.endpoint, case.data, tabs.session)
        case.ended = time.time()
        if case.answer.kind in ("timeout", "down"):
            # its event may still run in the app, and Gradio's /call stream reads the SESSION's messages, not the
            # event's: the next call of this tab would be handed this one's answer (its words and payload then
            # read as a leak). The tab is left; the next call goes from a fresh one.
            tabs.session = f"{t.b_session}-{threading.get_ident() % 100000}-{uuid.uuid4().hex[:6]}"
        if case.answer.kind == "down" and not t.api.alive():
            case.problems.append("the app stopped answering")
        elif case.answer.kind != "timeout":
            case.problems += leaks(t, case)
        if case.tag and (t.canaries / case.tag).exists():
            case.problems.append("RAN the uploaded code (canary file written)")
        return case

    # interleave endpoints so one slow endpoint does not hold the pool
    order = sorted(cases, key=lambda c: (zlib.crc32((c.tag or c.endpoint).encode()) % 97, c.endpoint))
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, order))
    time.sleep(1)
    watcher.close()
    # effects on disk, told to the call in flight when they happened: to the ones that named the file when some
    # did; else, when several were in flight, each of those is made again alone to see which one it was
    unsure = []
    horizon = time.time()
    for when, what in watcher.events:  # a call the client gave up on may run on in the app: in flight to the end
        during = [c for c in cases if c.started - 0.02 <= when <= (
            horizon if c.answer and c.answer.kind == "timeout" else c.ended) + 0.05]
        named = [c for c in during if any(s and Path(s).name in what for s in _payload_strings(c.payload))]
        during = named or during
        if what.startswith("new run folder"):
            name = what.split("runs/", 1)[1]
            if any(c.answer and not c.answer.refused and name in c.answer.text for c in cases):
                continue  # B's own run: the start that made it named it ("Started <name>")
            during = [c for c in during if c.answer and c.answer.refused]
            if not during:
                continue  # made by a call that was not refused: checked by what it read and showed
            what += " for a refused start"
        if len(during) == 1:
            during[0].problems.append(what)
        else:
            unsure.append((when, what, during))
    if unsure:
        again = list({id(c): c for _w, _what, during in unsure for c in during}.values())
        again.sort(key=lambda c: c.started)
        again = again[:AGAIN_AT_MOST]
        watcher = Watcher(no_write, no_read, t.runs, t.tmp)
        for k, c in enumerate(again):
            time.sleep(0.3)
            watcher.look()
            before = len(watcher.events)
            t.api.call(c.endpoint, c.data, f"{c.session}-again{k}")  # a fresh tab: no copy or cache of the first
            time.sleep(0.3)
            watcher.look()
            for _when, what in watcher.events[before:]:
                if not what.startswith("new run folder"):
                    c.problems.append(what + " (seen again when made alone)")
        watcher.close()
        for when, what, during in unsure:
            if not any(what in p for c in during for p in c.problems):
                nearest = max((c for c in cases if c.started <= when), key=lambda c: c.started, default=None)
                where = f"{nearest.endpoint}.{nearest.param}" if nearest else "?"
                cases.append(Case("(background)", "-", "-", [], problems=[
                    f"{what}, not seen again when the calls in flight were made alone (last call begun: {where})"]))
    for when, path in t.recorder.requests[seen_requests:]:
        tag = path.strip("/").split("/")[0]
        if not tag.startswith(t.mode[0]):
            continue  # the other app's call
        hit = [c for c in cases if c.tag == tag]
        if not hit:
            hit = [Case("(unknown)", "-", "-", [])]
            cases += hit
        for c in hit:
            c.problems.append(f"FETCHED a visitor's URL ({path})")
    if not t.api.alive() or t.proc.poll() is not None:
        cases.append(Case("(app)", "-", "-", [], problems=["the app stopped answering"]))
    for pid in _app_pids(t.proc.pid):  # what code run in the server could read (/proc/self/environ)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if TOKEN.encode() in environ:
            cases.append(Case("(app)", "-", "-", [], problems=[
                f"the owner's HF_TOKEN is in the server process's environment (/proc/{pid}/environ)"]))
    return cases, watcher.events, time.time() - started


def _app_pids(root: int) -> list[int]:
    """The app's process and every process below it."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [p for p, pp in parents.items() if pp == pid]
    return found


def _table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: " | ".join(str(v).ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *map(line, rows)])


def report(t: Target, cases: list[Case], took: float) -> tuple[str, list[Case]]:
    """The summary (endpoints × classes tried, call time per endpoint) and the table of failing calls."""
    classes = list(dict.fromkeys(c.cls for c in cases))
    per = {}
    for c in cases:
        per.setdefault(c.endpoint, {}).setdefault(c.cls, [0, 0])
        per[c.endpoint][c.cls][0] += 1
        per[c.endpoint][c.cls][1] += bool(c.problems)
    rows = [[ep] + [(f"{v[0]}" + (f"!{v[1]}" if v[1] else "")) if (v := per[ep].get(cls)) else "·"
                    for cls in classes] for ep in per]
    spent = {}
    for c in cases:
        spent[c.endpoint] = spent.get(c.endpoint, 0) + (c.ended - c.started)
    out = [f"\n== surface fuzzer, --{t.mode}: {len(cases)} calls, {len(per)} endpoints, {len(classes)} payload "
           f"classes, sweep {took:.0f} s ==",
           "classes: " + "; ".join(f"{i} = {c}" for i, c in enumerate(classes)),
           _table(rows, ["endpoint"] + [str(i) for i in range(len(classes))]),
           "(calls per endpoint and payload class; !n: n of them failed)",
           "most call time: " + ", ".join(f"{ep} {s:.0f} s" for ep, s in sorted(spent.items(), key=lambda x: -x[1])[:8])]
    slow = [c for c in cases if c.answer and c.answer.kind == "timeout"]
    if slow:
        out.append("no answer within the call timeout (noted, not failed): "
                   + ", ".join(sorted({f"{c.endpoint}.{c.param}" for c in slow})))
    failed = [c for c in cases if c.problems]
    if failed:
        out.append(f"\n{len(failed)} failing calls on --{t.mode}:\n" + _table(
            [[c.endpoint, c.param + (f" [{c.variant}]" if c.variant else ""), c.cls,
              "; ".join(dict.fromkeys(c.problems)), excerpt(t, c)] for c in failed],
            ["endpoint", "parameter", "payload class", "what went wrong", "answer (B's own words as <payload>)"]))
    return "\n".join(out), failed


def test_surface_fuzz(targets):
    begun = time.time()
    with ThreadPoolExecutor(len(targets)) as pool:
        swept = list(pool.map(run_sweep, targets))
    texts, failed = [], 0
    for t, (cases, _events, took) in zip(targets, swept):
        text, bad = report(t, cases, took)
        print(text)
        texts.append(text)
        failed += len(bad)
    print(f"\nsurface fuzzer wall time: {time.time() - (STARTED or [begun])[0]:.0f} s in all (the owner's run, both "
          f"apps, A's run), of which the two sweeps side by side {time.time() - begun:.0f} s")
    assert not failed, "\n".join(text for text in texts if "failing calls" in text)
