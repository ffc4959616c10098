"""Reading real DICOM files: the CT, MR and RT files shipped with pydicom and the pydicom-data wheel.

Real single slices, short real series and non-CT objects must be refused with the right reason; real
compressed pixel data (JPEG 2000, JPEG Lossless, JPEG-LS, RLE), copied into valid 10-slice series with its
original transfer syntax, must decode to exactly the values pydicom itself gives.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import data_store  # pydicom-data: part of the test extra, so a missing wheel fails loudly
import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_rescale
from pydicom.uid import CTImageStorage, generate_uid

from fedaaa.common.errors import StudyError
from fedaaa.common.io import CTVolume, read_study

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DATA_STORE = Path(data_store.__file__).parent / "data"
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"
AIR = -1024.0


def real(name: str) -> Path:
    """A file from pydicom's own test files or from the pydicom-data wheel."""
    for root in (TEST_FILES, DATA_STORE):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{name} is in neither {TEST_FILES} nor {DATA_STORE}")


# Real single CT slices, one per transfer syntax / encoding quirk.
CT_SLICES = [
    "CT_small.dcm",  # Explicit VR Little Endian, 128x128, signed
    "693_UNCR.dcm",  # Explicit VR Little Endian, 512x512
    "693_UNCI.dcm",  # Explicit VR Little Endian, 512x512 (source of the lossy J2K)
    "693_J2KR.dcm",  # JPEG 2000 lossless
    "693_J2KI.dcm",  # JPEG 2000 lossy
    "J2K_pixelrep_mismatch.dcm",  # JPEG 2000 lossless, codestream signedness differs from the header
    "bad_sequence.dcm",  # JPEG Lossless SV1, unsigned 12-bit
    "explicit_VR-UN.dcm",  # JPEG 2000 lossless, IOP with the column axis toward anterior
]


def refused(path: Path) -> StudyError:
    """The StudyError ``read_study(path)`` raises; asserts the one-line form of the contract."""
    with pytest.raises(StudyError) as info:
        read_study(path)
    err = info.value
    assert type(err) is StudyError
    assert str(err) == f"{err.source}: {err.reason}"
    assert "\n" not in str(err) and err.reason.strip()
    return err


def stage(tmp_path: Path, *files: Path, name: str = "study") -> Path:
    """Copy real files into a fresh study folder (names without .dcm, one level of nesting)."""
    folder = tmp_path / name
    (folder / "DICOM").mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / "DICOM" / f"IM{i:05d}")
    return folder


def oriented(hu_cols_rows_slices: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the reader must return for a stack [col, row, slice] with an LPS affine: canonical RAS."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    ornt = io_orientation(affine)
    return apply_orientation(hu_cols_rows_slices, ornt), affine @ inv_ornt_aff(ornt, hu_cols_rows_slices.shape)


def expected_hu(ds: pydicom.Dataset, frame: int | None = None) -> np.ndarray:
    """pydicom's own decode and rescale of one plane, with values below air clipped to air."""
    arr = ds.pixel_array if frame is None else ds.pixel_array[frame]
    hu = (
        apply_rescale(arr, ds)
        if frame is None
        else arr * 1.0
        + float(ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept)
    )
    return np.maximum(np.asarray(hu, dtype=np.float64), AIR)


def ct_like(ds: pydicom.Dataset, intercept: float | None = None) -> None:
    """Retag a non-CT single-frame image as an axial CT slice (pixel data and transfer syntax untouched)."""
    ds.Modality = "CT"
    ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0 if intercept is None else intercept
    ds.RescaleType = "HU"
    ds.setdefault("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    ds.setdefault("ImagePositionPatient", [0, 0, 0])
    ds.setdefault("PixelSpacing", [0.5, 0.5])


def make_series(
    src: Path, folder: Path, n: int = 10, spacing: float = 7.0, edit=None, step: np.ndarray | None = None, seed: int = 0
) -> tuple[Path, np.ndarray]:
    """``n`` copies of one real slice, ``spacing`` mm apart along its slice normal (or along ``step``).

    Every copy keeps the original PixelData and transfer syntax; it gets its own SOPInstanceUID, a common
    new SeriesInstanceUID and its own ImagePositionPatient. Files are named in shuffled order, without
    extension. Returns the folder and the LPS affine the reader must find (slice 0 = first position).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    names = np.random.default_rng(seed).permutation(n)
    affine = None
    for k in range(n):
        ds = pydicom.dcmread(src)
        if edit is not None:
            edit(ds)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        ipp0 = np.array([float(v) for v in ds.ImagePositionPatient])
        delta = (normal * spacing) if step is None else np.asarray(step, float)
        ipp = ipp0 + k * delta
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        if "SliceLocation" in ds:
            del ds.SliceLocation
        ds.save_as(folder / f"img{names[k]:03d}", enforce_file_format=False)
        if k == 0:
            ps = [float(v) for v in ds.PixelSpacing]
            affine = np.eye(4)
            affine[:3, 0] = iop[:3] * ps[1]
            affine[:3, 1] = iop[3:] * ps[0]
            affine[:3, 2] = delta
            affine[:3, 3] = [float(f"{v:.4f}") for v in ipp0]
    return folder, affine


def check_volume(vol: CTVolume, n: int) -> None:
    assert isinstance(vol, CTVolume)
    assert vol.hu.dtype == np.float32 and vol.hu.ndim == 3 and vol.hu.shape[2] == n
    assert np.all(np.isfinite(vol.hu)) and vol.hu.min() >= AIR
    assert vol.affine.shape == (4, 4) and np.all(np.isfinite(vol.affine))
    assert aff2axcodes(vol.affine) == ("R", "A", "S")
    assert "\n" not in " ".join(vol.info.warnings)


# ------------------------------------------------------------------------------ refusals of real data
@pytest.mark.parametrize("name", CT_SLICES)
def test_real_single_ct_slice_in_a_folder_is_refused_as_one_slice(tmp_path, name):
    folder = stage(tmp_path, real(name))
    (folder / "README.txt").write_text("exported by a PACS\n")  # a stray non-DICOM file changes nothing
    err = refused(folder)
    assert "only 1 ct slice" in err.reason.lower()
    assert err.source == str(folder)


@pytest.mark.parametrize("name", CT_SLICES)
def test_real_single_ct_slice_given_as_a_file_is_refused_as_one_slice(name):
    err = refused(real(name))
    assert "only 1 ct slice" in err.reason.lower()


def test_real_two_frame_enhanced_ct_file_is_refused_for_its_frame_count():
    err = refused(real("eCT_Supplemental.dcm"))
    assert "only 2 ct slice" in err.reason.lower()


@pytest.mark.parametrize("study, n", [("77654033", 4), ("98892001", 5)])
def test_real_short_ct_series_are_refused_with_their_slice_count(study, n):
    """77654033: three CR images and a 4-slice CT series; 98892001: 2 localizers and a 5-slice series."""
    err = refused(DICOMDIR_TESTS / study)
    assert f"only {n} ct slices" in err.reason.lower()


def test_real_dicomdir_export_tree_picks_the_longest_ct_series(tmp_path):
    """The whole dicomdirtests tree: DICOMDIRs, a README, CR, MR, localizers, image-less CT, 4 and 5 slices."""
    err = refused(DICOMDIR_TESTS)
    assert "only 5 ct slices" in err.reason.lower()


def test_real_localizers_alone_are_not_a_ct_image_series():
    err = refused(DICOMDIR_TESTS / "98892001" / "CT2N")
    assert "no ct image series" in err.reason.lower() and "localizer" in err.reason.lower()


def test_real_ct_objects_without_pixel_data_are_not_a_ct_image_series():
    err = refused(DICOMDIR_TESTS / "TINY_ALPHA")  # 56 CT objects without PixelData, a DICOMDIR, a README
    assert "no ct image series" in err.reason.lower()


@pytest.mark.parametrize(
    "files, modality",
    [
        (["MR_small.dcm"], "MR"),
        (["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"], "MR"),
        (["rtdose.dcm"], "RTDOSE"),
    ],
    ids=["mr", "mr-compressed", "rtdose"],
)
def test_real_non_ct_files_are_refused_naming_their_modality(tmp_path, files, modality):
    err = refused(stage(tmp_path, *map(real, files)))
    assert "no ct image series" in err.reason.lower() and f"modality {modality}" in err.reason


def test_real_mr_study_is_refused_naming_mr():
    err = refused(DICOMDIR_TESTS / "98892003")
    assert "no ct image series" in err.reason.lower() and "modality MR" in err.reason


def test_real_truncated_mr_file_is_refused_as_not_ct(tmp_path):
    """MR_truncated.dcm lacks 62 bytes of pixel data; its header says MR, which decides first."""
    err = refused(stage(tmp_path, real("MR_truncated.dcm")))
    assert "no ct image series" in err.reason.lower() and "modality MR" in err.reason


def test_real_truncated_pixel_data_in_a_ct_series_is_refused_as_undecodable(tmp_path):
    """MR_truncated.dcm retagged as CT, ten positions: its short pixel data cannot give a 64x64 slice."""
    folder, _ = make_series(real("MR_truncated.dcm"), tmp_path / "s", edit=lambda ds: ct_like(ds, -1151))
    err = refused(folder)
    assert "pixel data cannot be decoded" in err.reason.lower()


@pytest.mark.parametrize(
    "name, edit",
    [
        ("693_J2KR.dcm", None),
        ("bad_sequence.dcm", None),
        ("MR_small_RLE.dcm", lambda ds: ct_like(ds, -1151)),
        ("MR_small_jpeg_ls_lossless.dcm", lambda ds: ct_like(ds, -1151)),
    ],
    ids=["jpeg2000", "jpeg-lossless", "rle", "jpeg-ls"],
)
def test_real_truncated_codestream_is_refused_as_undecodable(tmp_path, name, edit):
    """One slice of ten keeps only the first half of its compressed frame (a torn transfer from the PACS)."""
    folder, _ = make_series(real(name), tmp_path / "s", edit=edit)
    victim = sorted(folder.iterdir())[4]
    ds = pydicom.dcmread(victim)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(victim, enforce_file_format=False)
    err = refused(folder)
    assert "pixel data cannot be decoded" in err.reason.lower()
    assert victim.name in str(err)  # the refusal names the damaged file


# ------------------------------------------------------------------------------ real pixel data decodes
def _check_against_pydicom(
    vol: CTVolume, src: Path, affine_lps: np.ndarray, n: int, spacing: float, edit=None
) -> np.ndarray:
    ds = pydicom.dcmread(src)
    if edit is not None:
        edit(ds)
    plane = expected_hu(ds)
    stack = np.repeat(plane.T[:, :, None], n, axis=2)
    want_hu, want_affine = oriented(stack, affine_lps)
    check_volume(vol, n)
    assert vol.hu.shape == want_hu.shape
    np.testing.assert_allclose(np.sort(vol.hu[..., 0].ravel()), np.sort(plane.ravel()), atol=1e-3)
    np.testing.assert_allclose(vol.hu, want_hu, atol=1e-3)  # the exact voxel layout
    np.testing.assert_allclose(vol.affine, want_affine, atol=1e-3)
    assert vol.info.format == "dicom"
    assert vol.info.n_slices == n
    assert vol.info.slice_spacing_mm == pytest.approx(spacing, abs=1e-3)
    assert vol.spacing[2] == pytest.approx(spacing, abs=1e-3)
    assert vol.info.pixel_spacing_mm == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert vol.info.transfer_syntax == ds.file_meta.TransferSyntaxUID.name
    assert vol.info.manufacturer == str(ds.get("Manufacturer", "")).strip()
    if ds.get("SliceThickness") not in (None, ""):
        assert vol.info.slice_thickness_mm == pytest.approx(float(ds.SliceThickness))
    return vol.hu


@pytest.mark.parametrize("name", [n for n in CT_SLICES if n != "J2K_pixelrep_mismatch.dcm"])
def test_real_ct_pixel_data_decodes_like_pydicom_in_a_valid_series(tmp_path, name):
    src = real(name)
    folder, affine = make_series(src, tmp_path / "s")
    _check_against_pydicom(read_study(folder), src, affine, 10, 7.0)


def test_jpeg2000_lossless_and_uncompressed_copies_give_identical_volumes(tmp_path):
    a = read_study(make_series(real("693_J2KR.dcm"), tmp_path / "j2kr")[0])
    b = read_study(make_series(real("693_UNCR.dcm"), tmp_path / "uncr")[0])
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.info.transfer_syntax != b.info.transfer_syntax
    lossy = read_study(make_series(real("693_J2KI.dcm"), tmp_path / "j2ki")[0])  # LossyImageCompression 01
    assert any("lossy compression" in w for w in lossy.info.warnings)
    assert not any("lossy" in w for w in a.info.warnings + b.info.warnings)


MR_CODECS = ["MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"]


def _mr_as_ct(ds: pydicom.Dataset) -> None:
    # RescaleIntercept -1151 puts the darkest MR_small value (127) at air: the reader refuses volumes
    # without any air or fat as "not Hounsfield units", so intercept 0 would be refused on purpose.
    ct_like(ds, intercept=-1151)


@pytest.mark.parametrize("name", MR_CODECS)
def test_real_lossless_codecs_decode_to_the_uncompressed_values(tmp_path, name):
    """JPEG-LS, RLE and JPEG 2000 lossless copies of MR_small, retagged as CT, equal the uncompressed one."""
    src = real(name)
    folder, affine = make_series(src, tmp_path / "s", edit=_mr_as_ct)
    hu = _check_against_pydicom(read_study(folder), src, affine, 10, 7.0, edit=_mr_as_ct)
    reference, _ = make_series(real("MR_small.dcm"), tmp_path / "reference", edit=_mr_as_ct)
    np.testing.assert_array_equal(hu, read_study(reference).hu)


def test_real_oblique_slices_stacked_along_their_normal_read_with_exact_geometry(tmp_path):
    """J2K_pixelrep_mismatch.dcm: oblique IOP (22 degrees about x), codestream signedness != header."""
    src = real("J2K_pixelrep_mismatch.dcm")
    folder, affine = make_series(src, tmp_path / "s")
    vol = read_study(folder)
    check_volume(vol, 10)
    plane = expected_hu(pydicom.dcmread(src))
    np.testing.assert_allclose(np.sort(vol.hu[..., 0].ravel()), np.sort(plane.ravel()), atol=1e-3)
    want_hu, want_affine = oriented(np.repeat(plane.T[:, :, None], 10, axis=2), affine)
    np.testing.assert_allclose(vol.hu, want_hu, atol=1e-3)
    np.testing.assert_allclose(vol.affine, want_affine, atol=1e-3)
    assert not any("gantry tilt" in w for w in vol.info.warnings)


def test_real_gantry_tilted_series_is_corrected_with_a_warning(tmp_path):
    """The same oblique slice with table positions straight along z: a 22 degree gantry tilt."""
    src = real("J2K_pixelrep_mismatch.dcm")
    folder, _ = make_series(src, tmp_path / "s", step=np.array([0.0, 0.0, 8.0]))
    vol = read_study(folder)
    check_volume(vol, 10)
    assert any("gantry tilt" in w for w in vol.info.warnings)
    tilt = [float(m) for w in vol.info.warnings for m in re.findall(r"gantry tilt of ([\d.]+)", w)]
    assert tilt and tilt[0] == pytest.approx(22.0, abs=0.3)
    assert vol.info.slice_spacing_mm == pytest.approx(8.0 * 0.9272, abs=1e-2)  # along the slice normal


def test_real_localizers_and_dose_are_skipped_next_to_a_valid_series(tmp_path):
    """98892001's real localizer series and an RT dose beside a valid series built from its CT5N slice."""
    study = tmp_path / "study"
    make_series(DICOMDIR_TESTS / "98892001" / "CT5N" / "2062", study / "a" / "b" / "axial")
    shutil.copytree(DICOMDIR_TESTS / "98892001" / "CT2N", study / "scout")
    shutil.copy(real("rtdose.dcm"), study / "dose.dcm")
    (study / "notes.txt").write_text("not DICOM")
    vol = read_study(study)
    check_volume(vol, 10)
    skipped = vol.info.skipped_series
    assert any("localizer" in s.lower() and "2 images" in s for s in skipped), skipped
    assert any("rtdose" in s.lower() for s in skipped), skipped
    assert all(isinstance(s, str) and "\n" not in s for s in skipped)
    assert vol.info.skipped_files == 1
    assert "SmartScore" in vol.info.series


def test_real_short_series_loses_to_a_longer_one(tmp_path):
    """A real 5-slice CT series in the same study as a valid 10-slice one: the 10-slice series is read."""
    study = tmp_path / "study"
    shutil.copytree(DICOMDIR_TESTS / "98892001" / "CT5N", study / "short")
    make_series(DICOMDIR_TESTS / "98892001" / "CT5N" / "2062", study / "long")
    vol = read_study(study)
    check_volume(vol, 10)
    assert vol.info.n_slices == 10
    assert any("5 images" in s for s in vol.info.skipped_series), vol.info.skipped_series


def _enhanced_ct(path: Path, n: int = 10, spacing: float = 10.0) -> tuple[Path, np.ndarray]:
    """eCT_Supplemental.dcm (a real 2-frame Enhanced CT) grown to ``n`` frames ``spacing`` mm apart.

    Frame k holds the original frame k % 2 and sits at the first frame's position + k * spacing along +z
    (the slice normal of IOP [-1,0,0, 0,1,0] is -z, so the reader must reverse the frame order).
    """
    ds = pydicom.dcmread(real("eCT_Supplemental.dcm"))
    frames = ds.pixel_array  # (2, rows, cols), uint16
    items = list(ds.PerFrameFunctionalGroupsSequence)
    ipp0 = np.array([float(v) for v in items[0].PlanePositionSequence[0].ImagePositionPatient])
    new_items = []
    for k in range(n):
        item = copy.deepcopy(items[k % 2])
        item.PlanePositionSequence[0].ImagePositionPatient = [f"{v:.4f}" for v in ipp0 + [0, 0, k * spacing]]
        new_items.append(item)
    ds.PerFrameFunctionalGroupsSequence = new_items
    ds.NumberOfFrames = n
    ds.PixelData = np.stack([frames[k % 2] for k in range(n)]).astype(frames.dtype).tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=False)
    return path, ipp0


def test_real_enhanced_ct_multiframe_file_reads_with_per_frame_positions(tmp_path):
    path, ipp0 = _enhanced_ct(tmp_path / "enhanced")
    vol = read_study(path)
    check_volume(vol, 10)
    ds = pydicom.dcmread(real("eCT_Supplemental.dcm"))
    planes = [expected_hu(ds, k % 2) for k in range(10)]
    iop = np.array(
        [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient]
    )
    ps = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    normal = np.cross(iop[:3], iop[3:])  # -z
    order = np.argsort([(ipp0 + [0, 0, 10.0 * k]) @ normal for k in range(10)])
    stack = np.stack([planes[k].T for k in order], axis=2)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = iop[:3] * ps[1], iop[3:] * ps[0], normal * 10.0
    affine[:3, 3] = ipp0 + [0, 0, 10.0 * order[0]]
    want_hu, want_affine = oriented(stack, affine)
    np.testing.assert_allclose(vol.hu, want_hu, atol=1e-3)
    np.testing.assert_allclose(vol.affine, want_affine, atol=1e-3)
    assert vol.info.format == "dicom-enhanced"
    assert vol.info.n_slices == 10
    assert vol.info.slice_spacing_mm == pytest.approx(10.0)
    assert vol.info.slice_thickness_mm == pytest.approx(10.0)
    assert vol.info.pixel_spacing_mm == pytest.approx(ps)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_real_series_round_trips_through_nifti(tmp_path, suffix):
    """A volume read from real J2K slices, saved by nibabel as int16 NIfTI, reads back the same."""
    vol = read_study(make_series(real("693_J2KR.dcm"), tmp_path / "s")[0])
    img = nib.Nifti1Image(np.rint(vol.hu).astype(np.int16), vol.affine)
    nib.save(img, str(tmp_path / f"vol{suffix}"))
    back = read_study(tmp_path / f"vol{suffix}")
    check_volume(back, 10)
    np.testing.assert_array_equal(back.hu, vol.hu)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert back.info.format == "nifti"


def test_real_single_slice_nifti_is_refused(tmp_path):
    plane = expected_hu(pydicom.dcmread(real("693_UNCR.dcm"))).T[:, :, None]
    nib.save(nib.Nifti1Image(plane.astype(np.int16), np.diag([0.48, 0.48, 5.0, 1.0])), str(tmp_path / "one.nii.gz"))
    err = refused(tmp_path / "one.nii.gz")
    assert "only 1" in err.reason.lower()
