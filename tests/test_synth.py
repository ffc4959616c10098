"""Tests for simulations.synth: DICOM validity, geometry, HU round-trip, anatomy, labels, determinism, reuse."""
import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from simulations.synth import (KINDS, MANIFEST_COLUMNS, ScannerProfile, SiteSpec, default_sites, render_study,
                               write_federation, write_site, write_study)

PROFILE = ScannerProfile(matrix=64, noise_hu=12.0)
FAST = ScannerProfile(matrix=32, slice_thickness_mm=10.0)   # for folder logic only
SPEC = SiteSpec("hospital-t", n_studies=14, aaa_prevalence=0.43, profile=replace(FAST, matrix=48), seed=3)


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    files = sorted(folder.glob("*.dcm"))
    return sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))


def _rc(study, k, x, y):
    ps, (x0, y0) = study.pixel_spacing_mm, study.origin_mm
    return int(round((y - y0) / ps)), int(round((x - x0) / ps))


def _widths(study, k):
    """Aortic width along x through its centre on slice k: (run length of > -50 HU, sub-pixel fat/wall mix)."""
    cx, cy = study.aorta_center_mm[k]
    r, c = _rc(study, k, cx, cy)
    line = study.hu[k, r]
    lo = hi = c
    while line[lo - 1] > -50:
        lo -= 1
    while line[hi + 1] > -50:
        hi += 1
    ps = study.pixel_spacing_mm
    frac = np.clip((line[lo - 1:hi + 2] + 90) / (45 + 90), 0, 1)   # visceral fat -90, wall 45
    return (hi - lo + 1) * ps, frac.sum() * ps


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
    np.testing.assert_allclose(np.diff(zs), -3.0)               # InstanceNumber 1 = head, equally spaced
    assert float(dss[0].SliceThickness) == float(dss[0].SpacingBetweenSlices) == 3.0


# ------------------------------------------------------------------------------------------- anatomy
@pytest.mark.parametrize("contrast", [True, False])
def test_anatomy_is_where_promised(contrast):
    profile = replace(PROFILE, matrix=96, noise_hu=0.0, contrast=contrast)
    study = render_study(np.random.default_rng(5), profile, "normal", "F")
    aortic = np.flatnonzero(study.diameter_mm > 0)
    assert 0 < len(aortic) < len(study.z_mm)                    # bifurcation inside the study
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
        assert ring.any() and (hu[k][ring] < -80).all(), k
    # spine: bone-like centre right behind (posterior to) the aorta, near x = 0
    k = aortic[0]
    col = hu[k][:, _rc(study, k, 0.0, 0.0)[1]]
    r_aorta = _rc(study, k, *study.aorta_center_mm[k])[0]
    bone = np.flatnonzero(col > 150)
    assert bone.size and bone.min() > r_aorta and col.max() > 400    # cortex (partial volume at 3.75 mm)
    assert 180 <= np.median(col[bone]) <= 300                          # cancellous bone


@pytest.mark.parametrize("seed", range(9))
def test_max_diameter_is_measurable(seed):
    kind = KINDS[seed % 3]
    for noise in (0.0, 12.0):
        profile = replace(PROFILE, matrix=96, noise_hu=noise)
        study = render_study(np.random.default_rng(seed), profile, kind, "MF"[seed % 2])
        k = int(np.argmax(study.diameter_mm))
        assert study.z_mm[k] == study.max_z_mm
        assert study.max_diameter_mm == round(float(study.diameter_mm[k]), 1)
        lo, hi = {"normal": (15, 24), "ectatic": (25, 29.5), "aneurysm": (30, 80)}[kind]
        assert lo <= study.max_diameter_mm <= hi and study.aaa == (kind == "aneurysm")
        run, subpixel = _widths(study, k)
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
    assert min(lumen_fracs) < 0.6 < max(lumen_fracs)            # thrombus in some, not all
    assert any(calcified) and not all(calcified)


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
    assert ((d >= 25) & (d < 30)).sum() >= 2 and (d < 25).sum() >= 4   # ectatic hard negatives + normals
    splits = [r["split"] for r in manifest]
    assert set(splits) == {"train", "val", "test"}
    for s in ("train", "val", "test"):                           # stratified: positives in every split
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
    assert {s.profile.slice_thickness_mm for s in sites} == {2.5, 3.0, 5.0}
    assert all(340 <= s.profile.fov_mm <= 420 and 8 <= s.profile.noise_hu <= 25 for s in sites)
    assert len({s.profile.manufacturer for s in sites}) == 4 and len({s.seed for s in sites}) == 4
    small = [replace(s, n_studies=3, profile=replace(s.profile, slice_thickness_mm=10.0)) for s in sites[:2]]
    messages = []
    paths = write_federation(tmp_path, small, progress=messages.append)
    assert paths == [tmp_path / s.name for s in small] and all((p / "manifest.csv").exists() for p in paths)
    assert len(messages) == 6
    write_federation(tmp_path, small, progress=messages.append)
    assert len(messages) == 8 and "reus" in messages[-1]
    with pytest.raises(ValueError):
        write_federation(tmp_path, [small[0], small[0]])
