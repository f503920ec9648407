"""The one error type for what the user did wrong.

A `StudioError` carries a single plain line that names the file, row or field
and what is wrong. The CLI prints it after ``error:``; the UI shows it inline.
Anything else that escapes is a bug and belongs in the log with its traceback.
"""


class StudioError(Exception):
    """A user-facing problem with one-line message."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
