"""Errors FedAAA reports to people: one line, naming the file and the problem, printable and capped."""

import re

from fedaaa.common.text import SENTENCE_LIMIT, cap_sentence, printable

__all__ = ["ConfigError", "StudyError", "cap_sentence", "describe", "printable"]

_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s'\",;:()]+")
REASON_LIMIT = 300  # a refusal's reason, without the study's path


def describe(exc: BaseException, limit: int = 200) -> str:
    """A library exception as a short one-line detail for a reason, with file paths (which may name
    patients), line breaks and control characters removed, at most ``limit`` characters."""
    try:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    except Exception:  # an exception whose __str__ fails
        text = ""
    text = printable(_PATH.sub("<file>", text[: limit * 8]), limit)
    return text or type(exc).__name__


class StudyError(Exception):
    """A study that cannot be used: ``str(err)`` is one sentence naming the input and the reason.

    ``reason`` is made printable and capped here (a header value may hold escape sequences or 60 kB of
    text); ``source`` stays the path as given (callers resolve it), so show ``str(err)`` through
    :func:`cap_sentence`."""

    def __init__(self, source: object, reason: str) -> None:
        self.source = str(source)
        self.reason = printable(reason, REASON_LIMIT)
        super().__init__(f"{self.source}: {self.reason}")


class ConfigError(Exception):
    """A configuration, manifest or command-line value that is wrong, in one printable, capped sentence."""

    def __init__(self, message: object = "") -> None:
        super().__init__(cap_sentence(message, SENTENCE_LIMIT))
