"""From a study's path to a :class:`CTVolume`: format dispatch above one reader per format.

``read_study`` is the one entry point: a NIfTI file goes to :mod:`.nifti`, a folder or any other file to
:mod:`.dicom`; both build the volume and its typed :class:`StudyInfo` with :func:`.volume.finish_volume`.
Every failure is a one-line :class:`StudyError`.
"""

from __future__ import annotations

import stat
from pathlib import Path

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io.dicom import read_dicom
from fedaaa.common.io.nifti import is_nifti, read_nifti, write_nifti
from fedaaa.common.io.volume import MAX_VOXELS, CTVolume, GridCheck, StudyInfo
from fedaaa.common.io.walk import StudyPathError, check_study_path

__all__ = [
    "MAX_VOXELS",
    "CTVolume",
    "GridCheck",
    "StudyError",
    "StudyInfo",
    "read_dicom",
    "read_nifti",
    "read_study",
    "write_nifti",
]


def read_study(path: str | Path, check_grid: GridCheck | None = None) -> CTVolume:
    """Read a study (DICOM folder, multi-frame DICOM file or NIfTI file) into a canonical HU volume.

    What the path is (a folder or a regular file, not a FIFO, a device or a looping link) is decided
    before anything is opened; ``check_grid(shape, affine)`` is called with the study's voxel grid once
    the headers are read, before any pixel is decoded. Raises :class:`StudyError` with a one-line reason
    for anything that is not a usable CT study.
    """
    path = Path(path)
    try:
        st = check_study_path(path)
    except StudyPathError as exc:
        raise StudyError(path, exc.reason) from None
    is_file = stat.S_ISREG(st.st_mode)
    try:
        return read_nifti(path, check_grid) if is_file and is_nifti(path) else read_dicom(path, check_grid)
    except StudyError:
        raise
    except MemoryError as exc:
        raise StudyError(path, "the study is too large to read into memory") from exc
    except Exception as exc:  # a header value pydicom only parses on access, a decoder's odd failure
        raise StudyError(path, f"cannot be read ({type(exc).__name__}: {describe(exc)})") from exc
