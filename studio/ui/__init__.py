"""The Gradio app: one module per tab; handlers are thin calls into the backend."""

from __future__ import annotations

import gradio as gr

from studio.ui.chat_tab import create_chat_tab
from studio.ui.common import CSS
from studio.ui.data_tab import create_data_tab
from studio.ui.dpo_tab import create_dpo_tab
from studio.ui.evaluate_tab import create_evaluate_tab
from studio.ui.export_tab import create_export_tab
from studio.ui.train_tab import create_train_tab


def build_app() -> gr.Blocks:
    from studio.access import private_uploads, set_visitor_source, shared_mode
    from studio.budgets import cache_schedule, start_sweeper
    from studio.ui.common import browser_state, event_visitor, plain_input_errors

    set_visitor_source(event_visitor)  # studio.access asks who the current event's visitor is
    with gr.Blocks(title="LoRA Studio", analytics_enabled=False,
                   delete_cache=cache_schedule() if shared_mode() else None) as demo:
        gr.Markdown("# LoRA Studio\nFine-tune small language models with LoRA / QLoRA — "
                    "pick a recipe, watch it train, compare before and after.")
        # Top level, not inside a tab: tabs mount lazily, and the id must be read before any tab is shown.
        client = browser_state()  # the browser id the server issued this browser (signed; survives restarts)
        with gr.Tabs():
            data = create_data_tab()
            train = create_train_tab(client)
            dpo = create_dpo_tab(client)
            chat = create_chat_tab(client)
            evaluate = create_evaluate_tab(client)
            export = create_export_tab(client)
        data["connect"](train, dpo=dpo, evaluate=evaluate, chat=chat)
        demo.load(*train["on_load"])
        demo.load(*train["run_history"])
        for tab in (dpo, chat, evaluate, export):  # each tab may ask for page-load events: (fn, inputs, outputs)
            for event in tab.get("on_load", []):
                demo.load(*event)
    if shared_mode():  # visitors' kept uploads leave after the upload TTL, raw ones nobody claimed much sooner
        start_sweeper(private_uploads(), demo.upload_file_set)
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and not isinstance(block, (gr.State, gr.BrowserState)):
            plain_input_errors(block)
    return demo


def _limit(name: str, default: int) -> int:
    import os

    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def queue_limits() -> dict:
    """The queue's limits (docs/budgets.md "Sessions and the queue"): Gradio 6.31 keeps pending messages for at
    most 2,000 sessions and stops its queue for good when it has to drop one that still waits, so the studio
    refuses joins well before that: in all, per named visitor, and for the anonymous pool together."""
    return {"max_size": _limit("STUDIO_QUEUE_MAX", 1000),            # events waiting, all visitors together
            "per_client": _limit("STUDIO_QUEUE_PER_CLIENT", 20),      # events waiting per account (or address)
            "anonymous": _limit("STUDIO_QUEUE_ANONYMOUS", 200),       # events waiting, anonymous visitors together
            "sessions": _limit("STUDIO_MAX_SESSIONS", 2000)}          # sessions whose state Gradio keeps


def _payer(request, username=None) -> str:
    """Who pays for a queued event: its account (Gradio's login, or a Space's sign-in) or the anonymous pool."""
    from studio.access import payer_of
    from studio.ui.common import request_payer

    return payer_of(username) if username else request_payer(request)


def start_queue(demo: gr.Blocks) -> gr.Blocks:
    """Turn on the queue with its limits: past `max_size` waiting events Gradio answers "Queue is full"; past
    `per_client` waiting events of one payer (an account, or a trusted address) the studio answers the same way,
    before Gradio sees the join, and all anonymous visitors together wait with at most `anonymous` events. Who
    pays is not the session (a stranger makes fresh sessions for free) nor an address taken from a header
    (forged for free): see studio.access.Visitor.payer. The app's owner (signed in) is not capped."""
    limits = queue_limits()
    demo.queue(default_concurrency_limit=8, max_size=limits["max_size"])
    queue = demo._queue
    push = queue.push

    async def capped_push(body, request, username):
        payer = _payer(request, username)
        if payer != "owner":
            waiting = sum(1 for q in list(queue.event_queue_per_concurrency_id.values()) for e in list(q.queue)
                          if _payer(e.request, e.username) == payer)
            cap = limits["anonymous"] if payer == "anonymous" else limits["per_client"]
            if waiting >= cap:
                who = ("anonymous visitors together" if payer == "anonymous" else
                       "your account" if payer.startswith("user:") else "your address")
                hint = (": sign in (or ask the app's owner for an account) to wait on your own" if payer == "anonymous"
                        else ": wait for them to finish")
                return (False, f"Too many waiting requests from {who} ({waiting}; at most {cap}){hint}",
                        "queue_full")
        return await push(body, request, username)

    queue.push = capped_push
    return demo


def launch_kwargs() -> dict:
    return {"css": CSS, "theme": gr.themes.Soft(primary_hue="orange"),
            "state_session_capacity": queue_limits()["sessions"]}
