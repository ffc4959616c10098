"""A CT volume in Hounsfield units with its true geometry, always in one canonical orientation (RAS)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from fedaaa.common.errors import StudyError

AIR_HU = -1024.0
MIN_SLICES = 8
MIN_COVERAGE_MM = 60.0


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units.

    ``hu`` is indexed ``[i, j, k]``: i increases toward the patient's Right, j toward Anterior, k toward
    Superior (axis codes RAS, as nibabel and MONAI name them), and ``affine`` maps (i, j, k, 1) to RAS
    millimetres. ``info`` holds acquisition facts only, never identifiers.
    """

    hu: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def canonical(hu: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip voxel axes so that they point Right, Anterior, Superior; the affine follows."""
    ornt = io_orientation(affine)
    return apply_orientation(hu, ornt), affine @ inv_ornt_aff(ornt, hu.shape)  # a view: no copy


def check_coverage(source, slice_spacing_mm: float, n_slices: int) -> None:
    """Refuse a stack too short to hold the abdominal aorta."""
    coverage = slice_spacing_mm * (n_slices - 1)
    if coverage < MIN_COVERAGE_MM:
        raise StudyError(
            source, f"the series covers {coverage:.0f} mm; the abdomen needs at least {MIN_COVERAGE_MM:.0f}"
        )


def finish_volume(source, hu: np.ndarray, affine: np.ndarray, info: dict) -> CTVolume:
    """Validate extent and intensities, then return the canonical :class:`CTVolume`.

    Values below air (padding, outside the reconstruction circle) become air. A volume whose darkest
    percent is brighter than -200 HU has no air or fat at all: its values are not Hounsfield units
    (typically a missing RescaleIntercept), and a measurement on it would be meaningless.
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
    info.setdefault("warnings", [])
    body = hu > -500
    edge = body[0].any(axis=0) | body[-1].any(axis=0) | body[:, 0].any(axis=0) | body[:, -1].any(axis=0)
    if edge.mean() > 0.2:
        info["warnings"].append(
            f"the body touches the edge of the field of view on {edge.mean():.0%} of slices "
            "(truncated reconstruction): the measurement may be affected"
        )
    info["shape"] = list(hu.shape)
    return CTVolume(hu=hu, affine=affine, info=info)
