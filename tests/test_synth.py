"""Tests for simulations.synth: DICOM validity, geometry, HU round-trip, anatomy, labels, determinism, reuse,
acquisition variants (checked by an independent pixel -> LPS mapping) and anatomy invariance across profiles."""

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage

from fedaaa.simulations.synth import (
    ACQUISITION_VARIANTS,
    EXTRAS,
    KINDS,
    MANIFEST_COLUMNS,
    OTHER_PROTOCOL_SHARE,
    Patient,
    ScannerProfile,
    SiteSpec,
    add_noise,
    default_sites,
    draw_patient,
    render_study,
    scan_patient,
    study_protocols,
    variant_profile,
    write_federation,
    write_site,
    write_study,
    write_variant,
)

PROFILE = ScannerProfile(matrix=64, noise_hu=12.0)
FAST = ScannerProfile(matrix=32, slice_thickness_mm=10.0)  # for folder logic only
SPEC = SiteSpec("hospital-t", n_studies=14, aaa_prevalence=0.43, profile=replace(FAST, matrix=48), seed=3)


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    files = sorted(folder.glob("*.dcm"))
    return sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))


def _rc(study, k, x, y):
    ps, (x0, y0) = study.pixel_spacing_mm, study.origin_mm
    return int(round((y - y0) / ps)), int(round((x - x0) / ps))


def _widths(study, k, patient):
    """Aortic width along x through its centre on slice k: (run length above the fat/wall midpoint, sub-pixel
    fat/wall mix). (A fixed -50 HU cut passed only by luck where the fat is -60 HU and the noise 12 HU.)"""
    cx, cy = study.aorta_center_mm[k]
    r, c = _rc(study, k, cx, cy)
    line = study.hu[k, r]
    ps, t = study.pixel_spacing_mm, patient.anatomy.tissues
    cut = (t.visceral_fat + t.vessel_wall) / 2
    lo = hi = c
    while line[lo - 1] > cut:
        lo -= 1
    while line[hi + 1] > cut:
        hi += 1
    frac = np.clip((line[lo - 1 : hi + 2] - t.visceral_fat) / (t.vessel_wall - t.visceral_fat), 0, 1)
    return (hi - lo + 1) * ps, frac.sum() * ps


def _alone(patient: Patient, plain: bool = False) -> Patient:
    """The patient without the neighbours that may touch the aorta (IVC and iliac veins, left renal vein, abutting
    bowel, close kidneys, the diaphragmatic crura, the vertebra under a sunken sac) nor the distractors (pelvis,
    bladder, liver, spleen, lungs): to check the aorta's own geometry in the image. ``plain``: no calcification
    either, and thrombus as dense as the wall (the outer wall's partial volume then mixes only fat and wall)."""
    anatomy = replace(
        patient.anatomy,
        aorta=replace(patient.anatomy.aorta, sink=0.0),
        cava=None,
        renal_vein=None,
        kidney_gap_mm=10.0,
        bowel_gap_mm=15.0,
        distractors=None,
        crura=None,
    )
    if plain:
        aorta, wall = anatomy.aorta, anatomy.tissues.vessel_wall
        thrombus = aorta.thrombus and replace(aorta.thrombus, hu=max(aorta.thrombus.hu, wall))
        anatomy = replace(anatomy, aorta=replace(aorta, calcifications=(), thrombus=thrombus))
    return replace(patient, anatomy=anatomy)


def _bare(patient: Patient) -> Patient:
    """The patient without the distractors (pelvis, bladder, liver, spleen, lung bases)."""
    return replace(patient, anatomy=replace(patient.anatomy, distractors=None))


def _render_alone(seed, profile, kind, sex, plain=False):
    """render_study of ``_alone(patient, plain)``: (study, patient)."""
    rng = np.random.default_rng(seed)
    patient = _alone(draw_patient(rng, kind, sex), plain)
    study = scan_patient(patient, profile)
    add_noise(study.hu, profile.noise_hu, rng)
    return study, patient


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return write_site(tmp_path_factory.mktemp("fed"), SPEC)


@pytest.fixture(scope="module")
def manifest(site) -> list[dict]:
    with open(site / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- DICOM series
@pytest.mark.parametrize("signed", [False, True])
def test_series_geometry_and_hu_round_trip(tmp_path, signed):
    profile = replace(PROFILE, signed=signed, fov_mm=347.0, slice_thickness_mm=3.0, contrast=not signed)
    rng = np.random.default_rng(11)
    study = render_study(rng, profile, "aneurysm", "M")
    write_study(tmp_path, study, profile, "t-0001", rng)
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == len(study.z_mm) == study.hu.shape[0]
    dss = [pydicom.dcmread(f) for f in files]
    assert [int(d.InstanceNumber) for d in dss] != sorted(int(d.InstanceNumber) for d in dss)  # names shuffled
    dss.sort(key=lambda d: int(d.InstanceNumber))
    assert len({d.SeriesInstanceUID for d in dss}) == 1 and len({d.SOPInstanceUID for d in dss}) == len(dss)
    ps = 347.0 / 64
    expected_hu = np.clip(np.rint(study.hu), -1024, 3071)
    for k, d in enumerate(dss):
        assert d.Modality == "CT" and d.SOPClassUID == CTImageStorage
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert (d.Rows, d.Columns) == (64, 64)
        assert [float(v) for v in d.PixelSpacing] == pytest.approx([ps, ps], abs=1e-9)
        x, y, z = (float(v) for v in d.ImagePositionPatient)
        assert x == pytest.approx(-347.0 / 2 + ps / 2) and y == pytest.approx(x)
        assert float(d.SliceLocation) == z == pytest.approx(study.z_mm[k])
        assert int(d.PixelRepresentation) == int(signed)
        assert float(d.RescaleIntercept) == (0 if signed else -1024) and float(d.RescaleSlope) == 1
        assert ("ContrastBolusAgent" in d) == profile.contrast
        assert d.PatientID == "SYNTH-t-0001" and d.PatientSex == "M"
        hu = d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_array_equal(hu, expected_hu[k])
    zs = np.array([float(d.ImagePositionPatient[2]) for d in dss])
    np.testing.assert_allclose(np.diff(zs), -3.0)  # InstanceNumber 1 = head, equally spaced
    assert float(dss[0].SliceThickness) == float(dss[0].SpacingBetweenSlices) == 3.0


# ------------------------------------------------------------------------------------------- anatomy
@pytest.mark.parametrize("contrast", [True, False])
def test_anatomy_is_where_promised(contrast):
    profile = replace(PROFILE, matrix=96, noise_hu=0.0, contrast=contrast)
    study, patient = _render_alone(5, profile, "normal", "F")
    fat, marrow = patient.anatomy.tissues.visceral_fat, patient.anatomy.body.marrow_hu
    marrow += patient.anatomy.tissues.marrow_shift
    aortic = np.flatnonzero(study.diameter_mm > 0)
    assert 0 < len(aortic) < len(study.z_mm)  # bifurcation inside the study
    hu = study.hu
    assert (hu[:, 0, 0] == -1000).all() and (hu[:, -1, -1] == -1000).all()
    for k in aortic:
        v = hu[k][_rc(study, k, *study.aorta_center_mm[k])]
        assert (v > 150) if contrast else (30 <= v <= 50), (k, v)
        # ring 1 px .. 9 mm outside the outer wall, anterior half: periaortic fat only (no bowel, kidney)
        ps, (x0, y0) = study.pixel_spacing_mm, study.origin_mm
        yy, xx = np.mgrid[:96, :96] * ps + np.array([y0, x0])[:, None, None]
        cx, cy = study.aorta_center_mm[k]
        dist = np.hypot(xx - cx, yy - cy) - study.diameter_mm[k] / 2
        ring = (dist > ps) & (dist < 9) & (yy < cy)
        assert ring.any() and (hu[k][ring] < fat + 1).all(), k
    # spine: cancellous bone right behind (posterior to) the aorta, near x = 0, inside a brighter cortex
    body = patient.anatomy.body
    k = next(k for k in aortic if not body.is_disc(study.z_mm[k] - patient.anatomy.z_lo_mm))
    col = hu[k][:, _rc(study, k, 0.0, 0.0)[1]]
    r_aorta, r_body = _rc(study, k, *study.aorta_center_mm[k])[0], _rc(study, k, 0.0, body.vertebra_y)[0]
    assert r_body > r_aorta and abs(col[r_body] - marrow) < 30  # cancellous bone
    ps = study.pixel_spacing_mm
    rim = col[r_body - int(body.vertebra_radius / ps) - 1 : r_body - int((body.vertebra_radius - 4) / ps)]
    assert rim.max() > marrow + 40  # its cortical shell in front (partial volume at 3.75 mm)


@pytest.mark.parametrize("seed", range(9))
def test_max_diameter_is_measurable(seed):
    kind = KINDS[seed % 3]
    for noise in (0.0, 12.0):
        profile = replace(PROFILE, matrix=96, noise_hu=noise)
        study, patient = _render_alone(seed, profile, kind, "MF"[seed % 2], plain=True)
        k = int(np.argmax(study.diameter_mm))
        assert study.z_mm[k] == study.max_z_mm
        assert study.max_diameter_mm == round(float(study.diameter_mm[k]), 1)
        lo, hi = {"normal": (15, 24), "ectatic": (25, 29.5), "aneurysm": (30, 80)}[kind]
        assert lo <= study.max_diameter_mm <= hi and study.aaa == (kind == "aneurysm")
        run, subpixel = _widths(study, k, patient)
        ps = study.pixel_spacing_mm
        assert abs(run - study.max_diameter_mm) <= 1.5 * ps, (noise, run, study.max_diameter_mm)
        if noise == 0:
            assert abs(subpixel - study.max_diameter_mm) <= 0.75 * ps, (subpixel, study.max_diameter_mm)


def test_aneurysms_have_thrombus_and_calcification_variety():
    profile = replace(PROFILE, matrix=96, noise_hu=0.0)
    lumen_fracs, calcified = [], []
    for seed in range(12):
        s = render_study(np.random.default_rng(100 + seed), profile, "aneurysm", "M")
        ps, (x0, y0) = s.pixel_spacing_mm, s.origin_mm
        yy, xx = np.mgrid[:96, :96] * ps + np.array([y0, x0])[:, None, None]
        k = np.flatnonzero(s.diameter_mm > 0)
        cx, cy = s.aorta_center_mm[k, 0, None, None], s.aorta_center_mm[k, 1, None, None]
        inside = np.hypot(xx - cx, yy - cy) < s.diameter_mm[k, None, None] / 2 - ps
        calcified.append(bool((s.hu[k][inside] > 450).any()))
        m = int(np.argmax(s.diameter_mm[k]))
        lumen_fracs.append(((s.hu[k[m]] > 150) & inside[m]).sum() / inside[m].sum())
    assert min(lumen_fracs) < 0.6 < max(lumen_fracs)  # thrombus in some, not all
    assert any(calcified) and not all(calcified)


# ------------------------------------------------------------------------------------------- variety (SynthSeg-like)
def _patients(kind, n, start=0):
    return [draw_patient(np.random.default_rng(start + i), kind, "MF"[i % 2]) for i in range(n)]


def _first(kind, sex, condition):
    """The first seed (and its patient) whose patient meets ``condition``."""
    for seed in range(2000):
        patient = draw_patient(np.random.default_rng(seed), kind, sex)
        if condition(patient):
            return seed, patient
    raise AssertionError("no such patient in 2000 seeds")


def test_thrombus_fill_covers_none_to_most_of_the_sac():
    aneurysms = _patients("aneurysm", 400)
    thrombi = [p.anatomy.aorta.thrombus for p in aneurysms if p.anatomy.aorta.thrombus is not None]
    assert 0.72 < len(thrombi) / len(aneurysms) < 0.88  # about 4 in 5
    fill = np.array([t.fill for t in thrombi])
    assert 0 <= fill.min() < 0.05 and 0.85 < fill.max() <= 0.9
    assert np.histogram(fill, bins=9, range=(0, 0.9))[0].min() >= 0.05 * len(fill)  # spread over the whole range
    assert all(25 <= t.hu <= 60 for t in thrombi) and max(t.eccentricity for t in thrombi) > 0.95  # crescents
    ectatic = [p.anatomy.aorta.thrombus for p in _patients("ectatic", 200)]
    layers = [t for t in ectatic if t is not None]
    assert 0.18 < len(layers) / len(ectatic) < 0.42 and all(0.05 <= t.fill <= 0.3 for t in layers)  # thin layers
    assert all(p.anatomy.aorta.thrombus is None for p in _patients("normal", 50))


def test_crescent_thrombus_and_the_label_on_the_outer_wall():
    seed, patient = _first(
        "aneurysm", "M", lambda p: (t := p.anatomy.aorta.thrombus) and t.fill > 0.8 and t.eccentricity > 0.9
    )
    profile = ScannerProfile(matrix=240, fov_mm=240.0, slice_thickness_mm=2.5, noise_hu=0.0, contrast_phase="portal")
    s = scan_patient(_alone(patient), profile)  # 1 mm pixels
    t, aorta = patient.anatomy.aorta.thrombus, patient.anatomy.aorta
    k = int(np.argmax(s.diameter_mm))
    yy, xx = np.mgrid[:240, :240] * s.pixel_spacing_mm + np.array(s.origin_mm[::-1])[:, None, None]
    (cx, cy), R = s.aorta_center_mm[k], s.diameter_mm[k] / 2
    ri = R - aorta.wall_mm
    inner = np.hypot(xx - cx, yy - cy) < ri - 2.5  # inside the wall, clear of the calcifications
    lumen = inner & (s.hu[k] > 100)
    rl = ri * np.sqrt(1 - t.fill)  # at the maximum, thrombus covers ``fill`` of the area inside the wall
    assert lumen.sum() == pytest.approx(np.pi * rl**2, rel=0.1) and lumen.sum() < 0.25 * inner.sum()
    thrombus = inner & (np.abs(s.hu[k] - t.hu) < 1)
    assert thrombus.sum() > 2 * lumen.sum()
    # the residual lumen is pushed to one side: a crescent of thrombus, thickest opposite
    off = np.array([xx[lumen].mean() - cx, yy[lumen].mean() - cy])
    assert np.hypot(*off) > 0.8 * t.eccentricity * (ri - rl)
    assert np.dot(off, [np.cos(t.direction), np.sin(t.direction)]) > 0.9 * np.hypot(*off)
    # the label is the disc of the outer wall, centred on the aorta, not on its lumen
    label = s.aorta_mask[k]
    assert label.sum() == pytest.approx(np.pi * R**2, rel=0.03)
    assert abs(xx[label].mean() - cx) < 0.3 and abs(yy[label].mean() - cy) < 0.3


def test_neighbours_touch_the_aorta_but_are_not_labelled():
    seed, patient = _first("normal", "F", lambda p: p.anatomy.thin and p.anatomy.cava.gap_mm < 0.3)
    profile = replace(PROFILE, matrix=192, fov_mm=288.0, slice_thickness_mm=2.5, noise_hu=0.0, contrast_phase="portal")
    crowded, alone = scan_patient(patient, profile), scan_patient(_alone(patient), profile)  # 1.5 mm pixels
    # the same truth and the same label: the aorta only, to its outer wall
    assert crowded.truth("x") == alone.truth("x")
    np.testing.assert_array_equal(crowded.diameter_mm, alone.diameter_mm)
    np.testing.assert_array_equal(crowded.aorta_mask, alone.aorta_mask)
    ps = crowded.pixel_spacing_mm
    yy, xx = np.mgrid[:192, :192] * ps + np.array(crowded.origin_mm[::-1])[:, None, None]
    vein_lo, vein_hi = 120, 180  # portal phase IVC and renal vein
    aortic = np.flatnonzero(crowded.diameter_mm > 0)
    h = crowded.z_mm - patient.anatomy.z_lo_mm
    touching = below_crus = 0
    for k in aortic:
        (cx, cy), R = crowded.aorta_center_mm[k], crowded.diameter_mm[k] / 2
        dist = np.hypot(xx - cx, yy - cy) - R
        ivc = (crowded.hu[k] != alone.hu[k]) & (crowded.hu[k] >= vein_lo) & (crowded.hu[k] <= vein_hi) & (xx < cx - R)
        assert ivc.sum() * ps**2 > 0.5 * np.pi * 9 * 6, k  # the IVC, right of the aorta, on every aortic slice
        assert not (ivc & crowded.aorta_mask[k]).any()
        if h[k] < patient.anatomy.crura.low_h[1]:  # higher up the right crus lies between them, as in life
            touching += bool(dist[ivc].min() < 2.5)
            below_crus += 1
    assert touching > below_crus / 2  # in a thin patient it lies against the aorta
    # the left renal vein crosses in front of the aorta, unlabelled
    k = int(np.argmin(np.abs(h - patient.anatomy.renal_vein.h)))
    (cx, cy), R = crowded.aorta_center_mm[k], crowded.diameter_mm[k] / 2
    front = (np.abs(xx - cx) < R / 2) & (yy < cy - R) & (yy > cy - R - 15)
    vein = front & (crowded.hu[k] >= vein_lo) & (crowded.hu[k] <= vein_hi)
    assert vein.any() and not (vein & crowded.aorta_mask[k]).any()
    assert not (alone.hu[k][front] > 0).any()  # fat there without it


def test_crura_hug_the_upper_aorta_unlabelled():
    """Above the kidneys' upper poles the crura wrap the aorta in muscle, with no fat plane in front when they
    have joined (as on real CT); below their lower ends the aorta keeps its own fat; never labelled."""
    seed, patient = _first(
        "normal",
        "M",
        lambda p: p.anatomy.crura.gap_mm < 0.5 and p.anatomy.crura.arcuate_h < p.anatomy.scan_range[1] - 10,
    )
    profile = replace(PROFILE, matrix=192, fov_mm=288.0, slice_thickness_mm=2.5, noise_hu=0.0, contrast_phase="portal")
    with_crura = scan_patient(patient, profile)
    without = scan_patient(replace(patient, anatomy=replace(patient.anatomy, crura=None)), profile)
    np.testing.assert_array_equal(with_crura.aorta_mask, without.aorta_mask)  # not labelled
    crura, muscle = patient.anatomy.crura, patient.anatomy.tissues.muscle
    h = with_crura.z_mm - patient.anatomy.z_lo_mm
    ps = with_crura.pixel_spacing_mm
    yy, xx = np.mgrid[:192, :192] * ps + np.array(with_crura.origin_mm[::-1])[:, None, None]
    joined = below = 0
    for k in np.flatnonzero(with_crura.diameter_mm > 0):
        (cx, cy), R = with_crura.aorta_center_mm[k], with_crura.diameter_mm[k] / 2
        dist = np.hypot(xx - cx, yy - cy) - R
        front = (np.abs(xx - cx) < R / 3) & (yy < cy) & (dist > 1.0) & (dist < 2.5)
        changed = with_crura.hu[k] != without.hu[k]
        if h[k] > crura.arcuate_h + 2:  # joined in front: muscle right against the wall
            assert front.any() and np.allclose(with_crura.hu[k][front], muscle), k
            joined += 1
        if h[k] < min(crura.low_h) - 2:  # below both: nothing painted
            assert not changed.any(), k
            below += 1
        assert not (changed & (dist < -ps)).any(), k  # outside the outer wall (its partial-volume pixels mix)
    assert joined >= 2 and below >= 2


@pytest.mark.parametrize("phase", ["arterial", "portal", "none"])
def test_ivc_hu_follows_the_contrast_phase(phase):
    seed, patient = _first("normal", "M", lambda p: p.anatomy.cava.gap_mm > 3)
    profile = replace(
        PROFILE, matrix=96, noise_hu=0.0, contrast=phase != "none", contrast_phase=phase.replace("none", "arterial")
    )
    s = scan_patient(patient, profile)
    cava = patient.anatomy.cava
    k = int(np.flatnonzero(s.diameter_mm > 0)[len(np.flatnonzero(s.diameter_mm > 0)) // 2])
    # the IVC centre: right of the aorta, its posterior edge 3 + y_shift mm in front of the vertebral body
    y = patient.anatomy.body.spine_front_y - 3 - cava.y_shift - cava.semi_y
    ps, (x0, y0) = s.pixel_spacing_mm, s.origin_mm
    row = s.hu[k, int(round((y - y0) / ps))]
    cols = x0 + np.arange(96) * ps < s.aorta_center_mm[k, 0] - s.diameter_mm[k] / 2 - cava.gap_mm - 3
    lo, hi = {"arterial": (60, 120), "portal": (120, 180), "none": (35, 45)}[phase]
    assert ((row >= lo - 0.01) & (row <= hi + 0.01) & cols).sum() >= 3


def test_tissue_hu_varies_between_patients():
    patients = _patients("normal", 200)
    for name, lo, hi in (
        ("subcutaneous_fat", -130, -70),
        ("visceral_fat", -130, -60),
        ("muscle", 30, 70),
        ("vessel_wall", 30, 70),
        ("bowel_wall", 25, 80),
        ("cortical_bone", 600, 1000),
    ):
        v = np.array([getattr(p.anatomy.tissues, name) for p in patients])
        assert lo <= v.min() and v.max() <= hi and v.max() - v.min() > 0.8 * (hi - lo), name
    contrast = np.array([p.anatomy.tissues.vessel_wall - p.anatomy.tissues.visceral_fat for p in patients])
    assert contrast.max() - contrast.min() > 60  # the wall stands out of the fat by 90 to 200 HU
    assert 0.1 <= np.mean([p.anatomy.thin for p in patients + _patients("ectatic", 300)]) <= 0.2  # thin patients
    # and the images follow: anterior subcutaneous fat and the visceral fat at the image centre take the drawn HU
    profile = replace(PROFILE, matrix=96, noise_hu=0.0)
    for p in patients[:3]:
        p = _bare(p)  # (the liver or a lung may lie at the right-hand point on the head-most slice)
        s, b, t = scan_patient(p, profile), p.anatomy.body, p.anatomy.tissues
        r, c = _rc(s, 0, 0.0, -(b.half_depth - b.fat_mm / 2))
        assert s.hu[0, r, c] == pytest.approx(t.subcutaneous_fat, abs=0.01)
        r, c = _rc(s, 0, -b.inner_half_width + 8, 0.0)
        assert s.hu[0, r, c] == pytest.approx(t.visceral_fat, abs=0.01)


def test_scan_range_and_infrarenal_sac():
    patients = _patients("aneurysm", 300) + _patients("normal", 100, start=300)
    lo, hi = np.array([p.anatomy.scan_range for p in patients]).T
    length = hi - lo
    assert 200 <= length.min() < 210 and 310 < length.max() <= 320
    bif = np.array([p.anatomy.aorta.diameter.bifurcation_h for p in patients])
    assert 15 - 1e-9 <= (bif - lo).min() < 25 and 100 < (bif - lo).max() <= 110 + 1e-9  # varied bifurcation height
    renal = np.array([p.anatomy.renal_vein.h for p in patients])
    assert (hi - renal).min() > 10 and (hi - renal).max() - (hi - renal).min() > 60  # above the renal veins, varied
    for p in patients[:300]:
        d = p.anatomy.aorta.diameter
        lo_p, hi_p = p.anatomy.scan_range
        assert lo_p < d.max_h and d.max_h + d.sac_length_mm / 2 < p.anatomy.renal_vein.h - 20  # infrarenal, scanned
    s = scan_patient(patients[0], replace(PROFILE, slice_thickness_mm=2.5))
    h = s.z_mm - patients[0].anatomy.z_lo_mm
    assert lo[0] - 1e-9 <= h.min() < lo[0] + 2.5 and hi[0] - 2.5 < h.max() <= hi[0] + 1e-9


def test_sunken_sac_wraps_round_the_vertebra():
    """GENERATOR_VERSION 7: a sac that sinks (Aorta.sink) reaches back beside the vertebral body, which stays in
    front of it (bone or disc) and out of the label; one that does not keeps its back 3 mm in front of the spine.
    Its widest chord is still the truth (the lateral one, through its centre)."""
    sinks = np.array([p.anatomy.aorta.sink for p in _patients("aneurysm", 200)])
    assert sinks.min() < 0.05 and sinks.max() > 0.65 and 0.25 < sinks.mean() < 0.45  # from none to most
    _, patient = _first("aneurysm", "M", lambda p: p.anatomy.aorta.diameter.peak_mm > 60)
    body = patient.anatomy.body
    profile = replace(PROFILE, matrix=240, fov_mm=360.0, slice_thickness_mm=2.0, noise_hu=0.0)
    backs = {}
    for sink in (0.0, 0.7):
        alone = _alone(patient)
        s = scan_patient(
            replace(alone, anatomy=replace(alone.anatomy, aorta=replace(alone.anatomy.aorta, sink=sink))), profile
        )
        k = int(np.argmax(s.diameter_mm))
        ps, (x0, y0) = s.pixel_spacing_mm, s.origin_mm
        yy, xx = np.mgrid[:240, :240] * ps + np.array([y0, x0])[:, None, None]
        label = s.aorta_mask[k]
        backs[sink] = yy[label].max()  # LPS: +y is posterior
        in_vertebra = np.hypot(xx, yy - body.vertebra_y) < body.vertebra_radius - ps
        assert not (label & in_vertebra).any()
        centre = s.hu[k][_rc(s, k, 0.0, body.vertebra_y)]
        marrow = patient.anatomy.body.marrow_hu + patient.anatomy.tissues.marrow_shift
        assert abs(centre - marrow) < 1 or abs(centre - body.disc_hu) < 1  # cancellous bone, or a disc
        row = label[_rc(s, k, *s.aorta_center_mm[k])[0]]
        assert row.sum() * ps == pytest.approx(s.diameter_mm[k], abs=2 * ps)
    assert backs[0.0] <= body.spine_front_y - 3 + ps
    assert backs[0.7] > body.spine_front_y + 5  # beside the vertebral body, over the psoas


def test_intervertebral_discs_are_soft_tissue():
    """GENERATOR_VERSION 7: every 30-38 mm of height the vertebral body is a 6-10 mm disc of soft tissue (60-110
    HU), right behind the aorta and not aorta."""
    patient = _alone(draw_patient(np.random.default_rng(4), "normal", "F"))
    body = patient.anatomy.body
    assert 30 <= body.disc_period_mm <= 38 and 6 <= body.disc_mm <= 10 and 60 <= body.disc_hu <= 110
    s = scan_patient(patient, replace(PROFILE, matrix=96, slice_thickness_mm=1.0, noise_hu=0.0))
    h = s.z_mm - patient.anatomy.z_lo_mm
    disc = np.array([body.is_disc(v) for v in h])
    assert 0.15 < disc.mean() < 0.35
    centre = np.array([s.hu[k][_rc(s, k, 0.0, body.vertebra_y)] for k in range(len(h))])
    np.testing.assert_allclose(centre[disc], body.disc_hu, atol=0.5)
    np.testing.assert_allclose(centre[~disc], body.marrow_hu + patient.anatomy.tissues.marrow_shift, atol=0.5)
    assert not any(s.aorta_mask[k][_rc(s, k, 0.0, body.vertebra_y)] for k in range(len(h)))


def test_vertebral_bone_from_young_to_osteoporotic():
    """GENERATOR_VERSION 8: the screened population's vertebral bodies, from dense to osteoporotic trabecular bone
    (70-280 HU) inside a cortical shell from under a millimetre to 2.5 mm; no patient has the bright 2-3 mm ring
    round 160-280 HU bone that every one had before."""
    patients = _patients("aneurysm", 200)
    marrow = np.array([p.anatomy.body.marrow_hu + p.anatomy.tissues.marrow_shift for p in patients])
    shell = np.array([p.anatomy.body.cortex_mm for p in patients])
    assert 70 <= marrow.min() < 110 and 220 < marrow.max() <= 280  # osteoporotic (<= 110 HU at L1) to young
    assert 0.2 < np.mean(marrow <= 160) < 0.6
    assert 0.6 <= shell.min() < 1.0 and 2.0 < shell.max() <= 2.5
    patient = _alone(next(p for p in patients if p.anatomy.body.marrow_hu + p.anatomy.tissues.marrow_shift < 120))
    body = patient.anatomy.body
    s = scan_patient(patient, replace(PROFILE, matrix=240, fov_mm=360.0, slice_thickness_mm=2.0, noise_hu=0.0))
    h = s.z_mm - patient.anatomy.z_lo_mm
    k = next(k for k in range(len(h)) if not body.is_disc(h[k]))
    r, c = _rc(s, k, 0.0, body.vertebra_y)
    assert s.hu[k][r, c] < 120  # osteoporotic bone reads below an enhanced lumen
    assert s.hu[k][r - int(body.vertebra_radius / s.pixel_spacing_mm) :, c][:4].max() > s.hu[k][r, c] + 100  # its shell


def test_calcification_from_none_to_rings():
    patients = _patients("aneurysm", 300)
    counts = np.array([len(p.anatomy.aorta.calcifications) for p in patients])
    assert 0.15 < np.mean(counts == 0) < 0.4 and counts.max() >= 15
    spans = [c.arc for p in patients for c in p.anatomy.aorta.calcifications]
    assert min(spans) < 0.2 and sum(s >= 2 * np.pi for s in spans) >= 10  # from dots to rings
    # a ring is painted just inside the outer wall and leaves the label alone
    seed, patient = _first("aneurysm", "F", lambda p: any(c.arc >= 2 * np.pi for c in p.anatomy.aorta.calcifications))
    ring = next(c for c in patient.anatomy.aorta.calcifications if c.arc >= 2 * np.pi)
    profile = replace(PROFILE, matrix=240, fov_mm=240.0, slice_thickness_mm=1.0, noise_hu=0.0)
    s = scan_patient(patient, profile)
    bare = scan_patient(
        replace(patient, anatomy=replace(patient.anatomy, aorta=replace(patient.anatomy.aorta, calcifications=()))),
        profile,
    )
    np.testing.assert_array_equal(s.aorta_mask, bare.aorta_mask)
    k = int(np.argmin(np.abs(s.z_mm - patient.anatomy.z_lo_mm - ring.h)))
    yy, xx = np.mgrid[:240, :240] * s.pixel_spacing_mm + np.array(s.origin_mm[::-1])[:, None, None]
    (cx, cy), R = s.aorta_center_mm[k], s.diameter_mm[k] / 2
    plaque = s.hu[k] != bare.hu[k]
    ang = np.arctan2(yy - cy, xx - cx)[plaque]
    assert np.histogram(ang, bins=12, range=(-np.pi, np.pi))[0].min() > 0  # all the way round
    r = np.hypot(xx - cx, yy - cy)[plaque]
    assert r.max() < R + 0.5 and r.min() > R - 2 * 1.5 - 0.3 - 1  # plaques (<= 3 mm thick) inside the outer wall


# ------------------------------------------------------------------------------------------- distractors
def _grid_mm(study):
    """(x, y) of every pixel centre, each (rows, cols)."""
    n, ps, (x0, y0) = study.hu.shape[1], study.pixel_spacing_mm, study.origin_mm
    yy, xx = np.mgrid[:n, :n] * ps + np.array([y0, x0])[:, None, None]
    return xx, yy


@pytest.mark.parametrize(("seed", "kind"), [(0, "normal"), (2, "aneurysm"), (4, "ectatic"), (11, "aneurysm")])
def test_distractors_change_neither_label_nor_truth_and_keep_off_the_aorta(seed, kind):
    patient = draw_patient(np.random.default_rng(seed), kind, "M")
    patient = replace(patient, anatomy=replace(patient.anatomy, bowel=()))  # (loops moved off an organ also differ)
    profile = ScannerProfile(matrix=192, fov_mm=288.0, slice_thickness_mm=2.5, noise_hu=0.0, tortuosity=0.6)
    with_d, without = scan_patient(patient, profile), scan_patient(_bare(patient), profile)  # 1.5 mm pixels
    assert with_d.truth("x") == without.truth("x")
    np.testing.assert_array_equal(with_d.aorta_mask, without.aorta_mask)
    np.testing.assert_array_equal(with_d.diameter_mm, without.diameter_mm)
    np.testing.assert_array_equal(with_d.aorta_center_mm, without.aorta_center_mm)
    changed = with_d.hu != without.hu
    assert changed.any()
    xx, yy = _grid_mm(with_d)
    for k in np.flatnonzero(with_d.diameter_mm > 0):  # nothing painted within 2 mm of the outer wall
        (cx, cy), R = (
            with_d.aorta_center_mm[k],
            with_d.diameter_mm[k] / 2 / np.cos(np.radians(with_d.aorta_tilt_deg[k])),
        )
        assert not (changed[k] & (np.hypot(xx - cx, yy - cy) < R + 2)).any(), k
    assert not (changed & with_d.aorta_mask).any()


def _first_scan(kind, condition, start=0):
    for seed in range(start, start + 500):
        patient = draw_patient(np.random.default_rng(seed), kind, "F")
        if condition(patient.anatomy):
            return patient
    raise AssertionError("no such patient in 500 seeds")


def test_pelvis_at_low_levels_is_bone_and_not_aorta():
    patient = _first_scan("aneurysm", lambda a: a.scan_lo_mm < a.distractors.pelvis.head_h)  # down to the hips
    a, p = patient.anatomy, patient.anatomy.distractors.pelvis
    profile = ScannerProfile(matrix=192, fov_mm=384.0, slice_thickness_mm=2.5, noise_hu=0.0)
    s, bare = scan_patient(patient, profile), scan_patient(_bare(patient), profile)
    h = s.z_mm - a.z_lo_mm
    xx, yy = _grid_mm(s)
    bone = (s.hu > 400) & (s.hu != bare.hu)  # bone that the distractors added
    lateral = np.abs(xx) > a.body.vertebra_radius + 10  # beside the spine: hip bones, not vertebra
    for level in (p.crest_h - 50, p.head_h):  # the iliac wings; the femoral heads in their cups
        k = int(np.argmin(np.abs(h - level)))
        for side in (xx < 0, xx > 0):
            assert (bone[k] & lateral & side).sum() * s.pixel_spacing_mm**2 > 150, (level, h[k])
    k = int(np.argmin(np.abs(h - p.head_h)))
    r, c = _rc(s, k, p.head_xy[0], p.head_xy[1])
    assert 100 < s.hu[k, r, c] < 350  # marrow in the femoral head, a cortical rim around it
    assert s.hu[k][np.abs(np.hypot(xx - p.head_xy[0], yy - p.head_xy[1]) - p.head_radius + 1) < 0.6].max() > 600
    assert not (s.aorta_mask & bone).any() and not s.aorta_mask[h < a.aorta.diameter.bifurcation_h].any()
    assert not (bone & (h > p.crest_h + 7)[:, None, None] & lateral).any()  # no hip bone above the crests
    # across patients: the hips' heads in some scans only, the wings in most, a bladder in about two in three
    anatomies = [draw_patient(np.random.default_rng(i), KINDS[i % 3], "MF"[i % 2]).anatomy for i in range(300)]
    hips = np.mean([x.scan_lo_mm < x.distractors.pelvis.roof_h for x in anatomies])
    wings = np.mean([x.scan_lo_mm < x.distractors.pelvis.crest_h - 20 for x in anatomies])
    assert 0.15 < hips < 0.6 < wings and 0.5 < np.mean([x.distractors.bladder is not None for x in anatomies]) < 0.8
    assert all(40 <= 2 * x.distractors.pelvis.head_radius <= 55 for x in anatomies)
    assert all(700 <= x.distractors.pelvis.cortex_hu <= 1000 for x in anatomies)


@pytest.mark.parametrize("phase", ["portal", "none"])
def test_liver_spleen_and_lungs_at_high_levels(phase):
    patient = _first_scan("normal", lambda a: a.scan_range[1] > max(a.distractors.lungs.base_h) + 40)
    a, d = patient.anatomy, patient.anatomy.distractors
    profile = ScannerProfile(
        matrix=128,
        fov_mm=384.0,
        noise_hu=0.0,
        contrast=phase != "none",
        contrast_phase="portal",
        slice_thickness_mm=2.5,
    )
    s, bare = scan_patient(patient, profile), scan_patient(_bare(patient), profile)
    h = s.z_mm - a.z_lo_mm
    xx, yy = _grid_mm(s)
    area = s.pixel_spacing_mm**2
    changed = s.hu != bare.hu
    top = changed[0] & (xx < 0) & (s.hu[0] >= 40) & (s.hu[0] <= 140)
    value = float(np.median(s.hu[0][top]))  # the liver's HU
    assert 80 <= value <= 130 if phase == "portal" else 50 <= value <= 70
    liver = changed & (np.abs(s.hu - value) < 0.5)
    assert (liver[0] & (xx < 0)).sum() * area > 5000  # a large organ on the right at the top of the scan
    below = liver[h < d.liver.tip_h - 1].sum((1, 2))
    assert below.size and below.max() < 0.01 * liver[0].sum()  # and none below its tip (bar partial-volume values)
    spleen = (s.hu != bare.hu) & (xx > a.body.vertebra_radius + 20) & (s.hu > 35) & (s.hu < 140)
    assert spleen[0].sum() * area > 300
    lung = changed & (np.abs(s.hu - d.lungs.hu) < 1)
    assert (lung[0] & (yy > 0)).sum() * area > 1000 and not (lung[0] & (yy < -a.body.inner_half_depth / 2)).any()
    assert not lung[h < min(d.lungs.base_h)].any()
    assert not (s.aorta_mask & (s.hu < -500)).any()
    # the lung bases show only in the top 30-80 mm of the scans that reach high enough
    anatomies = [draw_patient(np.random.default_rng(i), KINDS[i % 3], "F").anatomy for i in range(300)]
    depth = np.array([x.scan_range[1] - min(x.distractors.lungs.base_h) for x in anatomies])
    assert 0.2 < np.mean(depth > 0) < 0.8 and depth.max() <= 80
    assert all(-950 <= x.distractors.lungs.hu <= -850 for x in anatomies)


# ------------------------------------------------------------------------------------------- site folders
def test_manifest(site, manifest):
    assert list(manifest[0].keys()) == list(MANIFEST_COLUMNS)
    assert len(manifest) == SPEC.n_studies
    ids = [r["study_id"] for r in manifest]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"t-\d{4}", i) for i in ids)
    d = np.array([float(r["max_diameter_mm"]) for r in manifest])
    aaa = np.array([int(r["aaa"]) for r in manifest])
    assert all(re.fullmatch(r"\d+\.\d", r["max_diameter_mm"]) for r in manifest)
    np.testing.assert_array_equal(aaa, (d >= 30).astype(int))
    assert aaa.mean() == pytest.approx(SPEC.aaa_prevalence, abs=0.5 / SPEC.n_studies)
    assert ((d >= 25) & (d < 30)).sum() >= 2 and (d < 25).sum() >= 4  # ectatic hard negatives + normals
    splits = [r["split"] for r in manifest]
    assert set(splits) == {"train", "val", "test"}
    for s in ("train", "val", "test"):  # stratified: positives in every split
        assert any(r["split"] == s and r["aaa"] == "1" for r in manifest)
    assert splits.count("train") > splits.count("val")
    assert {r["sex"] for r in manifest} <= {"M", "F"}
    for r in manifest:
        assert r["path"] == f"studies/{r['study_id']}" and any((site / r["path"]).glob("IM*.dcm"))
    first = _read_series(site / manifest[0]["path"])
    assert first[0].PatientID == f"SYNTH-{manifest[0]['study_id']}"
    assert len({d.StudyInstanceUID for r in manifest[:3] for d in _read_series(site / r["path"])[:1]}) == 3
    with open(site / "truth.csv", newline="") as f:
        truth = {r["study_id"]: r for r in csv.DictReader(f)}
    for r in manifest:
        t = truth[r["study_id"]]
        assert (t["kind"] == "aneurysm") == (r["aaa"] == "1") and t["max_diameter_mm"] == r["max_diameter_mm"]
    zs = {float(d.ImagePositionPatient[2]) for d in first}
    assert float(truth[manifest[0]["study_id"]]["max_z_mm"]) in zs


def test_a_share_of_each_site_is_scanned_in_its_other_protocol(site, manifest):
    """A contrast hospital also writes non-contrast studies (and the other way round): the header says which,
    and the aorta really is bright or not. The anatomy draws are the study's own, whatever its protocol."""
    import nibabel as nib

    from fedaaa.common.io import read_study

    upper = {}
    for r in manifest:
        first = _read_series(site / r["path"])[0]
        plain = first.SeriesDescription == "Abdomen non-contrast"
        assert plain == ("ContrastBolusAgent" not in first)
        volume, label = read_study(site / r["path"]), np.asarray(nib.load(site / r["mask"]).dataobj) > 0
        upper[r["study_id"]] = (plain, float(np.percentile(volume.hu[label], 75)))
    plain = [hu for p, hu in upper.values() if p]
    contrast = [hu for p, hu in upper.values() if not p]
    assert 1 <= len(plain) < len(contrast)  # the site's own protocol stays the usual one
    assert max(plain) < 100 < min(contrast), upper
    protocols = study_protocols(SPEC.profile, 4000, np.random.default_rng(0))
    other = [p for p in protocols if p != SPEC.profile]
    assert len(other) / 4000 == pytest.approx(OTHER_PROTOCOL_SHARE, abs=0.03)
    assert all(p == replace(SPEC.profile, contrast=False) for p in other)
    # a study in the other protocol is the patient its own seed draws under the site's protocol
    with open(site / "truth.csv", newline="") as f:
        truth = {t["study_id"]: t for t in csv.DictReader(f)}
    i = next(k for k, r in enumerate(manifest) if upper[r["study_id"]][0])
    seq = np.random.SeedSequence(SPEC.seed)
    seq.spawn(1)  # the site's own draws (kinds, sexes, split)
    child = seq.spawn(SPEC.n_studies)[i]
    t = truth[manifest[i]["study_id"]]
    same = render_study(np.random.default_rng(child), SPEC.profile, t["kind"], t["sex"])
    assert (f"{same.max_diameter_mm:.1f}", f"{same.max_z_mm:.2f}") == (t["max_diameter_mm"], t["max_z_mm"])


def test_determinism(tmp_path):
    def series(seed, out):
        rng = np.random.default_rng(seed)
        write_study(out, render_study(rng, PROFILE, "aneurysm", "F"), PROFILE, "t-0002", rng)
        dss = _read_series(out)
        return np.stack([d.pixel_array for d in dss]), [d.SOPInstanceUID for d in dss], dss[0].StudyInstanceUID

    a, b, c = series(7, tmp_path / "a"), series(7, tmp_path / "b"), series(8, tmp_path / "c")
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    assert not set(a[1]) & set(c[1]) and a[2] != c[2]
    assert default_sites(seed=4) == default_sites(seed=4) != default_sites(seed=5)


def test_site_is_deterministic_and_reused(tmp_path):
    spec = replace(SPEC, n_studies=6, profile=FAST)
    s1, s2 = write_site(tmp_path / "r1", spec), write_site(tmp_path / "r2", spec)
    assert (s1 / "manifest.csv").read_text() == (s2 / "manifest.csv").read_text()
    assert json.loads((s1 / ".synth.json").read_text())["spec"]["seed"] == spec.seed
    dcm = sorted((s1 / "studies").rglob("*.dcm"))[0]
    stamps = ((s1 / "manifest.csv").stat().st_mtime_ns, dcm.stat().st_mtime_ns)
    assert write_site(tmp_path / "r1", spec) == s1
    assert ((s1 / "manifest.csv").stat().st_mtime_ns, dcm.stat().st_mtime_ns) == stamps
    # a different spec rewrites: fewer studies, stale ones removed
    smaller = replace(spec, n_studies=4, seed=9)
    write_site(tmp_path / "r1", smaller)
    with open(s1 / "manifest.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert len(list((s1 / "studies").iterdir())) == 4
    assert json.loads((s1 / ".synth.json").read_text())["spec"]["n_studies"] == 4
    # an incomplete folder (no marker) is rewritten too
    (s1 / ".synth.json").unlink()
    write_site(tmp_path / "r1", smaller)
    assert (s1 / ".synth.json").exists() and (s1 / "manifest.csv").stat().st_mtime_ns != stamps[0]


def test_default_sites_and_federation(tmp_path):
    sites = default_sites(n_sites=4, studies_per_site=60, seed=1, matrix=48)
    assert len({s.name for s in sites}) == 4 and all(s.profile.matrix == 48 for s in sites)
    assert all(42 <= s.n_studies <= 78 and 0.3 <= s.aaa_prevalence <= 0.5 for s in sites)
    assert any(not s.profile.contrast for s in sites) and any(s.profile.contrast for s in sites)
    assert {s.profile.signed for s in sites} == {True, False}
    assert {s.profile.slice_thickness_mm for s in sites} == {1.25, 2.5, 3.0, 5.0}
    assert all(s.profile.spacing_mm >= 2.5 for s in sites)
    assert all(340 <= s.profile.fov_mm <= 420 and 8 <= s.profile.noise_hu <= 25 for s in sites)
    assert len({s.profile.manufacturer for s in sites}) == 4 and len({s.seed for s in sites}) == 4
    small = [
        replace(s, n_studies=3, profile=replace(s.profile, slice_thickness_mm=10.0, slice_spacing_mm=None))
        for s in sites[:2]
    ]
    messages = []
    paths = write_federation(tmp_path, small, progress=messages.append)
    assert paths == [tmp_path / s.name for s in small] and all((p / "manifest.csv").exists() for p in paths)
    assert len(messages) == 6
    write_federation(tmp_path, small, progress=messages.append)
    assert len(messages) == 8 and "reus" in messages[-1]
    with pytest.raises(ValueError):
        write_federation(tmp_path, [small[0], small[0]])


# ------------------------------------------------------------------------------------------- one patient, many scanners
VBASE = ScannerProfile(name="variant", matrix=40, slice_thickness_mm=10.0, noise_hu=0.0)  # 9 mm pixels: fast
SEED = 21


def _primary_frames(folder: Path):
    """Independent reader: every image (or frame) of the CT image series with the most images, localizers and
    non-CT objects left out, as (HU image, IPP, IOP, PixelSpacing [row, col]); plus the series' datasets."""
    series = {}
    for f in sorted(folder.rglob("*")):
        try:
            d = pydicom.dcmread(f)
        except (InvalidDicomError, IsADirectoryError):
            continue
        if d.get("SOPClassUID") in (CTImageStorage, EnhancedCTImageStorage) and "LOCALIZER" not in d.ImageType:
            series.setdefault(d.SeriesInstanceUID, []).append(d)
    dss = max(series.values(), key=lambda v: sum(int(d.get("NumberOfFrames", 1)) for d in v))
    frames = []
    for d in dss:
        arr = d.pixel_array.astype(np.float64)
        if d.SOPClassUID == EnhancedCTImageStorage:
            sh = d.SharedFunctionalGroupsSequence[0]
            tr = sh.PixelValueTransformationSequence[0]
            for a, fg in zip(arr, d.PerFrameFunctionalGroupsSequence):
                frames.append(
                    (
                        a * float(tr.RescaleSlope) + float(tr.RescaleIntercept),
                        fg.PlanePositionSequence[0].ImagePositionPatient,
                        sh.PlaneOrientationSequence[0].ImageOrientationPatient,
                        sh.PixelMeasuresSequence[0].PixelSpacing,
                    )
                )
        else:
            frames.append(
                (
                    arr * float(d.RescaleSlope) + float(d.RescaleIntercept),
                    d.ImagePositionPatient,
                    d.ImageOrientationPatient,
                    d.PixelSpacing,
                )
            )
    return dss, frames


def _lps(frames):
    """LPS centre of every transmitted pixel (IPP + col * dc * row_dir + row * dr * col_dir) and its HU."""
    pts, vals = [], []
    for hu, ipp, iop, ps in frames:
        ipp, iop, ps = (np.array([float(v) for v in x]) for x in (ipp, iop, ps))
        r, c = np.mgrid[: hu.shape[0], : hu.shape[1]]
        pts.append((ipp + c[..., None] * ps[1] * iop[:3] + r[..., None] * ps[0] * iop[3:]).reshape(-1, 3))
        vals.append(hu.reshape(-1))
    return np.concatenate(pts), np.concatenate(vals)


def _voxel_index(study, pts):
    """(k, r, c) of the study voxel centred at each point (-1 where no voxel centre is there)."""
    ps, (x0, y0) = study.pixel_spacing_mm, study.origin_mm
    n = len(study.z_mm)
    f = np.stack(
        [
            np.interp(pts[:, 2], study.z_mm[::-1], np.arange(n)[::-1], left=-9, right=-9),
            (pts[:, 1] - y0) / ps,
            (pts[:, 0] - x0) / ps,
        ],
        1,
    )
    idx = np.rint(f).astype(int)
    ok = (np.abs(f - idx) < 1e-3).all(1) & (idx >= 0).all(1) & (idx[:, 1:] < study.hu.shape[1]).all(1)
    ok &= np.abs(study.z_mm[np.clip(idx[:, 0], 0, n - 1)] - pts[:, 2]) < 1e-3
    return np.where(ok[:, None], idx, -1)


@pytest.fixture(scope="module")
def reference():
    return render_study(np.random.default_rng(SEED), VBASE, "aneurysm", "M")


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> tuple[Path, dict]:
    """Every acquisition variant of one patient, written once: (root folder, truth by variant)."""
    root = tmp_path_factory.mktemp("variants")
    return root, {v: write_variant(root / v, SEED, v, VBASE) for v in ACQUISITION_VARIANTS}


@pytest.mark.parametrize("variant", list(ACQUISITION_VARIANTS))
def test_variant_decodes_to_the_same_patient(variants, reference, variant):
    profile = variant_profile(variant, VBASE)
    folder, truth = variants[0] / variant, variants[1][variant]
    study = render_study(np.random.default_rng(SEED), profile, "aneurysm", "M")
    assert (truth.max_diameter_mm, truth.max_z_mm, truth.aaa) == (
        reference.max_diameter_mm,
        reference.max_z_mm,
        reference.aaa,
    )
    # every decoded pixel sits on a voxel centre of the rendered volume, each voxel exactly once, same HU
    pts, vals = _lps(_primary_frames(folder)[1])
    k, r, c = _voxel_index(study, pts).T
    assert (k >= 0).all() and len(vals) == study.hu.size
    assert len(np.unique(np.ravel_multi_index((k, r, c), study.hu.shape))) == study.hu.size
    expected = np.clip(np.rint(study.hu[k, r, c]), -1024, 3071)
    if profile.pixel_padding:
        expected[np.hypot(pts[:, 0], pts[:, 1]) > profile.fov_mm / 2] = -2000 if profile.signed else -1024
    np.testing.assert_array_equal(vals, expected)
    # and it is the reference patient: same HU wherever both sample the same point, same aorta everywhere
    shared = np.isin(study.z_mm, reference.z_mm)
    assert shared.sum() >= min(len(study.z_mm), len(reference.z_mm)) - 1
    if variant not in ("fov_small", "fov_large"):
        np.testing.assert_array_equal(study.hu[shared], reference.hu[np.isin(reference.z_mm, study.z_mm)])
    for j in range(2):
        np.testing.assert_allclose(
            np.interp(reference.z_mm, study.z_mm[::-1], study.aorta_center_mm[::-1, j]),
            reference.aorta_center_mm[:, j],
            atol=1e-9,
        )


def test_variant_headers_files_and_extras(variants, reference):
    tmp_path = variants[0]

    def series(v):
        return _primary_frames(tmp_path / v)[0]

    n, m, ps = len(reference.z_mm), VBASE.matrix, reference.pixel_spacing_mm
    by_name = lambda dss: [int(d.InstanceNumber) for d in sorted(dss, key=lambda d: d.filename)]  # noqa: E731
    assert by_name(series("ascending")) == list(range(1, n + 1))
    assert by_name(series("descending")) == list(range(n, 0, -1))
    for v, pos, head_first in (("reference", "HFS", True), ("feet_first", "FFS", False)):
        dss = sorted(series(v), key=lambda d: int(d.InstanceNumber))
        assert dss[0].PatientPosition == pos
        zs = [float(d.ImagePositionPatient[2]) for d in dss]
        assert zs == sorted(zs, reverse=head_first)
    for v, iop in (
        ("flip_rows", [-1, 0, 0, 0, 1, 0]),
        ("flip_cols", [1, 0, 0, 0, -1, 0]),
        ("flip_both", [-1, 0, 0, 0, -1, 0]),
    ):
        d = series(v)[0]
        assert [float(x) for x in d.ImageOrientationPatient] == iop
        far = reference.origin_mm[0] + (m - 1) * ps
        assert [float(x) for x in d.ImagePositionPatient[:2]] == pytest.approx(
            [far if iop[0] < 0 else -far, far if iop[4] < 0 else -far]
        )
    dss = series("coronal")
    assert len(dss) == m and {(d.Rows, d.Columns) for d in dss} == {(n, m)} and "DERIVED" in dss[0].ImageType
    assert [float(x) for x in dss[0].ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert [float(x) for x in dss[0].PixelSpacing] == pytest.approx([10.0, ps])
    for v, bits, sign in (
        ("reference", 12, 0),
        ("signed", 16, 1),
        ("signed_12bit", 12, 1),
        ("bits13", 13, 0),
        ("bits14", 14, 1),
        ("unsigned_16bit", 16, 0),
    ):
        d = series(v)[0]
        assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, bits, bits - 1, sign), v
        assert float(d.RescaleIntercept) == (0 if sign else -1024) and "PixelPaddingValue" not in d
    for v, pad, intercept in (("padding", 0, -1024), ("padding_signed", -2000, 0)):
        d = series(v)[0]
        assert d.PixelPaddingValue == pad and float(d.RescaleIntercept) == intercept
        assert d.pixel_array[0, 0] == pad and (d.pixel_array == pad).sum() < m * m / 4
    for v, ts in (
        ("implicit", pydicom.uid.ImplicitVRLittleEndian),
        ("rle", pydicom.uid.RLELossless),
        ("jpeg2000", pydicom.uid.JPEG2000Lossless),
        ("jpegls", pydicom.uid.JPEGLSLossless),
    ):
        d = series(v)[0]
        assert d.file_meta.TransferSyntaxUID == ts
        assert d.original_encoding[0] == (v == "implicit")
    (d,) = series("enhanced")
    assert d.SOPClassUID == EnhancedCTImageStorage and int(d.NumberOfFrames) == n
    assert d.pixel_array.shape == (n, m, m) and "ImagePositionPatient" not in d and "PixelSpacing" not in d
    assert len(list((tmp_path / "enhanced").iterdir())) == 1
    series("nested")
    files = [p.relative_to(tmp_path / "nested").as_posix() for p in (tmp_path / "nested").rglob("*") if p.is_file()]
    assert len(files) == n and all(re.fullmatch(r"DICOM/1/[0-9A-F]{8}", f) for f in files)
    series("noext")
    assert all(re.fullmatch(r"IM\d{4}", p.name) for p in (tmp_path / "noext").iterdir())

    # extras: localizer (2 projections), thick series, screenshot, dose report, stray files
    primary = series("localizer")
    folder = tmp_path / "localizer"
    assert {p.name for p in folder.iterdir() if not p.name.startswith("IM")} == {"README.txt", ".DS_Store", "DICOMDIR"}
    others = {}
    for f in folder.glob("IM*.dcm"):
        d = pydicom.dcmread(f)
        others.setdefault((d.SeriesNumber, d.SOPClassUID, d.Modality), []).append(d)
    assert {k[0] for k in others} == {1, 2, 3, 998, 999} and len(primary) == n
    loc = others[(1, CTImageStorage, "CT")]
    assert len(loc) == 2 and all(list(d.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"] for d in loc)
    assert sorted(tuple(float(x) for x in d.ImageOrientationPatient) for d in loc) == [
        (0, 1, 0, 0, 0, -1),
        (1, 0, 0, 0, 0, -1),
    ]
    thick = sorted(others[(3, CTImageStorage, "CT")], key=lambda d: int(d.InstanceNumber))
    assert len(thick) == n // 2 and float(thick[0].SpacingBetweenSlices) == 20.0
    assert len({d.SeriesInstanceUID for v in others.values() for d in v}) == 5
    assert len({d.StudyInstanceUID for v in others.values() for d in v}) == 1
    hu = thick[1].pixel_array + float(thick[1].RescaleIntercept)
    np.testing.assert_array_equal(hu, np.clip(np.rint((reference.hu[2] + reference.hu[3]) / 2), -1024, 3071))
    assert float(thick[1].ImagePositionPatient[2]) == pytest.approx((reference.z_mm[2] + reference.z_mm[3]) / 2)
    (sc,) = others[(998, pydicom.uid.SecondaryCaptureImageStorage, "CT")]
    assert sc.pixel_array.shape == (m, m, 3) and "ImagePositionPatient" not in sc
    (sr,) = others[(999, "1.2.840.10008.5.1.4.1.1.88.67", "SR")]
    assert "PixelData" not in sr and sr.ConceptNameCodeSequence[0].CodeValue == "113701"
    assert pydicom.dcmread(folder / "DICOMDIR").file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    for name in ("README.txt", ".DS_Store"):
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(folder / name)
    assert set(EXTRAS) <= set(ACQUISITION_VARIANTS["localizer"]["extras"])


def test_anatomy_is_profile_invariant():
    fine = replace(PROFILE, matrix=96, slice_thickness_mm=2.5, noise_hu=0.0)
    for seed, kind in ((4, "aneurysm"), (5, "normal"), (6, "ectatic")):
        states, studies = [], []
        for p in (
            fine,
            replace(fine, matrix=128, slice_thickness_mm=5.0, contrast=False),
            replace(fine, fov_mm=400.0, slice_thickness_mm=1.0, slice_spacing_mm=1.25, contrast_phase="portal"),
            replace(fine, orientation="coronal", signed=True, transfer_syntax="rle", extras=("localizer",)),
            replace(fine, tortuosity=0.7),
        ):
            rng = np.random.default_rng(seed)
            studies.append(render_study(rng, p, kind, "F"))
            states.append(rng.bit_generator.state)
        assert all(s == states[0] for s in states)  # the same draws whatever the profile
        a = studies[0]
        for b in studies[1:4]:
            assert (b.max_diameter_mm, b.max_z_mm, b.age) == (a.max_diameter_mm, a.max_z_mm, a.age)
            ia, ib = np.isin(a.z_mm, b.z_mm), np.isin(b.z_mm, a.z_mm)  # slices both grids share
            assert ia.sum() == ib.sum() >= min(len(a.z_mm), len(b.z_mm)) - 1
            np.testing.assert_array_equal(a.aorta_center_mm[ia], b.aorta_center_mm[ib])
            np.testing.assert_array_equal(a.diameter_mm[ia], b.diameter_mm[ib])
            for j in range(2):  # elsewhere: interpolation error only
                c = np.interp(b.z_mm, a.z_mm[::-1], a.aorta_center_mm[::-1, j])
                ok = np.isfinite(c) & np.isfinite(b.aorta_center_mm[:, j])
                assert ok.sum() > 20
                np.testing.assert_allclose(c[ok], b.aorta_center_mm[ok, j], atol=0.2)
        assert np.isin(studies[1].z_mm, a.z_mm).all()
        assert studies[-1].max_diameter_mm == a.max_diameter_mm  # tortuosity tilts the tube, not its calibre
        assert np.nanmax(a.aorta_tilt_deg) == 0
    assert not np.array_equal(studies[0].hu, studies[-1].hu)


def test_tortuous_aorta_is_an_oblique_tube():
    profile = replace(PROFILE, matrix=160, fov_mm=240.0, noise_hu=0.0, tortuosity=1.0)  # 1.5 mm pixels
    s, patient = _render_alone(11, profile, "aneurysm", "M")
    fat = patient.anatomy.tissues.visceral_fat
    tilt = s.aorta_tilt_deg
    assert 20 < np.nanmax(tilt) < 60
    t = s.aorta_direction
    np.testing.assert_allclose(np.degrees(np.arccos(t[:, 2])), tilt)
    ps, (x0, y0) = s.pixel_spacing_mm, s.origin_mm
    yy, xx = np.mgrid[:160, :160] * ps + np.array([y0, x0])[:, None, None]
    checked = wider = 0
    for k in np.flatnonzero(tilt > 20):
        (cx, cy), R, phi = s.aorta_center_mm[k], s.diameter_mm[k] / 2, np.arctan2(t[k, 1], t[k, 0])
        u = (xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi)
        v = (yy - cy) * np.cos(phi) - (xx - cx) * np.sin(phi)
        f = np.hypot(u * np.cos(np.radians(tilt[k])) / R, v / R)  # 1 on the expected ellipse
        a = R / np.cos(np.radians(tilt[k]))
        inside, outside = f < 1 - 1.5 * ps / a, (f > 1 + 1.5 * ps / R) & (f < 1 + 8 / R) & (yy < cy)
        assert (s.hu[k][inside] > 20).all(), k  # wall, thrombus, lumen: the whole ellipse
        assert outside.any() and (s.hu[k][outside] < fat + 1).all(), k  # periaortic fat right outside it
        if a - R > 2.5 * ps:  # between circle and ellipse along the tilt: vessel, not fat as for a circle
            for sign in (1, -1):
                r, c = _rc(s, k, cx + sign * (a + R) / 2 * np.cos(phi), cy + sign * (a + R) / 2 * np.sin(phi))
                assert s.hu[k, r, c] > 0, (k, sign)
            wider += 1
        checked += 1
    assert checked >= 3 and wider >= 1
    flat = render_study(np.random.default_rng(11), replace(profile, tortuosity=0.0), "aneurysm", "M")
    assert flat.max_diameter_mm == s.max_diameter_mm and np.nanmax(flat.aorta_tilt_deg) == 0


def test_default_sites_are_heterogeneous():
    sites = default_sites(n_sites=6, seed=2)
    profiles = [s.profile for s in sites]
    assert sum(p.transfer_syntax in ("rle", "jpeg2000", "jpegls") for p in profiles) == 1
    assert sum(p.tortuosity > 0 for p in profiles) == 1
    assert all(p.orientation != "coronal" and p.spacing_mm >= 2.5 for p in profiles)
    assert len({(p.orientation, p.feet_first, p.file_order, p.layout, p.bits_stored, p.extras) for p in profiles}) == 6
    specs = [default_sites(n_sites=8, seed=sd) for sd in range(6)]
    flat = [s.profile for ss in specs for s in ss]
    assert {p.layout for p in flat} == {"flat", "nested", "noext"} and any(p.extras for p in flat)
    assert {p.orientation for p in flat} == {"standard", "flip_rows", "flip_cols", "flip_both"}
    assert sum(p.orientation == "standard" for p in flat) > len(flat) / 2
    assert {p.contrast_phase for p in flat if p.contrast} == {"arterial", "portal"}


def test_site_reuse_needs_every_mask(tmp_path):
    """A folder written before the labels existed (no ``mask`` column) or missing one label is rewritten."""
    spec = replace(SPEC, n_studies=4, profile=FAST)
    site = write_site(tmp_path, spec)
    with open(site / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all((site / r["mask"]).is_file() for r in rows) and len(list((site / "masks").iterdir())) == 4
    stamp = (site / "manifest.csv").stat().st_mtime_ns
    assert write_site(tmp_path, spec) == site and (site / "manifest.csv").stat().st_mtime_ns == stamp
    (site / rows[0]["mask"]).unlink()
    write_site(tmp_path, spec)
    assert (site / rows[0]["mask"]).is_file() and (site / "manifest.csv").stat().st_mtime_ns != stamp
    old = [c for c in MANIFEST_COLUMNS if c != "mask"]  # the previous generator's manifest
    with open(site / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    write_site(tmp_path, spec)
    with open(site / "manifest.csv", newline="") as f:
        assert [r["mask"] for r in csv.DictReader(f)] == [r["mask"] for r in rows]
