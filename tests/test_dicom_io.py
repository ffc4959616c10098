"""Reading a study: geometry, HU, file order, and clear refusals."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fedaaa.common.errors import StudyError
from fedaaa.common.io import read_study, write_nifti
from fedaaa.common.site import Site


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
    vol = read_study(study)
    assert vol.hu.shape == (first.Columns, first.Rows, len(files))
    ps = [float(v) for v in first.PixelSpacing]
    assert vol.spacing == pytest.approx((ps[1], ps[0], float(first.SliceThickness)), abs=1e-4)
    # canonical RAS whatever the file's orientation: i toward the right, j anterior, k toward the head
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert np.sign(np.diag(vol.affine)[:3]).tolist() == [1.0, 1.0, 1.0]
    zs = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    assert vol.affine[2, 3] == pytest.approx(zs[0])  # slice 0 is the most caudal one


def test_hu_round_trip_matches_stored_pixels(study):
    vol = read_study(study)
    files = [pydicom.dcmread(f) for f in study.iterdir()]
    files.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    k = len(files) // 2
    ds = files[k]
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # stored rows run toward posterior and columns toward the left: both flip in RAS
    np.testing.assert_array_equal(vol.hu[:, :, k], expected.T[::-1, ::-1])
    assert vol.hu.min() >= -1024 and vol.hu.max() > 150  # air and contrast-filled aorta or bone


def test_file_order_and_names_do_not_matter(study, tmp_path):
    names = list(range(200))
    random.Random(3).shuffle(names)
    shuffled = _copy(study, tmp_path / "shuffled", rename=lambda i, f: f"x{names[i]}")  # no .dcm extension
    a, b = read_study(study), read_study(shuffled)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_allclose(a.affine, b.affine)


def test_signed_storage_reads_to_same_hu_scale(tiny_federation):
    signed = read_study(Site(tiny_federation[1]).studies[0].path)  # signed int16, intercept 0
    assert signed.hu.min() >= -1024 and signed.hu.max() > 300  # bone
    assert -1010 <= np.median(signed.hu[:3, :3, :]) <= -990  # the air corner


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda files: [f.unlink() for f in files[1:]], "only 1 CT slice"),
        (lambda files: [f.unlink() for f in files[3:7]], "4 missing slices"),
        (
            lambda files: [_set(f, Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4") for f in files],
            "no CT image series (found modality MR)",
        ),
        (
            lambda files: _set(files[2], ImagePositionPatient=list(pydicom.dcmread(files[1]).ImagePositionPatient)),
            "same position",
        ),
    ],
    ids=["single-slice", "missing-slices", "mr-series", "duplicated-slice"],
)
def test_unusable_series_are_refused_with_a_reason(study, tmp_path, mutate, message):
    folder = _copy(study, tmp_path / "s")
    files = sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )
    mutate(files)
    with pytest.raises(StudyError) as err:
        read_study(folder)
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
        read_study(tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "slice.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StudyError, match="no readable DICOM files"):
        read_study(junk)
    with pytest.raises(StudyError, match="does not exist"):
        read_study(tmp_path / "nope")


def _sorted_files(folder: Path) -> list[Path]:
    return sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )


def test_one_missing_slice_is_interpolated_with_a_warning(study, tmp_path):
    folder = _copy(study, tmp_path / "s")
    files = _sorted_files(folder)
    files[5].unlink()
    full, gap = read_study(study), read_study(folder)
    assert gap.hu.shape == full.hu.shape and gap.spacing == pytest.approx(full.spacing)
    assert any("interpolated 1 missing slice" in w for w in gap.info.warnings)
    np.testing.assert_array_equal(gap.hu[:, :, :5], full.hu[:, :, :5])
    np.testing.assert_allclose(gap.hu[:, :, 5], (full.hu[:, :, 4] + full.hu[:, :, 6]) / 2, atol=1e-3)


def test_gantry_tilt_is_corrected(study, tmp_path):
    """Slices whose origins drift one pixel per slice along x (a tilted gantry) read back unsheared."""
    folder = _copy(study, tmp_path / "tilted")
    for k, f in enumerate(_sorted_files(folder)):
        ds = pydicom.dcmread(f)
        ps = float(ds.PixelSpacing[1])
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + k * ps, y, 2 * z]  # 2x spacing keeps the tilt below 30 degrees
        ds.PixelData = np.roll(ds.pixel_array, -k, axis=1).tobytes()  # same anatomy, shifted origin
        ds.save_as(f)
    straight, tilted = read_study(study), read_study(folder)
    assert any("gantry tilt of" in w for w in tilted.info.warnings)
    n = tilted.hu.shape[2]
    inner = slice(n, -n)  # columns that did not wrap around in np.roll
    np.testing.assert_allclose(tilted.hu[inner], straight.hu[inner], atol=1e-3)
    assert tilted.spacing[2] == pytest.approx(2 * straight.spacing[2])


def test_nifti_study_reads_like_the_dicom_it_came_from(study, tmp_path):
    vol = read_study(study)
    nii = write_nifti(vol, tmp_path / "study.nii.gz")
    again = read_study(nii)
    assert again.info.format == "nifti"
    np.testing.assert_array_equal(again.hu, np.rint(vol.hu))
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-4)


def test_broken_nifti_is_refused(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(StudyError, match="cannot be read as NIfTI"):
        read_study(bad)
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), str(flat))
    with pytest.raises(StudyError, match="3-D"):
        read_study(flat)


def test_a_broken_file_refuses_the_measured_series_but_not_a_side_series(study, tmp_path):
    folder = _copy(study, tmp_path / "side")
    files = _sorted_files(folder)
    for i, f in enumerate(files[:3]):  # a small second series whose positions were stripped
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber = "1.2.3.4", f"1.2.3.4.{i}", 7
        del ds.ImagePositionPatient
        ds.save_as(folder / f"side{i}")
    vol = read_study(folder)
    assert any("series 7" in s and "ImagePositionPatient" in s for s in vol.info.skipped_series)
    ds = pydicom.dcmread(files[4])
    del ds.ImagePositionPatient
    ds.save_as(files[4])
    with pytest.raises(StudyError, match="missing or invalid ImagePositionPatient") as err:
        read_study(folder)
    assert files[4].name in str(err.value)
