"""The embedded default base model: a tiny Llama built from the repo's own text.

No hub is needed. The tokenizer (byte-level BPE, 2k vocabulary) is trained
with `tokenizers` on the bundled corpus and samples, the weights are a seeded
random initialisation of a 2-layer, 64-wide Llama, then pretrained for a few
seconds on the same text so it is a real (tiny) language model. It is cached under the studio cache folder, keyed by a hash of the
inputs, so every machine builds the same model.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

EMBEDDED_MODEL_ID = "embedded/tiny-llama"
_BUILD_VERSION = "2"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
_CORPUS_FILES = ["corpus.txt", "samples/quotes.jsonl", "samples/dolly.jsonl", "samples/e2e.jsonl"]

# ChatML: the embedded tokenizer gets it, and so does any tokenizer without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    root = os.environ.get("STUDIO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lora-studio"
    )
    return Path(root)


def _fingerprint() -> str:
    h = hashlib.sha256(_BUILD_VERSION.encode())
    for name in _CORPUS_FILES:
        h.update((ASSETS / name).read_bytes())
    return h.hexdigest()[:12]


def embedded_model_path() -> Path:
    """Return the folder of the embedded model, building it on first use."""
    target = cache_dir() / "models" / f"tiny-llama-{_fingerprint()}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    return build_atomically(target, build_embedded_model)


# One-time builds (this model, a GGUF file's conversion) take a minute once and are then cached. Whoever waits
# for one (a page's handler with its progress bar, the CLI) passes a callback; the build reports
# (fraction done, what it is doing) to it. A context variable, so no loader in between needs to know.
_one_time = contextvars.ContextVar("studio_one_time_progress", default=None)


@contextmanager
def one_time_progress(report):
    """Inside this block, one-time builds call `report(fraction, text)` as they go (`report` may be None)."""
    token = _one_time.set(report)
    try:
        yield
    finally:
        _one_time.reset(token)


def one_time_step(fraction: float, text: str) -> None:
    report = _one_time.get()
    if report is not None:
        try:
            report(max(0.0, min(1.0, fraction)), text)
        except Exception:  # noqa: BLE001 - a closed page must not break the build
            pass


def build_atomically(target: Path, build) -> Path:
    """Run `build(tmp)` in a temporary folder beside `target`, then move it into place in one step.

    A half-built model folder is never seen; when two processes build at once, the first rename wins and
    the other's copy is dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _training_lines() -> list[str]:
    import json

    lines = [l for l in (ASSETS / "corpus.txt").read_text("utf-8").splitlines() if l.strip()]
    for name in _CORPUS_FILES[1:]:
        for raw in (ASSETS / name).read_text("utf-8").splitlines():
            lines.extend(str(v) for v in json.loads(raw).values() if isinstance(v, str) and v)
    return lines


def build_embedded_model(out: Path, steps: int = 300) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    what = "Building the embedded tiny model (once on this machine, then cached)"
    one_time_step(0.02, f"{what}: training its tokenizer")
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    _pretrain(model, hf_tok, steps)
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out)


def _pretrain(model, tok, steps: int = 300, block: int = 64, batch: int = 16) -> None:
    """A few seconds of full training on the bundled text, so the base is a real (tiny) LM.

    The quotes appear as plain sentences only: the `Quote: … Author: …` layout is what
    fine-tuning teaches, so a before/after comparison shows the adapter's effect.
    """
    import torch

    ids: list[int] = []
    for line in _training_lines():
        ids.extend(tok(line)["input_ids"] + [tok.eos_token_id])
    data = torch.tensor(ids)
    n_blocks = (len(data) - 1) // block
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        if step % 10 == 0:
            one_time_step(0.1 + 0.85 * step / steps, "Building the embedded tiny model (once on this machine, then "
                                                     f"cached): pretraining, step {step}/{steps}")
        starts = torch.randint(0, n_blocks * block - block, (batch,), generator=gen)
        x = torch.stack([data[s : s + block] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
