"""Errors FedAAA reports to people: one line, naming the file and the problem."""


class StudyError(Exception):
    """A study that cannot be used: ``str(err)`` is one sentence naming the input and the reason."""

    def __init__(self, source: object, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class ConfigError(Exception):
    """A configuration, manifest or command-line value that is wrong, in one sentence."""
