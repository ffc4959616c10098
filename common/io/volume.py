"""A CT volume in Hounsfield units with its true geometry, always in one canonical orientation (RAS), and the
typed facts of the acquisition it came from."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from fedaaa.common.errors import StudyError

AIR_HU = -1024.0
MIN_SLICES = 8
MIN_COVERAGE_MM = 60.0
# Budgets decided from headers, before any pixel is decoded or any voxel allocated.
# 512 x 512 x 2048 voxels: a 512 x 512 x 2000 CT passes. One float32 copy of such a volume is 2 GiB; reading
# and preprocessing hold at most about four (the HU volume, its contiguous copy, the scaled copy, masks), so
# the largest accepted study needs about 8 GiB of memory; a usual 512 x 512 x 400 CT about 1.7 GB.
MAX_VOXELS = 512 * 512 * 2048
MIN_VOXEL_MM = 0.05  # a voxel edge outside 0.05-50 mm is not a CT voxel (a unit or header error)
MAX_VOXEL_MM = 50.0

# Called by the readers with the voxel grid (shape) and its RAS affine once the headers are read, before any
# pixel is decoded: ``load_study`` refuses there a grid that the resampler could not hold.
GridCheck = Callable[[tuple[int, int, int], np.ndarray], None]


@dataclass(frozen=True)
class StudyInfo:
    """Acquisition facts of one study, the same record for DICOM and NIfTI; never an identifier.

    ``pixel_spacing_mm`` is (between rows, between columns) as DICOM orders it; ``shape`` is the canonical
    RAS voxel grid. NIfTI has no manufacturer, contrast header or acquisition plane (``""``, ``None``,
    ``None``) but records its header zooms.
    """

    format: str  # "dicom", "dicom-enhanced" or "nifti"
    n_slices: int
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    manufacturer: str
    contrast: bool | None  # from ContrastBolusAgent/Route; None when the format cannot say
    transfer_syntax: str
    series: str
    plane: str | None  # "axial", "coronal" or "sagittal" for DICOM
    skipped_series: tuple[str, ...] = ()
    skipped_files: int = 0
    warnings: tuple[str, ...] = ()
    shape: tuple[int, int, int] | None = None  # set by finish_volume
    header_zooms_mm: tuple[float, float, float] | None = None  # NIfTI only

    def to_dict(self) -> dict[str, object]:
        """The record as JSON-ready values (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> StudyInfo:
        """The record :meth:`to_dict` gave; a missing, unknown or mistyped field raises (TypeError, ValueError)."""
        if not isinstance(raw, dict) or set(raw) != {f.name for f in fields(cls)}:
            raise TypeError("not a record of study facts of this version")
        info = cls(**raw)
        return replace(
            info,
            pixel_spacing_mm=_floats(info.pixel_spacing_mm, 2),
            skipped_series=tuple(str(s) for s in _sequence(info.skipped_series)),
            warnings=tuple(str(w) for w in _sequence(info.warnings)),
            shape=None if info.shape is None else tuple(int(v) for v in _sized(info.shape, 3)),
            header_zooms_mm=None if info.header_zooms_mm is None else _floats(info.header_zooms_mm, 3),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudyInfo:
        """The record :meth:`to_json` wrote, exactly: nothing missing, nothing unknown."""
        return cls.from_dict(json.loads(text))


def _sequence(values: object) -> list:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"expected a list, got {values!r}")
    return list(values)


def _sized(values: object, n: int) -> list:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise ValueError(f"expected {n} values, got {values!r}")
    return list(values)


def _floats(values: object, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in _sized(values, n))


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units.

    ``hu`` is indexed ``[i, j, k]``: i increases toward the patient's Right, j toward Anterior, k toward
    Superior (axis codes RAS, as nibabel and MONAI name them), and ``affine`` maps (i, j, k, 1) to RAS
    millimetres. ``info`` holds acquisition facts only, never identifiers.
    """

    hu: np.ndarray
    affine: np.ndarray
    info: StudyInfo

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def canonical(hu: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip voxel axes so that they point Right, Anterior, Superior; the affine follows."""
    ornt = io_orientation(affine)
    return apply_orientation(hu, ornt), affine @ inv_ornt_aff(ornt, hu.shape)  # a view: no copy


def canonical_grid(
    shape: tuple[int, ...], affine: np.ndarray
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The canonical (RAS) shape and voxel size of a grid, from its shape and affine only (no voxel data)."""
    ornt = io_orientation(affine)
    sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    out_shape, out_size = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt[:3]):
        t = int(target) if np.isfinite(target) else axis
        out_shape[t], out_size[t] = int(shape[axis]), float(sizes[axis])
    return (out_shape[0], out_shape[1], out_shape[2]), (out_size[0], out_size[1], out_size[2])


def human_bytes(n: float) -> str:
    """``8.6 GB``, ``131 kB``: a byte count for a sentence."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def check_budget(
    source: str | Path, what: str, shape: tuple[int, ...], affine: np.ndarray, bytes_per_voxel: float = 4.0
) -> None:
    """Refuse, from headers alone, a grid over :data:`MAX_VOXELS` voxels or with a voxel edge that is not
    finite or outside :data:`MIN_VOXEL_MM`-:data:`MAX_VOXEL_MM`: one sentence, before any allocation."""
    voxels = float(np.prod([float(n) for n in shape])) if len(shape) else 0.0
    dims = " x ".join(str(int(n)) for n in shape)
    if voxels > MAX_VOXELS:
        raise StudyError(
            source,
            f"{what} declares {dims} voxels ({human_bytes(voxels * bytes_per_voxel)}), over the limit of "
            f"{MAX_VOXELS / 1e6:.0f} million voxels",
        )
    affine = np.asarray(affine, dtype=float)
    sizes = np.linalg.norm(affine[:3, :3], axis=0) if affine.shape == (4, 4) else np.array([np.nan])
    if not np.all(np.isfinite(affine)) or not np.all(np.isfinite(sizes)):
        raise StudyError(source, f"{what} gives a voxel size or position that is not a finite number")
    if np.any(sizes < MIN_VOXEL_MM) or np.any(sizes > MAX_VOXEL_MM):
        fov = " x ".join(f"{float(n) * s:.3g}" for n, s in zip(shape, sizes))
        size = " x ".join(f"{s:.3g}" for s in sizes)
        raise StudyError(
            source,
            f"a voxel size of {size} mm (field of view {fov} mm) is not a CT study: each voxel edge must be "
            f"{MIN_VOXEL_MM}-{MAX_VOXEL_MM:.0f} mm (check the voxel size, PixelSpacing)",
        )


def check_coverage(source: str | Path, slice_spacing_mm: float, n_slices: int) -> None:
    """Refuse a stack too short to hold the abdominal aorta."""
    coverage = slice_spacing_mm * (n_slices - 1)
    if coverage < MIN_COVERAGE_MM:
        raise StudyError(
            source, f"the series covers {coverage:.0f} mm; the abdomen needs at least {MIN_COVERAGE_MM:.0f}"
        )


def finish_volume(source: str | Path, hu: np.ndarray, affine: np.ndarray, info: StudyInfo) -> CTVolume:
    """Validate extent and intensities, then return the canonical :class:`CTVolume`.

    Values below air (padding, outside the reconstruction circle) become air. A volume whose darkest
    percent is brighter than -200 HU has no air or fat at all: its values are not Hounsfield units
    (typically a missing RescaleIntercept), and a measurement on it would be meaningless. The returned
    volume's ``info`` is ``info`` with the canonical ``shape`` and any warning found here.
    """
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise StudyError(source, "the voxel geometry (affine) is degenerate")
    hu, affine = canonical(hu.astype(np.float32, copy=False), affine)
    if hu.shape[2] < MIN_SLICES:
        raise StudyError(source, f"only {hu.shape[2]} axial slices; a volume needs at least {MIN_SLICES}")
    check_coverage(source, float(np.linalg.norm(affine[:3, 2])), hu.shape[2])
    if not np.all(np.isfinite(hu)):
        raise StudyError(source, "the image holds non-finite values")
    np.maximum(hu, AIR_HU, out=hu)
    low = float(np.percentile(hu[::2, ::2, ::2], 1))
    if low > -200:
        raise StudyError(
            source,
            f"values do not look like Hounsfield units (1st percentile {low:.0f} HU, no air or fat): check RescaleIntercept",
        )
    warnings = list(info.warnings)
    body = hu > -500
    edge = body[0].any(axis=0) | body[-1].any(axis=0) | body[:, 0].any(axis=0) | body[:, -1].any(axis=0)
    if edge.mean() > 0.2:
        warnings.append(
            f"the body touches the edge of the field of view on {edge.mean():.0%} of slices "
            "(truncated reconstruction): the measurement may be affected"
        )
    info = replace(info, warnings=tuple(warnings), shape=tuple(int(n) for n in hu.shape))
    return CTVolume(hu=hu, affine=affine, info=info)
