"""Seeded synthetic abdominal CT studies, written as real DICOM series in hospital "site folders".

Each study is built analytically, slice by slice, in DICOM patient coordinates (LPS, mm: +x patient left,
+y posterior, +z head). Every structure has a signed distance ``d`` (mm, negative inside) and is composited
with partial-volume coverage ``clip(0.5 - d / pixel_spacing, 0, 1)`` (painter's algorithm), so the aortic
outer-wall diameter is encoded below voxel size. HU values and anatomy follow docs/clinical-notes.md.

The patient is drawn first, as continuous functions of height in mm, and only then sampled on the scanner's
grid: :func:`render_study` draws the same anatomy from the same ``rng`` state under every
:class:`ScannerProfile` (matrix, FOV, slice spacing, contrast phase, storage, orientation...), so one seed
rendered under two profiles is one patient scanned twice. Slices are point samples along z (SliceThickness
is a header value); the slice grid is anchored on the aortic maximum (on the head-most slice for normals),
so that maximum is a slice centre under every spacing.

Site layout written by :func:`write_site`::

    SITE/manifest.csv        study_id,path,aaa,max_diameter_mm,split,sex
    SITE/truth.csv           study_id,kind,sex,aaa,max_diameter_mm,max_z_mm  (simulation ground truth)
    SITE/studies/<id>/...    one study folder as the site's scanner exports it (see synth_dicom.write_study):
                             layout "flat" IMnnnn.dcm, "noext" IMnnnn, "nested" DICOM/<series-no>/<8 hex>
    SITE/.synth.json         the spec the folder was written from (reuse marker, written last)

:data:`ACQUISITION_VARIANTS` and :func:`write_variant` write one anatomy under each acquisition variant, to
check that a DICOM reader recovers the same volume from all of them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from fedaaa.simulations.synth_dicom import encode_pixels, padding_value, write_study  # noqa: F401  (re-exported)

GENERATOR_VERSION = 2
KINDS = ("normal", "ectatic", "aneurysm")
MANIFEST_COLUMNS = ("study_id", "path", "aaa", "max_diameter_mm", "split", "sex")
TRUTH_COLUMNS = ("study_id", "kind", "sex", "aaa", "max_diameter_mm", "max_z_mm")
ORIENTATIONS = ("standard", "flip_rows", "flip_cols", "flip_both", "coronal")
FILE_ORDERS = ("shuffled", "ascending", "descending")
TRANSFER_SYNTAXES = ("explicit", "implicit", "rle", "jpeg2000", "jpegls", "enhanced")
EXTRAS = ("localizer", "thick", "secondary", "dose", "stray")
LAYOUTS = ("flat", "nested", "noext")
CONTRAST_PHASES = ("arterial", "portal")
_LUMEN_HU = {"arterial": (200, 400), "portal": (130, 200), "none": (35, 45)}
_KIDNEY_HU = {"arterial": (140, 180), "portal": (100, 140), "none": (28, 35)}
_VENDORS = ("Acme Medical", "Helix Imaging", "Orbis CT", "Nova Systems", "Vertex Health", "Lumen Scan")


@dataclass(frozen=True)
class ScannerProfile:
    """How a site's scanner samples and exports a patient (never what the patient looks like)."""

    name: str = "generic"
    manufacturer: str = "SYNTH"
    matrix: int = 128  # rows = columns
    fov_mm: float = 360.0  # in-plane field of view; pixel spacing = fov_mm / matrix
    slice_thickness_mm: float = 5.0  # header SliceThickness
    noise_hu: float = 12.0  # Gaussian noise SD in HU
    contrast: bool = True  # contrast_phase below, else lumen ~40 HU
    signed: bool = False  # PixelRepresentation 1 (int16, intercept 0) vs 0 (uint16, intercept -1024)
    kvp: float = 120.0
    slice_spacing_mm: float | None = None  # distance between slice centres; None = slice_thickness_mm
    contrast_phase: str = "arterial"  # "arterial" lumen 200-400 HU | "portal" lumen 130-200 HU, kidneys less
    orientation: str = "standard"  # one of ORIENTATIONS (see synth_dicom)
    feet_first: bool = False  # PatientPosition FFS, InstanceNumber 1 at the feet end
    file_order: str = "shuffled"  # file names vs InstanceNumber: "shuffled" | "ascending" | "descending"
    transfer_syntax: str = "explicit"  # one of TRANSFER_SYNTAXES; "enhanced" = one multi-frame Enhanced CT file
    bits_stored: int = 0  # 0 = 16 signed / 12 unsigned; else 12, 13, 14 or 16
    pixel_padding: bool = False  # pixels outside the circular reconstruction FOV hold PixelPaddingValue
    extras: tuple[str, ...] = ()  # more material in each study folder, from EXTRAS
    layout: str = "flat"  # one of LAYOUTS
    tortuosity: float = 0.0  # 0..1: wandering, oblique aortic centreline

    def __post_init__(self):
        object.__setattr__(self, "extras", tuple(self.extras))
        for field, allowed in (
            ("contrast_phase", CONTRAST_PHASES),
            ("orientation", ORIENTATIONS),
            ("file_order", FILE_ORDERS),
            ("transfer_syntax", TRANSFER_SYNTAXES),
            ("layout", LAYOUTS),
            ("bits_stored", (0, 12, 13, 14, 16)),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if not set(self.extras) <= set(EXTRAS):
            raise ValueError(f"extras must be among {EXTRAS}, got {self.extras!r}")
        if min(self.slice_thickness_mm, self.spacing_mm, self.fov_mm, self.matrix) <= 0:
            raise ValueError("matrix, fov_mm, slice_thickness_mm and slice_spacing_mm must be positive")
        if not 0 <= self.tortuosity <= 1:
            raise ValueError(f"tortuosity must be within 0..1, got {self.tortuosity}")

    @property
    def spacing_mm(self) -> float:
        """Distance between slice centres."""
        return float(self.slice_thickness_mm if self.slice_spacing_mm is None else self.slice_spacing_mm)

    @property
    def phase(self) -> str:
        """ "arterial" | "portal" | "none" (no contrast)."""
        return self.contrast_phase if self.contrast else "none"


@dataclass(frozen=True)
class SiteSpec:
    name: str  # e.g. "hospital-a"; used as folder name
    n_studies: int
    aaa_prevalence: float  # fraction of studies with AAA (max diameter >= 30 mm)
    profile: ScannerProfile
    seed: int


@dataclass(frozen=True)
class StudyTruth:
    study_id: str
    aaa: int  # 1 if max_diameter_mm >= 30 else 0
    max_diameter_mm: float  # true max OUTER-wall diameter of the aorta, rounded to 0.1 mm
    kind: str  # "normal" | "ectatic" | "aneurysm"
    sex: str  # "M" | "F"
    max_z_mm: float  # patient z (DICOM LPS z, mm) of the slice centre where the max occurs


@dataclass
class SyntheticStudy:
    """One rendered study, always in canonical axial layout whatever the profile's orientation.
    Slice 0 is the head-most slice (highest z).

    ``hu`` is (slices, rows, cols) float32 HU with noise, before integer rounding; row index grows toward
    +y (posterior), column index toward +x (patient left); pixel (r, c) centre of slice k is
    ``(origin_mm[0] + c * pixel_spacing_mm, origin_mm[1] + r * pixel_spacing_mm, z_mm[k])``.
    ``diameter_mm`` / ``aorta_center_mm`` give the aortic outer diameter (perpendicular to the centreline)
    and centre (x, y) per slice, ``aorta_direction`` the unit tangent (x, y, z) of the centreline (toward +z)
    and ``aorta_tilt_deg`` its angle to the z axis (0 / NaN below the bifurcation), e.g. to build
    segmentation targets. An axial cut of the tilted aorta is an ellipse with semi-axes
    ``diameter / 2 / cos(tilt)`` along the in-plane direction of the tangent and ``diameter / 2`` across.
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
    aorta_tilt_deg: np.ndarray | None = None
    aorta_direction: np.ndarray | None = None
    slice_spacing_mm: float | None = None

    @property
    def aaa(self) -> int:
        return int(self.max_diameter_mm >= 30.0)

    def truth(self, study_id: str) -> StudyTruth:
        """The ground-truth record of this study under ``study_id``."""
        return StudyTruth(study_id, self.aaa, self.max_diameter_mm, self.kind, self.sex, self.max_z_mm)


def default_sites(n_sites: int = 3, studies_per_site: int = 60, seed: int = 0, matrix: int = 128) -> list[SiteSpec]:
    """Heterogeneous hospitals, deterministic in ``seed``: study counts x0.7-1.3, prevalence 0.3-0.5,
    slice thickness 1.25/2.5/3/5 mm at a spacing of at least 2.5 mm (to keep studies small), FOV 340-420 mm,
    noise 8-25 HU, contrast (arterial or portal) and non-contrast sites (at least one of each when
    n_sites >= 2), alternating signed/unsigned storage with various BitsStored, mostly standard orientation
    (sometimes flipped or feet-first), file orders, padding, one losslessly compressed site, one tortuous
    aorta site, extra series and stray files, flat/nested/extension-less layouts and vendor names."""
    rng = np.random.default_rng(seed)
    thick = rng.permutation([1.25, 2.5, 3.0, 5.0])
    vendors = rng.permutation(len(_VENDORS))
    contrast = rng.random(n_sites) < 0.7
    if n_sites >= 2:
        off, on = rng.permutation(n_sites)[:2]
        contrast[off], contrast[on] = False, True
    signed0 = int(rng.integers(2))
    packed, tortuous = rng.integers(n_sites, size=2)
    codec = str(rng.choice(["rle", "jpeg2000", "jpegls"]))
    sites = []
    for i in range(n_sites):
        vendor = _VENDORS[vendors[i % len(_VENDORS)]]
        t, signed = float(thick[i % 4]), bool((i + signed0) % 2)
        extras = [
            e
            for e, p in (("localizer", 0.5), ("thick", 0.2), ("secondary", 0.2), ("dose", 0.4), ("stray", 0.3))
            if rng.random() < p
        ]
        profile = ScannerProfile(
            name=f"{vendor.split()[0].lower()}-{t:g}mm",
            manufacturer=vendor,
            matrix=matrix,
            fov_mm=float(round(rng.uniform(340, 420))),
            slice_thickness_mm=t,
            slice_spacing_mm=None if t >= 2.5 else 2.5,
            noise_hu=round(float(rng.uniform(8, 25)), 1),
            contrast=bool(contrast[i]),
            signed=signed,
            kvp=float(rng.choice([100.0, 120.0, 140.0])),
            contrast_phase="portal" if rng.random() < 0.35 and contrast[i] else "arterial",
            orientation=str(rng.choice(ORIENTATIONS[:4], p=[0.64, 0.12, 0.12, 0.12])),
            feet_first=bool(rng.random() < 0.25),
            file_order=str(rng.choice(FILE_ORDERS)),
            transfer_syntax=codec if i == packed else str(rng.choice(["explicit", "explicit", "implicit"])),
            bits_stored=int(rng.choice([0, 12, 16] if signed else [0, 14, 16])),
            pixel_padding=bool(rng.random() < 0.4),
            extras=tuple(extras),
            layout=str(rng.choice(LAYOUTS, p=[0.5, 0.3, 0.2])),
            tortuosity=0.5 if i == tortuous else 0.0,
        )
        sites.append(
            SiteSpec(
                name=f"hospital-{chr(ord('a') + i % 26)}{'' if i < 26 else i // 26}",
                n_studies=max(4, int(round(studies_per_site * rng.uniform(0.7, 1.3)))),
                aaa_prevalence=round(float(rng.uniform(0.3, 0.5)), 2),
                profile=profile,
                seed=int(rng.integers(2**31)),
            )
        )
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


def _tube(cx, cy, r, phi, sec):
    """Axial cut of a straight tube of radius r tilted toward in-plane angle phi (sec = 1 / cos(tilt))."""
    return _circle(cx, cy, r) if sec == 1.0 else _ellipse(cx, cy, r * sec, r, phi)


def _stretch(dx, dy, phi, sec):
    """Map an offset in the tube's perpendicular section onto the axial plane (stretch sec along phi)."""
    c, s = np.cos(phi), np.sin(phi)
    u, v = (dx * c + dy * s) * sec, dy * c - dx * s
    return u * c - v * s, u * s + v * c


class _Grid:
    def __init__(self, matrix: int, fov: float):
        self.ps = fov / matrix
        self.c = -fov / 2 + self.ps / 2 + np.arange(matrix) * self.ps  # pixel centres, same for x and y

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


def _wander(rng, amp, lam=(80, 250)):
    """Smooth zero-mean random displacement along height (two sinusoids), peak about ``amp`` mm:
    returns (f, df/dh) as functions of height h (mm)."""
    lam, ph, w = rng.uniform(*lam, 2), rng.uniform(0, 2 * np.pi, 2), rng.dirichlet([2, 2])
    k = 2 * np.pi / lam
    return (
        lambda h: amp * sum(w[i] * np.sin(k[i] * h + ph[i]) for i in range(2)),
        lambda h: amp * sum(w[i] * k[i] * np.cos(k[i] * h + ph[i]) for i in range(2)),
    )


def _diameter_profile(rng, cover, h_bif, male, kind):
    """Aortic outer diameter as functions of height h: (baseline tapering caudally, baseline + fusiform
    bulge), and the height (on a 0.5 mm grid) where the diameter is largest inside the scan."""
    taper = rng.uniform(1.0, 2.5)
    d0 = float(np.clip(rng.normal(*((19.3, 1.8) if male else (16.7, 1.6))), 15.0, 24.0 - taper))
    base = lambda h: d0 + taper * (np.asarray(h) - h_bif) / (cover - h_bif)  # noqa: E731
    if kind == "normal":
        return base, base, np.floor(cover * 2) / 2  # the head-most slice
    peak = 30 + 50 * rng.beta(1.8, 3.2) if kind == "aneurysm" else rng.uniform(25.0, 29.5)
    length = min(rng.uniform(40, 120), 2 * (cover - 120 - h_bif))  # infrarenal: sac ends >= 90 mm below top
    hp = round(rng.uniform(h_bif + 30, min(h_bif + 110, cover - 90 - length / 2)) * 2) / 2

    def bulge(h):
        return base(h) + (peak - base(h)) * np.cos(np.clip((np.asarray(h) - hp) / (length / 2), -1, 1) * np.pi / 2) ** 2

    return base, bulge, hp


def _slice_heights(anchor, cover, spacing):
    """Slice centre heights in [0, cover] on the grid anchor + m * spacing, head-most first."""
    m = np.arange(np.floor((cover - anchor) / spacing + 1e-9), np.ceil(-anchor / spacing - 1e-9) - 1, -1)
    return anchor + m * spacing


def render_study(rng: np.random.Generator, profile: ScannerProfile, kind: str, sex: str) -> SyntheticStudy:
    """Render one abdominal CT volume of the given ``kind`` ("normal" | "ectatic" | "aneurysm") and ``sex``
    ("M" | "F"), noise included. Deterministic in the state of ``rng``; the anatomy depends only on the rng
    state, ``kind`` and ``sex`` (every random draw but the final noise is made before ``profile`` is used;
    ``profile.tortuosity`` only scales an already drawn centreline)."""
    if kind not in KINDS or sex not in ("M", "F"):
        raise ValueError(f"kind must be one of {KINDS} and sex 'M' or 'F', got {kind!r}, {sex!r}")
    male = sex == "M"
    age = int(np.clip(rng.normal(*{"aneurysm": (72, 7), "ectatic": (68, 9), "normal": (58, 12)}[kind]), 35, 90))
    # body, spine (z-invariant)
    a, b = rng.uniform(*((150, 175) if male else (140, 165))), rng.uniform(*((110, 130) if male else (100, 120)))
    fat = float(np.clip(10 + (a - 140) * 0.5 + rng.normal(0, 4), 10, 30))
    muscle = rng.uniform(8, 12)
    a_in, b_in = a - fat - muscle, b - fat - muscle
    vr, vc = rng.uniform(18, 22), b - rng.uniform(45, 55)
    shell = rng.uniform(2, 3)
    body = (
        (_ellipse(0, 0, a, b), -100),
        (_ellipse(0, 0, a - fat, b - fat), 50),
        (_ellipse(0, 0, a_in, b_in), -90),
        (_ellipse(-(vr + 14), vc + 4, 13, 19), 50),
        (_ellipse(vr + 14, vc + 4, 13, 19), 50),  # psoas
        (_ellipse(-28, vc + vr + 8, 18, 12), 50),
        (_ellipse(28, vc + vr + 8, 18, 12), 50),  # erectors
        (_circle(0, vc, vr), 800),
        (_circle(0, vc, vr - shell), rng.uniform(200, 250)),
        (_ellipse(0, vc + vr + 10, 20, 9), 450),
        (_circle(0, vc + vr + 7, 6), 15),
    )  # arch, canal
    # z geometry in mm: h = height above the caudal edge of the scan, z = z_lo + h
    cover = rng.uniform(220, 260)
    z_lo = round(rng.uniform(-320, -220) * 2) / 2
    h_bif = rng.uniform(40, 60)
    base_fn, diam_fn, anchor = _diameter_profile(rng, cover, h_bif, male, kind)
    ax0 = rng.uniform(10, 20)
    wander_x = _wander(rng, rng.uniform(1.5, 4))[0]
    wall, u_lumen = rng.uniform(1.5, 2.5), rng.random()
    thrombus = kind == "aneurysm" and rng.random() < 0.75
    # thrombus: HU, share of the sac it fills, lumen eccentricity and direction
    thr_hu, thr_frac, thr_ecc = rng.uniform(35, 50), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9)
    thr_dir = rng.uniform(0, 2 * np.pi)
    calcs = []  # (h centre, half length, angle, n arc segments, radius, HU)
    if rng.random() < np.clip((age - 50) / 30, 0, 0.9):
        for _ in range(rng.integers(2, 7)):
            calcs.append(
                (
                    rng.uniform(h_bif, cover),
                    rng.uniform(2.5, 10),
                    rng.uniform(0, 2 * np.pi),
                    int(rng.integers(1, 5)),
                    rng.uniform(0.8, 1.6),
                    rng.uniform(400, 1200),
                )
            )
    r_il, spread = rng.uniform(4.5, 6.5), rng.uniform(0.35, 0.6)
    u_kid = rng.random()
    kidneys = [
        (
            s,
            cover - rng.uniform(40, 55) - (8 if s < 0 else 0),
            rng.uniform(45, 55),  # side, h, half length
            rng.uniform(26, 30),
            rng.uniform(14, 17),
            s * (vr + rng.uniform(40, 50)),  # semi-axes, x
            vc + rng.uniform(-5, 10),
            s * rng.uniform(0.3, 0.6),
        )
        for s in (1, -1)
    ]  # y, rotation
    bowel = [
        (
            rng.uniform(-(a_in - 25), a_in - 25),
            rng.uniform(-(b_in - 20), vc - vr - 25),
            rng.uniform(8, 20),
            rng.uniform(5, 15),
            rng.uniform(60, 160, 2),
            rng.uniform(0, 2 * np.pi, 3),
            -1000.0 if rng.random() < 0.4 else rng.uniform(10, 30),
        )
        for _ in range(rng.integers(6, 11))
    ]
    tort_x, tort_y = _wander(rng, 25.0, (150, 300)), _wander(rng, 40.0, (150, 300))

    # ---- sampling on the scanner's grid: no random draws from here until the noise
    g, tau = _Grid(profile.matrix, profile.fov_mm), profile.tortuosity
    lo, hi = _LUMEN_HU[profile.phase]
    lumen_hu = lo + u_lumen * (hi - lo)
    lo, hi = _KIDNEY_HU[profile.phase]
    kid_hu = lo + u_kid * (hi - lo)
    h = _slice_heights(anchor, cover, profile.spacing_mm)
    n, z = len(h), z_lo + h
    aortic = h >= h_bif
    D = np.where(aortic, diam_fn(h), 0.0)
    R, base = D / 2, base_fn(h)
    # tortuous centreline: x wanders both ways, y only anteriorly (the aorta lies on the spine)
    hb = np.maximum(h, h_bif)
    tx, ty = tau * tort_x[0](hb), -tau * (tort_y[0](hb) + 40.0) / 2
    dtx, dty = tau * tort_x[1](h), -tau * tort_y[1](h) / 2
    slope = np.where(aortic, np.hypot(dtx, dty), 0.0)
    phi, sec = np.arctan2(dty, dtx), np.sqrt(1 + slope**2)
    ex = R * np.sqrt((sec * np.cos(phi)) ** 2 + np.sin(phi) ** 2)  # half extents of the oblique cut
    ey = R * np.sqrt((sec * np.sin(phi)) ** 2 + np.cos(phi) ** 2)
    ax = ax0 + wander_x(h) + tx
    ay = vc - vr - 3 - ey + ty
    il_dx = max(r_il * 1.05, float(diam_fn(h_bif)) / 2 - r_il) + spread * np.clip(h_bif - h, 0, None)

    base_img = np.full((profile.matrix,) * 2, -1000.0, np.float32)
    for shape, v in body:
        g.paint(base_img, shape, v)
    hu = np.empty((n, profile.matrix, profile.matrix), np.float32)
    for k in range(n):
        img = hu[k]
        img[:] = base_img
        vessels = (
            [(ax[k], ay[k], R[k], phi[k], sec[k])]
            if aortic[k]
            else [(ax[k] + s * il_dx[k], vc - vr - 3 - r_il, r_il, 0.0, 1.0) for s in (1, -1)]
        )
        for s, kh, hz, ka, kb, kx0, ky, th in kidneys:
            q = 1 - ((h[k] - kh) / hz) ** 2
            if q > 0:
                sa, sb = ka * np.sqrt(q), kb * np.sqrt(q)
                kex = np.hypot(sa * np.cos(th), sb * np.sin(th))
                kx = s * max(abs(kx0), s * ax[k] + ex[k] + 10 + kex)  # >= 10 mm of fat from the aorta
                g.paint(img, _ellipse(kx, ky, sa, sb, th), kid_hu)
        for bx0, by0, r0, amp, lam, ph, content in bowel:
            bx = bx0 + amp * np.sin(2 * np.pi * h[k] / lam[0] + ph[0])
            by = by0 + amp * np.cos(2 * np.pi * h[k] / lam[1] + ph[1])
            r = r0 * (0.6 + 0.4 * np.sin(2 * np.pi * h[k] / lam[0] + ph[2]) ** 2)
            inside = (bx / (a_in - r - 3)) ** 2 + (by / (b_in - r - 3)) ** 2 < 1 and by + r < vc - vr - 5
            if inside and all(np.hypot(bx - vx, by - vy) - vr_ * se - r > 15 for vx, vy, vr_, _, se in vessels):
                g.paint(img, _circle(bx, by, r), 40)
                g.paint(img, _circle(bx, by, r - 2), content)
        for vx, vy, vrad, ph_, se in vessels:
            g.paint(img, _tube(vx, vy, vrad, ph_, se), 45)
            ri = vrad - wall
            rl = min(ri, base[k] / 2 - wall + thr_frac * (ri - base[k] / 2 + wall)) if thrombus and aortic[k] else ri
            if rl < ri:
                g.paint(img, _tube(vx, vy, ri, ph_, se), thr_hu)
            dx, dy = _stretch(thr_ecc * (ri - rl) * np.cos(thr_dir), thr_ecc * (ri - rl) * np.sin(thr_dir), ph_, se)
            g.paint(img, _tube(vx + dx, vy + dy, rl, ph_, se), lumen_hu)
        if aortic[k]:
            for hc, hl, ang, nseg, rc, chu in calcs:
                if abs(h[k] - hc) <= hl:
                    rr = R[k] - rc - 0.3  # inside the outer wall
                    for a_j in ang + 0.15 * np.arange(nseg):
                        dx, dy = _stretch(rr * np.cos(a_j), rr * np.sin(a_j), phi[k], sec[k])
                        g.paint(img, _tube(ax[k] + dx, ay[k] + dy, rc, phi[k], sec[k]), chu)
    if profile.noise_hu > 0:
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(profile.noise_hu)
    k_max = int(np.argmax(D))
    return SyntheticStudy(
        hu=hu,
        z_mm=z,
        pixel_spacing_mm=g.ps,
        origin_mm=(float(g.c[0]), float(g.c[0])),
        diameter_mm=D,
        aorta_center_mm=np.where(aortic[:, None], np.stack([ax, ay], 1), np.nan),
        kind=kind,
        sex=sex,
        age=age,
        max_diameter_mm=round(float(D[k_max]), 1),
        max_z_mm=float(z[k_max]),
        aorta_tilt_deg=np.where(aortic, np.degrees(np.arctan(slope)), np.nan),
        aorta_direction=np.where(aortic[:, None], np.stack([dtx, dty, np.ones(n)], 1) / sec[:, None], np.nan),
        slice_spacing_mm=profile.spacing_mm,
    )


# ---------------------------------------------------------------------------------------------- variants
VARIANT_BASE = ScannerProfile(name="variant", noise_hu=0.0)
ACQUISITION_VARIANTS: dict[str, dict] = {
    # same anatomy and HU, stored/exported differently: a reader must return the reference volume
    "reference": {},
    "ascending": {"file_order": "ascending"},
    "descending": {"file_order": "descending"},
    "feet_first": {"feet_first": True},
    "flip_rows": {"orientation": "flip_rows"},
    "flip_cols": {"orientation": "flip_cols"},
    "flip_both": {"orientation": "flip_both"},
    "coronal": {"orientation": "coronal"},
    "signed": {"signed": True},
    "unsigned_12bit": {"signed": False, "bits_stored": 12},
    "signed_12bit": {"signed": True, "bits_stored": 12},
    "bits13": {"signed": False, "bits_stored": 13},
    "bits14": {"signed": True, "bits_stored": 14},
    "unsigned_16bit": {"signed": False, "bits_stored": 16},
    "padding": {"pixel_padding": True},
    "padding_signed": {"pixel_padding": True, "signed": True},
    "implicit": {"transfer_syntax": "implicit"},
    "rle": {"transfer_syntax": "rle"},
    "jpeg2000": {"transfer_syntax": "jpeg2000"},
    "jpegls": {"transfer_syntax": "jpegls"},
    "enhanced": {"transfer_syntax": "enhanced"},
    "nested": {"layout": "nested"},
    "noext": {"layout": "noext"},
    "localizer": {"extras": ("localizer", "thick", "secondary", "dose", "stray")},
    "kitchen_sink": {
        "orientation": "flip_both",
        "feet_first": True,
        "file_order": "descending",
        "signed": True,
        "bits_stored": 13,
        "transfer_syntax": "jpegls",
        "pixel_padding": True,
        "layout": "nested",
        "extras": ("localizer", "thick", "secondary", "dose", "stray"),
    },
    # same anatomy sampled differently (slice grid or pixel spacing): compare after resampling
    "thin_1mm": {"slice_thickness_mm": 1.25, "slice_spacing_mm": 1.25},
    "thick_5mm": {"slice_thickness_mm": 5.0, "slice_spacing_mm": 5.0},
    "overlap": {"slice_thickness_mm": 5.0, "slice_spacing_mm": 2.5},
    "gap": {"slice_thickness_mm": 1.25, "slice_spacing_mm": 2.5},
    "fov_small": {"fov_mm": 345.0},  # the widest synthetic body (about 340 mm) still fits
    "fov_large": {"fov_mm": 440.0},
}
RESAMPLED_VARIANTS = ("thin_1mm", "thick_5mm", "overlap", "gap", "fov_small", "fov_large")


def variant_profile(variant: str | dict, base: ScannerProfile = VARIANT_BASE) -> ScannerProfile:
    """``base`` with the overrides of a named :data:`ACQUISITION_VARIANTS` entry (or of a dict)."""
    return replace(base, **(ACQUISITION_VARIANTS[variant] if isinstance(variant, str) else variant))


def write_variant(
    folder: Path,
    seed: int,
    variant: str | dict,
    base: ScannerProfile = VARIANT_BASE,
    kind: str = "aneurysm",
    sex: str = "M",
) -> StudyTruth:
    """Render the patient of ``np.random.default_rng(seed)`` under ``variant`` and write it as the study
    folder ``folder``. The same seed gives the same anatomy under every variant (and, with noise 0 and
    the same pixel/slice grid, the same HU)."""
    profile = variant_profile(variant, base)
    name = variant if isinstance(variant, str) else "custom"
    rng = np.random.default_rng(seed)
    study = render_study(rng, profile, kind, sex)
    sid = f"v{seed}-{re.sub(r'[^A-Za-z0-9]', '', name)}"
    write_study(folder, study, profile, sid, rng)
    return study.truth(sid)


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
        (site / r["path"]).is_dir() and any((site / r["path"]).iterdir()) for r in rows
    )


def _write_csv(path: Path, columns, rows) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    os.replace(tmp, path)


def write_site(
    root: Path, spec: SiteSpec, splits=(0.7, 0.15, 0.15), *, progress: Callable[[str], None] | None = None
) -> Path:
    """Write ``root/spec.name`` (manifest.csv, truth.csv, studies/<id>/...) and return that folder.

    Prevalence is exact up to rounding; negatives are ~70% normal / ~30% ectatic; the split is stratified by
    ``aaa``. Deterministic in ``spec.seed``. A folder already complete for the same spec is reused untouched;
    otherwise its previous output is removed and rewritten."""
    site = Path(root) / spec.name
    meta = json.loads(
        json.dumps(
            {"generator": GENERATOR_VERSION, "spec": asdict(spec), "splits": [float(s) for s in splits]},
            default=lambda o: o.item(),
        )
    )
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
    _write_csv(
        site / "truth.csv",
        TRUTH_COLUMNS,
        [(t.study_id, t.kind, t.sex, t.aaa, f"{t.max_diameter_mm:.1f}", f"{t.max_z_mm:.2f}") for t in truths],
    )
    _write_csv(
        site / "manifest.csv",
        MANIFEST_COLUMNS,
        [
            (t.study_id, f"studies/{t.study_id}", t.aaa, f"{t.max_diameter_mm:.1f}", s, t.sex)
            for t, s in zip(truths, split)
        ],
    )
    (site / ".synth.json").write_text(json.dumps(meta, indent=1))
    return site


def write_federation(root: Path, sites: list[SiteSpec], progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write (or reuse) every site folder under ``root``; returns the site folders in order."""
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique: {names}")
    Path(root).mkdir(parents=True, exist_ok=True)
    return [write_site(root, spec, progress=progress) for spec in sites]
