"""Errors the CLI turns into one clear line and a non-zero exit code.

Every message says what went wrong and, where it can, what to do about it.
"""


class EdgesegError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class UsageError(EdgesegError):
    """An option or argument the user gave cannot be used."""


class DataError(EdgesegError):
    """A dataset file is missing, unreadable or inconsistent."""


class WeightsError(EdgesegError):
    """Weights cannot be found, downloaded or loaded into the model."""


class MissingDependency(EdgesegError):
    """An optional package is needed for this command; the message names the extra."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
