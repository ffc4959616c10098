"""The progress bar of long work (decoding a site, federated rounds): one look everywhere."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, transient: bool = True) -> Progress:
    """A bar with a description, a count of done/total and the elapsed time, drawn on ``console``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
    )
