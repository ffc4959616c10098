"""Reading one DICOM CT study into a HU volume with its true geometry, whatever a PACS export looks like.

A study is a folder of DICOM files (any nesting, any names, stray files allowed) or one Enhanced CT
multi-frame file. :func:`read_dicom` picks the primary axial CT series, sorts its slices by position, takes
the spacing from the positions, corrects gantry tilt, interpolates a few missing slices (with a warning)
and returns a :class:`CTVolume` in canonical RAS orientation. Anything it cannot read right is refused with
a one-line :class:`StudyError`. Format dispatch (DICOM or NIfTI) is :func:`fedaaa.common.io.read_study`.
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from scipy.ndimage import shift as nd_shift

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io.volume import (
    AIR_HU,
    MAX_VOXELS,
    MIN_SLICES,
    CTVolume,
    GridCheck,
    StudyInfo,
    check_budget,
    check_coverage,
    finish_volume,
    human_bytes,
)
from fedaaa.common.io.walk import (
    HEAD_BYTES,
    MAX_FILE_BYTES,
    StudyPathError,
    Walk,
    looks_like_dicom,
    open_regular,
    read_head,
    walk_study,
)

__all__ = ["read_dicom"]

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM", "PILOT"}
JPEG_SYNTAXES = {
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
}
LOSSY_SYNTAXES = {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless}  # others: LossyImageCompression
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_MISSING_RUN = 2  # at most this many consecutive missing slices are interpolated...
MAX_MISSING_FRACTION = 0.05  # ...and at most this share of the series (at least one slice)
MAX_TILT_DEG = 30.0
MAX_DEFLATE_RATIO = 64  # a Deflated Explicit VR dataset may inflate to this many times its file size
UNIFORM_TOLERANCE = 0.1  # a gap within 10% of the median spacing is regular


@dataclass
class _Frame:
    """One image plane: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    ds: pydicom.Dataset
    index: int | None  # frame number in a multi-frame file
    iop: np.ndarray  # row direction (3) + column direction (3), LPS
    ipp: np.ndarray  # centre of the first pixel, LPS mm
    pixel_spacing: np.ndarray  # (between rows, between columns) mm
    slope: float
    intercept: float

    @property
    def uid(self) -> str:
        return f"{self.ds.get('SOPInstanceUID', self.path)}#{self.index}"


# --------------------------------------------------------------------------------------- scanning
def _files(folder: Path) -> Walk:
    """The study folder's regular files and what was skipped (:func:`~fedaaa.common.io.walk.walk_study`)."""
    try:
        return walk_study(folder)
    except StudyPathError as exc:
        raise StudyError(folder, exc.reason) from None


def _check_deflated_size(path: Path) -> None:
    """Refuse a Deflated Explicit VR file that would inflate beyond :data:`MAX_DEFLATE_RATIO` times its
    size (pydicom inflates the whole dataset in memory before reading it): the stream is inflated here in
    chunks, keeping nothing, and only when the file meta says the dataset is deflated."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return  # no readable file meta: dcmread words the refusal
    if str(meta.get("TransferSyntaxUID", "")) != uid.DeflatedExplicitVRLittleEndian:
        return
    size = path.stat().st_size
    cap = min(MAX_FILE_BYTES, MAX_DEFLATE_RATIO * size + (1 << 20))
    start = HEAD_BYTES + 12 + int(meta.get("FileMetaInformationGroupLength", 0))  # the group length element is 12 bytes
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with os.fdopen(open_regular(path), "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(1 << 20):
            data = inflater.decompress(chunk, 1 << 22)
            while True:
                inflated += len(data)
                if inflated > cap:
                    raise StudyError(
                        path,
                        f"the deflated DICOM dataset inflates beyond {cap / 1e6:.0f} MB "
                        f"({MAX_DEFLATE_RATIO} times its {size / 1e6:.1f} MB file): refused as a decompression bomb",
                    )
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, 1 << 22)
            if inflater.eof:
                break


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The file's dataset (pixel data left on disk), None when it is not DICOM at all.

    Only the first 132 bytes decide whether the file is parsed: with the preamble and ``DICM`` it is (and
    a file that then fails to parse refuses the study); without them, only a file starting with a DICOM
    element tag (group 0x0002 or 0x0008) is tried, leniently; anything else is a stray, never parsed."""
    try:
        kind = looks_like_dicom(read_head(path))
    except OSError:
        return None  # unreadable or no longer a regular file: counted with the files that are not DICOM
    if kind is None:
        return None
    magic = kind == "magic"
    if magic:
        _check_deflated_size(path)
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB", force=not magic)
        if not magic and "SOPClassUID" not in ds:
            return None  # forced reading of a non-DICOM file gives a meaningless dataset
        ds.get("Modality")  # touch an element so that a header torn mid-way fails here
        return ds
    except Exception as exc:  # pydicom raises many types for torn files
        if not magic and isinstance(
            exc,
            (
                InvalidDicomError,
                EOFError,
                ValueError,
                KeyError,
                TypeError,
                AttributeError,
                OSError,
                OverflowError,
                NotImplementedError,
            ),
        ):
            return None
        raise StudyError(path, f"DICOM file is truncated or corrupt ({describe(exc)})") from exc


def _text(ds: pydicom.Dataset, keyword: str, limit: int = 64) -> str:
    """A header value as printable one-line text (control characters and line breaks collapsed)."""
    try:
        value = ds.get(keyword, "")
        if isinstance(value, pydicom.multival.MultiValue):
            text = "\\".join(str(v) for v in value).upper()
        else:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value if value is not None else "")
    except Exception:
        return ""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]


def _series_key(ds: pydicom.Dataset) -> str:
    return _text(ds, "SeriesInstanceUID") or "(no SeriesInstanceUID)"


def _series_label(ds: pydicom.Dataset, n: int) -> str:
    number = _text(ds, "SeriesNumber") or "?"
    description = _text(ds, "SeriesDescription")
    return f"series {number}{f' ({description})' if description else ''}, {n} image{'s' * (n != 1)}"


def _skip_reason(ds: pydicom.Dataset) -> str | None:
    """Why a file is not an image of a CT image series (None when it is one)."""
    modality = _text(ds, "Modality").upper()
    sop = _text(ds, "SOPClassUID")
    if modality != "CT":
        return f"modality {modality or 'unknown'}"
    if sop.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture"
    if "PixelData" not in ds:
        return "no pixel data"
    if set(_text(ds, "ImageType").upper().split("\\")) & LOCALIZER_TYPES:
        return "localizer"
    if sop and sop not in (CT_STORAGE, ENHANCED_CT_STORAGE):
        return f"not a CT image object (SOP class {sop})"
    return None


# --------------------------------------------------------------------------------------- frames
def _floats(value: object, n: int, path: Path, keyword: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise StudyError(path, f"missing or invalid {keyword}") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise StudyError(path, f"{keyword} must have {n} finite numbers")
    return arr


def _float(value: object, default: float, path: Path, keyword: str) -> float:
    if value is None or value == "":
        return default
    try:
        out = float(value[0] if isinstance(value, (list, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError, IndexError) as exc:
        raise StudyError(path, f"invalid {keyword} {value!r}") from exc
    if not np.isfinite(out):
        raise StudyError(path, f"{keyword} must be a finite number")
    return out


def _group(item_sets: Iterable[pydicom.Dataset | None], keyword: str, attribute: str) -> object:
    """The first value of ``keyword[0].attribute`` in the per-frame, then the shared functional groups."""
    for items in item_sets:
        if items is not None and keyword in items and len(items[keyword].value):
            inner = items[keyword].value[0]
            if attribute in inner:
                return inner[attribute].value
    return None


def _frames_of(path: Path, ds: pydicom.Dataset) -> list[_Frame]:
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StudyError(path, "invalid NumberOfFrames") from exc
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if n_frames != 1:
            raise StudyError(path, f"multi-frame file ({n_frames} frames) without per-frame positions")
        return [
            _Frame(
                path,
                ds,
                None,
                _floats(ds.get("ImageOrientationPatient"), 6, path, "ImageOrientationPatient"),
                _floats(ds.get("ImagePositionPatient"), 3, path, "ImagePositionPatient"),
                _floats(ds.get("PixelSpacing"), 2, path, "PixelSpacing"),
                _float(ds.get("RescaleSlope"), 1.0, path, "RescaleSlope"),
                _float(ds.get("RescaleIntercept"), 0.0, path, "RescaleIntercept"),
            )
        ]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    if len(per_frame) != n_frames:
        raise StudyError(path, f"{len(per_frame)} per-frame descriptions for {n_frames} frames")
    frames = []
    for i, item in enumerate(per_frame):
        sets = (item, shared)
        frames.append(
            _Frame(
                path,
                ds,
                i,
                _floats(
                    _group(sets, "PlaneOrientationSequence", "ImageOrientationPatient"),
                    6,
                    path,
                    "ImageOrientationPatient",
                ),
                _floats(_group(sets, "PlanePositionSequence", "ImagePositionPatient"), 3, path, "ImagePositionPatient"),
                _floats(_group(sets, "PixelMeasuresSequence", "PixelSpacing"), 2, path, "PixelSpacing"),
                _float(
                    _group(sets, "PixelValueTransformationSequence", "RescaleSlope") or ds.get("RescaleSlope"),
                    1.0,
                    path,
                    "RescaleSlope",
                ),
                _float(
                    _group(sets, "PixelValueTransformationSequence", "RescaleIntercept") or ds.get("RescaleIntercept"),
                    0.0,
                    path,
                    "RescaleIntercept",
                ),
            )
        )
    return frames


def _normal(frame: _Frame) -> np.ndarray:
    row, col = frame.iop[:3], frame.iop[3:]
    if not (
        np.isclose(np.linalg.norm(row), 1, atol=1e-2)
        and np.isclose(np.linalg.norm(col), 1, atol=1e-2)
        and abs(row @ col) < 1e-2
    ):
        raise StudyError(frame.path, "ImageOrientationPatient is not two orthogonal unit vectors")
    n = np.cross(row, col)
    return n / np.linalg.norm(n)


def _plane_name(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


# --------------------------------------------------------------------------------------- series
@dataclass
class _Candidate:
    label: str
    frames: list[_Frame]
    plane: str
    errors: list[StudyError]


def _choose_series(source: Path, headers: list[tuple[Path, pydicom.Dataset]]) -> tuple[_Candidate, list[str]]:
    """The primary CT series: axial before other planes, then the most images; and why others lost."""
    groups: dict[tuple[str, str | None], list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in headers:  # a series' localizers or pixel-less objects are set apart from its images
        groups[(_series_key(ds), _skip_reason(ds))].append((path, ds))
    candidates, skipped, found = [], [], []
    for (_, reason), members in groups.items():
        label = _series_label(members[0][1], len(members))
        if reason:
            skipped.append(f"{label}: {reason}")
            found.append(reason)
            continue
        frames, errors = [], []
        for path, ds in members:
            try:
                frames.extend(_frames_of(path, ds))
            except StudyError as err:
                errors.append(err)
        if not frames:
            skipped.append(f"{label}: {errors[0].reason}")
            found.append("CT images without usable geometry")
            continue
        candidates.append(_Candidate(label, frames, _plane_name(_normal(frames[0])), errors))
    if not candidates:
        raise StudyError(source, f"no CT image series (found {', '.join(sorted(set(found)))})")
    candidates.sort(key=lambda c: (c.plane != "axial", -len({tuple(np.round(f.ipp, 2)) for f in c.frames})))
    chosen = candidates[0]
    if chosen.errors:  # a broken file in the series that will be measured: say exactly what is wrong
        raise chosen.errors[0]
    for other in candidates[1:]:
        why = "not axial" if other.plane != "axial" and chosen.plane == "axial" else "fewer slices"
        skipped.append(f"{other.label}: {why} than the chosen {chosen.label}")
    return chosen, skipped


# --------------------------------------------------------------------------------------- geometry
@dataclass
class _Geometry:
    frames: list[_Frame]  # sorted along the slice normal, duplicates removed
    slot: np.ndarray  # index of each frame on the uniform slice grid
    n_slots: int
    spacing: float
    affine_lps: np.ndarray
    shifts: np.ndarray  # in-plane (column, row) pixel shift per frame that undoes gantry tilt
    warnings: list[str]


def _geometry(source: Path, frames: list[_Frame]) -> _Geometry:
    warnings: list[str] = []
    ref = frames[0]
    normal = _normal(ref)
    for f in frames:
        if not np.allclose(f.iop, ref.iop, atol=1e-3):
            raise StudyError(source, "slices of the series have different orientations")
        if not np.allclose(f.pixel_spacing, ref.pixel_spacing, rtol=1e-3):
            raise StudyError(source, "slices of the series have different pixel spacings")
    if np.any(ref.pixel_spacing <= 0):
        raise StudyError(ref.path, "PixelSpacing must be positive")
    depth = np.array([f.ipp @ normal for f in frames])
    order = np.argsort(depth, kind="stable")
    frames, depth = [frames[i] for i in order], depth[order]
    keep, copies, clashes = [0], 0, 0
    for k in range(1, len(frames)):
        if depth[k] - depth[keep[-1]] < 1e-3:
            if frames[k].uid == frames[keep[-1]].uid:
                copies += 1
            else:
                clashes += 1
            continue
        keep.append(k)
    if clashes:
        raise StudyError(
            source,
            f"{clashes} slice{'s' * (clashes > 1)} share the same position as another "
            "(duplicated slices or several acquisitions in one series)",
        )
    if copies:
        warnings.append(f"ignored {copies} duplicate cop{'ies' if copies > 1 else 'y'} of the same slice")
    frames, depth = [frames[k] for k in keep], depth[keep]
    if len(frames) < MIN_SLICES:
        raise StudyError(
            source, f"only {len(frames)} CT slice{'s' * (len(frames) != 1)}; a volume needs at least {MIN_SLICES}"
        )
    positions = np.array([f.ipp for f in frames])
    gaps = np.diff(depth)
    spacing = float(np.median(gaps))
    if spacing < 0.1:
        raise StudyError(source, f"slice spacing of {spacing:.3f} mm is implausible")
    ratio = gaps / spacing
    if np.max(np.abs(ratio - 1)) <= UNIFORM_TOLERANCE:
        slot = np.arange(len(frames))
    else:
        steps = np.rint(ratio)
        missing = int(np.sum(steps - 1))
        if np.any(steps < 1) or np.max(np.abs(ratio - steps)) > UNIFORM_TOLERANCE:
            raise StudyError(
                source,
                f"slice spacing is not uniform ({gaps.min():.2f}-{gaps.max():.2f} mm): "
                "mixed reconstructions or variable spacing",
            )
        if np.max(steps) - 1 > MAX_MISSING_RUN or missing > max(1, int(MAX_MISSING_FRACTION * len(frames))):
            raise StudyError(
                source,
                f"{missing} missing slices (gaps up to {gaps.max():.1f} mm at {spacing:.2f} mm "
                "spacing): too many to interpolate",
            )
        slot = np.concatenate([[0], np.cumsum(steps)]).astype(int)
        warnings.append(f"interpolated {missing} missing slice{'s' * (missing > 1)} (largest gap {gaps.max():.1f} mm)")
    # gantry tilt: slice origins drift in-plane along the stack
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), depth[-1] - depth[0])))
    row, col = ref.iop[:3], ref.iop[3:]
    shifts = np.stack([in_plane @ row / ref.pixel_spacing[1], in_plane @ col / ref.pixel_spacing[0]], axis=1)
    if tilt > 0.05:
        expected = np.outer((depth - depth[0]) / (depth[-1] - depth[0]), in_plane[-1])
        if np.max(np.linalg.norm(in_plane - expected, axis=1)) > 0.5 * float(np.min(ref.pixel_spacing)) + 0.01:
            raise StudyError(source, "slice positions do not lie on a straight line")
        if tilt > MAX_TILT_DEG:
            raise StudyError(
                source,
                f"gantry tilt of {tilt:.1f} degrees is beyond the {MAX_TILT_DEG:.0f} degrees that can be corrected",
            )
        warnings.append(f"gantry tilt of {tilt:.1f} degrees corrected by shifting slices in-plane")
    else:
        shifts[:] = 0.0
    affine = np.eye(4)
    affine[:3, 0] = row * ref.pixel_spacing[1]  # along a row: column index i
    affine[:3, 1] = col * ref.pixel_spacing[0]  # down a column: row index j
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[0]
    return _Geometry(frames, slot, int(slot[-1]) + 1, spacing, affine, shifts, warnings)


# --------------------------------------------------------------------------------------- pixels
def _check_jpeg_frames(ds: pydicom.Dataset, path: Path) -> None:
    """JPEG and JPEG-LS decoders return a torn codestream's garbage without complaint: every frame of
    such a file must end with the end-of-image marker (FFD9; a trailing pad byte is allowed)."""
    n_frames = int(ds.get("NumberOfFrames") or 1)
    for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
        if not frame[-3:].rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise StudyError(path, f"pixel data cannot be decoded (frame {i + 1} is cut short: no end-of-image marker)")


def _decode(path: Path, ds: pydicom.Dataset, index: int | None) -> np.ndarray:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if syntax in JPEG_SYNTAXES:
            _check_jpeg_frames(ds, path)
        return pixel_array(ds, index=index)  # the header read at selection; pixel data loaded from disk now
    except StudyError:
        raise
    except Exception as exc:  # decoders raise many types; all mean the same to a hospital
        try:  # files without a preamble or meta header: decode through the dataset already read
            return ds.pixel_array
        except Exception:
            raise StudyError(path, f"pixel data cannot be decoded ({describe(exc)})") from exc


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    try:
        pad = ds.get("PixelPaddingValue")
        limit = ds.get("PixelPaddingRangeLimit")
        if pad is None or isinstance(pad, (bytes, bytearray)):
            return None
        lo, hi = sorted((int(pad), int(limit if limit is not None and not isinstance(limit, bytes) else pad)))
    except Exception:  # an unreadable padding value: no padding rather than no study
        return None
    return (stored >= lo) & (stored <= hi)


def _pixels(geo: _Geometry) -> np.ndarray:
    """HU as [column, row, slot] (a transposed view); missing slots interpolated, tilt undone."""
    ref = geo.frames[0].ds
    try:
        shape = (int(ref.Rows), int(ref.Columns))
    except Exception as exc:  # absent, or a value of the wrong length
        raise StudyError(geo.frames[0].path, "missing or invalid Rows/Columns") from exc
    if min(shape) < 16 or max(shape) > 4096:
        raise StudyError(geo.frames[0].path, f"image size {shape[0]}x{shape[1]} is not a CT slice")
    if geo.n_slots * shape[0] * shape[1] > MAX_VOXELS:  # (read_dicom checks this first; kept next to np.empty)
        raise StudyError(geo.frames[0].path, f"{geo.n_slots} slices of {shape[0]}x{shape[1]} exceed the voxel limit")
    hu = np.empty((geo.n_slots, shape[0], shape[1]), np.float32)  # filled slice by slice, contiguous
    cache: dict[Path, np.ndarray] = {}
    for f, slot, (si, sj) in zip(geo.frames, geo.slot, geo.shifts):
        if f.index is None:
            stored = _decode(f.path, f.ds, None)
            del f.ds.PixelData  # decoded: keep only the header in memory
        else:  # a multi-frame file: decode once
            if f.path not in cache:
                _check_frames_budget(f.path, f.ds)
                cache[f.path] = _decode(f.path, f.ds, None)
            whole = cache[f.path]
            stored = whole[f.index] if whole.ndim == 3 else whole
        if stored.shape != shape:
            raise StudyError(
                f.path, f"expected a {shape[0]}x{shape[1]} greyscale slice, got pixel data of shape {stored.shape}"
            )
        plane = stored.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)
        pad = _padding_mask(f.ds, stored)
        if pad is not None:
            plane[pad] = AIR_HU
        if si or sj:  # shifts are (column, row) pixels
            plane = nd_shift(plane, (sj, si), order=1, mode="constant", cval=AIR_HU)
        hu[slot] = plane
    present = np.zeros(geo.n_slots, bool)
    present[geo.slot] = True
    for k in np.flatnonzero(~present):  # linear interpolation between the nearest present slices
        lo = geo.slot[geo.slot < k].max()
        hi = geo.slot[geo.slot > k].min()
        w = (k - lo) / (hi - lo)
        hu[k] = (1 - w) * hu[lo] + w * hu[hi]
    return hu.transpose(2, 1, 0)  # [column, row, slot], a view


def _check_frames_budget(path: Path, ds: pydicom.Dataset) -> None:
    """A multi-frame file is decoded whole: refuse, from its header, one whose decoded pixels would exceed
    the memory of a float32 volume of :data:`MAX_VOXELS` voxels."""
    try:
        n = int(ds.get("NumberOfFrames") or 1) * int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
        nbytes = n * max(1, int(ds.get("BitsAllocated") or 16) // 8)
    except Exception as exc:  # a value of the wrong type or length
        raise StudyError(path, "invalid NumberOfFrames, Rows, Columns, SamplesPerPixel or BitsAllocated") from exc
    if nbytes > 4 * MAX_VOXELS:
        raise StudyError(
            path,
            f"the multi-frame header declares {human_bytes(nbytes)} of pixel data, over the "
            f"{human_bytes(4 * MAX_VOXELS)} limit",
        )


def _grid(path: Path, geo: _Geometry) -> tuple[tuple[int, int, int], np.ndarray]:
    """The voxel grid (columns, rows, slices) and its RAS affine, from the headers only."""
    ds = geo.frames[0].ds
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # absent, or a value of the wrong length
        raise StudyError(geo.frames[0].path, "missing or invalid Rows/Columns") from exc
    return (cols, rows, geo.n_slots), LPS_TO_RAS @ geo.affine_lps


# --------------------------------------------------------------------------------------- entry points
def _headers(path: Path) -> tuple[list[tuple[Path, pydicom.Dataset]], int, list[str]]:
    """The DICOM headers of the study, the number of files set aside and the warnings saying why."""
    if path.is_file():
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise StudyError(
                path, f"the file is {human_bytes(size)}, over the {MAX_FILE_BYTES >> 30} GiB limit for one DICOM file"
            )
        ds = _read_header(path)
        if ds is None:
            raise StudyError(path, "is neither a DICOM file nor a NIfTI (.nii, .nii.gz) file")
        return [(path, ds)], 0, []
    walk = _files(path)
    headers, not_dicom = [], 0
    for file in walk.files:
        if file.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(file)
        if ds is None:
            not_dicom += 1
        else:
            headers.append((file, ds))
    warnings = walk.warnings()
    if not headers:
        found = ([f"{not_dicom} file{'s are' if not_dicom != 1 else ' is'} not DICOM"] if not_dicom else []) + warnings
        if not found:
            raise StudyError(path, "empty folder")
        raise StudyError(path, f"no readable DICOM files ({'; '.join(found)})")
    if not_dicom:
        warnings.insert(0, f"ignored {not_dicom} non-DICOM file{'s' * (not_dicom > 1)}")
    return headers, not_dicom + walk.n_skipped, warnings


def read_dicom(path: Path, check_grid: GridCheck | None = None) -> CTVolume:
    """The primary CT series of a study folder (or one multi-frame file) in HU, canonical RAS.

    Every budget is decided from the headers before any pixel is decoded: the voxel count
    (:data:`~fedaaa.common.io.volume.MAX_VOXELS`), the voxel size, and ``check_grid`` (the caller's own
    check of the grid, e.g. the resampled size). Raises :class:`StudyError`; an unforeseen library failure
    may escape (:func:`~fedaaa.common.io.read_study` words it)."""
    headers, skipped_files, file_warnings = _headers(path)
    chosen, skipped = _choose_series(path, headers)
    geo = _geometry(path, chosen.frames)
    check_coverage(path, geo.spacing, geo.n_slots)  # before decoding anything
    shape, affine = _grid(path, geo)
    check_budget(path, "the series", shape, affine)
    if check_grid is not None:
        check_grid(shape, affine)
    hu = _pixels(geo)
    first = geo.frames[0]
    ds0 = first.ds
    warnings = list(geo.warnings)
    if chosen.plane != "axial":
        warnings.append(f"no axial series: the {chosen.plane} series was reoriented to axial")
    warnings.extend(file_warnings)
    shared = (ds0.get("SharedFunctionalGroupsSequence") or [None])[0]
    raw_thickness = (
        ds0.get("SliceThickness")
        if first.index is None
        else _group((shared,), "PixelMeasuresSequence", "SliceThickness")
    )
    thickness = _float(raw_thickness, geo.spacing, first.path, "SliceThickness")
    syntax = getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", None)
    if syntax in LOSSY_SYNTAXES or _text(ds0, "LossyImageCompression") == "01":
        warnings.append("pixels were stored with lossy compression: small structures may be altered")
    info = StudyInfo(
        format="dicom-enhanced" if first.index is not None else "dicom",
        n_slices=len(geo.frames),
        slice_spacing_mm=round(geo.spacing, 4),
        pixel_spacing_mm=(float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        slice_thickness_mm=thickness,
        manufacturer=_text(ds0, "Manufacturer"),
        contrast=bool(_text(ds0, "ContrastBolusAgent") or _text(ds0, "ContrastBolusRoute")),
        transfer_syntax=syntax.name if syntax else "unknown",
        series=chosen.label,
        plane=chosen.plane,
        skipped_series=tuple(skipped),
        skipped_files=skipped_files,
        warnings=tuple(warnings),
    )
    return finish_volume(path, hu, LPS_TO_RAS @ geo.affine_lps, info)
