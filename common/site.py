"""A hospital's site folder: its manifest, its studies, and their model inputs.

The manifest's optional ``mask`` column names a study's aorta label (a NIfTI file on the study's voxel grid,
1 = aorta to its outer wall), relative to the site folder; it obeys the same path rules as ``path``.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.errors import REASON_LIMIT, ConfigError, describe, printable
from fedaaa.common.ingest import Prepared, Progress, prepare_studies
from fedaaa.common.preprocess import PreprocessSettings

log = logging.getLogger("fedaaa.site")

REQUIRED_COLUMNS = ("study_id", "path", "aaa", "max_diameter_mm")
SPLITS = ("train", "val", "test")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # a manifest of a million studies is about 60 MB
MAX_MANIFEST_ROWS = 200_000
SHOWN = 60  # characters of a manifest value quoted back in an error

# Refusals of a study's path, before any byte of it is read (site_check maps them to "unsafe path" or
# "study not found"; keep the wording in step with site_check.refusal_category).
PATH_MISSING = "study path does not exist"


@dataclass(frozen=True)
class Study:
    study_id: str
    path: Path
    aaa: int
    max_diameter_mm: float  # NaN when the report gave no diameter
    split: str = "train"
    sex: str = ""
    problem: str = ""  # why the manifest's path or mask is refused outright (absolute, "..", control characters)
    mask: Path | None = None  # the aorta label file (manifest column ``mask``); None when the row names none


def _shown(value: str) -> str:
    return repr(printable(value, SHOWN))


def _path_syntax_problem(rel: str, what: str = "study path") -> str:
    """Why a manifest path value (``path``, or ``mask`` with ``what="mask path"``) is refused without looking
    at the disk ("" when it is not)."""
    if "\x00" in rel:
        return f"unsafe path: the {what} holds a NUL character"
    if printable(rel, len(rel) + 1, collapse=False) != rel:
        return f"unsafe path: the {what} holds control characters"
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"unsafe path: the {what} must be relative to the site folder, without '..'"
    if not Path(rel).parts or Path(rel).parts == (".",):
        return f"unsafe path: the {what} names the site folder itself"
    return ""


def _parse_row(manifest: Path, line: int, row: dict, root: Path) -> Study:
    where = f"{manifest} line {line}"
    study_id = (row.get("study_id") or "").strip()
    if not study_id:
        raise ConfigError(f"{where}: empty study_id")
    rel = (row.get("path") or "").strip()
    if not rel:
        raise ConfigError(f"{where}: empty path")
    problem = _path_syntax_problem(rel)
    aaa = (row.get("aaa") or "").strip()
    if aaa not in ("0", "1"):
        raise ConfigError(f"{where}: aaa must be 0 or 1, got {_shown(aaa)}")
    raw_d = (row.get("max_diameter_mm") or "").strip()
    try:
        diameter = float(raw_d) if raw_d else math.nan
    except ValueError:
        raise ConfigError(f"{where}: max_diameter_mm must be a number or empty, got {_shown(raw_d)}") from None
    if raw_d and not 5.0 <= diameter <= 150.0:
        raise ConfigError(f"{where}: max_diameter_mm {_shown(raw_d)} is outside 5-150 mm")
    split = (row.get("split") or "train").strip() or "train"
    if split not in SPLITS:
        raise ConfigError(f"{where}: split must be one of {', '.join(SPLITS)}, got {_shown(split)}")
    path = root if problem else root / rel
    mask_rel = (row.get("mask") or "").strip()
    mask_problem = _path_syntax_problem(mask_rel, "mask path") if mask_rel else ""
    mask = root / mask_rel if mask_rel and not mask_problem else None
    sex = (row.get("sex") or "").strip()
    return Study(study_id, path, int(aaa), diameter, split, sex, problem or mask_problem, mask)


def study_path_problem(path: str | Path, root: str | Path | None = None, *, what: str = "study path") -> str:
    """Why a study path (or, with ``what="mask path"``, a mask path) is refused before any of its bytes is
    read ("" when it may be read).

    Cheap and never blocking: a few ``stat`` calls. The path must exist, lead to a regular file or a
    folder (never a FIFO, device or socket: reading one hangs or never ends), not be a symlink loop and,
    when ``root`` is given, resolve inside ``root`` (a symlink to ``/dev/zero`` or to another patient
    folder outside the site is refused)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return PATH_MISSING if what == "study path" else f"{what} does not exist"
    except ValueError:
        return f"unsafe path: the {what} holds a NUL character"
    except OSError as exc:
        return f"{what} cannot be read ({describe(exc)})"
    try:
        resolved = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return f"unsafe path: the {what} is a broken symlink"
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            return f"unsafe path: the {what} is a symlink loop"
        return f"{what} cannot be read ({describe(exc)})"
    except ValueError:
        return f"unsafe path: the {what} holds a NUL character"
    if root is not None:
        base = Path(os.path.realpath(root))
        if resolved == base or not resolved.is_relative_to(base):
            return f"unsafe path: the {what} leads outside the site folder"
    try:
        mode = os.stat(resolved).st_mode
    except OSError as exc:
        return f"{what} cannot be read ({describe(exc)})"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        return f"unsafe path: the {what} is a {kind}, not a regular file or a folder"
    return ""


def _site_root(root: str | Path) -> Path:
    """The site folder, resolved; a missing one, a file, a FIFO or a symlink loop is one ConfigError."""
    shown = printable(root, 200, collapse=False)
    try:
        resolved = Path(os.path.realpath(root, strict=True))
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{shown}: site folder not found") from None
    except ValueError:
        raise ConfigError(f"{shown}: site folder path holds a NUL character") from None
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            raise ConfigError(f"{shown}: site folder is a symlink loop") from None
        raise ConfigError(f"{shown}: site folder cannot be read ({describe(exc)})") from None
    if not stat.S_ISDIR(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a file" if stat.S_ISREG(mode) else "not a folder"
        raise ConfigError(f"{shown}: site folder is {kind}; give the folder holding manifest.csv")
    return resolved


def _manifest_text(manifest: Path) -> str:
    """The manifest's text: a regular file of at most MAX_MANIFEST_BYTES of UTF-8 (a BOM is allowed)."""
    try:
        mode = os.stat(manifest).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{manifest}: site manifest not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest}: site manifest cannot be read ({describe(exc)})") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{manifest}: site manifest is not a regular file")
    try:
        with open(manifest, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{manifest}: site manifest cannot be read ({describe(exc)})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{manifest}: site manifest is larger than {MAX_MANIFEST_BYTES // 2**20} MB")
    try:
        return data.decode("utf-8-sig", errors="strict")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:offset].count(b"\n") + 1
        raise ConfigError(
            f"{manifest} line {line}: not UTF-8 text (byte {offset}); save the manifest as UTF-8"
        ) from None


def read_manifest(manifest: Path, root: Path) -> list[Study]:
    """The studies a manifest names; any problem of the manifest itself is one ConfigError naming its line.

    A row whose path or mask is unsafe by its text alone (absolute, "..", control characters) is kept with
    its ``problem``: that study is refused, not the site. An empty or absent ``mask`` is ``mask=None``."""
    reader = csv.DictReader(io.StringIO(_manifest_text(manifest), newline=""), strict=False)
    studies: list[Study] = []
    try:
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{manifest}: missing column(s) {', '.join(missing)}")
        for row in reader:
            if len(studies) >= MAX_MANIFEST_ROWS:
                raise ConfigError(f"{manifest}: more than {MAX_MANIFEST_ROWS} studies")
            studies.append(_parse_row(manifest, reader.line_num, row, root))
    except csv.Error as exc:
        raise ConfigError(f"{manifest} line {reader.reader.line_num}: not a valid CSV row ({describe(exc)})") from None
    return studies


class Site:
    """A site folder: ``SITE/manifest.csv`` plus the studies it names."""

    def __init__(self, root: str | Path) -> None:
        self.root = _site_root(root)
        manifest = self.root / "manifest.csv"
        self.studies = read_manifest(manifest, self.root)
        seen: dict[str, int] = {}
        for i, s in enumerate(self.studies):
            if s.study_id in seen:
                raise ConfigError(f"{manifest}: duplicated study_id values ({_shown(s.study_id)} is in two rows)")
            seen[s.study_id] = i

    def split(self, name: str) -> list[Study]:
        return [s for s in self.studies if s.split == name]

    def mask_problem(self, study: Study) -> str:
        """Why ``study``'s mask cannot be used ("" when it can): none named, its row refused, or the file is
        missing, not a regular file, or leads outside the site (a few ``stat`` calls, no byte read)."""
        if study.mask is None:
            return "no mask named"
        if study.problem:
            return study.problem
        problem = study_path_problem(study.mask, self.root, what="mask path")
        if not problem and not os.path.isfile(study.mask):
            problem = "unsafe path: the mask path is a folder, not a regular file"
        return problem

    def masked(self, studies: list[Study] | None = None) -> list[Study]:
        """The studies (of ``studies``, default all) whose aorta mask file can be used.

        A study whose manifest names a mask that is missing or unsafe on disk is left out with a logged
        warning (by study id): it stays usable for classification, only its mask is ignored. A mask path
        unsafe by its text alone already refused that row (``Study.problem``) when the manifest was read."""
        out = []
        for study in self.studies if studies is None else studies:
            problem = self.mask_problem(study)
            if not problem:
                out.append(study)
            elif study.mask is not None and not study.problem:
                log.warning("ignored mask of study %s: %s", printable(study.study_id), printable(problem, REASON_LIMIT))
        return out

    def prepare(
        self,
        studies: list[Study],
        cache: InputCache,
        workers: int | None = 1,
        progress: Progress | None = None,
        *,
        rehash: bool = False,
    ) -> list[Prepared]:
        """Cache entries of ``studies`` (decoded in parallel where missing); refusals logged by study id.
        ``rehash`` hashes every study's bytes even when the cache's content index knows them.

        One answer per study, always: a path that is unsafe (see :func:`study_path_problem`) is refused
        before any byte is read, and an unforeseen failure while preparing the others refuses only the
        study it happened on."""
        total = len(studies)
        results: list[Prepared | None] = [None] * total
        todo: list[int] = []
        for i, study in enumerate(studies):
            problem = study.problem or study_path_problem(study.path, self.root)
            if problem:
                results[i] = Prepared(study.path, "", error=problem)
            else:
                todo.append(i)
        offset = total - len(todo)
        if progress and offset:
            progress(offset, total)
        shifted = (lambda done, _all: progress(offset + done, total)) if progress else None
        paths = [studies[i].path for i in todo]
        usable = {id(s) for s in self.masked([studies[i] for i in todo])}
        masks = [studies[i].mask if id(studies[i]) in usable else None for i in todo]
        try:
            batch = prepare_studies(paths, cache, workers, shifted, rehash=rehash, masks=masks)
        except Exception as exc:  # one study's unforeseen failure must not end the others
            log.warning("preparing studies together failed (%s); preparing them one by one", describe(exc))
            batch = []
            for k, path in enumerate(paths):
                batch.append(_prepare_one(path, cache, rehash, masks[k]))
                if progress:
                    progress(offset + k + 1, total)
        for i, p in zip(todo, batch):
            results[i] = p
        prepared: list[Prepared] = [p for p in results if p is not None]
        for study, p in zip(studies, prepared):
            if p.error:
                log.warning("skipped study %s: %s", printable(study.study_id), printable(p.error, REASON_LIMIT))
            elif p.label_error:
                log.warning(
                    "ignored mask of study %s: %s", printable(study.study_id), printable(p.label_error, REASON_LIMIT)
                )
        return prepared

    def load(
        self,
        split: str,
        settings: PreprocessSettings,
        cache: InputCache | None = None,
        workers: int | None = 1,
        progress: Progress | None = None,
    ) -> LoadedSplit:
        """Model inputs and labels of one split; unusable studies are skipped with a logged reason.

        Every study goes through :func:`~fedaaa.common.preprocess.load_study_input` (via the cache), as in
        ``fedaaa predict`` and ``fedaaa site check``."""
        cache = cache or InputCache(settings)
        studies = self.split(split)
        data = StudySet(spacing_mm=tuple(settings.spacing_mm))
        skipped: dict[str, str] = {}
        for study, p in zip(studies, self.prepare(studies, cache, workers, progress)):
            if p.error:
                skipped[study.study_id] = p.error
                continue
            try:
                image = cache.tensor(p.key)
                label = cache.label(p.key) if p.label else None
            except Exception as exc:  # a damaged cache entry refuses this study only
                skipped[study.study_id] = f"cached input cannot be read ({describe(exc)})"
                continue
            data.add(image, label, study.aaa, study.max_diameter_mm)
        return LoadedSplit(data if len(data) else None, skipped)


def _prepare_one(path: Path, cache: InputCache, rehash: bool, mask: Path | None = None) -> Prepared:
    """One study's entry; any exception at all becomes its refusal."""
    try:
        return prepare_studies([path], cache, 1, None, rehash=rehash, masks=[mask])[0]
    except Exception as exc:
        return Prepared(path, "", error=f"unforeseen failure ({type(exc).__name__}: {describe(exc)})")


@dataclass
class StudySet:
    """A split's usable studies in memory: each image (1, X, Y, Z; Z varies with the scanned range), its
    aorta label or None, the AAA label and the reference maximum diameter (NaN when unknown)."""

    spacing_mm: tuple[float, ...]
    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor | None] = field(default_factory=list)
    aaa: list[int] = field(default_factory=list)
    diameters: list[float] = field(default_factory=list)

    def add(self, image: torch.Tensor, label: torch.Tensor | None, aaa: int, diameter: float) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.aaa.append(int(aaa))
        self.diameters.append(float(diameter))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def masked(self) -> list[int]:
        """Indices of the studies with an aorta label (the ones segmentation training can use)."""
        return [i for i, lab in enumerate(self.labels) if lab is not None]


@dataclass
class LoadedSplit:
    data: StudySet | None  # None when no study was usable
    skipped: dict[str, str]  # study_id -> reason (kept at the site)

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)
