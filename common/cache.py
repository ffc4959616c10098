"""The on-disk input cache of a site: preprocessed inputs keyed by content, and the content index.

A study becomes a network input once (:func:`~fedaaa.common.preprocess.load_study_input`); the result, or its
refusal, is stored here under a key made of the study's bytes, the preprocessing settings and the pipeline
version, so every later round, and every fresh process, reads it back instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedaaa.common.errors import StudyError
from fedaaa.common.io import StudyInfo
from fedaaa.common.io.nifti import is_nifti
from fedaaa.common.io.walk import (
    HEAD_BYTES,
    MAX_FILE_BYTES,
    StudyPathError,
    check_study_path,
    looks_like_dicom,
    open_regular,
    read_head,
    safe_resolve,
    walk_study,
)
from fedaaa.common.preprocess import StudyInput, UnforeseenFailure, load_study_input
from fedaaa.common.settings import PreprocessSettings


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDAAA_CACHE_DIR", Path.home() / ".cache" / "fedaaa"))


# Bump when reading or preprocessing code changes what a study becomes: old cache entries then miss.
# 3: typed study facts (StudyInfo) in the records; the input-grid guard.
# 4: budgets from headers, stray files skipped by their first bytes, the safe walk (skip warnings).
# 5: the segmentation grid (1.5 x 1.5 x 3 mm, whole scanned range) and aorta labels beside the inputs.
PIPELINE_VERSION = 5
MAX_LABEL_BYTES = 256 << 20
INDEX_FILE = "content-index.json"
INDEX_VERSION = 1


def _study_walk(path: Path) -> tuple[list[Path], str]:
    """The study's files as the reader sees them (:func:`~fedaaa.common.io.walk.walk_study`: no hidden
    entries, no FIFOs or devices, no link leaving the study, bounded depth and count), or the study file
    itself, and what was skipped (its warnings depend on it). A study path that is neither a folder nor a
    regular file raises :class:`~fedaaa.common.io.walk.StudyPathError` (an ``OSError``) before anything is
    opened."""
    st = check_study_path(path)
    if not stat.S_ISDIR(st.st_mode):
        return [path], ""
    walk = walk_study(path)
    return walk.files, json.dumps(sorted(walk.skipped.items()))


def _study_files(path: Path) -> list[Path]:
    return _study_walk(path)[0]


def _hash_file(h: hashlib._Hash, f: Path) -> None:
    fd = open_regular(f)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)


def content_digest(path: Path) -> str:
    """SHA-256 of what a study's reading depends on, file by file in name order: the relative name and
    the whole content of every file the reader may parse; for a file it skips by its first bytes (a stray:
    no DICOM preamble or element tag) or by its size, only its name, size and first 132 bytes, which are
    all that decide the skip. Only regular files returned by the safe walk are ever opened."""
    h = hashlib.sha256()
    path = Path(path)
    files, skipped = _study_walk(path)
    h.update(f"{skipped}\0".encode())
    single = files == [path]
    for f in files:
        h.update(f"{f.name if single else f.relative_to(path)}\0".encode())
        size = os.stat(f).st_size
        whole = (single and is_nifti(f)) or (size <= MAX_FILE_BYTES and looks_like_dicom(read_head(f)) is not None)
        if whole:
            _hash_file(h, f)
        else:
            h.update(f"stray\0{size}\0".encode() + read_head(f, HEAD_BYTES))
    return h.hexdigest()


def label_digest(mask: Path) -> str:
    """SHA-256 of a label file's bytes (a regular file of at most :data:`MAX_LABEL_BYTES`, opened safely);
    ``missing`` when it cannot be read (the study is then prepared, and its label refused, in one sentence)."""
    h = hashlib.sha256()
    try:
        fd = open_regular(mask)
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                if fh.tell() > MAX_LABEL_BYTES:
                    return "too-large"
    except OSError:
        return "missing"
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    """What a study's files look like from outside: every file's relative name, size, modification and
    change times (ns) and inode. Any write, copy, ``touch`` or ``utime`` changes it (ctime cannot be set back)."""
    h = hashlib.sha256()
    path = Path(path)
    files, skipped = _study_walk(path)
    h.update(f"{skipped}\0".encode())
    for f in files:
        st = f.stat()
        rel = f.relative_to(path) if path.is_dir() else f.name
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


class ContentIndex:
    """A site's persistent map: study absolute path -> (fingerprint of its files, content digest).

    Lets a fresh process (a deployed SuperNode starts one per message) key an unchanged study without
    reading its bytes. One small JSON file in the cache folder, written atomically (temporary file, then
    ``os.replace``) after merging what is on disk, so processes sharing a cache never leave it torn; at worst
    one's new entries are lost and those studies are hashed again later. Unreadable or foreign content
    reads as empty.
    """

    def __init__(self, file: Path) -> None:
        self.file = Path(file)
        self._entries: dict[str, list[str]] | None = None
        self._new: dict[str, list[str]] = {}

    def _read(self) -> dict[str, list[str]]:
        try:
            raw = json.loads(self.file.read_text())
            if raw.get("version") == INDEX_VERSION and isinstance(raw.get("studies"), dict):
                return raw["studies"]
        except (OSError, ValueError, AttributeError):
            pass
        return {}

    def get(self, study: Path, fp: str) -> str | None:
        """The content digest recorded for ``study`` when its files still look like ``fp``."""
        if self._entries is None:
            self._entries = self._read()
        entry = self._entries.get(str(study))
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == fp and isinstance(entry[1], str):
            return entry[1]
        return None

    def put(self, study: Path, fp: str, digest: str) -> None:
        if self._entries is None:
            self._entries = self._read()
        self._entries[str(study)] = self._new[str(study)] = [fp, digest]

    def save(self) -> None:
        """Merge this object's new entries into the file (best effort: the index only saves time)."""
        if not self._new:
            return
        merged = {**self._read(), **self._new}
        tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": INDEX_VERSION, "studies": merged}))
            os.replace(tmp, self.file)
        except OSError:
            tmp.unlink(missing_ok=True)
            return
        self._entries, self._new = merged, {}


@dataclass(frozen=True)
class Outcome:
    """What became of one study: its facts when usable, or its one-line refusal and the file inside the
    study that the refusal points to (``""`` for the study as a whole)."""

    info: StudyInfo | None = None
    error: str | None = None
    where: str = ""
    label: bool = False  # the entry holds the study's aorta label
    label_error: str = ""  # why a label named for the study could not be used (the study still is)

    def to_json(self) -> str:
        if self.error is not None:
            return json.dumps({"error": self.error, "where": self.where})
        assert self.info is not None
        return json.dumps({"info": self.info.to_dict(), "label": self.label, "label_error": self.label_error})

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        """The record :meth:`to_json` wrote; anything else raises (TypeError, ValueError, KeyError)."""
        raw = json.loads(text)
        if isinstance(raw, dict) and set(raw) == {"info", "label", "label_error"}:
            return cls(
                info=StudyInfo.from_dict(raw["info"]), label=bool(raw["label"]), label_error=str(raw["label_error"])
            )
        if isinstance(raw, dict) and set(raw) == {"error", "where"}:
            return cls(error=str(raw["error"]), where=str(raw["where"]))
        raise ValueError("not a cache record")


class InputCache:
    """Preprocessed inputs on disk, keyed by the study's content and the preprocessing settings.

    Each entry is ``<key>.npy`` (float16 input) and ``<key>.json`` (the :class:`Outcome`: the study's facts,
    or its refusal), the JSON written last. A hit skips DICOM decoding entirely; changed bytes, a changed
    setting or a new pipeline version give a new key, never a stale tensor. A study's content digest is
    remembered in a :class:`ContentIndex` beside the entries, so an unchanged study is not hashed again
    (``use_index=False`` hashes every time; ``key(path, rehash=True)`` hashes and refreshes the index).
    ``decoded`` counts studies this object read from DICOM/NIfTI (hits do not count), ``hashed`` the
    studies whose bytes it hashed.
    """

    def __init__(self, settings: PreprocessSettings, cache_dir: Path | None = None, *, use_index: bool = True) -> None:
        self.settings = settings
        self.dir = Path(cache_dir or default_cache_dir())
        self.decoded = 0
        self.hashed = 0
        self.index = ContentIndex(self.dir / INDEX_FILE) if use_index else None

    def digest(self, path: Path, rehash: bool = False) -> str:
        """The study's content digest: from the index when its files are unchanged, else hashed."""
        path = Path(path)
        if self.index is None:
            self.hashed += 1
            return content_digest(path)
        fp = fingerprint(path)  # taken before reading: a file changed while hashing differs next time
        if not rehash and (known := self.index.get(path, fp)) is not None:
            return known
        digest = content_digest(path)
        self.hashed += 1
        self.index.put(path, fp, digest)
        return digest

    def key(self, path: Path, rehash: bool = False, mask: Path | None = None) -> str:
        """The entry's name: the study's content, its label's content (when one is named), the settings
        and the pipeline version."""
        label = "" if mask is None else label_digest(Path(mask))
        text = f"{self.digest(Path(path), rehash)}|{label}|{self.settings.to_json()}|{PIPELINE_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def save_index(self) -> None:
        if self.index is not None:
            self.index.save()

    def _files(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def record(self, key: str) -> Outcome | None:
        """The stored outcome of an entry, None on a miss (or a record this pipeline did not write)."""
        tensor_file, meta_file = self._files(key)
        try:
            outcome = Outcome.from_json(meta_file.read_text())
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if outcome.error is None and not tensor_file.exists():
            return None
        if outcome.label and not (self.dir / f"{key}.label.npy").exists():
            return None
        return outcome

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self._files(key)[0]).astype(np.float32))

    def label(self, key: str) -> torch.Tensor:
        """The entry's aorta label (1, X, Y, Z) as 0/1 floats (only for an outcome with ``label``)."""
        return torch.from_numpy(np.load(self.dir / f"{key}.label.npy").astype(np.float32))

    def _load(self, path: Path, mask: Path | None) -> tuple[StudyInput, str]:
        """The study's input with its label; a label that cannot be used leaves the study usable without it."""
        if mask is None:
            return load_study_input(path, self.settings), ""
        try:
            return load_study_input(path, self.settings, mask), ""
        except StudyError as err:
            if safe_resolve(err.source) != safe_resolve(mask) or isinstance(err, UnforeseenFailure):
                raise
            return load_study_input(path, self.settings), err.reason

    def prepare(self, path: str | Path, key: str | None = None, mask: Path | None = None) -> tuple[str, Outcome]:
        """Make sure the study's entry exists; returns (key, outcome). Refusals are recorded too."""
        path = safe_resolve(path)
        if key is None:
            try:
                key = self.key(path, mask=mask)
            except StudyPathError as exc:  # a FIFO, a device, a link loop, too many files: nothing opened
                return "", Outcome(error=exc.reason)
            except OSError as exc:  # missing or unreadable files: nothing to cache
                reason = "does not exist" if not path.exists() else f"cannot be read ({exc.strerror or exc})"
                return "", Outcome(error=reason)
        outcome = self.record(key)
        if outcome is not None:
            return key, outcome
        self.decoded += 1
        try:
            loaded, label_error = self._load(path, mask)
        except UnforeseenFailure as err:  # refuse this study now, but do not remember it
            return key, Outcome(error=err.reason, where=_relative(err.source, path))
        except StudyError as err:
            outcome = Outcome(error=err.reason, where=_relative(err.source, path))
        else:
            outcome = Outcome(info=loaded.info, label=loaded.label is not None, label_error=label_error)
            self.dir.mkdir(parents=True, exist_ok=True)
            if loaded.label is not None:
                tmp = self.dir / f"{key}.{os.getpid()}.tmp.label.npy"
                np.save(tmp, loaded.label.numpy().astype(np.uint8))
                os.replace(tmp, self.dir / f"{key}.label.npy")
            tmp = self.dir / f"{key}.{os.getpid()}.tmp.npy"
            np.save(tmp, loaded.image.numpy().astype(np.float16))  # hits and misses return the same values
            os.replace(tmp, self._files(key)[0])
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{key}.{os.getpid()}.tmp.json"
        tmp.write_text(outcome.to_json())
        os.replace(tmp, self._files(key)[1])
        return key, outcome

    def load(self, path: str | Path) -> torch.Tensor:
        """The model input of one study; raises :class:`StudyError` when it is refused."""
        path = safe_resolve(path)
        key, outcome = self.prepare(path)
        self.save_index()
        if outcome.error is not None:
            raise StudyError(path / outcome.where if outcome.where else path, outcome.error)
        return self.tensor(key)


def _relative(source: str | Path, study: Path) -> str:
    """Where inside the study a refusal points (a file name), never an absolute path."""
    try:
        rel = safe_resolve(source).relative_to(study)
    except (ValueError, OSError):
        return ""
    return "" if str(rel) == "." else str(rel)
