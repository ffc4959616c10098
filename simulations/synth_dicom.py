"""DICOM export of synthetic studies (see simulations.synth): one study folder as a hospital exports it.

The primary series is the rendered volume, stored as the profile asks:

* orientation: ``standard`` IOP [1,0,0,0,1,0]; ``flip_rows`` [-1,0,0,0,1,0] (columns run toward -x);
  ``flip_cols`` [1,0,0,0,-1,0] (rows run toward -y); ``flip_both`` [-1,0,0,0,-1,0]; ``coronal``
  [1,0,0,0,0,-1]: one image per row of the volume (a plane of constant y, anterior first), rows toward -z,
  PixelSpacing [slice spacing, pixel spacing], spacing between images = pixel spacing, ImageType
  DERIVED\\PRIMARY\\REFORMATTED. Pixels are flipped / reformatted so every image encodes the same patient-space
  anatomy; ImagePositionPatient is always the LPS centre of the first transmitted pixel.
* storage: BitsAllocated 16; unsigned (PixelRepresentation 0, RescaleIntercept -1024) or signed (1, 0);
  BitsStored 12 unsigned / 16 signed unless ``bits_stored`` says otherwise; HU are clipped to >= -1024 and
  into the stored range. Padding (``pixel_padding``): pixels outside the circular reconstruction field of
  view (diameter = matrix) hold PixelPaddingValue, -2000 when signed (-2000 HU, GE style) and 0 when
  unsigned (-1024 HU, while in-FOV air is stored as about 24).
* transfer syntax: Explicit / Implicit VR Little Endian, RLE, JPEG 2000 or JPEG-LS lossless (one file per
  image), or ``enhanced``: the whole series as ONE Enhanced CT Image Storage multi-frame file (Explicit VR
  LE, geometry in the shared / per-frame functional groups, frames in InstanceNumber order).
* numbering: InstanceNumber 1 at the head (HFS) or at the feet (FFS, ``feet_first``); coronal images are
  numbered anterior to posterior. File names follow InstanceNumber (``ascending``), its reverse
  (``descending``) or neither (``shuffled``).

Extras (``profile.extras``): ``localizer`` CT Image Storage series of 2 projection images (AP on a coronal
plane, lateral on a sagittal plane), ImageType ORIGINAL\\PRIMARY\\LOCALIZER; ``thick`` a second axial CT
series at twice the slice spacing and thickness (pairs of slices averaged), fewer images; ``secondary`` a
Secondary Capture Image Storage RGB screenshot with Modality CT, ImageType DERIVED\\SECONDARY\\SCREEN SAVE, no
geometry; ``dose`` an X-Ray Radiation Dose SR (Modality SR, no pixel data); ``stray`` README.txt, a .DS_Store
and an empty but valid DICOMDIR (Media Storage Directory) in the study folder. Series numbers: localizer 1,
primary 2 with a localizer (else 1), thick 3, screenshot 998, dose report 999.
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

if TYPE_CHECKING:
    from fedaaa.simulations.synth import ScannerProfile, SyntheticStudy

DOSE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR Storage
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
_SYNTAX = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "enhanced": ExplicitVRLittleEndian,
}
_PHASE_TEXT = {"arterial": "Abdomen arterial", "portal": "Abdomen portal venous", "none": "Abdomen non-contrast"}


def _ds(v: float) -> DSfloat:
    return DSfloat(float(v), auto_format=True)


def padding_value(profile: ScannerProfile) -> int:
    """Stored PixelPaddingValue: -2000 signed (HU -2000), 0 unsigned (HU -1024)."""
    return -2000 if profile.signed else 0


def _outside_fov(m: int) -> np.ndarray:
    r = np.arange(m) - (m - 1) / 2
    return np.hypot(r[:, None], r[None, :]) > m / 2


def encode_pixels(hu: np.ndarray, profile: ScannerProfile) -> tuple[np.ndarray, int]:
    """Round HU (..., rows, cols, axial) to integers and convert to stored values, padding included;
    returns (stored int16 / uint16 array, RescaleIntercept)."""
    v, bits, intercept = np.rint(hu), profile.bits_stored, 0 if profile.signed else -1024
    if bits == 0:
        lo, hi = (-1024, 3071) if profile.signed else (0, 4095)
    else:
        lo = max(-1024 - intercept, -(1 << bits - 1) if profile.signed else 0)
        hi = (1 << bits - 1) - 1 if profile.signed else (1 << bits) - 1
    out = np.clip(v - intercept, lo, hi).astype(np.int16 if profile.signed else np.uint16)
    if profile.pixel_padding:
        out[..., _outside_fov(out.shape[-1])] = padding_value(profile)
    return out, intercept


def _oriented(
    px: np.ndarray,
    z: np.ndarray,
    ps: float,
    origin: tuple[float, float],
    spacing: float,
    orientation: str,
    feet_first: bool,
) -> tuple[np.ndarray, np.ndarray, list[int], list[float], float, np.ndarray, np.ndarray]:
    """Images of one series as transmitted: (images, IPP per image, IOP, PixelSpacing [row, col],
    spacing between images, InstanceNumber per image, SliceLocation per image)."""
    n, m = px.shape[:2]
    x0, y0 = origin
    if orientation == "coronal":
        y = y0 + np.arange(m) * ps
        ipp = np.stack([np.full(m, x0), y, np.full(m, z[0])], 1)
        return px.transpose(1, 0, 2), ipp, [1, 0, 0, 0, 0, -1], [spacing, ps], ps, np.arange(m) + 1, y
    rev_c = orientation in ("flip_rows", "flip_both")  # row direction -x: columns reversed
    rev_r = orientation in ("flip_cols", "flip_both")  # column direction -y: rows reversed
    far = x0 + (m - 1) * ps
    ipp = np.stack([np.full(n, far if rev_c else x0), np.full(n, far if rev_r else y0), z], 1)
    iop = [-1 if rev_c else 1, 0, 0, 0, -1 if rev_r else 1, 0]
    inst = n - np.arange(n) if feet_first else np.arange(n) + 1
    return px[:, :: -1 if rev_r else 1, :: -1 if rev_c else 1], ipp, iop, [ps, ps], spacing, inst, z


def _ranks(order: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Name rank of the file of each InstanceNumber - 1."""
    if order == "shuffled":
        return rng.permutation(n)
    return np.arange(n) if order == "ascending" else n - 1 - np.arange(n)


def _file_paths(
    folder: Path, profile: ScannerProfile, counts: dict[int, int], rng: np.random.Generator
) -> dict[int, list[Path]]:
    """File path of every DICOM file, by series number and InstanceNumber - 1 (primary series first)."""
    if profile.layout == "nested":
        out = {}
        for no, n in counts.items():
            names = np.sort(rng.choice(16**8, n, replace=False))
            out[no] = [folder / "DICOM" / str(no) / f"{names[j]:08X}" for j in _ranks(profile.file_order, n, rng)]
        return out
    ext = ".dcm" if profile.layout == "flat" else ""
    total, n0 = sum(counts.values()), next(iter(counts.values()))
    if profile.file_order == "shuffled":
        numbers = rng.permutation(total) + 1
    else:
        numbers = np.concatenate([_ranks(profile.file_order, n0, rng), np.arange(n0, total)]) + 1
    out, i = {}, 0
    for no, n in counts.items():
        out[no], i = [folder / f"IM{numbers[i + j]:04d}{ext}" for j in range(n)], i + n
    return out


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _new(common: Dataset, sop_class: str, syntax: str) -> Dataset:
    ds = copy.deepcopy(common)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _image_pixel(ds: Dataset, rows: int, cols: int, profile: ScannerProfile | None = None) -> None:
    """Greyscale 16-bit pixel description as ``profile`` stores it (None: unsigned 12 bit, no padding)."""
    signed = bool(profile and profile.signed)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.BitsAllocated = 16
    ds.BitsStored = (profile and profile.bits_stored) or (16 if signed else 12)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if profile and profile.pixel_padding:
        ds.PixelPaddingValue = padding_value(profile)


def _write_slices(
    ds: Dataset,
    images: np.ndarray | list[np.ndarray],
    ipp: np.ndarray | list[tuple[float, float, float]],
    inst: np.ndarray | list[int],
    loc: np.ndarray | list[float],
    paths: list[Path],
    uid: Callable[..., str],
    key: str,
    syntax: str,
) -> None:
    """One file per image; ``ds`` carries everything but the per-image attributes."""
    compress = syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    for i, img in enumerate(images):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid(key, i)
        ds.InstanceNumber = int(inst[i])
        ds.ImagePositionPatient = [_ds(v) for v in ipp[i]]
        ds.SliceLocation = _ds(loc[i])
        if compress:
            ds.compress(syntax, np.ascontiguousarray(img))
        else:
            ds.PixelData = img.tobytes()
        _save(ds, paths[int(inst[i]) - 1])


def _write_enhanced(
    ds: Dataset,
    images: np.ndarray,
    ipp: np.ndarray,
    iop: list[int],
    spacing_rc: list[float],
    spacing: float,
    thickness: float,
    inst: np.ndarray,
    image_type: list[str],
    path: Path,
    uid: Callable[..., str],
    intercept: int,
) -> None:
    """The whole series as one Enhanced CT Image Storage multi-frame file, frames in InstanceNumber order."""
    order = np.argsort(inst)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid("enhanced")
    ds.ImageType = [*image_type, "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(images)
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    dim_uid = uid("dimensions")
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
    ds.DimensionIndexSequence = Sequence()
    for pointer, label in ((0x00209056, "Stack ID"), (0x00209057, "In-Stack Position Number")):
        item = Dataset()
        item.DimensionOrganizationUID = dim_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        item.DimensionDescriptionLabel = label
        ds.DimensionIndexSequence.append(item)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [_ds(v) for v in spacing_rc]
    pm.SliceThickness, pm.SpacingBetweenSlices = _ds(thickness), _ds(spacing)
    po = Dataset()
    po.ImageOrientationPatient = iop
    pvt = Dataset()
    pvt.RescaleIntercept, pvt.RescaleSlope, pvt.RescaleType = intercept, 1, "HU"
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40, 400
    ft = Dataset()
    ft.FrameType = [*image_type, "NONE"]
    ft.PixelPresentation, ft.VolumetricProperties, ft.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [pm], [po]
    shared.PixelValueTransformationSequence, shared.FrameVOILUTSequence = [pvt], [voi]
    shared.CTImageFrameTypeSequence = [ft]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = Sequence()
    for f, i in enumerate(order):
        pos, content = Dataset(), Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in ipp[i]]
        content.FrameAcquisitionNumber = int(inst[i])
        content.StackID = "1"
        content.InStackPositionNumber = f + 1
        content.DimensionIndexValues = [1, f + 1]
        item = Dataset()
        item.PlanePositionSequence, item.FrameContentSequence = [pos], [content]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(images[order]).tobytes()
    _save(ds, path)


def _dose_sr(ds: Dataset, profile: ScannerProfile, coverage_mm: float) -> None:
    """Minimal CT radiation dose report content (TID 10011): CTDIvol and DLP, derived from kVp and coverage."""

    def code(value: str, meaning: str, scheme: str = "DCM") -> list[Dataset]:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return [c]

    def num(value: str, meaning: str, number: float, unit: str) -> Dataset:
        item = Dataset()
        item.RelationshipType, item.ValueType, item.ConceptNameCodeSequence = "CONTAINS", "NUM", code(value, meaning)
        mv = Dataset()
        mv.NumericValue = _ds(round(number, 2))
        mv.MeasurementUnitsCodeSequence = code(unit, unit, "UCUM")
        item.MeasuredValueSequence = [mv]
        return item

    def container(value: str, meaning: str, children: list[Dataset]) -> Dataset:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "CONTAINER"
        item.ConceptNameCodeSequence, item.ContinuityOfContent = code(value, meaning), "SEPARATE"
        item.ContentSequence = children
        return item

    ctdi = 12.0 * (profile.kvp / 120.0) ** 2.5
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = code("113701", "X-Ray Radiation Dose Report")
    tpl = Dataset()
    tpl.MappingResource, tpl.TemplateIdentifier = "DCMR", "10011"
    ds.ContentTemplateSequence = [tpl]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence, ds.ReferencedPerformedProcedureStepSequence = [], []
    proc = Dataset()
    proc.RelationshipType, proc.ValueType = "HAS CONCEPT MOD", "CODE"
    proc.ConceptNameCodeSequence = code("121058", "Procedure reported")
    proc.ConceptCodeSequence = code("P5-08000", "Computed Tomography X-Ray", "SRT")
    ds.ContentSequence = [
        proc,
        container(
            "113811",
            "CT Accumulated Dose Data",
            [
                num("113812", "Total Number of Irradiation Events", 1, "{events}"),
                num("113813", "CT Dose Length Product Total", ctdi * coverage_mm / 10, "mGy.cm"),
            ],
        ),
        container("113819", "CT Acquisition", [num("113830", "Mean CTDIvol", ctdi, "mGy")]),
    ]


_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(range(256)) * 8


def _write_stray(folder: Path, study_id: str, uid: Callable[..., str]) -> None:
    (folder / "README.txt").write_text(f"Exported by SYNTH PACS for study {study_id}.\nNot for diagnostic use.\n")
    (folder / ".DS_Store").write_bytes(_DS_STORE)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MEDIA_DIRECTORY_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = uid("dicomdir")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "SYNTH"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    _save(ds, folder / "DICOMDIR")


def write_study(
    folder: Path, study: SyntheticStudy, profile: ScannerProfile, study_id: str, rng: np.random.Generator
) -> None:
    """Write ``study`` into the study folder ``folder`` as ``profile``'s scanner exports it (module docstring).
    UIDs derive from ``rng`` and ``study_id``; everything is deterministic in the state of ``rng``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    px, intercept = encode_pixels(study.hu, profile)
    token = str(int(rng.integers(2**62)))
    uid = lambda *parts: generate_uid(entropy_srcs=[token, study_id, *map(str, parts)])  # noqa: E731
    date = (_dt.date(2020, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 1800)))).strftime("%Y%m%d")
    ps, spacing, z = study.pixel_spacing_mm, profile.spacing_mm, study.z_mm
    extras, enhanced = set(profile.extras), profile.transfer_syntax == "enhanced"
    syntax = _SYNTAX[profile.transfer_syntax]
    images, ipp, iop, spacing_rc, between, inst, loc = _oriented(
        px, z, ps, study.origin_mm, spacing, profile.orientation, profile.feet_first
    )
    primary = 2 if "localizer" in extras else 1
    counts = {primary: 1 if enhanced else len(images)}
    n_thick = len(z) // 2 if "thick" in extras else 0
    for no, n in (
        (1, 2 * ("localizer" in extras)),
        (3, n_thick),
        (998, int("secondary" in extras)),
        (999, int("dose" in extras)),
    ):
        if n:
            counts[no] = n
    paths = _file_paths(folder, profile, counts, rng)

    common = Dataset()  # patient, study, equipment: shared by every file
    common.SpecificCharacterSet = "ISO_IR 100"
    common.StudyDate = common.SeriesDate = common.ContentDate = date
    common.StudyTime = common.SeriesTime = common.ContentTime = "120000"
    common.AccessionNumber = ""
    common.ReferringPhysicianName = ""
    common.Modality = "CT"
    common.Manufacturer = profile.manufacturer
    common.ManufacturerModelName = profile.name
    common.StudyDescription = "Synthetic abdominal CT"
    common.PatientName = "Synthetic^" + study_id.replace("-", "")
    common.PatientID = f"SYNTH-{study_id}"
    common.PatientBirthDate = ""
    common.PatientSex = study.sex
    common.PatientAge = f"{study.age:03d}Y"
    common.StudyInstanceUID = uid("study")
    common.StudyID = study_id[-16:]

    def ct(series_no: int, description: str, image_type: list[str]) -> Dataset:
        ds = _new(common, CTImageStorage, syntax)
        ds.ImageType = image_type
        ds.SeriesDescription = description
        ds.BodyPartExamined = "ABDOMEN"
        if profile.contrast:
            ds.ContrastBolusAgent = "Iodinated contrast"
        ds.KVP = _ds(profile.kvp)
        ds.PatientPosition = "FFS" if profile.feet_first else "HFS"
        ds.SeriesInstanceUID = uid("series") if series_no == primary else uid("series", series_no)
        ds.SeriesNumber = series_no
        ds.FrameOfReferenceUID = uid("frame")
        ds.PositionReferenceIndicator = ""
        return ds

    # primary series
    image_type = (
        ["DERIVED", "PRIMARY", "REFORMATTED"] if profile.orientation == "coronal" else ["ORIGINAL", "PRIMARY", "AXIAL"]
    )
    ds = ct(primary, _PHASE_TEXT[profile.phase], image_type)
    thickness = ps if profile.orientation == "coronal" else profile.slice_thickness_mm
    _image_pixel(ds, *images.shape[1:], profile)
    if enhanced:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = EnhancedCTImageStorage
        _write_enhanced(
            ds, images, ipp, iop, spacing_rc, between, thickness, inst, image_type, paths[primary][0], uid, intercept
        )
    else:
        ds.SliceThickness, ds.SpacingBetweenSlices = _ds(thickness), _ds(between)
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(v) for v in spacing_rc]
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        _write_slices(ds, images, ipp, inst, loc, paths[primary], uid, "image", syntax)

    if "localizer" in extras:  # AP and lateral projections of the whole volume
        ds = ct(1, "Topogram", ["ORIGINAL", "PRIMARY", "LOCALIZER"])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        att = np.clip(study.hu + 1000.0, 0, None)
        views = [
            (np.clip(np.rint(att.mean(axis=a) * 4), 0, 4095).astype(np.uint16), iop_, pos)
            for a, iop_, pos in (
                (1, [1, 0, 0, 0, 0, -1], (study.origin_mm[0], 0.0, z[0])),
                (2, [0, 1, 0, 0, 0, -1], (0.0, study.origin_mm[1], z[0])),
            )
        ]
        _image_pixel(ds, *views[0][0].shape)
        ds.PixelSpacing = [_ds(spacing), _ds(ps)]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        for i, (img, iop_, pos) in enumerate(views):
            ds.ImageOrientationPatient = iop_
            _write_slices(ds, [img], [pos], [i + 1], [0.0], paths[1], uid, f"localizer{i}", ExplicitVRLittleEndian)
    if n_thick:  # a thicker axial reconstruction: pairs averaged
        pairs = slice(0, 2 * n_thick)
        hu2 = (study.hu[pairs][0::2] + study.hu[pairs][1::2]) / 2
        z2 = (z[pairs][0::2] + z[pairs][1::2]) / 2
        px2 = encode_pixels(hu2, profile)[0]
        orient = "standard" if profile.orientation == "coronal" else profile.orientation
        im2, ipp2, iop2, _, _, inst2, loc2 = _oriented(
            px2, z2, ps, study.origin_mm, 2 * spacing, orient, profile.feet_first
        )
        syntax2 = ExplicitVRLittleEndian if enhanced else syntax
        ds = ct(3, _PHASE_TEXT[profile.phase] + " thick", ["ORIGINAL", "PRIMARY", "AXIAL"])
        ds.file_meta.TransferSyntaxUID = syntax2
        ds.SliceThickness, ds.SpacingBetweenSlices = _ds(2 * profile.slice_thickness_mm), _ds(2 * spacing)
        _image_pixel(ds, *im2.shape[1:], profile)
        ds.ImageOrientationPatient, ds.PixelSpacing = iop2, [_ds(ps), _ds(ps)]
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        _write_slices(ds, im2, ipp2, inst2, loc2, paths[3], uid, "thick", syntax2)
    if "secondary" in extras:  # a workstation screenshot of the largest slice
        ds = _new(common, SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
        ds.ConversionType = "WSD"
        ds.SeriesDescription = "Screen save"
        ds.SeriesInstanceUID, ds.SeriesNumber = uid("series", 998), 998
        grey = np.clip((study.hu[int(np.argmax(study.diameter_mm))] - 40 + 200) / 400 * 255, 0, 255)
        rgb = np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)
        rgb[: max(2, len(rgb) // 16), :, 1:] = 0  # a red burned-in banner
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.BurnedInAnnotation = "YES"
        ds.InstanceNumber = 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid("screen")
        ds.PixelData = rgb.tobytes()
        _save(ds, paths[998][0])
    if "dose" in extras:
        ds = _new(common, DOSE_SR_STORAGE, ExplicitVRLittleEndian)
        ds.Modality = "SR"
        ds.SeriesDescription = "Dose Report"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = uid("series", 999), 999, 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid("dose")
        _dose_sr(ds, profile, float(z[0] - z[-1] + spacing))
        _save(ds, paths[999][0])
    if "stray" in extras:
        _write_stray(folder, study_id, uid)
