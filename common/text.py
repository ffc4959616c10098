"""Text that reaches a person or a report: printable, on one line, and capped.

Anything that came from outside the program (a DICOM header value, a file name, a manifest field, a
library's error message) may hold terminal escape sequences, line breaks, bidirectional overrides,
undecodable bytes or megabytes of text. Before it is shown or written into a report it goes through
:func:`printable` (or :func:`cap_sentence` for a whole error sentence). No dependency beyond the
standard library: readers may use it too.
"""

from __future__ import annotations

import unicodedata

ELLIPSIS = "…"
HEADER_LIMIT = 80  # a header-derived value shown anywhere
SENTENCE_LIMIT = 400  # a whole error sentence (source and reason)
# Unicode categories that are not shown as themselves: controls, format characters (bidi overrides,
# zero-width joiners), surrogates (undecodable bytes of a file name), private use, unassigned,
# line and paragraph separators.
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_SPACES = {"\t", "\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029"}
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object, limit: int = HEADER_LIMIT, *, collapse: bool = True) -> str:
    """``text`` as one line of printable characters, at most ``limit`` characters long.

    Control and format characters (escape sequences, bell, bidi overrides, undecodable bytes) are shown
    escaped (``\\x1b``, ``\\u202e``), so they never act on a terminal. With ``collapse`` (header text,
    sentences) line breaks and tabs become spaces and runs of whitespace one space; without it (a path
    as given, whose exact name matters) they are escaped too (``\\n``). A cut text ends with "…".
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    cut = max(1, limit) * 8  # never look at more than needed (a 60 kB header value costs nothing)
    out: list[str] = []
    for char in text[:cut]:
        if collapse and (char in _SPACES or char.isspace()):
            out.append(" ")
        elif unicodedata.category(char) in _HIDDEN:
            out.append(_escape(char))
        else:
            out.append(char)
    result = "".join(out)
    if collapse:
        result = " ".join(result.split())
    if len(result) > limit or len(text) > cut:
        result = result[: max(0, limit - 1)].rstrip() + ELLIPSIS
    return result


def cap_sentence(text: object, limit: int = SENTENCE_LIMIT) -> str:
    """An error sentence for people: printable, one line, at most ``limit`` characters."""
    return printable(text, limit)
