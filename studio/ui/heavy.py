"""The page that asked for heavy work, as `studio.work` sees it: is it still there, and a line to show it.

Gradio 6.31 stops nothing that a page left: a plain function runs to its end, and a generator is closed only
after its next yield (`Queue.process_events` checks `event.alive` between chunks). An event stops being
`alive` when its page's stream (`/queue/data`, SSE) disconnects (`clean_events`). A client that joined and
never opened its stream (or stopped reading it) stays `alive` forever, so a page counts as gone too when
nobody has read its messages for `UNREAD_S` seconds: while a stream is open a reader waits on the session's
message queue (or it is empty); messages left unread with no reader waiting mean no one is listening.

Registered with `studio.work.set_page_source` when this module is imported (by each tab that starts heavy
work), so the backend asks without importing gradio.
"""

from __future__ import annotations

import time

from studio.work import Page, set_page_source

UNREAD_S = 5.0  # a stream opens within a second of its join; a reader never leaves messages this long


class EventPage(Page):
    def __init__(self, queue, event_id: str, tracked):
        self.queue, self.event_id, self.tracked = queue, event_id, tracked
        self.read_at = time.monotonic()

    def gone(self) -> bool:
        queue = self.queue
        event = queue.event_ids_to_events.get(self.event_id)
        if event is None or not event.alive:
            return True
        messages = queue.pending_messages_per_session.get(event.session_hash)
        if messages is None:
            return True
        now = time.monotonic()
        if getattr(messages, "_getters", None) or messages.qsize() == 0:
            self.read_at = now
        return now - self.read_at > UNREAD_S

    def say(self, line: str) -> None:
        """The line as the event's progress (the page shows it over the outputs; an API client reads it in its
        job's status)."""
        try:
            self.queue.set_progress(self.event_id, [self.tracked(None, None, None, line, None)])
        except Exception:  # noqa: BLE001 - a line the page misses is no reason to fail the work
            pass


def event_page() -> Page | None:
    """The Page of the Gradio event being handled in this thread, or None outside one."""
    from gradio.context import LocalContext
    from gradio.helpers import TrackedIterable

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or not event_id:
        return None
    return EventPage(queue, event_id, TrackedIterable)


set_page_source(event_page)
