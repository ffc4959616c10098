"""Errors FedAAA reports to people: one line, naming the file and the problem."""

import re

_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s'\",;:()]+")


def describe(exc: BaseException, limit: int = 200) -> str:
    """A library exception as a short one-line detail for a reason, with file paths (which may name
    patients) and line breaks removed."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = " ".join(_PATH.sub("<file>", text).split())[:limit]
    return text or type(exc).__name__


class StudyError(Exception):
    """A study that cannot be used: ``str(err)`` is one sentence naming the input and the reason."""

    def __init__(self, source: object, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class ConfigError(Exception):
    """A configuration, manifest or command-line value that is wrong, in one sentence."""
