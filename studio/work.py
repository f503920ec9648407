"""Heavy work on a shared studio: one bounded queue, a CPU bill per payer, low priority, and a stop when the
page that asked is gone (issue 31, "Heavy work has a queue and a bill"; docs/budgets.md "Heavy work").

Heavy work is what one event can make the machine do for minutes outside the training slot: embedding a story
corpus for Persona Chat, an evaluation, lm-eval tasks, an export, building preference pairs, a labelling
session's generations. Before this, each ran in Gradio's handler thread at full priority, up to eight at once
(`default_concurrency_limit=8`), to the end even when nobody waited for the answer: three strangers' 4,000-story
corpora took the owner's warm chat from 5 s to 35-44 s, and a call whose page never read its stream went on
burning CPU.

`heavy(what, fn, *args, **kwargs)` is the one door. Locally (not `studio.access.shared_mode()`) it calls
`fn(*args, **kwargs)` and nothing else: one person at the keyboard, no one to be fair to. On a shared app:

- **Who pays** is `Visitor.payer` (studio.access): an account, a trusted address, or the ONE anonymous pool (a
  stranger makes fresh sessions for free, so every anonymous visitor shares one place in line and one bill).
- **At most `STUDIO_HEAVY_RUNNING` calls run at once** (default 1: on the 2-core machine one low-priority
  embedding already keeps both cores busy; a second only halves the first's speed), **at most one per payer**;
  each payer has **one waiting place** (`STUDIO_HEAVY_WAITING_PER_PAYER`): a second call while one waits is
  refused with one line, so a flood from the anonymous pool costs the others one place in line, not the queue.
  A waiting call's page says its position (`Page.say`); it leaves the line when its page goes.
- **The owner** (`payer == "owner"`, a signed-in app owner) is never refused, never waits and is not billed: the
  machine is theirs. Their work runs at normal priority beside the strangers' (it counts as running, so
  strangers wait behind it).
- **A bill**: the CPU-seconds each payer's heavy work used in the last hour (`STUDIO_VISITOR_CPU_S`). A call
  is refused when the bill is already over; a call that crosses it stops at its next checkpoint with the
  same line. What it already did is not kept (nothing half-built is cached).
- **Low priority**: each stranger's call runs in a fresh thread at nice 19 (`os.setpriority` on the thread's
  own id; Linux threads have their own nice value, and the threads it creates — torch's OpenMP team, which
  libgomp builds per calling thread — inherit it). The owner's chat, at nice 0, then gets the cores first:
  under CFS a nice-19 thread weighs 15 against a nice-0 thread's 1024. Why a fresh thread per call and not
  Gradio's handler thread: an unprivileged process can lower a thread's priority but never raise it back, and
  Gradio reuses its handler threads. Why not `torch.set_num_threads(1)` for the work: it is process-wide.
- **Stopped when its page is gone**: the calling thread (Gradio's handler thread, which waits for the answer)
  asks the page (`Page.gone`, from the UI: the event lost its client, or no one has read its stream for a few
  seconds) every 0.2 s and raises a flag; the work sees the flag at its next `checkpoint()` (the loops call
  it between batches: every 64 stories, every generated batch, every judged row, every export step) and
  raises `Cancelled`. Work that reaches no checkpoint `STOP_GRACE` seconds after the flag (code we don't own:
  lm-eval, a merge) gets `Stop` raised in its thread by `PyThreadState_SetAsyncExc` (only while it is inside
  its function), which fires at its next Python bytecode: inside one long native call (a faiss build, a
  subprocess) it waits for that call to return.

The bill counts the CPU time (utime + stime, /proc/self/task) of every thread at the heavy nice value: the
worker threads and the OpenMP teams they made. With one call running (the default) that is exactly its bill;
with several, their CPU is shared out evenly. A subprocess's CPU (a GGUF conversion) is not counted.
"""

from __future__ import annotations

import contextvars
import ctypes
import itertools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from studio.errors import StudioError

HEAVY_NICE = 19  # strangers' heavy work: the lowest priority Linux has
STOP_GRACE = 2.0  # seconds a flagged call has to reach a checkpoint before Stop is raised in its thread
WINDOW_S = 3600.0  # the CPU bill's rolling window
POLL_S = 0.2  # how often a waiting or running call asks whether its page is still there


class Cancelled(StudioError):
    """Heavy work stopped because the page that asked for it is gone (or its payer's bill is over)."""


class Stop(BaseException):
    """Raised inside a heavy call's thread that did not reach a checkpoint in time (never caught by
    `except Exception`); `heavy` turns it into the call's one line."""


# ---- the page that asked (set by the UI: this module imports no gradio) ------------------------------------
class Page:
    """What heavy work asks of the page that asked for it. The UI's source returns a subclass per event."""

    def gone(self) -> bool:
        return False

    def say(self, line: str) -> None:
        pass


_page_source = None


def set_page_source(fn) -> None:
    """`fn()` → the `Page` of the event being handled (None outside an event); set by studio/ui."""
    global _page_source
    _page_source = fn


def event_page() -> Page | None:
    """The `Page` of the Gradio event being handled in this thread; None outside any event."""
    return _page_source() if _page_source is not None else None


# ---- the CPU of heavy threads -------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def heavy_ticks(nice: int = HEAVY_NICE) -> dict[str, int]:
    """{thread id: CPU clock ticks so far (utime + stime)} of this process's live threads running at `nice`."""
    found = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # fields[0] is stat's field 3 (state)
        except (OSError, IndexError):
            continue
        if int(fields[16]) == nice:  # field 19: nice
            found[tid] = int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return found


class _Meter:
    """Per-thread CPU of the heavy threads, remembered while they live: a thread's ticks vanish from /proc with
    it, so the meter keeps the last reading of each thread id and adds what each grew since."""

    def __init__(self):
        self.last: dict[str, int] = {}
        self.lock = threading.Lock()

    def grown(self, nice: int = HEAVY_NICE) -> float:
        """CPU-seconds the heavy threads used since the previous call."""
        seen = heavy_ticks(nice)
        with self.lock:
            grew = sum(max(0, ticks - self.last.get(tid, 0)) for tid, ticks in seen.items())
            self.last = seen
        return grew / _TICK


# ---- the queue ----------------------------------------------------------------------------------------------
@dataclass
class Ticket:
    what: str
    payer: str
    number: int
    owner: bool = False
    state: str = "waiting"  # waiting → running → done
    cpu_s: float = 0.0  # billed so far
    flag: threading.Event = field(default_factory=threading.Event)
    reason: StudioError | None = None  # why the flag was raised
    thread: threading.Thread | None = None


_current: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("studio_heavy_ticket", default=None)


class WorkQueue:
    """The process-wide queue of heavy calls (one instance, `QUEUE`; tests make their own)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.waiting: list[Ticket] = []
        self.running: list[Ticket] = []
        self.bills: dict[str, deque] = {}  # payer → deque of (time, CPU-s)
        self.meter = _Meter()
        self.numbers = itertools.count(1)
        self.ran = 0  # calls that ran (tests and the benchmark read it)
        self.peak = 0  # the most strangers' calls that ran at once

    # -- the bill
    def _bill(self, ticket: Ticket, cpu_s: float) -> None:
        if cpu_s <= 0 or ticket.owner:
            return
        ticket.cpu_s += cpu_s
        self.bills.setdefault(ticket.payer, deque()).append((time.monotonic(), cpu_s))

    def spent(self, payer: str) -> float:
        """CPU-seconds `payer`'s heavy work used in the last hour (running calls included, as far as sampled)."""
        with self.cond:
            return self._spent_locked(payer)

    def _sample(self) -> None:
        """Share what the heavy threads used since the last sample among the strangers' calls running now."""
        grew = self.meter.grown()
        payers = [t for t in self.running if not t.owner]
        for t in payers:
            self._bill(t, grew / len(payers))

    # -- the line
    def _may_start(self, ticket: Ticket) -> bool:
        """The owner's call starts at once; a stranger's when a slot is free, their payer runs nothing, and no
        stranger's call ahead of it could start instead (first come, first served among those who may run)."""
        from studio.budgets import limit

        if ticket.owner:
            return True
        if len(self.running) >= max(1, int(limit("heavy_running"))):
            return False
        busy = {t.payer for t in self.running}
        first = next((t for t in self.waiting if not t.owner and t.payer not in busy), None)
        return first is ticket

    def position(self, ticket: Ticket) -> int:
        with self.cond:
            return self.waiting.index(ticket) + 1 if ticket in self.waiting else 0

    def position_of(self, payer: str) -> int:
        """The place in line of `payer`'s waiting call (1 = next), 0 when none waits."""
        with self.cond:
            return next((i for i, t in enumerate(self.waiting, 1) if t.payer == payer), 0)

    def enter(self, what: str, payer: str) -> Ticket:
        """A place in line for `payer`'s call, or one line saying why not."""
        from studio.budgets import BUDGETS, limit

        owner = payer == "owner"
        ticket = Ticket(what, payer, next(self.numbers), owner)
        with self.cond:
            if not owner:
                pool = payer == "anonymous"
                used = self._spent_locked(payer)
                if used >= limit("visitor_cpu"):
                    raise BUDGETS["visitor_cpu"].refuse(
                        f"{what}: {'anonymous visitors together have' if pool else 'your heavy work has'} used "
                        f"{used:,.0f} CPU-s in the last hour" + ("; sign in to have your own" if pool else ""))
                mine = [t for t in self.waiting if t.payer == payer]
                if len(mine) >= limit("heavy_waiting_per_payer"):
                    raise BUDGETS["heavy_waiting_per_payer"].refuse(
                        f"{what}: {'an anonymous visitor already waits' if pool else 'you already wait'} for "
                        f"{', '.join(t.what for t in mine)}" + ("; sign in to wait on your own" if pool else
                                                                "; wait for it to start or close its page"))
                others = [t for t in self.waiting if not t.owner]
                if len(others) >= limit("heavy_waiting"):
                    raise BUDGETS["heavy_waiting"].refuse(f"{what}: {len(others)} calls wait", "try again later")
            self.waiting.append(ticket)
        return ticket

    def _spent_locked(self, payer: str) -> float:
        self._sample()
        bill = self.bills.get(payer) or deque()
        cutoff = time.monotonic() - WINDOW_S
        while bill and bill[0][0] < cutoff:
            bill.popleft()
        return sum(c for _, c in bill)

    def wait_turn(self, ticket: Ticket, page: Page) -> None:
        """Block until `ticket` may run (telling the page its position as it changes); Cancelled if its page
        goes meanwhile."""
        said = None
        with self.cond:
            while not self._may_start(ticket):
                pos = self.waiting.index(ticket) + 1
                if pos != said:
                    said = pos
                    page.say(f"{ticket.what}: waiting for the heavy-work queue (position {pos}; "
                             f"{len(self.running)} running)")
                self.cond.wait(POLL_S)
                if page.gone():
                    self.waiting.remove(ticket)
                    self.cond.notify_all()
                    raise Cancelled(f"{ticket.what}: left the heavy-work queue (its page is gone)")
            self.waiting.remove(ticket)
            if not ticket.owner:  # the threads running now are billed up to here, before this one counts
                self._sample()
            ticket.state = "running"
            self.running.append(ticket)
            self.peak = max(self.peak, sum(1 for t in self.running if not t.owner))
            self.cond.notify_all()

    def leave(self, ticket: Ticket) -> None:
        with self.cond:
            if ticket in self.running:
                self._sample()
                self.running.remove(ticket)
                self.ran += 1
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            ticket.state = "done"
            self.cond.notify_all()

    def over_budget(self, ticket: Ticket) -> StudioError | None:
        from studio.budgets import BUDGETS, limit

        if ticket.owner:
            return None
        with self.cond:
            used = self._spent_locked(ticket.payer)
        if used < limit("visitor_cpu"):
            return None
        pool = ticket.payer == "anonymous"
        return BUDGETS["visitor_cpu"].refuse(
            f"{ticket.what}: stopped after {ticket.cpu_s:,.0f} CPU-s; "
            f"{'anonymous visitors together have' if pool else 'your heavy work has'} used {used:,.0f} CPU-s "
            "in the last hour")

    # -- running one call
    def run(self, what: str, payer: str, fn, args=(), kwargs=None, page: Page | None = None):
        page = page or Page()
        ticket = self.enter(what, payer)
        try:
            self.wait_turn(ticket, page)
            return self._run(ticket, page, fn, args, kwargs or {})
        finally:
            self.leave(ticket)

    def _run(self, ticket: Ticket, page: Page, fn, args, kwargs):
        box: dict = {}
        done, inside = threading.Event(), threading.Event()  # finished; running `fn` (where Stop may be raised)
        context = contextvars.copy_context()  # the visitor (studio.access.acting_for) goes with the work

        def work():
            try:
                if not ticket.owner:
                    try:
                        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HEAVY_NICE)
                    except (OSError, AttributeError):
                        pass
                try:
                    inside.set()
                    box["value"] = context.run(_with_ticket, ticket, fn, args, kwargs)
                except Stop:
                    box["error"] = ticket.reason or Cancelled(f"{ticket.what}: stopped")
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    box["error"] = e
                finally:
                    inside.clear()  # from here on no Stop is raised in this thread
                if not ticket.owner:  # bill this thread's team while it still lives (its ticks leave with it)
                    with self.cond:
                        self._sample()
            except Stop:  # raised a moment before `inside` was cleared: the work had ended anyway
                box.setdefault("error", ticket.reason or Cancelled(f"{ticket.what}: stopped"))
            finally:
                done.set()

        thread = threading.Thread(target=work, name=f"heavy-{ticket.number}", daemon=True)
        ticket.thread = thread
        thread.start()
        flagged_at = None
        checked = 0.0
        while not done.wait(POLL_S):
            if not thread.is_alive():  # ended without saying so (it can't, but never wait for it forever)
                break
            if ticket.flag.is_set():
                if flagged_at is None:
                    flagged_at = time.monotonic()
                elif time.monotonic() - flagged_at > STOP_GRACE and inside.is_set():
                    _raise_in(thread, Stop)
                    flagged_at = time.monotonic()  # and again, every grace period, until it stops
                continue
            if page.gone():
                ticket.reason = Cancelled(f"{ticket.what}: stopped (its page is gone)")
                ticket.flag.set()
            elif time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                reason = self.over_budget(ticket)
                if reason is not None:
                    ticket.reason = reason
                    ticket.flag.set()
        if "error" in box:
            raise box["error"]
        if ticket.flag.is_set() and ticket.reason is not None and "value" not in box:
            raise ticket.reason
        return box.get("value")


def _with_ticket(ticket: Ticket, fn, args, kwargs):
    _current.set(ticket)
    return fn(*args, **kwargs)


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


QUEUE = WorkQueue()


# ---- the API the backend uses -------------------------------------------------------------------------------
def heavy(what: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` as heavy work named `what` ("story embedding", "evaluation", …): directly when the
    app is not shared (or when already inside heavy work: a call holds one place, not two), else through the
    queue for the current visitor's payer (see the module's doc). Raises StudioError with one line when refused,
    Cancelled when its page goes or its bill runs out."""
    from studio.access import current_visitor, shared_mode

    if not shared_mode() or _current.get() is not None:
        return fn(*args, **kwargs)
    visitor = current_visitor()
    event = event_page()  # None: no Gradio event (the command line, a job's thread)
    # no visitor outside an event is the owner (the command line); inside an event it is a stranger the app could
    # not name (an API call with no session), never the owner
    payer = visitor.payer if visitor is not None else "owner" if event is None else "anonymous"
    return QUEUE.run(what, payer, fn, args, kwargs, event or Page())


def checkpoint() -> None:
    """Where heavy work may stop: raises its reason when its page is gone or its bill is over; outside heavy
    work (locally, the command line, training) it does nothing and costs a context-variable read."""
    ticket = _current.get()
    if ticket is not None and ticket.flag.is_set():
        raise ticket.reason or Cancelled(f"{ticket.what}: stopped")


def in_heavy_work() -> bool:
    return _current.get() is not None


def checked(progress=None):
    """A `progress(done, total, …)` callback that is also a checkpoint (the loops that report progress are
    where heavy work may stop); `progress` may be None."""
    def report(*args, **kwargs):
        checkpoint()
        if progress is not None:
            progress(*args, **kwargs)

    return report
