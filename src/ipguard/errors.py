"""The project's own exceptions.

Everything a user can cause (a bad file, a wrong shape, a model that does not load) is
raised as an :class:`IPGuardError` whose message is one sentence saying what went wrong,
optionally followed by ``hint``: how to fix it. The CLI prints exactly that one line.
"""

from __future__ import annotations


class IPGuardError(Exception):
    """Base class of every error a user can cause. ``str(err)`` is one line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message.strip().replace("\n", " ")
        self.hint = hint.strip().replace("\n", " ") if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def __reduce__(self) -> tuple[type[IPGuardError], tuple[str, str | None]]:
        # the hint survives pickling (an error raised in a worker process or a Ray task)
        return (type(self), (self.message, self.hint))


class InputError(IPGuardError):
    """Input data or a parameter is invalid: wrong shape, NaN/inf, out of bounds, bad value."""


class ModelError(IPGuardError):
    """A model cannot be loaded, or it does not behave like a classifier."""


class FingerprintFileError(IPGuardError):
    """A fingerprint file is missing, unreadable, corrupt, truncated, edited or foreign."""


class GenerationError(IPGuardError):
    """Fingerprint generation could not produce the requested number of usable points."""


class SuspectError(IPGuardError):
    """A suspect gave an answer that cannot be compared with the fingerprint."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (for one-line errors that quote another)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
