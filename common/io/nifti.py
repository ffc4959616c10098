"""Reading a study that a site already converted to NIfTI (values in HU, geometry in the header).

Everything that decides the cost of reading is taken from the header first (voxel count, data type, voxel
size, the data's offset) and checked against the budgets of :mod:`.volume` before any voxel is read: a tiny
file declaring a huge image, or a ``.nii.gz`` that inflates to far more than its header declares, is refused
in one sentence without allocating it.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io.volume import (
    CTVolume,
    GridCheck,
    StudyInfo,
    canonical,
    check_budget,
    finish_volume,
    human_bytes,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Bytes a .nii.gz may inflate to beyond the header, extensions and voxel data its header declares.
GZIP_SLACK_BYTES = 1 << 20
_CHUNK = 1 << 20


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _cannot_read(path: Path, exc: BaseException) -> StudyError:
    return StudyError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {describe(exc)})")


def _read_header(path: Path) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header, parsed from at most 540 (inflated) bytes."""
    try:
        if _gzipped(path):
            with gzip.open(path, "rb") as fh:
                raw = fh.read(540)
        else:
            with path.open("rb") as fh:
                raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise _cannot_read(path, exc) from exc
    if len(raw) < 348:
        raise StudyError(path, f"cannot be read as NIfTI (only {len(raw)} bytes, shorter than a NIfTI header)")
    sizes = {struct.unpack("<i", raw[:4])[0], struct.unpack(">i", raw[:4])[0]}
    try:
        if 348 in sizes and raw[344:347] == b"n+1":
            return nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
        if 540 in sizes and len(raw) >= 540 and raw[4:7] == b"n+2":
            return nib.Nifti2Header.from_fileobj(io.BytesIO(raw[:540]), check=False)
    except Exception as exc:  # nibabel raises many types for odd headers
        raise _cannot_read(path, exc) from exc
    raise StudyError(path, "cannot be read as NIfTI (not a single-file NIfTI-1 or NIfTI-2 header)")


def _inflate_gzip(path: Path, offset: int, itemsize: int, cap: int) -> tuple[bytearray, bool]:
    """Inflate a .nii.gz once, in chunks, never beyond ``cap`` + 1 bytes: the inflated bytes (handed to
    nibabel, so the file is not inflated a second time) and whether every voxel after ``offset`` holds the
    same value (a zero-filled bomb, not an image). The caller has checked ``cap`` against the budgets."""
    data, constant, pattern = bytearray(), True, b""
    try:
        with gzip.open(path, "rb") as fh:
            data += fh.read(min(offset, cap + 1))
            step = max(1, _CHUNK // itemsize) * itemsize  # chunks stay aligned on voxels
            while len(data) <= cap and (chunk := fh.read(min(step, cap + 1 - len(data)))):
                data += chunk
                if constant:
                    pattern = pattern or chunk[:itemsize]
                    whole = len(chunk) // itemsize * itemsize
                    constant = chunk[:whole] == pattern * (whole // itemsize)
    except (OSError, EOFError, zlib.error) as exc:
        raise _cannot_read(path, exc) from exc
    return data, constant


def _check_header(path: Path, hdr: nib.Nifti1Header) -> tuple[tuple[int, int, int], np.ndarray, bytearray | None]:
    """Shape (3-D), affine and, for a .nii.gz, its inflated bytes, once every budget that the header
    decides has passed."""
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        affine = np.asarray(hdr.get_best_affine(), dtype=float)
        offset = int(hdr.get_data_offset()) or hdr.sizeof_hdr + 4
    except Exception as exc:  # an unknown data type code, an unparsable affine
        raise _cannot_read(path, exc) from exc
    dims = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(dims) != 3:
        raise StudyError(path, f"a NIfTI CT study must be one 3-D image, got shape {shape}")
    if min(dims[:2]) < 16:
        raise StudyError(path, f"NIfTI image of shape {shape} is too small for an abdominal CT")
    if dtype.itemsize == 0 or dtype.hasobject or dtype.kind not in "biuf":
        raise StudyError(path, f"NIfTI data type {dtype} is not a number per voxel")
    check_budget(path, "the NIfTI header", dims, affine, bytes_per_voxel=dtype.itemsize)
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    inflated = None
    if _gzipped(path):
        inflated, constant = _inflate_gzip(path, offset, dtype.itemsize, expected + GZIP_SLACK_BYTES)
        found = len(inflated)
        if found > expected + GZIP_SLACK_BYTES:
            raise StudyError(
                path,
                f"the compressed file inflates to more than {human_bytes(expected + GZIP_SLACK_BYTES)}, "
                f"beyond the {human_bytes(expected)} its header declares",
            )
        if constant and found >= expected:
            raise StudyError(path, "every voxel of the image holds the same value: it is not a CT scan")
    else:
        found = os.stat(path).st_size
    if found < expected:
        raise StudyError(
            path,
            f"the file holds {human_bytes(found)} but its header declares {' x '.join(map(str, dims))} voxels "
            f"of {dtype.name} ({human_bytes(expected)}): it is truncated or its header is wrong",
        )
    return (dims[0], dims[1], dims[2]), affine, inflated


def read_nifti(path: Path, check_grid: GridCheck | None = None) -> CTVolume:
    """A 3-D NIfTI CT volume (scl_slope/inter applied) through the same checks as DICOM.

    The header is checked first (3-D, voxel budget, voxel size, the bytes it declares present and not
    exceeded after inflation); ``check_grid`` sees the grid before any voxel is read."""
    hdr = _read_header(path)
    shape, affine, inflated = _check_header(path, hdr)
    if check_grid is not None:
        check_grid(shape, affine)
    try:
        if inflated is None:
            img = nib.load(str(path))
        else:  # the bytes already inflated (and checked) above
            image_class = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
            img = image_class.from_bytes(bytes(inflated))
            del inflated
        data = np.asanyarray(img.dataobj, dtype=np.float32) if img.ndim else None
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # nibabel raises many types for broken files; all mean "cannot read"
        raise _cannot_read(path, exc) from exc
    if data is None or data.ndim == 4 and data.shape[3] == 1:
        data = None if data is None else data[..., 0]
    if data is None or data.ndim != 3 or data.shape != shape:
        raise StudyError(path, f"a NIfTI CT study must be one 3-D image, got shape {getattr(data, 'shape', ())}")
    try:
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # a header nibabel loads but cannot describe
        raise _cannot_read(path, exc) from exc
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


def read_label(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """A study's aorta label (NIfTI, nonzero = aorta) on the study's canonical grid (``shape``, ``affine``
    as :func:`~fedaaa.common.io.read_study` returns them), as a float32 0/1 array.

    The header passes the same budgets as a study's before any voxel is read; a label on another grid
    (shape, voxel size, orientation or position differing by more than 0.1 mm) is refused in one sentence."""
    path = Path(path)
    hdr = _read_header(path)
    dims, _, inflated = _check_header(path, hdr)
    try:
        if inflated is None:
            img = nib.load(str(path))
        else:
            image_class = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
            img = image_class.from_bytes(bytes(inflated))
            del inflated
        data = np.asanyarray(img.dataobj, dtype=np.float32).reshape(dims)
        label_affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:
        raise _cannot_read(path, exc) from exc
    if not np.all(np.isfinite(data)) or not np.all(np.isfinite(label_affine)):
        raise StudyError(path, "the label holds non-finite values or geometry")
    data, label_affine = canonical(data, label_affine)
    if tuple(data.shape) != tuple(shape) or not np.allclose(label_affine, affine, atol=0.1):
        raise StudyError(path, f"the label's grid {' x '.join(map(str, data.shape))} does not match its study's")
    return np.ascontiguousarray(data != 0, dtype=np.float32)
