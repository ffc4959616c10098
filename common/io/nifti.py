"""Reading a study that a site already converted to NIfTI (values in HU, geometry in the header)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io.volume import CTVolume, StudyInfo, finish_volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path) -> CTVolume:
    """A 3-D NIfTI CT volume (scl_slope/inter applied) through the same checks as DICOM."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj, dtype=np.float32) if img.ndim else None
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # nibabel raises many types for broken files; all mean "cannot read"
        raise StudyError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {describe(exc)})") from exc
    if data is None or data.ndim == 4 and data.shape[3] == 1:
        data = None if data is None else data[..., 0]
    if data is None or data.ndim != 3:
        raise StudyError(path, f"a NIfTI CT study must be one 3-D image, got shape {getattr(data, 'shape', ())}")
    if min(data.shape[:2]) < 16:
        raise StudyError(path, f"NIfTI image of shape {data.shape} is too small for an abdominal CT")
    try:
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # a header nibabel loads but cannot describe
        raise StudyError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {describe(exc)})") from exc
    info = StudyInfo(
        format="nifti",
        n_slices=int(data.shape[2]),  # the canonical values are set below, once the axes are known
        slice_spacing_mm=0.0,
        pixel_spacing_mm=(0.0, 0.0),
        slice_thickness_mm=0.0,
        manufacturer="",
        contrast=None,
        transfer_syntax="NIfTI-1" if isinstance(img, nib.Nifti1Image) else type(img).__name__,
        series="NIfTI volume",
        plane=None,
        header_zooms_mm=zooms,
    )
    volume = finish_volume(path, data, affine, info)
    sx, sy, sz = volume.spacing
    volume.info = replace(
        volume.info,
        n_slices=int(volume.hu.shape[2]),
        slice_spacing_mm=sz,
        pixel_spacing_mm=(sy, sx),
        slice_thickness_mm=sz,
    )
    return volume


def write_nifti(volume: CTVolume, path: Path) -> Path:
    """Save a volume as NIfTI (int16 HU), e.g. to convert a DICOM study once at a site."""
    img = nib.Nifti1Image(np.rint(volume.hu).astype(np.int16), volume.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path
