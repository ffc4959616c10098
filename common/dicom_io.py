"""Reading one CT study (a folder of DICOM files) into a HU volume with its true geometry."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from common.errors import StudyError

CT_IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
}
MIN_SLICES = 8
MIN_COVERAGE_MM = 60.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units.

    ``hu`` is indexed ``[column, row, slice]`` (i, j, k) and ``affine`` maps (i, j, k, 1) to RAS
    millimetres, as MONAI and NIfTI expect. ``info`` holds acquisition facts only, never identifiers.
    """

    hu: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _read_headers(folder: Path) -> tuple[list[tuple[Path, pydicom.Dataset]], int]:
    """Every readable DICOM dataset under ``folder`` (pixel data read lazily) and the count of others."""
    datasets, not_dicom = [], 0
    for path in _dicom_files(folder):
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, defer_size="1 KB")
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
            not_dicom += 1
            continue
        datasets.append((path, ds))
    return datasets, not_dicom


def _is_image_ct(ds: pydicom.Dataset) -> bool:
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    return (
        str(ds.get("Modality", "")).upper() == "CT"
        and "PixelData" in ds
        and "LOCALIZER" not in image_type
        and "ImagePositionPatient" in ds
    )


def _choose_series(folder: Path, datasets: list[tuple[Path, pydicom.Dataset]]):
    """The CT image series with the most slices; a clear error when there is none."""
    if not datasets:
        raise StudyError(folder, "no DICOM files found")
    series = defaultdict(list)
    for path, ds in datasets:
        if _is_image_ct(ds):
            series[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    if not series:
        modalities = sorted({str(ds.get("Modality", "unknown")) for _, ds in datasets})
        raise StudyError(folder, f"no CT image series (found modality {', '.join(modalities)})")
    return max(series.values(), key=len)


def _float_list(ds: pydicom.Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=float)
    except (KeyError, TypeError, ValueError) as exc:
        raise StudyError(path, f"missing or invalid {keyword}") from exc
    if values.shape != (n,) or not np.all(np.isfinite(values)):
        raise StudyError(path, f"{keyword} must have {n} finite numbers")
    return values


def _geometry(folder: Path, series):
    """Sort slices along the slice normal; return (sorted series, affine in LPS, slice spacing)."""
    path0, ds0 = series[0]
    iop = _float_list(ds0, "ImageOrientationPatient", 6, path0)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise StudyError(path0, "ImageOrientationPatient is not two orthogonal unit vectors")
    for path, ds in series:
        if not np.allclose(_float_list(ds, "ImageOrientationPatient", 6, path), iop, atol=1e-3):
            raise StudyError(folder, "slices of the series have different orientations")
    positions = np.array([_float_list(ds, "ImagePositionPatient", 3, p) for p, ds in series])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    series = [series[i] for i in order]
    depth = depth[order]
    if len(series) < 2:
        raise StudyError(folder, f"only {len(series)} CT slice; a volume needs at least {MIN_SLICES}")
    gaps = np.diff(depth)
    if np.any(gaps < 1e-3):
        raise StudyError(folder, "two or more slices share the same position (duplicated slices)")
    spacing = float(np.median(gaps))
    if np.max(np.abs(gaps - spacing)) > 0.1 * spacing + 0.01:
        raise StudyError(
            folder, f"slice spacing is not uniform ({gaps.min():.2f}-{gaps.max():.2f} mm): missing slices?"
        )
    ps = _float_list(ds0, "PixelSpacing", 2, path0)
    if np.any(ps <= 0):
        raise StudyError(path0, "PixelSpacing must be positive")
    affine = np.eye(4)
    affine[:3, 0] = row_dir * ps[1]  # along a row: column index i
    affine[:3, 1] = col_dir * ps[0]  # down a column: row index j
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[order[0]]
    return series, affine, spacing


def _pixels(series) -> np.ndarray:
    """HU stacked as [column, row, slice]."""
    slices = []
    shape = None
    for path, ds in series:
        try:
            arr = apply_rescale(ds.pixel_array, ds).astype(np.float32)
        except Exception as exc:  # decoders raise many types; all mean the same to a hospital
            raise StudyError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
        if arr.ndim != 2:
            raise StudyError(path, f"expected a single-frame greyscale slice, got shape {arr.shape}")
        if shape is not None and arr.shape != shape:
            raise StudyError(path, f"slice size {arr.shape} differs from the series' {shape}")
        shape = arr.shape
        slices.append(arr.T)  # (rows, cols) -> (cols, rows)
    return np.stack(slices, axis=-1)


def read_dicom_study(folder: str | Path) -> CTVolume:
    """Read the primary CT series of a study folder into HU with its geometry.

    Slices are sorted by position along the slice normal (file order is irrelevant), the slice
    spacing is taken from the positions, and RescaleSlope/Intercept are applied per slice.
    Raises :class:`StudyError` with a one-line reason for anything that is not a usable CT series.
    """
    folder = Path(folder)
    if not folder.exists():
        raise StudyError(folder, "does not exist")
    if not folder.is_dir():
        raise StudyError(folder, "is not a folder of DICOM files")
    datasets, not_dicom = _read_headers(folder)
    if not datasets:
        reason = f"no readable DICOM files ({not_dicom} files are not DICOM)" if not_dicom else "empty folder"
        raise StudyError(folder, reason)
    series = _choose_series(folder, datasets)
    if len(series) < MIN_SLICES:
        raise StudyError(
            folder, f"only {len(series)} CT slice{'s' * (len(series) != 1)}; a volume needs at least {MIN_SLICES}"
        )
    series, affine, spacing = _geometry(folder, series)
    coverage = spacing * (len(series) - 1)
    if coverage < MIN_COVERAGE_MM:
        raise StudyError(folder, f"the series covers {coverage:.0f} mm; the abdomen needs at least {MIN_COVERAGE_MM:.0f}")
    hu = _pixels(series)
    ds0 = series[0][1]
    info = {
        "n_slices": len(series),
        "slice_spacing_mm": spacing,
        "pixel_spacing_mm": [float(v) for v in ds0.PixelSpacing],
        "slice_thickness_mm": float(ds0.get("SliceThickness") or spacing),
        "manufacturer": str(ds0.get("Manufacturer", "")),
        "contrast": bool(str(ds0.get("ContrastBolusAgent", "")).strip()),
        "skipped_files": not_dicom,
    }
    return CTVolume(hu=hu, affine=LPS_TO_RAS @ affine, info=info)
