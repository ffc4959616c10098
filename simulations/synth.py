"""Seeded synthetic abdominal CT studies, written as real DICOM series in hospital "site folders".

Each study is built analytically, slice by slice, in DICOM patient coordinates (LPS, mm: +x patient left,
+y posterior, +z head). Every structure has a signed distance ``d`` (mm, negative inside) and is composited
with partial-volume coverage ``clip(0.5 - d / pixel_spacing, 0, 1)`` (painter's algorithm), so the aortic
outer-wall diameter is encoded below voxel size. HU values and anatomy follow docs/clinical-notes.md.

Site layout written by :func:`write_site`::

    SITE/manifest.csv        study_id,path,aaa,max_diameter_mm,split,sex
    SITE/truth.csv           study_id,kind,sex,aaa,max_diameter_mm,max_z_mm  (simulation ground truth)
    SITE/studies/<id>/IMnnnn.dcm   one file per axial slice, file names shuffled w.r.t. slice order
    SITE/.synth.json         the spec the folder was written from (reuse marker, written last)
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

GENERATOR_VERSION = 1
KINDS = ("normal", "ectatic", "aneurysm")
MANIFEST_COLUMNS = ("study_id", "path", "aaa", "max_diameter_mm", "split", "sex")
TRUTH_COLUMNS = ("study_id", "kind", "sex", "aaa", "max_diameter_mm", "max_z_mm")
_VENDORS = ("Acme Medical", "Helix Imaging", "Orbis CT", "Nova Systems", "Vertex Health", "Lumen Scan")


@dataclass(frozen=True)
class ScannerProfile:
    name: str = "generic"
    manufacturer: str = "SYNTH"
    matrix: int = 128            # rows = columns
    fov_mm: float = 360.0        # in-plane field of view; pixel spacing = fov_mm / matrix
    slice_thickness_mm: float = 5.0   # also the slice spacing
    noise_hu: float = 12.0       # Gaussian noise SD in HU
    contrast: bool = True        # arterial phase: lumen 200-400 HU, else lumen ~40 HU
    signed: bool = False         # PixelRepresentation 1 (int16, intercept 0) vs 0 (uint16, intercept -1024)
    kvp: float = 120.0


@dataclass(frozen=True)
class SiteSpec:
    name: str                    # e.g. "hospital-a"; used as folder name
    n_studies: int
    aaa_prevalence: float        # fraction of studies with AAA (max diameter >= 30 mm)
    profile: ScannerProfile
    seed: int


@dataclass(frozen=True)
class StudyTruth:
    study_id: str
    aaa: int                     # 1 if max_diameter_mm >= 30 else 0
    max_diameter_mm: float       # true max OUTER-wall diameter of the aorta, rounded to 0.1 mm
    kind: str                    # "normal" | "ectatic" | "aneurysm"
    sex: str                     # "M" | "F"
    max_z_mm: float              # patient z (DICOM LPS z, mm) of the slice centre where the max occurs


@dataclass
class SyntheticStudy:
    """One rendered study. Slice 0 is the head-most slice (highest z, DICOM InstanceNumber 1).

    ``hu`` is (slices, rows, cols) float32 HU with noise, before integer rounding; row index grows toward
    +y (posterior), column index toward +x (patient left); pixel (r, c) centre is
    ``(origin_mm[0] + c * pixel_spacing_mm, origin_mm[1] + r * pixel_spacing_mm)``.
    ``diameter_mm`` / ``aorta_center_mm`` give the aortic outer diameter and centre (x, y) per slice
    (0 / NaN below the bifurcation), e.g. to build segmentation targets.
    """
    hu: np.ndarray
    z_mm: np.ndarray
    pixel_spacing_mm: float
    origin_mm: tuple[float, float]
    diameter_mm: np.ndarray
    aorta_center_mm: np.ndarray
    kind: str
    sex: str
    age: int
    max_diameter_mm: float
    max_z_mm: float

    @property
    def aaa(self) -> int:
        return int(self.max_diameter_mm >= 30.0)

    def truth(self, study_id: str) -> StudyTruth:
        """The ground-truth record of this study under ``study_id``."""
        return StudyTruth(study_id, self.aaa, self.max_diameter_mm, self.kind, self.sex, self.max_z_mm)


def default_sites(n_sites: int = 3, studies_per_site: int = 60, seed: int = 0,
                  matrix: int = 128) -> list[SiteSpec]:
    """Heterogeneous hospitals, deterministic in ``seed``: study counts x0.7-1.3, prevalence 0.3-0.5,
    slice thickness 2.5/3/5 mm, FOV 340-420 mm, noise 8-25 HU, contrast and non-contrast sites (at least
    one of each when n_sites >= 2), alternating signed/unsigned storage and vendor names."""
    rng = np.random.default_rng(seed)
    thick = rng.permutation([2.5, 3.0, 5.0])
    vendors = rng.permutation(len(_VENDORS))
    contrast = rng.random(n_sites) < 0.7
    if n_sites >= 2:
        off, on = rng.permutation(n_sites)[:2]
        contrast[off], contrast[on] = False, True
    signed0 = int(rng.integers(2))
    sites = []
    for i in range(n_sites):
        vendor = _VENDORS[vendors[i % len(_VENDORS)]]
        profile = ScannerProfile(
            name=f"{vendor.split()[0].lower()}-{thick[i % 3]:g}mm", manufacturer=vendor, matrix=matrix,
            fov_mm=float(round(rng.uniform(340, 420))), slice_thickness_mm=float(thick[i % 3]),
            noise_hu=round(float(rng.uniform(8, 25)), 1), contrast=bool(contrast[i]),
            signed=bool((i + signed0) % 2), kvp=float(rng.choice([100.0, 120.0, 140.0])))
        sites.append(SiteSpec(
            name=f"hospital-{chr(ord('a') + i % 26)}{'' if i < 26 else i // 26}",
            n_studies=max(4, int(round(studies_per_site * rng.uniform(0.7, 1.3)))),
            aaa_prevalence=round(float(rng.uniform(0.3, 0.5)), 2), profile=profile,
            seed=int(rng.integers(2**31))))
    return sites


# ---------------------------------------------------------------------------------------------- rendering
def _circle(cx, cy, r):
    return (cx - r, cx + r, cy - r, cy + r), lambda X, Y: np.hypot(X - cx, Y - cy) - r


def _ellipse(cx, cy, a, b, theta=0.0):
    """Ellipse with semi-axes a (along angle theta) and b; first-order signed distance (f - 1) / |grad f|."""
    c, s = np.cos(theta), np.sin(theta)

    def sdf(X, Y):
        u, v = (X - cx) * c + (Y - cy) * s, (Y - cy) * c - (X - cx) * s
        f = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        g = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(g > 1e-12, (f - 1) * f / g, -min(a, b))
    ex, ey = np.hypot(a * c, b * s), np.hypot(a * s, b * c)
    return (cx - ex, cx + ex, cy - ey, cy + ey), sdf


class _Grid:
    def __init__(self, matrix: int, fov: float):
        self.ps = fov / matrix
        self.c = -fov / 2 + self.ps / 2 + np.arange(matrix) * self.ps   # pixel centres, same for x and y

    def paint(self, img, shape, hu):
        """Composite one structure over ``img`` inside its bounding box (plus one pixel)."""
        (x0, x1, y0, y1), sdf = shape
        ps, c = self.ps, self.c
        i0, i1 = np.searchsorted(c, [x0 - ps, x1 + ps])
        j0, j1 = np.searchsorted(c, [y0 - ps, y1 + ps])
        if i0 < i1 and j0 < j1:
            cov = np.clip(0.5 - sdf(c[None, i0:i1], c[j0:j1, None]) / ps, 0.0, 1.0)
            sub = img[j0:j1, i0:i1]
            sub += (hu - sub) * cov


def _wander(rng, h, amp):
    """Smooth zero-mean random displacement along z (two sinusoids), peak about ``amp`` mm."""
    lam, ph, w = rng.uniform(80, 250, 2), rng.uniform(0, 2 * np.pi, 2), rng.dirichlet([2, 2])
    return amp * sum(w[i] * np.sin(2 * np.pi * h / lam[i] + ph[i]) for i in range(2))


def _diameter_profile(rng, h, h_bif, male, kind):
    """Aortic outer diameter at heights ``h``: (baseline tapering caudally, baseline + fusiform bulge)."""
    cover = h.max() + h.min()
    taper = rng.uniform(1.0, 2.5)
    d0 = float(np.clip(rng.normal(*((19.3, 1.8) if male else (16.7, 1.6))), 15.0, 24.0 - taper))
    base = d0 + taper * (h - h_bif) / (cover - h_bif)
    if kind == "normal":
        return base, base.copy()
    peak = 30 + 50 * rng.beta(1.8, 3.2) if kind == "aneurysm" else rng.uniform(25.0, 29.5)
    length = min(rng.uniform(40, 120), 2 * (cover - 120 - h_bif))        # infrarenal: sac ends >= 90 mm below top
    hp = rng.uniform(h_bif + 30, min(h_bif + 110, cover - 90 - length / 2))
    hp = h[np.argmin(np.abs(h - hp))]                                     # peak on a slice centre: max is visible
    return base, base + (peak - base) * np.cos(np.clip((h - hp) / (length / 2), -1, 1) * np.pi / 2) ** 2


def render_study(rng: np.random.Generator, profile: ScannerProfile, kind: str, sex: str) -> SyntheticStudy:
    """Render one abdominal CT volume of the given ``kind`` ("normal" | "ectatic" | "aneurysm") and ``sex``
    ("M" | "F"), noise included. Deterministic in the state of ``rng``."""
    if kind not in KINDS or sex not in ("M", "F"):
        raise ValueError(f"kind must be one of {KINDS} and sex 'M' or 'F', got {kind!r}, {sex!r}")
    g, t, male = _Grid(profile.matrix, profile.fov_mm), profile.slice_thickness_mm, sex == "M"
    age = int(np.clip(rng.normal(*{"aneurysm": (72, 7), "ectatic": (68, 9), "normal": (58, 12)}[kind]), 35, 90))
    # body, spine (z-invariant)
    a, b = rng.uniform(*((150, 175) if male else (140, 165))), rng.uniform(*((110, 130) if male else (100, 120)))
    fat = float(np.clip(10 + (a - 140) * 0.5 + rng.normal(0, 4), 10, 30))
    muscle = rng.uniform(8, 12)
    a_in, b_in = a - fat - muscle, b - fat - muscle
    vr, vc = rng.uniform(18, 22), b - rng.uniform(45, 55)
    shell = rng.uniform(2, 3)
    base_img = np.full((profile.matrix,) * 2, -1000.0, np.float32)
    for shape, hu in (
            (_ellipse(0, 0, a, b), -100), (_ellipse(0, 0, a - fat, b - fat), 50), (_ellipse(0, 0, a_in, b_in), -90),
            (_ellipse(-(vr + 14), vc + 4, 13, 19), 50), (_ellipse(vr + 14, vc + 4, 13, 19), 50),     # psoas
            (_ellipse(-28, vc + vr + 8, 18, 12), 50), (_ellipse(28, vc + vr + 8, 18, 12), 50),       # erectors
            (_circle(0, vc, vr), 800), (_circle(0, vc, vr - shell), rng.uniform(200, 250)),
            (_ellipse(0, vc + vr + 10, 20, 9), 450), (_circle(0, vc + vr + 7, 6), 15)):         # arch, canal
        g.paint(base_img, shape, hu)
    # z geometry: h = height (mm) above the caudal edge of the scan; slice 0 = head
    n = int(round(rng.uniform(220, 260) / t))
    cover = n * t
    h = (np.arange(n)[::-1] + 0.5) * t
    z = round(rng.uniform(-320, -220) * 2) / 2 + h
    h_bif = rng.uniform(40, 60)
    base, D = _diameter_profile(rng, h, h_bif, male, kind)
    aortic = h >= h_bif
    D = np.where(aortic, D, 0.0)
    R = D / 2
    ax = rng.uniform(10, 20) + _wander(rng, h, rng.uniform(1.5, 4))
    ay = vc - vr - 3 - R
    wall, lumen_hu = rng.uniform(1.5, 2.5), rng.uniform(200, 400) if profile.contrast else rng.uniform(35, 45)
    thrombus = kind == "aneurysm" and rng.random() < 0.75
    # thrombus: HU, share of the sac it fills, lumen eccentricity and direction
    thr_hu, thr_frac, thr_ecc = rng.uniform(35, 50), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9)
    thr_dir = rng.uniform(0, 2 * np.pi)
    calcs = []   # (h centre, half length, angle, n arc segments, radius, HU)
    if rng.random() < np.clip((age - 50) / 30, 0, 0.9):
        for _ in range(rng.integers(2, 7)):
            calcs.append((rng.uniform(h_bif, cover), rng.uniform(2.5, 10), rng.uniform(0, 2 * np.pi),
                          int(rng.integers(1, 5)), rng.uniform(0.8, 1.6), rng.uniform(400, 1200)))
    r_il, spread = rng.uniform(4.5, 6.5), rng.uniform(0.35, 0.6)
    i_bif = int(np.flatnonzero(aortic)[-1])
    il_dx = max(r_il * 1.05, R[i_bif] - r_il) + spread * np.clip(h_bif - h, 0, None)
    kid_hu = rng.uniform(140, 180) if profile.contrast else rng.uniform(28, 35)
    kidneys = [(s, cover - rng.uniform(40, 55) - (8 if s < 0 else 0), rng.uniform(45, 55),   # side, h, half length
                rng.uniform(26, 30), rng.uniform(14, 17), s * (vr + rng.uniform(40, 50)),      # semi-axes, x
                vc + rng.uniform(-5, 10), s * rng.uniform(0.3, 0.6)) for s in (1, -1)]         # y, rotation
    bowel = [(rng.uniform(-(a_in - 25), a_in - 25), rng.uniform(-(b_in - 20), vc - vr - 25), rng.uniform(8, 20),
              rng.uniform(5, 15), rng.uniform(60, 160, 2), rng.uniform(0, 2 * np.pi, 3),
              -1000.0 if rng.random() < 0.4 else rng.uniform(10, 30)) for _ in range(rng.integers(6, 11))]

    hu = np.empty((n, profile.matrix, profile.matrix), np.float32)
    for k in range(n):
        img = hu[k]
        img[:] = base_img
        vessels = [(ax[k], ay[k], R[k])] if aortic[k] else \
            [(ax[k] + s * il_dx[k], vc - vr - 3 - r_il, r_il) for s in (1, -1)]
        for s, kh, hz, ka, kb, kx0, ky, th in kidneys:
            q = 1 - ((h[k] - kh) / hz) ** 2
            if q > 0:
                sa, sb = ka * np.sqrt(q), kb * np.sqrt(q)
                ex = np.hypot(sa * np.cos(th), sb * np.sin(th))
                kx = s * max(abs(kx0), s * ax[k] + R[k] + 10 + ex)   # >= 10 mm of fat from the aorta
                g.paint(img, _ellipse(kx, ky, sa, sb, th), kid_hu)
        for bx0, by0, r0, amp, lam, ph, content in bowel:
            bx = bx0 + amp * np.sin(2 * np.pi * h[k] / lam[0] + ph[0])
            by = by0 + amp * np.cos(2 * np.pi * h[k] / lam[1] + ph[1])
            r = r0 * (0.6 + 0.4 * np.sin(2 * np.pi * h[k] / lam[0] + ph[2]) ** 2)
            inside = (bx / (a_in - r - 3)) ** 2 + (by / (b_in - r - 3)) ** 2 < 1 and by + r < vc - vr - 5
            if inside and all(np.hypot(bx - vx, by - vy) - vr_ - r > 15 for vx, vy, vr_ in vessels):
                g.paint(img, _circle(bx, by, r), 40)
                g.paint(img, _circle(bx, by, r - 2), content)
        for vx, vy, vrad in vessels:
            g.paint(img, _circle(vx, vy, vrad), 45)
            ri = vrad - wall
            rl = min(ri, base[k] / 2 - wall + thr_frac * (ri - base[k] / 2 + wall)) if thrombus and aortic[k] else ri
            if rl < ri:
                g.paint(img, _circle(vx, vy, ri), thr_hu)
            off = thr_ecc * (ri - rl)
            g.paint(img, _circle(vx + off * np.cos(thr_dir), vy + off * np.sin(thr_dir), rl), lumen_hu)
        if aortic[k]:
            for hc, hl, ang, nseg, rc, chu in calcs:
                if abs(h[k] - hc) <= hl:
                    rr = R[k] - rc - 0.3                       # inside the outer wall
                    for a_j in ang + 0.15 * np.arange(nseg):
                        g.paint(img, _circle(ax[k] + rr * np.cos(a_j), ay[k] + rr * np.sin(a_j), rc), chu)
    if profile.noise_hu > 0:
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(profile.noise_hu)
    k_max = int(np.argmax(D))
    return SyntheticStudy(
        hu=hu, z_mm=z, pixel_spacing_mm=g.ps, origin_mm=(float(g.c[0]), float(g.c[0])), diameter_mm=D,
        aorta_center_mm=np.where(aortic[:, None], np.stack([ax, ay], 1), np.nan), kind=kind, sex=sex, age=age,
        max_diameter_mm=round(float(D[k_max]), 1), max_z_mm=float(z[k_max]))


# ---------------------------------------------------------------------------------------------- DICOM
def encode_pixels(hu: np.ndarray, profile: ScannerProfile) -> tuple[np.ndarray, int]:
    """Round HU to integers and convert to stored values; returns (stored array, RescaleIntercept)."""
    v = np.rint(hu)
    if profile.signed:
        return np.clip(v, -1024, 3071).astype(np.int16), 0
    return np.clip(v + 1024, 0, 4095).astype(np.uint16), -1024


def write_study(folder: Path, study: SyntheticStudy, profile: ScannerProfile, study_id: str,
                rng: np.random.Generator) -> None:
    """Write ``study`` into ``folder`` as one CT DICOM file per axial slice (Explicit VR Little Endian).
    UIDs derive from ``rng`` and ``study_id``; file names ``IMnnnn.dcm`` are shuffled w.r.t. slice order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    px, intercept = encode_pixels(study.hu, profile)
    token = str(int(rng.integers(2**62)))
    uid = lambda *parts: generate_uid(entropy_srcs=[token, study_id, *map(str, parts)])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    date = (_dt.date(2020, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 1800)))).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.name
    ds.StudyDescription = "Synthetic abdominal CT"
    ds.SeriesDescription = "Abdomen arterial" if profile.contrast else "Abdomen non-contrast"
    ds.PatientName = "Synthetic^" + study_id.replace("-", "")
    ds.PatientID = f"SYNTH-{study_id}"
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.BodyPartExamined = "ABDOMEN"
    if profile.contrast:
        ds.ContrastBolusAgent = "Iodinated contrast"
    ds.SliceThickness = DSfloat(profile.slice_thickness_mm, auto_format=True)
    ds.SpacingBetweenSlices = DSfloat(profile.slice_thickness_mm, auto_format=True)
    ds.KVP = DSfloat(profile.kvp, auto_format=True)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = study_id[-16:]
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = px.shape[1:]
    ps = DSfloat(study.pixel_spacing_mm, auto_format=True)
    ds.PixelSpacing = [ps, ps]
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if profile.signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(profile.signed)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
    x0, y0 = (DSfloat(v, auto_format=True) for v in study.origin_mm)
    names = rng.permutation(len(px)) + 1
    for k, z in enumerate(study.z_mm):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid("image", k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x0, y0, DSfloat(float(z), auto_format=True)]
        ds.SliceLocation = DSfloat(float(z), auto_format=True)
        ds.PixelData = px[k].tobytes()
        ds.save_as(folder / f"IM{names[k]:04d}.dcm", enforce_file_format=True)


# ---------------------------------------------------------------------------------------------- sites
def _split(labels: np.ndarray, splits, rng) -> np.ndarray:
    """Stratified train/val/test assignment (largest remainder per class)."""
    out = np.empty(len(labels), dtype=object)
    frac = np.asarray(splits, float) / sum(splits)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        want = frac * len(idx)
        cnt = np.floor(want).astype(int)
        cnt[np.argsort(cnt - want)[: len(idx) - cnt.sum()]] += 1
        out[idx] = np.repeat(["train", "val", "test"], cnt)
    return out


def _is_complete(site: Path, meta: dict) -> bool:
    try:
        if json.loads((site / ".synth.json").read_text()) != meta:
            return False
        with open(site / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError):
        return False
    return len(rows) == meta["spec"]["n_studies"] and all(
        (site / r["path"]).is_dir() and any((site / r["path"]).iterdir()) for r in rows)


def _write_csv(path: Path, columns, rows) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    os.replace(tmp, path)


def write_site(root: Path, spec: SiteSpec, splits=(0.7, 0.15, 0.15), *,
               progress: Callable[[str], None] | None = None) -> Path:
    """Write ``root/spec.name`` (manifest.csv, truth.csv, studies/<id>/*.dcm) and return that folder.

    Prevalence is exact up to rounding; negatives are ~70% normal / ~30% ectatic; the split is stratified by
    ``aaa``. Deterministic in ``spec.seed``. A folder already complete for the same spec is reused untouched;
    otherwise its previous output is removed and rewritten."""
    site = Path(root) / spec.name
    meta = json.loads(json.dumps({"generator": GENERATOR_VERSION, "spec": asdict(spec),
                                  "splits": [float(s) for s in splits]}, default=lambda o: o.item()))
    if _is_complete(site, meta):
        if progress:
            progress(f"{spec.name}: reusing {site}")
        return site
    for name in (".synth.json", "manifest.csv", "truth.csv"):
        (site / name).unlink(missing_ok=True)
    shutil.rmtree(site / "studies", ignore_errors=True)
    (site / "studies").mkdir(parents=True)

    n = spec.n_studies
    seq = np.random.SeedSequence(spec.seed)
    rng = np.random.default_rng(seq.spawn(1)[0])
    n_aaa = int(round(n * spec.aaa_prevalence))
    n_ect = int(round(0.3 * (n - n_aaa)))
    kinds = rng.permutation(["aneurysm"] * n_aaa + ["ectatic"] * n_ect + ["normal"] * (n - n_aaa - n_ect))
    sexes = np.where(rng.random(n) < np.where(kinds == "aneurysm", 0.8, 0.5), "M", "F")
    letter = re.sub(r"[^a-z0-9]", "", spec.name.rsplit("-", 1)[-1].lower()) or "s"
    truths = []
    for i, child in enumerate(seq.spawn(n)):
        srng = np.random.default_rng(child)
        sid = f"{letter}-{i + 1:04d}"
        study = render_study(srng, spec.profile, str(kinds[i]), str(sexes[i]))
        write_study(site / "studies" / sid, study, spec.profile, sid, srng)
        truths.append(study.truth(sid))
        if progress:
            progress(f"{spec.name}: study {i + 1}/{n}")
    split = _split(np.array([t.aaa for t in truths]), splits, rng)
    _write_csv(site / "truth.csv", TRUTH_COLUMNS, [
        (t.study_id, t.kind, t.sex, t.aaa, f"{t.max_diameter_mm:.1f}", f"{t.max_z_mm:.2f}") for t in truths])
    _write_csv(site / "manifest.csv", MANIFEST_COLUMNS, [
        (t.study_id, f"studies/{t.study_id}", t.aaa, f"{t.max_diameter_mm:.1f}", s, t.sex)
        for t, s in zip(truths, split)])
    (site / ".synth.json").write_text(json.dumps(meta, indent=1))
    return site


def write_federation(root: Path, sites: list[SiteSpec],
                     progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write (or reuse) every site folder under ``root``; returns the site folders in order."""
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique: {names}")
    Path(root).mkdir(parents=True, exist_ok=True)
    return [write_site(root, spec, progress=progress) for spec in sites]
