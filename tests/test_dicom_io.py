"""Reading a study: geometry, HU, file order, and clear refusals."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.dicom_io import read_dicom_study
from common.errors import StudyError
from common.site import Site


@pytest.fixture(scope="module")
def study(tiny_federation) -> Path:
    return Site(tiny_federation[0]).studies[0].path


def _copy(src: Path, dst: Path, rename=None) -> Path:
    dst.mkdir(parents=True)
    files = sorted(src.iterdir())
    for i, f in enumerate(files):
        shutil.copy(f, dst / (rename(i, f) if rename else f.name))
    return dst


def test_volume_shape_spacing_and_orientation(study):
    files = sorted(study.iterdir())
    first = pydicom.dcmread(files[0])
    vol = read_dicom_study(study)
    assert vol.hu.shape == (first.Columns, first.Rows, len(files))
    ps = [float(v) for v in first.PixelSpacing]
    assert vol.spacing == pytest.approx((ps[1], ps[0], float(first.SliceThickness)), abs=1e-4)
    # RAS: columns run toward patient left (-x in RAS), rows toward posterior (-y), slices toward the head (+z).
    assert np.sign(np.diag(vol.affine)[:3]).tolist() == [-1.0, -1.0, 1.0]
    zs = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    assert vol.affine[2, 3] == pytest.approx(zs[0])  # slice 0 is the most caudal one


def test_hu_round_trip_matches_stored_pixels(study):
    vol = read_dicom_study(study)
    files = [pydicom.dcmread(f) for f in study.iterdir()]
    files.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    k = len(files) // 2
    ds = files[k]
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.hu[:, :, k], expected.T)
    assert vol.hu.min() >= -1024 and vol.hu.max() > 150  # air and contrast-filled aorta or bone


def test_file_order_and_names_do_not_matter(study, tmp_path):
    names = list(range(200))
    random.Random(3).shuffle(names)
    shuffled = _copy(study, tmp_path / "shuffled", rename=lambda i, f: f"x{names[i]}")  # no .dcm extension
    a, b = read_dicom_study(study), read_dicom_study(shuffled)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_allclose(a.affine, b.affine)


def test_signed_storage_reads_to_same_hu_scale(tiny_federation):
    signed = read_dicom_study(Site(tiny_federation[1]).studies[0].path)  # signed int16, intercept 0
    assert signed.hu.min() >= -1024 and signed.hu.max() > 300  # bone
    assert -1000 <= np.median(signed.hu[:3, :3, :]) <= -950  # the air corner


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda files: [f.unlink() for f in files[1:]], "only 1 CT slice"),
        (lambda files: files[3].unlink(), "not uniform"),
        (lambda files: [_set(f, Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4") for f in files], "no CT image series (found modality MR)"),
        (lambda files: _set(files[2], ImagePositionPatient=list(pydicom.dcmread(files[1]).ImagePositionPatient)), "same position"),
    ],
    ids=["single-slice", "missing-slice", "mr-series", "duplicated-slice"],
)
def test_unusable_series_are_refused_with_a_reason(study, tmp_path, mutate, message):
    folder = _copy(study, tmp_path / "s")
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    mutate(files)
    with pytest.raises(StudyError) as err:
        read_dicom_study(folder)
    assert message in str(err.value)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def _set(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_empty_folder_and_random_bytes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="empty folder"):
        read_dicom_study(tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "slice.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StudyError, match="no readable DICOM files"):
        read_dicom_study(junk)
    with pytest.raises(StudyError, match="does not exist"):
        read_dicom_study(tmp_path / "nope")
