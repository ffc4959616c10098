"""Property tests of the reader on damaged input: every study is read or refused in one line, never crashes.

A small valid CT series (10 slices of 32x32, 8 mm apart, Explicit VR Little Endian) is written once with
pydicom from scratch. Hypothesis then damages copies of it -- header values set to odd raw bytes or deleted,
files truncated, byte ranges overwritten, slices deleted -- and checks that ``read_study`` either returns a
sane :class:`CTVolume` (finite float32 HU, RAS affine, accepted by the model's preprocessing) or raises
:class:`StudyError` whose message is one line. Any other exception fails the test.
"""

from __future__ import annotations

import struct
import tempfile
import warnings
from dataclasses import fields
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nibabel.orientations import aff2axcodes
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fedaaa.common.errors import StudyError
from fedaaa.common.io import CTVolume, StudyInfo, read_study
from fedaaa.common.preprocess import PreprocessSettings, volume_to_input

N_SLICES, MATRIX, SPACING_MM, PIXEL_MM = 10, 32, 8.0, 10.0  # 320 mm field of view, 72 mm of z coverage
SETTINGS = PreprocessSettings()
INFO_KEYS = {
    "n_slices",
    "slice_spacing_mm",
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "manufacturer",
    "contrast",
    "transfer_syntax",
    "series",
    "skipped_series",
    "skipped_files",
    "warnings",
    "format",
}


def fuzz(n: int):
    """Hypothesis settings: ``n`` examples, reproducible (derandomized, no example database)."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ------------------------------------------------------------------------------ the valid series
def _phantom(k: int) -> np.ndarray:
    """HU of slice k: air around an elliptic soft-tissue body, a bright aorta, a bone block."""
    y, x = np.mgrid[:MATRIX, :MATRIX]
    img = np.full((MATRIX, MATRIX), -1000.0)
    img[((x - 15.5) / 13) ** 2 + ((y - 15.5) / 10) ** 2 < 1] = 40.0
    img[(x - 16) ** 2 + (y - 13) ** 2 < 4] = 300.0 + 10 * k
    img[20:24, 13:19] = 700.0
    return img


def _series_files() -> dict[str, bytes]:
    """The valid series as file name -> bytes (names shuffled with respect to slice order)."""
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    names = np.random.default_rng(0).permutation(N_SLICES)
    out = {}
    for k in range(N_SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.Manufacturer = "FUZZ"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.SeriesDescription = "Abdomen"
        ds.ContrastBolusAgent = "Iodinated"
        ds.SliceThickness = ds.SpacingBetweenSlices = SPACING_MM
        ds.ImagePositionPatient = [-155.0, -155.0, -300.0 + k * SPACING_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceLocation = -300.0 + k * SPACING_MM
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = MATRIX
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.PixelPaddingValue = 0
        ds.PixelData = (_phantom(k) + 1024).astype(np.uint16).tobytes()
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[f"IM{names[k]:04d}"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def base() -> dict[str, bytes]:
    return _series_files()


@pytest.fixture(scope="module")
def base_volume(base, tmp_path_factory) -> CTVolume:
    folder = _materialise(base, tmp_path_factory.mktemp("valid"))
    return read_study(folder)


def _materialise(files: dict[str, bytes], folder: Path) -> Path:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _slice_order(files: dict[str, bytes]) -> list[str]:
    """File names sorted by z (slice 0 = most caudal)."""
    z = {
        n: float(pydicom.dcmread(BytesIO(b), stop_before_pixels=True).ImagePositionPatient[2]) for n, b in files.items()
    }
    return sorted(z, key=z.get)


# ------------------------------------------------------------------------------ the property
def check(folder: Path) -> CTVolume | StudyError:
    """Read or refuse, as the contract says; anything else propagates and fails the example."""
    try:
        vol = read_study(folder)
    except StudyError as err:
        assert type(err) is StudyError
        assert str(err) == f"{err.source}: {err.reason}"
        assert "\n" not in str(err) and "\r" not in str(err) and err.reason.strip(), repr(str(err))
        return err
    assert isinstance(vol, CTVolume)
    assert isinstance(vol.hu, np.ndarray) and vol.hu.dtype == np.float32 and vol.hu.ndim == 3
    assert np.all(np.isfinite(vol.hu)) and vol.hu.min() >= -1024.0
    assert vol.affine.shape == (4, 4) and np.all(np.isfinite(vol.affine))
    assert aff2axcodes(vol.affine) == ("R", "A", "S")
    assert all(s > 0 for s in vol.spacing)
    assert vol.hu.shape[2] >= 8 and vol.spacing[2] * (vol.hu.shape[2] - 1) >= 60.0 - 1e-6
    assert isinstance(vol.info, StudyInfo) and INFO_KEYS <= {f.name for f in fields(vol.info)}
    for line in [vol.info.series, *vol.info.warnings, *vol.info.skipped_series]:
        assert isinstance(line, str) and "\n" not in line and "\r" not in line, f"not one line: {line!r}"
    # what the reader accepts, the model's pipeline must take: a sane physical extent first
    extent = np.array(vol.hu.shape) * np.array(vol.spacing)
    assert np.all(extent < 5000.0), f"accepted a volume {extent.round(1).tolist()} mm wide: {vol.info}"
    x = volume_to_input(vol, SETTINGS)
    assert tuple(x.shape[:3]) == (1, *SETTINGS.roi_size[:2]) and 1 <= x.shape[3] <= SETTINGS.roi_size[2]
    assert bool(x.isfinite().all())
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    return vol


def test_the_valid_series_reads(base_volume):
    vol = base_volume
    assert vol.hu.shape == (MATRIX, MATRIX, N_SLICES)
    assert vol.spacing == pytest.approx((PIXEL_MM, PIXEL_MM, SPACING_MM))
    assert vol.info.n_slices == N_SLICES and vol.info.slice_spacing_mm == pytest.approx(SPACING_MM)
    assert vol.info.contrast is True and vol.info.format == "dicom"
    # canonical RAS: columns (toward patient left) and rows (toward posterior) are both flipped
    np.testing.assert_array_equal(vol.hu[:, :, 4], _phantom(4).T[::-1, ::-1].astype(np.float32))
    assert vol.info.warnings == ()


# ------------------------------------------------------------------------------ raw header values
def _pad(b: bytes, pad: bytes = b" ") -> bytes:
    return b + pad if len(b) % 2 else b


# short strings full of separators and control characters: what breaks messages and parsers
_CONTROL = st.text(st.sampled_from(list("AB1.\\ \n\r\t\0\x1b")), max_size=12)
_NUMBERS = st.one_of(
    st.integers(-(2**31), 2**31).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "0",
            "-0",
            "-1",
            "1e400",
            "-1e400",
            "nan",
            "inf",
            "-inf",
            "1e-300",
            "65536",
            "4e9",
            "",
            " ",
            "abc",
            "1,5",
            "0x10",
            "1.2.3",
            "+",
            "١٢",
        ]
    ),
)
_DS_VALUES = st.one_of(
    st.lists(_NUMBERS, min_size=0, max_size=8).map("\\".join),
    st.text(st.characters(codec="latin-1"), max_size=20),
).map(lambda s: _pad(s.encode("latin-1", "replace")))
_US_VALUES = st.one_of(
    st.integers(0, 65535).map(lambda v: struct.pack("<H", v)),
    st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 64, 255, 4096, 65535]).map(lambda v: struct.pack("<H", v)),
    st.lists(st.integers(0, 65535), min_size=0, max_size=4).map(lambda v: struct.pack(f"<{len(v)}H", *v)),
    st.binary(max_size=7),  # odd and wrong lengths
)
_SS_VALUES = st.one_of(
    st.integers(-32768, 32767).map(lambda v: struct.pack("<h", v)),
    st.binary(max_size=5),
)
_CS_VALUES = st.one_of(
    st.sampled_from(
        [
            "CT",
            "MR",
            "ct",
            "",
            "OT",
            "SR",
            "RTDOSE",
            "MONOCHROME1",
            "MONOCHROME2",
            "RGB",
            "PALETTE COLOR",
            "YBR_FULL",
            "YBR_FULL_422",
            "ORIGINAL\\PRIMARY\\AXIAL",
            "ORIGINAL\\PRIMARY\\LOCALIZER",
            "DERIVED\\SECONDARY",
            "DERIVED\\PRIMARY\\AXIAL\\JP2K",
            "ISO_IR 192",
            "ISO 2022 IR 87",
            "GB18030",
            "\\\\\\",
            "A" * 200,
        ]
    ),
    st.text(st.characters(codec="latin-1"), max_size=40),
    _CONTROL,
).map(lambda s: _pad(s.encode("latin-1", "replace")))
_UI_VALUES = st.one_of(
    st.sampled_from(
        [
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.2.1",
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.840.10008.5.1.4.1.1.481.2",
            "1.2.840.10008.5.1.4.1.1.88.67",
            "",
            "1.2.3",
            "abc",
            "0.0",
            "1" * 70,
        ]
    ),
    st.text(st.characters(codec="ascii"), max_size=64),
    _CONTROL,
).map(lambda s: _pad(s.encode("ascii", "replace"), b"\0"))
_TEXT_VALUES = st.one_of(st.text(st.characters(codec="utf-8"), max_size=40), _CONTROL).map(
    lambda s: _pad(s.encode("utf-8"))
)
_TS_VALUES = st.sampled_from(
    [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.201",
        "1.2.3.4",
        "",
        "not-a-uid",
    ]
).map(lambda s: _pad(s.encode("ascii"), b"\0"))

# keyword -> (VR written into the file, strategy for the raw value)
HEADER_TAGS = {
    "Rows": ("US", _US_VALUES),
    "Columns": ("US", _US_VALUES),
    "BitsAllocated": ("US", _US_VALUES),
    "BitsStored": ("US", _US_VALUES),
    "HighBit": ("US", _US_VALUES),
    "PixelRepresentation": ("US", _US_VALUES),
    "SamplesPerPixel": ("US", _US_VALUES),
    "PlanarConfiguration": ("US", _US_VALUES),
    "PhotometricInterpretation": ("CS", _CS_VALUES),
    "ImagePositionPatient": ("DS", _DS_VALUES),
    "ImageOrientationPatient": ("DS", _DS_VALUES),
    "PixelSpacing": ("DS", _DS_VALUES),
    "RescaleSlope": ("DS", _DS_VALUES),
    "RescaleIntercept": ("DS", _DS_VALUES),
    "SliceThickness": ("DS", _DS_VALUES),
    "SpacingBetweenSlices": ("DS", _DS_VALUES),
    "SliceLocation": ("DS", _DS_VALUES),
    "NumberOfFrames": ("IS", _DS_VALUES),
    "InstanceNumber": ("IS", _DS_VALUES),
    "SeriesNumber": ("IS", _DS_VALUES),
    "Modality": ("CS", _CS_VALUES),
    "ImageType": ("CS", _CS_VALUES),
    "SpecificCharacterSet": ("CS", _CS_VALUES),
    "SOPClassUID": ("UI", _UI_VALUES),
    "SOPInstanceUID": ("UI", _UI_VALUES),
    "SeriesInstanceUID": ("UI", _UI_VALUES),
    "PixelPaddingValue": ("US", _US_VALUES),
    "PixelPaddingRangeLimit": ("SS", _SS_VALUES),
    "Manufacturer": ("LO", _TEXT_VALUES),
    "SeriesDescription": ("LO", _TEXT_VALUES),
    "ContrastBolusAgent": ("LO", _TEXT_VALUES),
    "PixelData": ("OW", st.binary(max_size=3000)),
}


@st.composite
def header_edits(draw):
    keyword = draw(st.sampled_from(sorted(HEADER_TAGS) + ["TransferSyntaxUID"]))
    delete = draw(st.booleans()) if keyword != "TransferSyntaxUID" else draw(st.integers(0, 4)) == 0
    if keyword == "TransferSyntaxUID":
        value = draw(_TS_VALUES)
    else:
        value = draw(HEADER_TAGS[keyword][1])
    targets = draw(
        st.one_of(st.just("all"), st.lists(st.integers(0, N_SLICES - 1), min_size=1, max_size=3, unique=True))
    )
    return keyword, delete, value, targets


def _edit(data: bytes, *edits: tuple[str, bool, bytes]) -> bytes:
    """Apply ``(keyword, delete, raw value)`` edits, in order, to the valid file ``data`` in one pass.

    Values are set as raw bytes, whatever they mean; the file is parsed once (from intact bytes) and
    written element by element, so the data set stays Explicit VR Little Endian whatever the damaged file
    meta says and pydicom's own checks on writing do not get in the way.
    """
    ds = pydicom.dcmread(BytesIO(data))
    charset = None
    for keyword, delete, value in edits:
        tag = Tag(keyword)
        target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        if delete:
            if tag in target:
                del target[tag]
            charset = None if keyword == "SpecificCharacterSet" else charset
            continue
        if keyword == "SpecificCharacterSet":  # pydicom encodes the rest with it: write a stand-in, patch after
            charset = value = _pad(value)
            value = b"\xfe" * len(charset)
        vr = "UI" if keyword == "TransferSyntaxUID" else HEADER_TAGS[keyword][0]
        target[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=False)
    write_dataset(out, ds)
    raw = out.getvalue()
    if charset is not None:
        head = b"\x08\x00\x05\x00CS" + struct.pack("<H", len(charset))
        raw = raw.replace(head + b"\xfe" * len(charset), head + charset, 1)
    return raw


@pytest.mark.slow
@fuzz(120)
@given(edits=st.lists(header_edits(), min_size=1, max_size=3))
def test_header_damage_is_read_or_refused_in_one_line(base, edits):
    files = dict(base)
    names = sorted(files)
    for i, name in enumerate(names):
        mine = [
            (keyword, delete, value) for keyword, delete, value, targets in edits if targets == "all" or i in targets
        ]
        if mine:
            files[name] = _edit(base[name], *mine)
    with tempfile.TemporaryDirectory() as tmp:
        check(_materialise(files, Path(tmp)))


# ------------------------------------------------------------------------------ byte-level damage
def no_silent_damage(result, base_volume: CTVolume) -> None:
    """A volume read from torn files holds exactly the intact slices, unless a warning says otherwise."""
    if isinstance(result, StudyError) or result.info.warnings:
        return
    assert result.hu.shape[:2] == base_volume.hu.shape[:2], result.info
    k0 = int(round((result.affine[2, 3] - base_volume.affine[2, 3]) / SPACING_MM))
    assert 0 <= k0 and k0 + result.hu.shape[2] <= N_SLICES, (k0, result.hu.shape)
    np.testing.assert_array_equal(
        result.hu,
        base_volume.hu[:, :, k0 : k0 + result.hu.shape[2]],
        err_msg="a torn file was read as if whole, without a warning",
    )


@pytest.mark.slow
@fuzz(80)
@given(cuts=st.lists(st.tuples(st.integers(0, N_SLICES - 1), st.floats(0.0, 1.0)), min_size=1, max_size=4))
def test_truncated_files_are_read_or_refused_in_one_line(base, base_volume, cuts):
    files = dict(base)
    names = sorted(files)
    for i, frac in cuts:
        data = files[names[i]]
        files[names[i]] = data[: int(len(data) * frac)]
    assume(any(files[n] != base[n] for n in names))
    with tempfile.TemporaryDirectory() as tmp:
        result = check(_materialise(files, Path(tmp)))
    no_silent_damage(result, base_volume)


@pytest.mark.parametrize(
    "keyword, value, slices",
    [
        ("Modality", b"M\nR ", "all"),  # a refusal quoting the modality
        ("SOPClassUID", b"1.2.3\n4\0", [2]),  # a skipped-series line quoting the SOP class
        ("SeriesDescription", b"Abdomen\r\nArterial ", "all"),  # the chosen series' description
        ("ImageType", b"ORIGINAL\\PRIMARY\\LOCALIZER\n ", [3]),
    ],
    ids=["modality", "sop-class", "series-description", "image-type"],
)
def test_line_breaks_inside_header_text_never_break_a_message_line(base, keyword, value, slices):
    """Header text is quoted in refusals, skipped-series lines and the series label: each stays one line."""
    files = dict(base)
    for i, name in enumerate(sorted(files)):
        if slices == "all" or i in slices:
            files[name] = _edit(base[name], (keyword, False, value))
    with tempfile.TemporaryDirectory() as tmp:
        check(_materialise(files, Path(tmp)))


@pytest.mark.parametrize("cut", [200, 500, 800, 1000])
def test_a_file_torn_inside_its_header_is_not_mistaken_for_a_series_without_images(base, cut):
    """Slice 4's file ends ``cut`` bytes in (its header is ~1040 bytes, pixel data follows): the other
    nine slices are intact CT, so "no CT image series" would send the site looking for the wrong problem.
    Acceptable: a refusal naming truncation/corruption, or a volume that says what it did in a warning."""
    files = dict(base)
    victim = _slice_order(base)[4]
    files[victim] = base[victim][:cut]
    with tempfile.TemporaryDirectory() as tmp:
        result = check(_materialise(files, Path(tmp)))
    if isinstance(result, StudyError):
        assert "no ct image series" not in result.reason.lower(), str(result)
        assert any(w in result.reason.lower() for w in ("truncat", "corrupt", "cannot be decoded", "missing")), str(
            result
        )
    else:
        assert result.info.warnings, result.info


@fuzz(60)
@given(
    hits=st.lists(
        st.tuples(st.integers(0, N_SLICES - 1), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=64)),
        min_size=1,
        max_size=5,
    )
)
@pytest.mark.slow
def test_overwritten_bytes_are_read_or_refused_in_one_line(base, hits):
    files = dict(base)
    names = sorted(files)
    for i, where, junk in hits:
        data = bytearray(files[names[i]])
        at = int(where * (len(data) - 1))
        data[at : at + len(junk)] = junk[: len(data) - at]
        files[names[i]] = bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        check(_materialise(files, Path(tmp)))


@pytest.mark.slow
@fuzz(60)
@given(gone=st.sets(st.integers(0, N_SLICES - 1), min_size=1, max_size=N_SLICES))
def test_deleted_slices_give_exactly_the_documented_outcome(base, base_volume, gone):
    order = _slice_order(base)  # caudal to cranial
    kept = [k for k in range(N_SLICES) if k not in gone]
    files = {n: base[n] for k, n in enumerate(order) if k in kept}
    with tempfile.TemporaryDirectory() as tmp:
        result = check(_materialise(files, Path(tmp)))
    if not kept:
        assert isinstance(result, StudyError) and "empty folder" in result.reason, result
        return
    contiguous = kept == list(range(kept[0], kept[-1] + 1))
    if len(kept) < 8:
        assert isinstance(result, StudyError) and f"only {len(kept)} ct slice" in result.reason.lower(), result
    elif contiguous and (len(kept) - 1) * SPACING_MM < 60:
        assert isinstance(result, StudyError) and "covers" in result.reason, result
    elif contiguous:
        assert isinstance(result, CTVolume), result
        assert result.hu.shape[2] == len(kept) and result.info.n_slices == len(kept)
        np.testing.assert_array_equal(result.hu, base_volume.hu[:, :, kept[0] : kept[-1] + 1])
        assert result.info.warnings == ()
    elif isinstance(result, CTVolume):
        # a gap: the reader may interpolate a few missing slices, with a warning, on the full grid
        assert any("missing" in w or "interpolat" in w for w in result.info.warnings), result.info
        assert result.hu.shape[2] == kept[-1] - kept[0] + 1
        for j, k in enumerate(range(kept[0], kept[-1] + 1)):
            if k in kept:
                np.testing.assert_array_equal(result.hu[:, :, j], base_volume.hu[:, :, k])
    else:
        reason = result.reason.lower()
        assert "missing slice" in reason or "not uniform" in reason or "covers" in reason, result


def test_warnings_turned_into_errors_do_not_escape(base):
    """With Python warnings raised as errors: the valid series still reads without one, and a damaged
    header still gives a one-line StudyError, never a traceback from inside pydicom."""
    files = dict(base)
    name = sorted(files)[3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tempfile.TemporaryDirectory() as tmp:
            assert isinstance(check(_materialise(files, Path(tmp))), CTVolume)
        files[name] = _edit(files[name], ("PixelSpacing", False, b"abc\\1e400 "))
        with tempfile.TemporaryDirectory() as tmp:
            assert isinstance(check(_materialise(files, Path(tmp))), StudyError)
