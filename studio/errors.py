"""The one error type for what the user did wrong, and the redactor every user-facing line passes.

A `StudioError` carries a single plain line that names the file, row or field
and what is wrong. The CLI prints it after ``error:``; the UI shows it inline.
Anything else that escapes is a bug and belongs in the log with its traceback.
"""

import logging
import os
import re

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
    """The app's logging: one line per record, every handler redacting tokens."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
