"""Widgets and helpers the tabs share."""

from __future__ import annotations

import html
import logging
import threading
from collections import OrderedDict

from studio.errors import StudioError

log = logging.getLogger("studio.ui")


def _request():
    from gradio.context import LocalContext

    return LocalContext.request.get(None)


def _oauth(request) -> dict:
    try:  # only a Space with hf_oauth (or gradio's mock login) has a session middleware
        info = request.session.get("oauth_info") or {}
    except Exception:  # noqa: BLE001 - no session: not signed in
        return {}
    return info if isinstance(info, dict) else {}


def event_visitor():
    """The visitor of the event being handled: every handler, page or API, acts for one (studio.access).

    Gradio keeps the event's request in a context variable for the handler's thread; its session hash names
    one page load or one API client, and a page's browser id (see `browser`) joins it across reloads."""
    from studio.access import make_visitor, trusted_address

    request = _request()
    if request is None:
        return None
    info = _oauth(request)
    return make_visitor(None, getattr(request, "session_hash", None), _signed_in(request, info),
                        info.get("access_token"), trusted_address(peer_address(request)))


def _signed_in(request, info: dict | None = None) -> str | None:
    """The request's signed-in name: a Space's Hugging Face sign-in, or an account of the app's (Gradio's auth)."""
    info = _oauth(request) if info is None else info
    return (info.get("userinfo") or {}).get("preferred_username") or getattr(request, "username", None)


def peer_address(request) -> str | None:
    """The request's peer address as the server sees it: on a shared app uvicorn rewrites it from
    X-Forwarded-For only for the proxies named in STUDIO_TRUSTED_PROXIES (app.py), so no header from anyone
    else changes it."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


def request_payer(request) -> str:
    """Who pays for a request before its event runs (the queue's join): its account, a trusted address, or the
    anonymous pool (studio.access.Visitor.payer)."""
    from studio.access import payer_of

    return payer_of(_signed_in(request), peer_address(request))


def browser(client_id) -> str | None:
    """Who this event acts for, as a job's owner: the page's browser id if the server issued it (see
    `page_browser_id`), else this event's Gradio session (an API client, or a value that does not verify,
    which is then ignored). A verified id also ties the session to the browser: what it made before a reload
    or a restart stays its own."""
    from studio.access import make_visitor
    from studio.ownership import verify_browser_id

    request = _request()
    session = getattr(request, "session_hash", None) if request is not None else None
    verified = verify_browser_id(client_id)
    if verified and session:
        make_visitor(verified, session)
    if verified:
        return f"client:{verified}"
    return f"session:{session}" if session else None


def page_browser_id(client_id) -> str:
    """On page load: the browser's stored id if it verifies, else a new one the server issues (and the page
    stores, sealed, in its BrowserState)."""
    from studio.ownership import issue_browser_id, verify_browser_id

    if not verify_browser_id(client_id):
        client_id = issue_browser_id()
    browser(client_id)
    return client_id


_handovers: "OrderedDict[str, dict]" = OrderedDict()  # "client:<verified browser id>" → the dataset handed to Train
HANDOVERS_KEPT = 2000  # the browsers whose last hand-over is kept (the least recent go first): a few KB each
_handovers_lock = threading.Lock()


def keep_handover(client_id, choice: dict | None) -> None:
    """Remember (or, with None, forget) the dataset the Data tab handed to the Train tab for this browser, so a
    reload of the page gets it back. Kept per browser id the server issued and verified (`browser`), never per
    anything a page says: a page whose id does not verify (an API client, a forged id) keeps nothing across loads,
    and no browser can name another's. In memory: a restart forgets hand-overs, as it forgets sessions."""
    from studio.access import max_visitors

    key = browser(client_id)
    if not key or not key.startswith("client:"):
        return
    with _handovers_lock:
        if choice is None:
            _handovers.pop(key, None)
            return
        _handovers[key] = dict(choice)
        _handovers.move_to_end(key)
        while len(_handovers) > min(max_visitors(), HANDOVERS_KEPT):
            _handovers.popitem(last=False)


def handover(client_id) -> dict | None:
    """This browser's kept hand-over (see `keep_handover`), while its data can still be read by this visitor: an
    upload that has left (the upload TTL) is forgotten, not offered."""
    from pathlib import Path

    from studio.access import may_read

    key = browser(client_id)
    with _handovers_lock:
        choice = _handovers.get(key) if key and key.startswith("client:") else None
    if choice is None:
        return None
    source = str(choice.get("source") or "")
    if (shown_source(source).startswith("upload: ") and not Path(source).is_file()) or not may_read(source):
        keep_handover(client_id, None)
        return None
    return dict(choice)


def browser_state():
    """The page's BrowserState holding its browser id, sealed with a key that outlives restarts (derived from
    the runs folder's secret), and shown in the API docs with no example to copy: API clients send nothing."""
    import gradio as gr

    from studio.ownership import browser_state_secret

    state = gr.BrowserState(None, storage_key="lora-studio-client", secret=browser_state_secret())
    # per instance, not a subclass: Gradio's page renders a component by its class's name
    state.api_info = lambda: {"type": "string", "description": "the id this server issued to a browser page; "
                              "API clients leave it empty (null): the server knows them by their session"}
    state.example_payload = state.example_value = lambda: None
    return state


def job_log(job, lines: int = 200) -> str:
    """A job's last log lines for the page (the log ends with where the adapter was saved)."""
    from studio.access import shown_path

    return shown_path("\n".join(job.logs[-lines:]))


def quiet_when_idle(demo) -> None:
    """Gradio's queue checks for work every 1 ms when it has none, and for progress every 10 ms: ~4 % of a
    core with no page open (measured: tests/test_queue.py). Every 20 ms and 100 ms cost ~0.3 % and add at
    most 20 ms before an event starts. Call after `demo.queue()`."""
    queue = getattr(demo, "_queue", None)
    if queue is not None:
        queue.sleep_when_free = max(queue.sleep_when_free, 0.02)
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, 0.1)


def shown_source(source: str) -> str:
    """A data source as the page names it: an upload by its file name, not the server's temp folder."""
    from pathlib import Path

    from studio.access import private_uploads, upload_dirs

    text = str(source or "")
    if any(Path(text).is_relative_to(d) for d in [*upload_dirs(), private_uploads().resolve(), private_uploads()]):
        return f"upload: {Path(text).name}"
    return text


def text_cell(text) -> str:
    """Text for a Markdown table cell, shown as text: no HTML, and no Markdown image (a tracking pixel), link or
    emphasis; a newline is a line break inside the cell."""
    text = html.escape(str(text)).replace("\n", "<br>")
    for ch, entity in (("|", "&#124;"), ("!", "&#33;"), ("[", "&#91;"), ("]", "&#93;"), ("(", "&#40;"),
                       (")", "&#41;"), ("`", "&#96;"), ("*", "&#42;"), ("_", "&#95;"), ("\\", "&#92;")):
        text = text.replace(ch, entity)
    return text


def error_html(message: str) -> str:
    return f'<div class="studio-error" role="alert">⚠️ {html.escape(message)}</div>'


def ok_html(message: str) -> str:
    return f'<div class="studio-ok">{html.escape(message)}</div>'


def safely(fn, *args, **kwargs):
    """Run a backend call: (result, None) or (None, one-line message). Never a traceback on the page."""
    try:
        from studio.stack import import_ml_stack

        import_ml_stack()  # waits for the warm-up import instead of racing it
        return fn(*args, **kwargs), None
    except StudioError as e:
        from studio.access import shown_path

        return None, shown_path(str(e))  # a shared page is told `runs/…`, never the server's folders
    except Exception as e:  # noqa: BLE001 - a bug: full traceback in the log, one line on the page
        log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
        return None, f"unexpected error ({type(e).__name__}); details are in the server log"


def plain_input_errors(block) -> None:
    """A value Gradio's component can't read (a word in a number box, a chat that is not a list of messages,
    sent straight through the API) is refused with one line naming the field, not Gradio's generic
    "the app raised an exception". Installed on every input component once the page is built."""
    import gradio as gr
    from pydantic import ValidationError

    label = getattr(block, "label", None) or type(block).__name__
    kind = {"Number": "a number", "Slider": "a number", "Chatbot": "a list of {role, content} messages",
            "Checkbox": "true or false"}.get(type(block).__name__, "a value of another kind")

    def refuse(payload, why: str = ""):
        return gr.Error(f"{label}: expected {kind}, got {type(payload).__name__}{why}", print_exception=False)

    preprocess = getattr(block, "preprocess", None)
    if callable(preprocess):
        def checked_preprocess(payload):
            try:
                return preprocess(payload)
            except gr.Error as e:  # Gradio's own check (a choice not offered, out of range): name the field
                said = " ".join(str(e.message).split())
                raise gr.Error(f"{label}: {said if len(said) <= 200 else said[:200] + '…'}",
                               print_exception=False) from None
            except Exception:  # noqa: BLE001 - Gradio could not read the value: say which field
                raise refuse(payload) from None

        block.preprocess = checked_preprocess
    model = getattr(block, "data_model", None)
    if isinstance(model, type) and hasattr(model, "model_validate"):
        class Checked(model):
            @classmethod
            def model_validate(cls, obj, *args, **kwargs):
                try:
                    return model.model_validate(obj, *args, **kwargs)
                except ValidationError as e:
                    first = e.errors()[0]
                    where = ".".join(str(part) for part in first.get("loc", ())) or "value"
                    raise refuse(obj, f" ({where}: {first.get('msg', 'invalid')})"[:200]) from None

        Checked.__name__ = model.__name__
        block.data_model = Checked


def progress_html(s: dict) -> str:
    total, step = s.get("total") or 0, s.get("step") or 0
    pct = 100 * step / total if total else 0
    parts = [f"step {step}/{total or '?'}"]
    if s.get("phase"):  # the steps are done and the job is still at work: say at what
        parts.append(f"<i>{html.escape(str(s['phase']))}…</i>")
    if s.get("epoch"):
        parts.append(f"epoch {s['epoch']:.2f}")
    parts.append(f"elapsed {s.get('elapsed', 0):.0f}s")
    if s.get("eta") is not None:
        parts.append(f"ETA {s['eta']:.0f}s")
    if s.get("tokens_per_s"):
        parts.append(f"{s['tokens_per_s']:,.0f} tokens/s")
    if s.get("loss") is not None:
        parts.append(f"loss {s['loss']:.4f}")
    status = html.escape(s.get("status", ""))
    from studio.runs import shown_status

    shown = html.escape(shown_status(s.get("status", "")))
    return (f'<div class="studio-progress" data-status="{status}" data-step="{step}">'
            f'<div class="bar"><div class="fill" style="width:{pct:.1f}%"></div></div>'
            f'<div class="label"><b>{shown}</b> · {" · ".join(parts)}</div></div>')


CSS = """
.studio-error {background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;border-radius:6px;padding:8px 12px;}
.studio-ok {background:#e8f5e9;color:#1b5e20;border:1px solid #c8e6c9;border-radius:6px;padding:8px 12px;}
.studio-progress .bar {height:14px;background:#eee;border-radius:7px;overflow:hidden;}
.studio-progress .fill {height:100%;background:linear-gradient(90deg,#ff9d00,#ffcc4d);transition:width .5s;}
.studio-progress .label {font-size:0.9em;margin-top:4px;}
.studio-note {color:#555;font-style:italic;}
.studio-queue {background:#fff8e1;color:#5d4200;border:1px solid #ffe082;border-radius:6px;padding:8px 12px;}
#data-info pre, #data-info code {white-space:pre-wrap;overflow-wrap:anywhere;}
/* Result tables: a scrollbar that shows when columns are off-screen (Gradio's is hidden or hair-thin), and run
   names that wrap instead of pushing the metrics out of view. */
#eval-metrics *, #eval-rows *, #eval-lmeval * {scrollbar-width:auto !important;scrollbar-color:#9aa0a6 #eef0f2;}
#eval-metrics td:first-child, #eval-metrics th:first-child {max-width:16em;min-width:8em;}
/* GRPO's tables: the text columns share the width, the scores keep theirs (a header never breaks mid-word). */
#train-completions th, #eval-grpo-report th {word-break:normal;overflow-wrap:normal;}
#train-completions td:nth-child(n+3), #train-completions th:nth-child(n+3) {white-space:nowrap;text-align:right;}
#train-completions td:first-child, #eval-grpo-report td:first-child {min-width:10em;}
#train-completions td:nth-child(2) {min-width:12em;}
#eval-grpo-report td:nth-child(2) {white-space:nowrap;}
/* Narrow screens (phones, a split window): every tab named, one field per line, the chat above its settings. */
@media (max-width: 640px) {
  .tab-container button {padding-left:6px !important;padding-right:6px !important;font-size:13px !important;}
  .overflow-menu > button::after {content:"More tabs";margin-left:4px;font-size:13px;}
  .row > .form > .block, .row > .block, .row > .form {min-width:100% !important;}
  #chat-main {order:-1;}
  #eval-metrics td:first-child, #eval-metrics th:first-child {max-width:11em;}
  /* text tables scroll sideways rather than cut their last columns or break "base" into "bas e" */
  #train-completions table, #train-samples table, #eval-grpo-report table {display:block;overflow-x:auto;}
  #train-completions td, #train-samples td, #eval-grpo-report td, #train-completions th, #train-samples th,
  #eval-grpo-report th {word-break:normal !important;overflow-wrap:normal !important;min-width:6em;}
  #train-completions td:first-child, #eval-grpo-report td:first-child, #train-samples td:first-child {min-width:11em;}
  /* a reward row: its type and weight side by side, its settings under them */
  .train-reward-row > .form {flex-wrap:wrap !important;}
  .train-reward-row > .form > .block:not(:last-child) {min-width:40% !important;flex:1 1 40% !important;}
}
"""


def page_progress(progress):
    """A `gr.Progress` as the backend's one-time-build callback (`studio.embedded.one_time_progress`)."""
    def report(fraction: float, text: str) -> None:
        progress(fraction, desc=text)

    return report

