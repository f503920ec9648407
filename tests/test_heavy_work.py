"""Heavy work has a queue and a bill (issue 31, finding 3): story embedding, evaluation, lm-eval, exports, pair
building and labelling run through `studio.work` — a few at a time, one waiting place per payer (the anonymous
pool as one), a CPU-seconds bill per payer, low priority, stopped when the page that asked is gone. Locally
nothing changes. Unit tests of `studio.work`, then one `--shared` app with three anonymous story corpora."""

import os
import threading
import time

import pytest

from studio import work
from studio.access import Visitor, acting_for
from studio.errors import StudioError


@pytest.fixture
def queue(monkeypatch):
    """A fresh process-wide queue on a shared app."""
    q = work.WorkQueue()
    monkeypatch.setattr(work, "QUEUE", q)
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.delenv("STUDIO_TRUSTED_PROXIES", raising=False)
    for var in ("STUDIO_HEAVY_RUNNING", "STUDIO_HEAVY_WAITING_PER_PAYER", "STUDIO_HEAVY_WAITING",
                "STUDIO_VISITOR_CPU_S", "STUDIO_OWNERS"):
        monkeypatch.delenv(var, raising=False)
    return q


def stranger(n: int) -> Visitor:
    return Visitor(frozenset({f"session:s{n}"}))  # anonymous: all of them pay from one pool


def account(name: str) -> Visitor:
    return Visitor(frozenset({f"session:{name}"}), username=name)


class Call:
    """One heavy call in its own thread, as a visitor; it holds its place until `release`."""

    def __init__(self, visitor, what="story embedding", page=None):
        self.release, self.started, self.result, self.error = threading.Event(), threading.Event(), None, None
        self.nice = None

        def fn():
            self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            self.started.set()
            while not self.release.wait(0.02):
                work.checkpoint()
            return what

        def body():
            with acting_for(visitor):
                try:
                    if page is not None:
                        work.set_page_source(lambda: page)
                    self.result = work.heavy(what, fn)
                except BaseException as e:  # noqa: BLE001
                    self.error = e

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def finish(self, timeout=10):
        self.release.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self


def settle(cond, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture(autouse=True)
def no_page_source():
    yield
    work.set_page_source(None)


def test_locally_heavy_work_runs_at_once_in_the_callers_thread_with_no_limit(monkeypatch):
    monkeypatch.delenv("STUDIO_SHARED", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "0")
    monkeypatch.setenv("STUDIO_HEAVY_RUNNING", "1")
    me = threading.get_ident()
    with acting_for(stranger(1)):
        assert work.heavy("evaluation", lambda a, b=0: (threading.get_ident(), a + b), 2, b=3) == (me, 5)
    assert work.QUEUE.ran == 0 and not work.QUEUE.waiting and not work.QUEUE.running


def test_one_runs_at_a_time_then_the_next_in_line(queue, monkeypatch):
    a, b = Call(account("ann")), None
    a.started.wait(10)
    b = Call(account("bob"))
    settle(lambda: queue.position_of("user:bob") == 1)
    time.sleep(0.3)
    assert not b.started.is_set() and len(queue.running) == 1  # STUDIO_HEAVY_RUNNING: 1 by default
    a.finish()
    b.started.wait(10)
    assert b.finish().result == "story embedding" and a.result == "story embedding"
    assert queue.peak == 1 and queue.ran == 2


def test_n_running_and_one_per_payer(queue, monkeypatch):
    monkeypatch.setenv("STUDIO_HEAVY_RUNNING", "2")
    ann, bob = Call(account("ann")), Call(account("bob"))
    ann.started.wait(10), bob.started.wait(10)
    carl = Call(account("carl"))
    settle(lambda: queue.position_of("user:carl") == 1)
    ann2 = Call(account("ann"))  # ann's second waits for ann's first even when a slot frees
    settle(lambda: queue.position_of("user:ann") == 2)
    bob.finish()
    carl.started.wait(10)
    time.sleep(0.3)
    assert not ann2.started.is_set() and queue.peak == 2
    ann.finish()
    ann2.started.wait(10)
    for c in (carl, ann2):
        c.finish()
    assert queue.peak == 2 and queue.ran == 4


def test_one_waiting_place_per_payer_and_the_anonymous_pool_shares_one(queue):
    first = Call(stranger(1))
    first.started.wait(10)
    second = Call(stranger(2))  # another session: the same anonymous pool; it waits
    settle(lambda: queue.position_of("anonymous") == 1)
    with acting_for(stranger(3)), pytest.raises(StudioError) as refused:
        work.heavy("evaluation", lambda: None)
    line = str(refused.value)
    assert "\n" not in line and "STUDIO_HEAVY_WAITING_PER_PAYER" in line and "sign in" in line, line
    with acting_for(account("dora")):  # an account has its own place
        dora = Call(account("dora"))
    settle(lambda: queue.position_of("user:dora") == 2)
    with acting_for(account("dora")), pytest.raises(StudioError, match="STUDIO_HEAVY_WAITING_PER_PAYER"):
        work.heavy("export", lambda: None)
    for c in (first, second, dora):
        c.finish()
    assert second.result == "story embedding" and dora.result == "story embedding"


def test_the_owner_is_never_refused_never_waits_and_runs_at_normal_priority(queue, monkeypatch):
    monkeypatch.setenv("STUDIO_OWNERS", "boss")
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "0")  # every stranger is over the bill
    with acting_for(stranger(1)), pytest.raises(StudioError, match="STUDIO_VISITOR_CPU_S"):
        work.heavy("story embedding", lambda: None)
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "1000")
    a = Call(account("ann"))
    a.started.wait(10)
    waiting = Call(stranger(1))
    settle(lambda: queue.position_of("anonymous") == 1)
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "0")
    boss = Call(account("boss"))
    boss.started.wait(10)  # at once, beside a running stranger and ahead of a waiting one
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "1000")
    assert boss.nice == os.getpriority(os.PRIO_PROCESS, 0) and a.nice == work.HEAVY_NICE
    with acting_for(None):  # no visitor: the command line, the owner
        assert work.heavy("export", lambda: "done") == "done"
    for c in (boss, a, waiting):
        c.finish()
    assert boss.result and a.result and waiting.result


def test_the_cpu_bill_counts_heavy_threads_and_refuses_with_the_variable(queue, monkeypatch):
    def burn(seconds):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            sum(range(2000))

    with acting_for(stranger(1)):
        work.heavy("evaluation", burn, 0.3)
    spent = queue.spent("anonymous")
    assert 0.2 <= spent <= 2.0, spent  # this call's own CPU, billed to the anonymous pool
    assert queue.spent("user:ann") == 0
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "0.2")
    with acting_for(stranger(2)), pytest.raises(StudioError) as refused:
        work.heavy("story embedding", lambda: None)
    line = str(refused.value)
    assert "STUDIO_VISITOR_CPU_S" in line and "anonymous visitors together" in line and "\n" not in line, line
    with acting_for(account("ann")):  # an account pays for itself
        assert work.heavy("story embedding", lambda: "ok") == "ok"


def test_a_call_that_crosses_the_bill_stops(queue, monkeypatch):
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "0.3")
    stopped_after = []

    def burn():
        start = time.thread_time()
        while time.thread_time() - start < 30:
            sum(range(2000))
            work.checkpoint()
        stopped_after.append("never")

    with acting_for(account("ann")), pytest.raises(StudioError, match="STUDIO_VISITOR_CPU_S") as refused:
        work.heavy("evaluation", burn)
    assert "stopped after" in str(refused.value) and not stopped_after
    assert queue.spent("user:ann") < 5


class Gone(work.Page):
    def __init__(self, after: float):
        self.at = time.monotonic() + after
        self.lines = []

    def gone(self):
        return time.monotonic() >= self.at

    def say(self, line):
        self.lines.append(line)


def test_a_call_whose_page_is_gone_stops_at_its_next_checkpoint(queue):
    page = Gone(0.5)
    loops = []

    def fn():
        while True:
            loops.append(time.monotonic())
            time.sleep(0.05)
            work.checkpoint()

    work.set_page_source(lambda: page)
    with acting_for(stranger(1)), pytest.raises(work.Cancelled, match="page is gone"):
        work.heavy("story embedding", fn)
    assert loops[-1] - page.at < 1.0  # stopped within a poll and a batch of the page going
    assert not queue.running and not queue.waiting


def test_work_without_checkpoints_is_stopped_in_its_thread(queue):
    page = Gone(0.3)
    ran = threading.Event()
    counter = []

    def fn():  # never calls checkpoint(): code the studio does not own (lm-eval, a merge)
        ran.set()
        while True:
            counter.append(1)
            if len(counter) > 1000:
                counter.clear()

    work.set_page_source(lambda: page)
    t0 = time.monotonic()
    with acting_for(stranger(1)), pytest.raises(work.Cancelled):
        work.heavy("lm-eval", fn)
    assert time.monotonic() - t0 < page.at - t0 + work.STOP_GRACE + 3
    settle(lambda: not any(t.name.startswith("heavy-") for t in threading.enumerate()), timeout=5)


def test_a_waiting_call_says_its_place_and_leaves_when_its_page_goes(queue):
    first = Call(stranger(1))
    first.started.wait(10)
    page = Gone(1.0)
    second = Call(account("bob"), page=page)
    second.thread.join(10)
    assert isinstance(second.error, work.Cancelled) and "left the heavy-work queue" in str(second.error)
    assert page.lines and "waiting for the heavy-work queue (position 1" in page.lines[0], page.lines
    assert not queue.waiting
    first.finish()


# ---- a real --shared app: three anonymous story corpora -----------------------------------------------------
STORIES = 1500  # per corpus: ≈20 CPU-s of embedding on one thread, long enough to watch, short enough to test


def _corpus(path, tag: str):
    import json

    with open(path, "w", encoding="utf-8") as f:
        for i in range(STORIES):
            text = f"i am visitor {tag} and this is my story number {i}: " + "words " * 40
            f.write(json.dumps({"id": f"{tag}{i}", "title": f"{tag} story {i}", "text": text}) + "\n")
    return path


def _nice_threads(pid: int, nice: int = work.HEAVY_NICE) -> int:
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat", "rb").read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        n += int(fields[16]) == nice
    return n


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    """A page's event stream (/queue/data) read in a thread, as the browser reads it; `close` is the page going
    away: its connection closes (a raw socket, so the close is immediate, as when a tab is closed)."""

    def __init__(self, url: str, session: str):
        import socket
        from urllib.parse import urlparse

        u = urlparse(url)
        self.messages = []
        self.sock = socket.create_connection((u.hostname, u.port))
        self.sock.sendall(f"GET {u.path}gradio_api/queue/data?session_hash={session} HTTP/1.1\r\n"
                          f"Host: {u.hostname}:{u.port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        import json

        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.startswith(b"data:"):
                        try:
                            self.messages.append(json.loads(line[5:]))
                        except ValueError:
                            pass
        except OSError:  # closed by the test
            pass

    def text(self) -> str:
        import json

        return json.dumps(self.messages)

    def close(self):
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _said(message: dict) -> str:
    """What a stream message tells its page: a progress line, or the status line of a finished call."""
    import re

    if message.get("msg") == "progress":
        return " ".join(str(p.get("desc")) for p in message.get("progress_data") or [])
    if message.get("msg") == "process_completed":
        found = re.findall(r'class="studio-(?:error|ok)"[^>]*>([^<]*)<', str(message.get("output")))
        return found[-1] if found else str(message.get("output"))[:200]
    return ""


def _join(url: str, index: int, session: str, data: list) -> None:
    import httpx

    r = httpx.post(url + "gradio_api/queue/join", json={"data": data, "fn_index": index, "session_hash": session,
                                                        "event_data": None, "trigger_id": None}, timeout=60)
    assert r.status_code == 200, r.text


def _send_data(stories: str) -> list:
    from studio.chat import TOY_MODEL

    return ["a persona", "hello", [], [], TOY_MODEL, None, "off", stories, 1, False, 0, 1, 1, 8, ""]


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    from app_server import start_app

    tmp = tmp_path_factory.mktemp("heavy")
    (tmp / "runs").mkdir()
    (tmp / "uploads").mkdir()
    proc, url = start_app(tmp / "runs", extra_args=["--shared"], env={
        "GRADIO_TEMP_DIR": str(tmp / "uploads"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    proc.tmp, proc.url = tmp, url
    yield proc
    proc.terminate()
    proc.wait(10)


def _upload(app, path):
    """A fresh anonymous visitor hands its corpus over (the Data tab); → (its session, the corpus's handle)."""
    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False)
    client.predict("Upload", "quotes", handle_file(str(path)), "", "", "", "", "auto", "", "", api_name="/inspect_data")
    copy = list((app.tmp / "runs" / ".uploads").glob(f"*/*/*/{path.name}"))
    assert len(copy) == 1, copy
    return client, str(copy[0])


def test_three_strangers_corpora_one_embeds_one_waits_one_refused_and_all_stop_when_their_pages_go(shared_app,
                                                                                                tmp_path):
    from app_server import wait_for
    from test_attack import _call

    app, pid = shared_app, shared_app.pid
    from gradio_client import Client

    warm = _call(Client(app.url, verbose=False), "a persona", "hello", [], [],
                 "embedded/tiny-llama", None, "off", "", 1, False, 0, 1, 1, 8, api_name="/send")
    assert "studio-error" not in str(warm), str(warm)[:600]  # the models and the bundled stories are warm
    index = next(d["id"] for d in __import__("httpx").get(app.url + "config").json()["dependencies"]
                 if d.get("api_name") == "send")
    visitors = [_upload(app, _corpus(tmp_path / f"corpus-{t}.jsonl", t)) for t in "abc"]
    streams = []
    for client, handle in visitors:
        streams.append(Stream(app.url, client.session_hash))
        time.sleep(0.3)
        _join(app.url, index, client.session_hash, _send_data(handle))
    most = 0

    def settled():
        nonlocal most
        most = max(most, _nice_threads(pid))
        texts = [s.text() for s in streams]
        refused = [t for t in texts if "STUDIO_HEAVY_WAITING_PER_PAYER" in t]
        waiting = [t for t in texts if "waiting for the heavy-work queue (position 1" in t]
        return len(refused) == 1 and len(waiting) == 1 and _nice_threads(pid) == 1

    def said() -> str:
        return "one embedding, one waiting, one refused: " + " | ".join(
            "; ".join(_said(m) for m in s.messages if _said(m)) for s in streams)

    wait_for(settled, 90, said, every=0.1)
    for _ in range(20):  # two seconds more of watching: never two at once
        most = max(most, _nice_threads(pid))
        time.sleep(0.1)
    assert most == 1, most  # STUDIO_HEAVY_RUNNING=1, and OMP_NUM_THREADS=1: one low-priority thread per call
    import re

    refusal = next(re.findall(r'class="studio-error"[^>]*>([^<]*STUDIO_HEAVY_WAITING_PER_PAYER[^<]*)<', str(m))
                   for s in streams for m in s.messages if "STUDIO_HEAVY_WAITING_PER_PAYER" in str(m))
    assert len(refusal) == 1 and "sign in" in refusal[0] and "\n" not in refusal[0], refusal
    print("\nrefused:", refusal[0])

    for s in streams:  # the pages go
        s.close()
    closed = time.time()
    wait_for(lambda: _nice_threads(pid) == 0, 15, "the embedding to stop after its page closed", every=0.1)
    stopped = time.time() - closed
    before = _cpu_s(pid)
    time.sleep(3)
    grew = _cpu_s(pid) - before
    assert grew < 0.6, f"the app used {grew:.2f} CPU-s in the 3 s after the pages closed"
    print(f"\nembedding stopped {stopped:.1f} s after the pages closed; then {grew:.2f} CPU-s in 3 s")

    # a call whose page never reads its stream (the finding's joined call): it starts, then stops within seconds
    client, handle = _upload(app, _corpus(tmp_path / "corpus-d.jsonl", "d"))
    _join(app.url, index, client.session_hash, _send_data(handle))
    joined = time.time()
    wait_for(lambda: _nice_threads(pid) == 1, 60, "the unread call's embedding to start", every=0.1)
    wait_for(lambda: _nice_threads(pid) == 0, 20, "the unread call's embedding to stop", every=0.1)
    unread = time.time() - joined
    before = _cpu_s(pid)
    time.sleep(3)
    grew = _cpu_s(pid) - before
    assert grew < 0.6, f"the app used {grew:.2f} CPU-s in 3 s after the unread call stopped"
    print(f"the unread call stopped {unread:.1f} s after its join; then {grew:.2f} CPU-s in 3 s")


def test_a_strangers_corpus_to_embed_is_held_to_the_visitor_story_budget(queue, monkeypatch):
    from studio.retrieval import Corpus, check_visitor_stories

    corpus = Corpus([{"id": str(i), "title": "", "text": f"story {i}"} for i in range(5)], "big.jsonl")
    monkeypatch.setenv("STUDIO_VISITOR_STORIES", "3")
    monkeypatch.setenv("STUDIO_OWNERS", "boss")
    with acting_for(stranger(1)), pytest.raises(StudioError) as refused:
        check_visitor_stories(corpus)
    assert "STUDIO_VISITOR_STORIES" in str(refused.value) and "5 stories" in str(refused.value)
    with acting_for(account("boss")):
        check_visitor_stories(corpus)  # the owner: STUDIO_MAX_STORIES only
    monkeypatch.delenv("STUDIO_SHARED")
    with acting_for(stranger(1)):
        check_visitor_stories(corpus)  # locally: no visitor budget


def test_each_heavy_entry_goes_through_the_one_door(monkeypatch, tmp_path):
    """Story embedding, evaluation, the judge, lm-eval, exports, pair building and labelling samples each call
    `studio.work.heavy` (checked locally, where the door is a plain call: here it records and stops)."""
    from studio.evaluate import compare, judge, lm_eval_compare
    from studio.export import export_run
    from studio.pairs import build_pairs, candidates, start_labelling
    from studio.retrieval import Corpus, build_index

    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs" / "a-run").mkdir(parents=True)
    seen = []

    class Stopped(Exception):
        pass

    def door(what, fn, *args, **kwargs):
        seen.append(what)
        raise Stopped

    monkeypatch.setattr(work, "heavy", door)
    calls = {
        "story embedding": lambda: build_index(Corpus([{"id": "1", "title": "", "text": "a story"}], "c"), cache=False,
                                               heavy=True),
        "evaluation": lambda: compare(["embedded/tiny-llama"], suite="instruction", limit=2, save=False),
        "judge": lambda: judge({"labels": ["a", "b"], "rows": []}, "embedded/tiny-llama", "a", "b"),
        "lm-eval": lambda: lm_eval_compare(["embedded/tiny-llama"], ["quote_authors"], 2),
        "export": lambda: export_run("a-run", adapter=True, check=False),
        "pair building": lambda: build_pairs("quotes", tmp_path / "runs" / "pairs" / "built.jsonl",
                                             "embedded/tiny-llama", max_rows=2),
        "labelling": lambda: (start_labelling("s", "embedded/tiny-llama", ["a prompt"]), candidates("s")),
    }
    for what, call in calls.items():
        with pytest.raises(Stopped):
            call()
        assert seen[-1] == what, (what, seen)


def test_an_event_with_no_visitor_pays_as_a_stranger_not_as_the_owner(queue, monkeypatch):
    """Inside a Gradio event a call the app can't name (no session) is the anonymous pool; only outside any event
    (the command line) is no visitor the owner."""
    monkeypatch.setenv("STUDIO_VISITOR_CPU_S", "0")
    with acting_for(None):
        assert work.heavy("export", lambda: "owner's") == "owner's"  # no event: the command line
        work.set_page_source(lambda: work.Page())  # an event, and no visitor in it
        with pytest.raises(StudioError, match="STUDIO_VISITOR_CPU_S"):
            work.heavy("export", lambda: None)
