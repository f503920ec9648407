"""The one error type for what the user did wrong, and the redactor every user-facing line passes.

A `StudioError` carries a single plain line that names the file, row or field
and what is wrong. The CLI prints it after ``error:``; the UI shows it inline.
Anything else that escapes is a bug and belongs in the log with its traceback.
"""

import logging
import os
import re
import warnings

_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")  # Hugging Face access tokens: hf_ + 34 letters/digits
_LONG_WORD = re.compile(r"\S{200,}")
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN")


def redact(text: str) -> str:
    """`text` with Hugging Face tokens and the values of the token variables replaced by ``hf_***``."""
    text = _TOKEN.sub("hf_***", str(text))
    for var in TOKEN_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 8 and value in text:
            text = text.replace(value, "hf_***")
    return text


class StudioError(Exception):
    """A user-facing problem with one-line message."""

    def __init__(self, message: str):
        message = redact(" ".join(str(message).split()))  # always one line, never a token
        # a visitor's 10k-character value is named, not echoed whole
        message = _LONG_WORD.sub(lambda m: f"{m.group()[:60]}… ({len(m.group()):,} characters)", message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def whole_number(value, what: str, low: int, high: int) -> int:
    """A count typed on the page or sent through the API (NaN, Infinity, words and all) as an int in range."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise StudioError(f"{what}: expected a number, got {type(value).__name__}") from None
    if number != number or not low <= number <= high:
        raise StudioError(f"{what}: must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


class RedactingFormatter(logging.Formatter):
    """Log records, tracebacks included, with tokens redacted: the app's log handlers use it, so an
    unexpected error whose message or locals carry a token never writes it to the server log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """The app's logging: one line per record, every handler redacting tokens, library noise off."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    quiet_libraries()


# Library lines that say nothing a user can act on, each named by its source (the app and the CLI both call
# `quiet_libraries`, the one place): any other warning, FutureWarnings included, still shows.
NOISY_WARNINGS = [
    # peft and TRL read the old attribute on every model they wrap (40 lines a training run)
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]
NOISY_LOGGERS = {
    "absl": logging.WARNING,  # rouge-score: "Using default tokenizer." at every scorer it builds
    "faiss.loader": logging.WARNING,  # the AVX-512 build it tries first: a ModuleNotFoundError at INFO
    "bitsandbytes": logging.ERROR,  # "no CPU 4-bit kernels package": not actionable
    "httpx": logging.WARNING,  # one line per request Gradio makes to itself
}


def quiet_libraries(progress_bars: bool = False) -> None:
    """Silence the lines above, and (unless `progress_bars`) the bars libraries draw into a log: a page shows
    its own progress, and the CLI keeps bars for a terminal only."""
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not progress_bars:
        import sys

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it when imported
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
