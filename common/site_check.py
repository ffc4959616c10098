"""`fedaaa site check`: a site's data-quality report, computed entirely at the site.

The report has two parts. ``summary`` holds counts and ranges only (no study ids, paths, UIDs or
per-patient values): it is what a coordinator may later be shown. ``studies`` lists each study with its
status and reason, for the hospital's own eyes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedaaa.common.cache import InputCache
from fedaaa.common.clinical import CATEGORIES, diameter_category
from fedaaa.common.errors import REASON_LIMIT, printable
from fedaaa.common.ingest import Progress
from fedaaa.common.site import SPLITS, Site

ENTRY_LIMIT = 120  # a series label, skipped series or warning in the per-study part

# The shareable summary never holds text taken from a study: a refusal or a warning is counted under
# one of these fixed categories, chosen by matching its wording (first match wins), else "other".
# Header values quoted in a reason ('...' or "...") are removed before matching.
REFUSAL_CATEGORIES: tuple[tuple[str, str], ...] = (
    (
        "unsafe path",
        r"unsafe path|symlink|symbolic link|outside the site|must be relative|not a regular file|fifo|named pipe"
        r"|socket|device file|character device|block device|path is too long|neither a folder nor a file",
    ),
    ("study not found", r"does not exist|not found|no such file"),
    ("unreadable file", r"cannot be read \((permission|errno|is a directory|input/output)|permission denied"),
    (
        "too large",
        r"too large|in memory|larger than|over the .*limit|exceed|more than \d+ entries|inflates beyond"
        r"|decompression bomb",
    ),
    ("implausible geometry", r"field of view|is not a ct slice|implausible|degenerate|too small for"),
    ("empty folder", r"empty folder"),
    ("not DICOM", r"not dicom|neither a dicom|neither a folder nor a file|no readable dicom"),
    ("not CT", r"no ct image series|not a ct|modality"),
    ("too few slices", r"only \d+ (ct |axial )?slices?"),
    ("too short coverage", r"covers \d+ mm|coverage"),
    ("duplicated positions", r"same position"),
    ("missing slices", r"missing slices"),
    ("irregular spacing", r"not uniform|straight line|slice spacing is"),
    ("gantry tilt too large", r"gantry tilt"),
    ("inconsistent series", r"different (orientations|pixel spacings|sizes)|orthogonal"),
    ("torn compressed data", r"cut short|end-of-image|torn"),
    ("undecodable pixels", r"pixel data|greyscale slice|cannot be decoded"),
    ("corrupt file", r"truncated or corrupt|corrupt"),
    ("not HU", r"hounsfield"),
    ("invalid pixel values", r"non-finite"),
    ("invalid NIfTI", r"nifti"),
    ("invalid header value", r"missing or invalid|invalid|must be|must have|frames|rows/columns"),
    ("preprocessing failure", r"preprocess"),
    ("unforeseen failure", r"unforeseen"),
    ("unreadable file", r"cannot be read|unreadable|permission"),
)
WARNING_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("missing slices interpolated", r"interpolat"),
    ("duplicate copies ignored", r"duplicate cop"),
    ("gantry tilt corrected", r"gantry tilt"),
    ("non-axial series reoriented", r"reoriented|no axial series"),
    ("non-DICOM files ignored", r"non-dicom"),
    ("files skipped", r"skipp|ignored .*files?|symlink|special file"),
    ("lossy compression", r"lossy"),
    ("truncated field of view", r"edge of the field of view|truncated reconstruction"),
    ("coarse slices", r"coarse"),
)
OTHER = "other"
TORN = "torn compressed data"
UNKNOWN = "unknown"

# Manufacturer header -> vendor name, case-insensitive. A real vendor is recognised by a word of its name
# anywhere in the header; anything else is "other" and an empty header "unknown": the header's own text
# never reaches the summary. The fictional vendors of ``fedaaa synth`` (``simulations``: "SYNTH" and the
# names in ``synth._VENDORS``) are listed too, matched only exactly, so synthetic federations keep
# telling their scanners apart; they are fixed strings of this program, not header text.
VENDORS: tuple[tuple[str, str], ...] = (
    ("GE", r"\bge\b|general electric|\bgems\b"),
    ("Siemens", r"siemens"),
    ("Philips", r"philips"),
    ("Canon/Toshiba", r"canon|toshiba"),
    ("Hitachi", r"hitachi"),
    ("Fujifilm", r"fujifilm|\bfuji\b"),
    ("United Imaging", r"united imaging|\buih\b|\bucs\b"),
    ("Neusoft", r"neusoft"),
    ("NeuroLogica/Samsung", r"neurologica|samsung"),
    ("Planmed", r"planmed"),
    ("Carestream", r"carestream"),
    ("Shimadzu", r"shimadzu"),
    ("Minfound", r"minfound"),
    ("Sinovision", r"sinovision"),
    ("Analogic", r"analogic"),
    ("Imatron", r"imatron"),
    ("Elscint", r"elscint"),
    ("Picker/Marconi", r"picker|marconi"),
)
SYNTHETIC_VENDORS = (
    "SYNTH",
    "Acme Medical",
    "Helix Imaging",
    "Orbis CT",
    "Nova Systems",
    "Vertex Health",
    "Lumen Scan",
)
FORMATS = ("dicom", "dicom-enhanced", "nifti")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _classify(text: str, table: tuple[tuple[str, str], ...]) -> str:
    """The first category whose pattern matches the sentence without its details in brackets (which may
    quote a library or a skipped file), then the whole sentence; torn data is told by its details."""
    plain = _QUOTED.sub("", printable(text, 400)).lower()
    main = plain.split(" (")[0]
    for name, pattern in table:
        if re.search(pattern, plain if name == TORN else main):
            return name
    for name, pattern in table:
        if re.search(pattern, plain):
            return name
    return OTHER


def refusal_category(reason: str) -> str:
    """The fixed category of a refusal reason (never any of its text): see ``REFUSAL_CATEGORIES``."""
    return _classify(reason, REFUSAL_CATEGORIES)


def warning_category(warning: str) -> str:
    """The fixed category of a reading warning (never any of its text): see ``WARNING_CATEGORIES``."""
    return _classify(warning, WARNING_CATEGORIES)


def vendor(manufacturer: str | None) -> str:
    """A Manufacturer header as a known vendor name, "other" or "unknown" (empty)."""
    text = " ".join(printable(manufacturer or "", 200).split())
    if not text:
        return UNKNOWN
    for name in SYNTHETIC_VENDORS:
        if text.casefold() == name.casefold():
            return name
    low = text.lower()
    for name, pattern in VENDORS:
        if re.search(pattern, low):
            return name
    return OTHER


@lru_cache(maxsize=1)
def _transfer_syntax_names() -> frozenset[str]:
    from pydicom.uid import UID, AllTransferSyntaxes

    return frozenset(UID(uid).name for uid in AllTransferSyntaxes) | {"NIfTI-1", "Nifti2Image"}


def transfer_syntax_name(name: str | None) -> str:
    """A transfer syntax as its standard name (DICOM's registry, NIfTI-1/2), else "other" or "unknown"."""
    if not name or name == UNKNOWN:
        return UNKNOWN
    return name if name in _transfer_syntax_names() else OTHER


def _range(values: list[float | None]) -> dict[str, float] | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {
        "n": len(values),
        "min": round(float(q[0]), 2),
        "p25": round(float(q[1]), 2),
        "median": round(float(q[2]), 2),
        "p75": round(float(q[3]), 2),
        "max": round(float(q[4]), 2),
    }


def check_site(
    site: Site | str | Path, cache: InputCache, workers: int | None = None, progress: Progress | None = None
) -> dict[str, object]:
    """Validate the manifest (raises ConfigError) and every study; return ``{"summary", "studies"}``.

    Every study's bytes are hashed (the cache's content index is refreshed, never trusted, here), so a
    change that kept size and times is still seen; studies load as in training and ``fedaaa predict``."""
    site = site if isinstance(site, Site) else Site(site)
    prepared = site.prepare(site.studies, cache, workers, progress, rehash=True)
    studies: list[dict[str, object]] = []
    usable = []
    for study, p in zip(site.studies, prepared):
        entry: dict[str, object] = {
            "study_id": study.study_id,
            "split": study.split,
            "status": "refused" if p.error else "usable",
        }
        if p.error or p.info is None:
            error = p.error or "no study facts"
            where = printable(p.where, 120, collapse=False)
            entry["reason"] = printable(f"{where}: {error}" if where else error, REASON_LIMIT + 130)
        else:
            entry["series"] = printable(p.info.series, ENTRY_LIMIT)
            entry["skipped_series"] = [printable(s, ENTRY_LIMIT) for s in p.info.skipped_series]
            entry["warnings"] = [printable(w, ENTRY_LIMIT) for w in p.info.warnings]
            usable.append((study, p.info))
        studies.append(entry)
    refusals = Counter(refusal_category(p.error or "") for p in prepared if p.error or p.info is None)
    warnings = Counter(warning_category(w) for _, info in usable for w in info.warnings)
    infos = [info for _, info in usable]
    diameters = [s.max_diameter_mm for s, _ in usable if math.isfinite(s.max_diameter_mm)]
    categories = Counter(diameter_category(d)[0] for d in diameters)
    n_aaa = sum(s.aaa for s, _ in usable)
    contrast = Counter({True: "contrast", False: "no contrast"}.get(i.contrast, UNKNOWN) for i in infos)
    summary = {
        "studies": len(site.studies),
        "usable": len(usable),
        "refused": len(site.studies) - len(usable),
        "splits": {
            name: {"studies": len(site.split(name)), "usable": sum(1 for s, _ in usable if s.split == name)}
            for name in SPLITS
        },
        "refusal_reasons": dict(refusals.most_common()),
        "warnings": dict(warnings.most_common()),
        "labels": {
            "aaa": n_aaa,
            "no_aaa": len(usable) - n_aaa,
            "prevalence": round(n_aaa / len(usable), 3) if usable else None,
        },
        "diameter_mm": _range(diameters),
        "diameter_categories": {c: categories[c] for _, c, _ in CATEGORIES if categories[c]},
        "diameter_missing": len(usable) - len(diameters),
        "slice_spacing_mm": _range([i.slice_spacing_mm for i in infos]),
        "slice_thickness_mm": _range([i.slice_thickness_mm for i in infos]),
        "pixel_spacing_mm": _range([min(i.pixel_spacing_mm) for i in infos]),
        "slices": _range([i.n_slices for i in infos]),
        "manufacturers": dict(Counter(vendor(i.manufacturer) for i in infos).most_common()),
        "contrast_header": dict(contrast),
        "formats": dict(Counter(i.format if i.format in FORMATS else OTHER for i in infos)),
        "transfer_syntaxes": dict(Counter(transfer_syntax_name(i.transfer_syntax) for i in infos).most_common()),
        "extra_series_skipped": sum(len(i.skipped_series) for i in infos),
    }
    return {"summary": summary, "studies": studies}
