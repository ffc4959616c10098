"""From a study's path to a :class:`CTVolume`: format dispatch above one reader per format.

``read_study`` is the one entry point: a NIfTI file goes to :mod:`.nifti`, a folder or any other file to
:mod:`.dicom`; both build the volume and its typed :class:`StudyInfo` with :func:`.volume.finish_volume`.
Every failure is a one-line :class:`StudyError`.
"""

from __future__ import annotations

from pathlib import Path

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io.dicom import read_dicom
from fedaaa.common.io.nifti import is_nifti, read_nifti, write_nifti
from fedaaa.common.io.volume import CTVolume, StudyInfo

__all__ = ["CTVolume", "StudyError", "StudyInfo", "read_dicom", "read_nifti", "read_study", "write_nifti"]


def read_study(path: str | Path) -> CTVolume:
    """Read a study (DICOM folder, multi-frame DICOM file or NIfTI file) into a canonical HU volume.

    Raises :class:`StudyError` with a one-line reason for anything that is not a usable CT study.
    """
    path = Path(path)
    if not path.exists():
        raise StudyError(path, "does not exist")
    if not (path.is_dir() or path.is_file()):
        raise StudyError(path, "is neither a folder nor a file")
    try:
        return read_nifti(path) if path.is_file() and is_nifti(path) else read_dicom(path)
    except StudyError:
        raise
    except MemoryError as exc:
        raise StudyError(path, "the study is too large to read into memory") from exc
    except Exception as exc:  # a header value pydicom only parses on access, a decoder's odd failure
        raise StudyError(path, f"cannot be read ({type(exc).__name__}: {describe(exc)})") from exc
