"""Walking a study safely: the one list of files that both the DICOM reader and the content hashing see.

A study path names a folder or one file. Before anything is opened, hashed or parsed, each path is
asked cheap questions, in this order: what it is (``lstat``: never opening it, so a FIFO cannot block),
whether it stays inside the study, whether it is in the size range, and whether its first 132 bytes look
like DICOM. The walk is iterative (an explicit stack, ``os.scandir``), never follows a symbolic link to a
folder, descends at most :data:`MAX_DEPTH` levels and looks at most at :data:`MAX_ENTRIES` entries.

What is skipped is counted by category (:attr:`Walk.skipped`) and reported as warnings without any path:
FIFOs, sockets and devices, symbolic links that leave the study, dangle or loop, folders deeper than
:data:`MAX_DEPTH`, files over :data:`MAX_FILE_BYTES`. Hidden entries (a name starting with ``.``) are
ignored silently, as before. A study path that is itself none of a folder or a regular file (a FIFO, a
device, a dangling or looping link) is refused with :class:`StudyPathError`, in one line.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HEAD_BYTES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "StudyPathError",
    "Walk",
    "check_study_path",
    "looks_like_dicom",
    "open_regular",
    "read_head",
    "safe_resolve",
    "walk_study",
]

MAX_DEPTH = 32  # folder levels below the study folder that are searched
MAX_ENTRIES = 20_000  # entries (files, folders, links...) looked at in one study folder
MAX_FILE_BYTES = 2 << 30  # 2 GiB: a larger file inside a study is skipped unread; a larger DICOM study file refused
HEAD_BYTES = 132  # preamble (128) + "DICM"

# Element tags a DICOM dataset without preamble starts with: group 0x0002 (file meta) or 0x0008
# (identifying), little endian; group 0x0008 big endian.
_RAW_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")

# Skip categories, in the order their warnings are listed: (key, singular noun phrase, plural noun phrase).
_CATEGORIES = {
    "special": ("FIFO, socket or device file", "FIFO, socket or device files"),
    "outside": ("symbolic link leading out of the study", "symbolic links leading out of the study"),
    "broken": ("dangling or looping symbolic link", "dangling or looping symbolic links"),
    "linked-folder": ("symbolic link to a folder (not followed)", "symbolic links to folders (not followed)"),
    "deep": (f"folder nested deeper than {MAX_DEPTH} levels", f"folders nested deeper than {MAX_DEPTH} levels"),
    "large": (
        f"file over the {MAX_FILE_BYTES >> 30} GiB size limit",
        f"files over the {MAX_FILE_BYTES >> 30} GiB size limit",
    ),
    "unreadable": ("unreadable file", "unreadable files"),
}


class StudyPathError(OSError):
    """A study path refused before anything in it is read: ``reason`` is one sentence without a path.

    An :class:`OSError`, so that callers treating unreadable studies as ``OSError`` (the cache's keying)
    refuse it the same way."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EINVAL, reason)
        self.reason = reason


@dataclass
class Walk:
    """The regular files of a study (sorted by relative name; a link to a file inside the study counts
    by its own name) and what was skipped, by category."""

    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        """Files and links set aside (folders too deep count once each)."""
        return sum(self.skipped.values())

    def warnings(self) -> list[str]:
        """One warning per skip category, counts only (no path)."""
        out = []
        for key, (one, many) in _CATEGORIES.items():
            n = self.skipped.get(key, 0)
            if n:
                out.append(f"skipped {n} {one if n == 1 else many}")
        return out


def safe_resolve(path: str | Path) -> Path:
    """``Path.resolve()`` that never raises: a symbolic-link loop (a RuntimeError on Python 3.11) or an
    unreadable component gives the absolute path instead, to be refused by :func:`check_study_path`."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def check_study_path(path: str | Path) -> os.stat_result:
    """The ``stat`` of a study path that is a folder or a regular file (links followed), or
    :class:`StudyPathError` in one sentence: missing, a dangling or looping link, a FIFO, a device..."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StudyPathError("is a symbolic link loop") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.lexists(path):
                raise StudyPathError("is a dangling symbolic link") from None
            raise StudyPathError("does not exist") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise StudyPathError("the path is too long") from None
        raise StudyPathError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return st
    raise StudyPathError(f"is {_kind(st.st_mode)}, not a study folder or file")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of ``path``, only if it is a regular file once opened (``O_NONBLOCK``: a FIFO
    swapped in after the walk cannot block); :class:`StudyPathError` otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StudyPathError("a file of the study is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_head(path: str | Path, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of a regular file (fewer when it is shorter)."""
    fd = open_regular(path)
    try:
        chunks, left = [], n
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def looks_like_dicom(head: bytes) -> str | None:
    """``"magic"`` when ``head`` has the DICOM preamble and ``DICM``; ``"raw"`` when it starts like a DICOM
    dataset without preamble (a group 0x0002 or 0x0008 element tag); None for anything else (a stray)."""
    if len(head) >= HEAD_BYTES and head[128:132] == b"DICM":
        return "magic"
    if len(head) >= 8 and head[:2] in _RAW_DATASET_STARTS:
        return "raw"
    return None


def walk_study(folder: str | Path) -> Walk:
    """The study folder's regular files (hidden entries ignored) and what was skipped, without recursion
    and without following links out of the folder. Raises :class:`StudyPathError` when the folder holds
    more than :data:`MAX_ENTRIES` entries."""
    root = Path(folder)
    walk = Walk(root)
    real_root = os.path.realpath(root)
    stack: list[tuple[str, int]] = [(str(root), 0)]
    seen = 0
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError:
            walk.skipped["unreadable"] += 1
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            seen += 1
            if seen > MAX_ENTRIES:
                raise StudyPathError(f"the folder holds more than {MAX_ENTRIES} entries: not one CT study")
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                walk.skipped["unreadable"] += 1
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if depth + 1 > MAX_DEPTH:
                    walk.skipped["deep"] += 1
                else:
                    stack.append((entry.path, depth + 1))
            elif stat.S_ISREG(mode):
                _add_file(walk, Path(entry.path), st.st_size)
            elif stat.S_ISLNK(mode):
                _add_link(walk, entry.path, real_root)
            else:  # FIFO, socket, character or block device: never opened
                walk.skipped["special"] += 1
    walk.files.sort(key=lambda p: p.relative_to(root).parts)
    return walk


def _add_file(walk: Walk, path: Path, size: int) -> None:
    if size > MAX_FILE_BYTES:
        walk.skipped["large"] += 1
    else:
        walk.files.append(path)


def _add_link(walk: Walk, path: str, real_root: str) -> None:
    """A symbolic link is kept only when it leads, without a loop, to a regular file inside the study."""
    try:
        target = os.path.realpath(path, strict=True)
        st = os.stat(target)
    except (OSError, RuntimeError):
        walk.skipped["broken"] += 1
        return
    if os.path.commonpath([real_root, target]) != real_root:
        walk.skipped["outside"] += 1
    elif stat.S_ISDIR(st.st_mode):
        walk.skipped["linked-folder"] += 1
    elif stat.S_ISREG(st.st_mode):
        _add_file(walk, Path(path), st.st_size)
    else:
        walk.skipped["special"] += 1
