"""An independent evaluation renderer: abdominal CT phantoms with a known outer aortic diameter.

Written apart from the training generator (``anatomy.py``/``scanner.py``/``synth.py``), with its own shape
model and intensities, and never trained on: it is the test of generalisation.

Shape model. The aorta is an ellipse swept along a smooth 3-D cubic-spline centreline (random control
points every ~45 mm; ``tortuosity`` scales their lateral scatter, 0 = straight and vertical). Each
cross-section lies in the plane perpendicular to the centreline: an outer ellipse (minor/major 0.85-1.0,
slowly rotating), a wall rim 1.5-2.5 mm thick, and a circular lumen placed eccentrically inside the inner
ellipse, so that the mural thrombus is a crescent. The outer semi-major axis follows a base radius
(tapering towards the bifurcation) plus a bulge: fusiform (Gaussian) or saccular (short raised cosine
with the sac's centre displaced to one side). ``thrombus_fraction`` is the fraction of the sac's inner
area that thrombus fills at the widest level (the lumen never narrows below the normal aorta's lumen).
The aorta ends at the iliac bifurcation (two iliac tubes), gives two renal arteries, and is surrounded by
retroperitoneal fat of variable thickness; around it: vertebral bodies (cancellous bone, cortical rim,
discs), spinal canal and posterior elements, psoas and paraspinal muscles, IVC, kidneys, liver, spleen,
bowel loops (air, fluid, air-fluid levels), abdominal wall muscle, subcutaneous fat, a table.

Truth. ``max_diameter_mm`` is 2 x the outer semi-major axis at the level where it is largest over the
infrarenal segment (bifurcation to renal arteries), read from the shape model itself, i.e. the maximum
outer-to-outer diameter perpendicular to the centreline. ``label`` marks the aorta to its outer wall
(lumen + thrombus + wall; iliac and renal branches are not labelled).

:func:`insert_aneurysm` paints an aneurysm with the same section model into a real CT's aorta.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage as ndi
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

KINDS = ("normal", "ectatic", "aneurysm")
DIAMETER_RANGE_MM = {"normal": (16.0, 24.0), "ectatic": (25.0, 29.0), "aneurysm": (30.0, 80.0)}
DEFAULT_SPACING_MM = (0.8, 0.8, 2.5)
DEFAULT_MATRIX = 448
REAL_CT_DIR = Path(
    os.environ.get("FEDAAA_REAL_CT") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct"
)
AORTA_LABEL = 52  # TotalSegmentator's aorta in example_seg.nii.gz

Point3 = Sequence[float] | np.ndarray  # a world position or size (x, y, z), mm
Plaque = tuple[int, int, float, float, float]  # first section, last section, angle, half-angle, HU
# per-section a, b, psi, off, wall, lumen_r, lumen_c (the fields of _Tube, in order)
Sections = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
TubeMasks = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Phantom:
    hu: np.ndarray  # float32, (x, y, z) voxels, RAS
    affine: np.ndarray  # voxel -> RAS mm
    label: np.ndarray  # uint8, 1 = aorta to its outer wall
    max_diameter_mm: float  # true maximum outer diameter perpendicular to the centreline (infrarenal)
    max_z_mm: float  # RAS z of the centreline at that level
    kind: str
    contrast: bool
    thrombus_fraction: float  # requested fraction of the sac's inner area filled by thrombus
    lumen: np.ndarray | None = None  # uint8 lumen mask of the aorta
    lumen_diameter_mm: float = 0.0  # lumen diameter at the level of the maximum
    renal_z_mm: float = 0.0
    bifurcation_z_mm: float = 0.0
    tortuosity: float = 0.0


@dataclass
class PhantomSpec:
    study_id: str
    seed: int
    kind: str
    contrast: bool
    thrombus_fraction: float
    diameter_mm: float
    tortuosity: float
    sex: str


# ----------------------------------------------------------------------------------------------- geometry


def _grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], z0: float) -> np.ndarray:
    """RAS affine with the in-plane centre of the matrix at x = y = 0 and the first slice at z0."""
    aff = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    aff[0, 3] = -(shape[0] - 1) / 2 * spacing[0]
    aff[1, 3] = -(shape[1] - 1) / 2 * spacing[1]
    aff[2, 3] = z0
    return aff


def _world_axes(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinate of each index along x, y, z (axis-aligned affines only)."""
    return tuple(affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3))  # type: ignore[return-value]


@dataclass
class _Tube:
    """An ellipse swept along sampled centreline points, sections perpendicular to the tangent."""

    pts: np.ndarray  # (N, 3) centreline, mm
    a: np.ndarray  # outer semi-major axis, mm
    b: np.ndarray  # outer semi-minor axis
    psi: np.ndarray  # angle of the major axis in the (e1, e2) frame
    off: np.ndarray  # (N, 2) outer centre relative to the centreline, (e1, e2)
    wall: np.ndarray  # wall thickness, mm
    lumen_r: np.ndarray  # lumen radius
    lumen_c: np.ndarray  # (N, 2) lumen centre relative to the centreline
    t: np.ndarray = field(init=False)
    e1: np.ndarray = field(init=False)
    e2: np.ndarray = field(init=False)
    ds: float = field(init=False)

    def __post_init__(self) -> None:
        t = np.gradient(self.pts, axis=0)
        self.ds = float(np.median(np.linalg.norm(t, axis=1)))
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        ref = np.array([0.0, 1.0, 0.0])  # anterior: never parallel to the vessels drawn here
        e1 = ref - (t @ ref)[:, None] * t
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        self.t, self.e1, self.e2 = t, e1, np.cross(t, e1)

    def reach(self) -> float:
        return float(np.max(self.a + np.linalg.norm(self.off, axis=1)))

    def local(self, coords: np.ndarray, extra: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Nearest section index and in-plane coordinates (u, v) of world points; ``ok`` where the point
        lies in a section's plane (not beyond the tube's ends)."""
        tree = cKDTree(self.pts)
        dist, idx = tree.query(coords, distance_upper_bound=self.reach() + extra + self.ds)
        ok = np.isfinite(dist)
        idx = np.where(ok, idx, 0)
        d = coords - self.pts[idx]
        w = np.einsum("ij,ij->i", d, self.t[idx])
        end = (idx == 0) | (idx == len(self.pts) - 1)  # flat ends; inside a bend any projection will do
        ok &= ~end | (np.abs(w) <= 0.75 * self.ds)
        u = np.einsum("ij,ij->i", d, self.e1[idx])
        v = np.einsum("ij,ij->i", d, self.e2[idx])
        return idx, u, v, ok

    def masks(self, coords: np.ndarray, halo: float = 0.0) -> TubeMasks:
        """Outer, inner (inside the wall), lumen and halo (outer grown by ``halo`` mm) masks, plus the
        section index and the normalised elliptical radius and angle (for calcified plaques)."""
        idx, u, v, ok = self.local(coords, extra=halo)
        du, dv = u - self.off[idx, 0], v - self.off[idx, 1]
        c, s = np.cos(self.psi[idx]), np.sin(self.psi[idx])
        p, q = c * du + s * dv, -s * du + c * dv
        a, b, wt = self.a[idx], self.b[idx], self.wall[idx]
        rho = np.sqrt((p / a) ** 2 + (q / b) ** 2)
        outer = ok & (rho <= 1.0)
        grown = ok & ((p / (a + halo)) ** 2 + (q / (b + halo)) ** 2 <= 1.0) if halo else outer
        inner = outer & ((p / (a - wt)) ** 2 + (q / (b - wt)) ** 2 <= 1.0)
        lumen = inner & ((u - self.lumen_c[idx, 0]) ** 2 + (v - self.lumen_c[idx, 1]) ** 2 <= self.lumen_r[idx] ** 2)
        return outer, inner, lumen, grown, idx, rho, np.arctan2(q, p)


def _box_coords(
    shape: tuple[int, ...], affine: np.ndarray, lo_mm: Point3, hi_mm: Point3
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """World coordinates (M, 3) of the voxels inside an axis-aligned box, and the box's slices."""
    sl = []
    for ax in range(3):
        step, origin = affine[ax, ax], affine[ax, 3]
        i0, i1 = sorted(((lo_mm[ax] - origin) / step, (hi_mm[ax] - origin) / step))
        i0, i1 = max(0, int(math.floor(i0))), min(shape[ax], int(math.ceil(i1)) + 1)
        sl.append(slice(i0, max(i0, i1)))
    axes = _world_axes(shape, affine)
    xs, ys, zs = (axes[ax][sl[ax]] for ax in range(3))
    g = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1).reshape(-1, 3)
    return g, tuple(sl)


def _paint_tube(
    hu: np.ndarray,
    affine: np.ndarray,
    tube: _Tube,
    hu_wall: float,
    hu_thrombus: float,
    hu_lumen: float,
    label: np.ndarray | None = None,
    lumen_mask: np.ndarray | None = None,
    plaques: Sequence[Plaque] = (),
) -> None:
    lo = tube.pts.min(axis=0) - tube.reach() - 2
    hi = tube.pts.max(axis=0) + tube.reach() + 2
    coords, sl = _box_coords(hu.shape, affine, lo, hi)
    if not len(coords):
        return
    outer, inner, lumen, _, idx, rho, ang = tube.masks(coords)
    box = hu[sl].reshape(-1).copy()
    box[outer] = hu_wall
    box[inner] = hu_thrombus
    box[lumen] = hu_lumen
    for i0, i1, theta, half, value in plaques:  # arcs on the inner side of the wall
        ring = outer & ~lumen & (rho >= 1.0 - (tube.wall[idx] + 1.3) / tube.a[idx])
        arc = np.abs(np.angle(np.exp(1j * (ang - theta)))) <= half
        box[ring & arc & (idx >= i0) & (idx <= i1)] = value
    hu[sl] = box.reshape(hu[sl].shape)
    if label is not None:
        lb = label[sl].reshape(-1)
        lb[outer] = 1
        label[sl] = lb.reshape(label[sl].shape)
    if lumen_mask is not None:
        lm = lumen_mask[sl].reshape(-1)
        lm[lumen] = 1
        lumen_mask[sl] = lm.reshape(lumen_mask[sl].shape)


def _paint_halo(hu: np.ndarray, affine: np.ndarray, tube: _Tube, halo_mm: float, value: float) -> None:
    lo = tube.pts.min(axis=0) - tube.reach() - halo_mm - 2
    hi = tube.pts.max(axis=0) + tube.reach() + halo_mm + 2
    coords, sl = _box_coords(hu.shape, affine, lo, hi)
    if not len(coords):
        return
    _, _, _, grown, *_ = tube.masks(coords, halo=halo_mm)
    box = hu[sl].reshape(-1)
    box[grown] = value
    hu[sl] = box.reshape(hu[sl].shape)


def _ellipsoid(
    hu: np.ndarray,
    affine: np.ndarray,
    centre: Point3,
    semi: Point3,
    value: float,
    where: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Paint an axis-aligned ellipsoid (only over voxels where ``where(hu_box)`` holds, if given)."""
    c, r = np.asarray(centre, float), np.asarray(semi, float)
    coords, sl = _box_coords(hu.shape, affine, c - r, c + r)
    if not len(coords):
        return
    inside = (((coords - c) / r) ** 2).sum(axis=1) <= 1.0
    box = hu[sl].reshape(-1)
    if where is not None:
        inside &= where(box)
    box[inside] = value
    hu[sl] = box.reshape(hu[sl].shape)


def _plaques(
    rng: np.random.Generator, n_sections: int, idx_range: tuple[int, int], count: int, ds: float
) -> list[Plaque]:
    """Calcified plaques: (first section, last section, angle, half-angle, HU)."""
    out: list[Plaque] = []
    lo, hi = idx_range
    for _ in range(count):
        i = int(rng.integers(lo, max(lo + 1, hi)))
        length = max(1, int(rng.uniform(3, 12) / ds))
        out.append(
            (
                i,
                min(n_sections - 1, i + length),
                rng.uniform(-np.pi, np.pi),
                rng.uniform(0.15, 0.6),
                rng.uniform(400, 1200),
            )
        )
    return out


def _bulge(s: np.ndarray, centre: float, width: float, saccular: bool) -> np.ndarray:
    """Bulge profile in [0, 1], 1 at ``centre``: Gaussian (fusiform) or raised cosine (saccular)."""
    if saccular:
        x = np.clip((s - centre) / width, -1.0, 1.0)
        return 0.5 * (1.0 + np.cos(np.pi * x))
    return np.exp(-0.5 * ((s - centre) / width) ** 2)


def _sections(
    rng: np.random.Generator,
    s: np.ndarray,
    base_a: np.ndarray | float,
    bulge_amp: np.ndarray | float,
    g: np.ndarray,
    ratio: float,
    wall: float,
    thrombus_fraction: float,
    ecc: float,
    sac_dir: float,
    psi0: float,
) -> Sections:
    """Section parameters of an aorta along arc-length samples ``s`` (see module docstring)."""
    a = base_a + bulge_amp * g
    b = ratio * a
    psi = psi0 + 0.6 * np.sin(s / 80.0 + rng.uniform(0, 2 * np.pi))
    shift = ecc * (a - base_a)
    off = np.stack([shift * np.cos(sac_dir), shift * np.sin(sac_dir)], axis=1)
    wall_arr = np.full_like(a, wall)
    a_in, b_in = a - wall, b - wall
    r_eq = np.sqrt(a_in * b_in)
    r_base = ratio**0.5 * (base_a - wall)  # the normal aorta's lumen
    lumen_r = np.minimum(b_in, np.maximum(np.sqrt(1.0 - thrombus_fraction) * r_eq, np.minimum(r_base, b_in)))
    # lumen pushed away from the sac, against the wall on the far side (a crescent of thrombus)
    m = rng.uniform(0.55, 0.95) * np.maximum(b_in - lumen_r, 0.0)
    lumen_c = off - np.stack([m * np.cos(sac_dir), m * np.sin(sac_dir)], axis=1)
    return a, b, psi, off, wall_arr, lumen_r, lumen_c


def _spline_path(
    rng: np.random.Generator, z_lo: float, z_hi: float, x0: float, y0: float, amp: float, step: float = 45.0
) -> tuple[CubicSpline, CubicSpline]:
    """Centreline x(z), y(z): a cubic spline through random control points (amp = scatter in mm)."""
    n = max(3, int(math.ceil((z_hi - z_lo) / step)) + 1)
    zc = np.linspace(z_lo, z_hi, n)
    xc = x0 + rng.normal(0, amp, n)
    yc = y0 + rng.normal(0, 0.6 * amp, n)
    return CubicSpline(zc, xc), CubicSpline(zc, yc)


# ----------------------------------------------------------------------------------------------- render


def render_phantom(
    seed: int,
    kind: str = "aneurysm",
    contrast: bool = True,
    thrombus_fraction: float = 0.3,
    diameter_mm: float | None = None,
    tortuosity: float | None = None,
    saccular: bool | None = None,
    spacing: tuple[float, float, float] = DEFAULT_SPACING_MM,
    matrix: int = DEFAULT_MATRIX,
    scan_range_mm: float | None = None,
    noise_hu: float | None = None,
    psf_mm: float | None = None,
) -> Phantom:
    """Render one abdominal CT phantom (renal arteries to below the iliac bifurcation) with its truth.

    ``kind`` picks the maximum diameter's range (normal 16-24, ectatic 25-29, aneurysm 30-80 mm) unless
    ``diameter_mm`` gives it; ``tortuosity`` (0 straight and vertical .. 1 strong), ``noise_hu`` (5-30)
    and ``psf_mm`` (Gaussian sigma 0.4-1.2) are drawn when not given. Deterministic per argument set.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= thrombus_fraction <= 0.95:
        raise ValueError("thrombus_fraction must be in [0, 0.95]")
    rng = np.random.default_rng([seed, KINDS.index(kind), int(contrast)])
    lo_d, hi_d = DIAMETER_RANGE_MM[kind]
    drawn_d = float(rng.uniform(lo_d, hi_d))
    target = float(diameter_mm) if diameter_mm is not None else drawn_d
    # every draw is made whatever the overrides, so that an override changes nothing else
    drawn = (
        float(rng.choice([0.1, 0.35, 0.7, 1.0])),
        bool(rng.random() < 0.3),
        rng.uniform(5, 30),
        rng.uniform(0.4, 1.2),
    )
    tort = drawn[0] if tortuosity is None else float(tortuosity)
    sacc = drawn[1] if saccular is None else bool(saccular)
    sigma_noise = float(drawn[2] if noise_hu is None else noise_hu)
    psf = float(drawn[3] if psf_mm is None else psf_mm)

    # ---- levels along z (mm, RAS; z = 0 at the bottom of the scan)
    below_bif = rng.uniform(35, 60)
    infrarenal = rng.uniform(95, 125)
    above_renal = rng.uniform(40, 75)
    total = scan_range_mm or below_bif + infrarenal + above_renal
    scale = total / (below_bif + infrarenal + above_renal)
    z_bif, z_ren = below_bif * scale, (below_bif + infrarenal) * scale
    nz = max(8, int(round(total / spacing[2])))
    shape = (matrix, matrix, nz)
    affine = _grid_affine(shape, spacing, 0.0)
    z_top = (nz - 1) * spacing[2]

    # ---- intensities of this study
    fat = rng.uniform(-120, -60)
    muscle = rng.uniform(40, 60)
    lumen_hu = rng.uniform(180, 450) if contrast else rng.uniform(30, 50)
    thrombus_hu = rng.uniform(30, 60)
    wall_hu = rng.uniform(40, 70)
    enh = rng.uniform(0.5, 1.0) if contrast else 0.0  # how much organs enhance
    liver_hu = rng.uniform(50, 65) + enh * rng.uniform(40, 70)
    kidney_hu = rng.uniform(30, 40) + enh * rng.uniform(110, 200)
    ivc_hu = rng.uniform(35, 45) + enh * rng.uniform(40, 110)
    spleen_hu = rng.uniform(45, 55) + enh * rng.uniform(50, 80)
    bone_hu, cortex_hu = rng.uniform(250, 450), rng.uniform(600, 1000)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    xs, ys, zs = _world_axes(shape, affine)
    X, Y = np.meshgrid(xs, ys, indexing="ij")

    # ---- body: outline, subcutaneous fat, abdominal wall muscle, visceral fat (widening into the pelvis)
    bx0, by0 = rng.uniform(140, 175), rng.uniform(105, 130)
    sub_fat = rng.uniform(8, 35)
    table_y = None
    for k, z in enumerate(zs):
        f = 1.0 + 0.05 * (1.0 - z / max(z_top, 1.0))
        ax_, ay_ = bx0 * f, by0
        yy = np.where(Y < 0, 1.15 * Y, Y)  # flatter back
        r_out = (X / ax_) ** 2 + (yy / ay_) ** 2
        sl = hu[:, :, k]
        sl[r_out <= 1.0] = fat + 10
        r_mus = (X / (ax_ - sub_fat)) ** 2 + (yy / (ay_ - sub_fat)) ** 2
        sl[r_mus <= 1.0] = muscle
        r_in = (X / (ax_ - sub_fat - 12)) ** 2 + (yy / (ay_ - sub_fat - 10)) ** 2
        sl[r_in <= 1.0] = fat
        table_y = -ay_ / 1.15 - 12
        sl[(Y > table_y - 6) & (Y < table_y) & (np.abs(X) < 0.9 * ax_)] = 150.0

    # ---- spine: vertebral bodies with discs, canal and posterior elements; paraspinal muscles
    back = -by0 / 1.15
    x_v = rng.uniform(-6, 6)
    y_canal = back + sub_fat + rng.uniform(45, 55)
    vb_ry, vb_rx = rng.uniform(14, 18), rng.uniform(20, 25)
    y_v = y_canal + 8 + vb_ry + 2
    for side in (-1, 1):
        _ellipsoid(hu, affine, (x_v + side * 32, y_canal - 12, z_top / 2), (22, 20, z_top), muscle + 3)
    level_h, disc_h, phase = rng.uniform(30, 36), rng.uniform(7, 10), rng.uniform(0, 36)
    for k, z in enumerate(zs):
        sl = hu[:, :, k]
        r_vb = ((X - x_v) / vb_rx) ** 2 + ((Y - y_v) / vb_ry) ** 2
        in_disc = ((z + phase) % level_h) < disc_h
        if in_disc:
            sl[r_vb <= 1.0] = 90.0
        else:
            sl[r_vb <= 1.0] = cortex_hu
            sl[((X - x_v) / (vb_rx - 2)) ** 2 + ((Y - y_v) / (vb_ry - 2)) ** 2 <= 1.0] = bone_hu
        ring = (X - x_v) ** 2 + (Y - y_canal) ** 2
        sl[(ring <= 15**2) & (Y < y_v - vb_ry + 3)] = cortex_hu * 0.8
        sl[(np.abs(X - x_v) <= 4) & (Y < y_canal) & (Y > y_canal - 35)] = cortex_hu * 0.8
        sl[ring <= 8.5**2] = 15.0  # spinal canal

    # ---- aorta centreline and sections
    r_base = max(7.5, min(target / 2.0, rng.uniform(8.5, 11.5)) if kind != "normal" else target / 2.0)
    x_a = x_v - rng.uniform(8, 18)
    y_a = y_v + vb_ry + r_base + rng.uniform(3, 12)
    fx, fy = _spline_path(rng, z_bif - 30, z_top + 30, x_a, y_a, 14.0 * tort)
    # the spline's offset at the bifurcation is removed so the aorta starts anterior-left of the spine
    zz = np.arange(z_bif, z_top + spacing[2] + 0.5, 0.5)
    pts = np.stack([fx(zz) - fx(z_bif) + x_a, fy(zz) - fy(z_bif) + y_a, zz], axis=1)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    s_ren = float(np.interp(z_ren, zz, s))
    taper = rng.uniform(0.0, 1.5) * np.clip((s_ren - s) / max(s_ren, 1.0), 0, 1)  # narrower downwards
    base_a = r_base - taper
    wall = rng.uniform(1.5, 2.5)
    ratio = rng.uniform(0.85, 1.0)
    if kind == "normal":
        s_c, width, amp, g = s_ren / 2, 20.0, 0.0, np.zeros_like(s)
    else:
        width = rng.uniform(12, 22) if sacc else rng.uniform(18, 35)
        if sacc:
            width *= 1.6  # raised-cosine half length
        lo_c = min(s_ren - 10, 0.3 * s_ren + 5)
        s_c = rng.uniform(lo_c, max(lo_c + 1, s_ren - 0.8 * width if sacc else s_ren - 1.2 * width))
        g = _bulge(s, s_c, width, sacc)
        amp = target / 2.0 - float(np.interp(s_c, s, base_a))
    ecc = rng.uniform(0.5, 0.9) if sacc else rng.uniform(0.0, 0.35)
    sac_dir = rng.uniform(-np.pi, np.pi)
    sections = _sections(rng, s, base_a, amp, g, ratio, wall, thrombus_fraction, ecc, sac_dir, rng.uniform(0, np.pi))
    aorta = _Tube(pts, *sections)
    infra = s <= s_ren
    i_max = int(np.argmax(np.where(infra, aorta.a, -1)))
    max_d = 2.0 * float(aorta.a[i_max])
    # above the renal arteries the aorta is not wider than the infrarenal maximum
    aorta.a[~infra] = np.minimum(aorta.a[~infra], aorta.a[i_max])
    aorta.b[:] = np.minimum(aorta.b, aorta.a)
    aorta.lumen_r[:] = np.minimum(aorta.lumen_r, aorta.b - aorta.wall)

    # ---- organs: liver, spleen, kidneys (renal level), bowel loops, psoas
    ren_pt = pts[int(np.argmin(np.abs(zz - z_ren)))]
    _ellipsoid(hu, affine, (rng.uniform(55, 80), y_v + 25, z_top + 40), (95, 80, rng.uniform(70, 100)), liver_hu)
    _ellipsoid(hu, affine, (-rng.uniform(85, 100), y_v + 5, z_top + 30), (35, 45, rng.uniform(45, 70)), spleen_hu)
    kidneys = []
    for side in (-1, 1):
        kc = np.array([x_v + side * rng.uniform(65, 80), y_v + rng.uniform(-8, 5), z_ren + rng.uniform(-15, 10)])
        semi = np.array([rng.uniform(22, 28), rng.uniform(18, 22), rng.uniform(45, 55)])
        _ellipsoid(hu, affine, kc, semi + 8, fat)  # perirenal fat
        _ellipsoid(hu, affine, kc, semi, kidney_hu)
        _ellipsoid(hu, affine, kc + [-side * 8, 3, 0], semi * [0.4, 0.45, 0.6], kidney_hu * 0.55 + fat * 0.2)
        kidneys.append(kc)
    y_front = by0 - sub_fat - 15
    placed = 0
    for _ in range(400):  # bowel loops anywhere in the peritoneal cavity, not in the retroperitoneum
        if placed >= int(rng.integers(30, 45)):
            break
        r = rng.uniform(10, 22)
        c = np.array([rng.uniform(-bx0 + 40, bx0 - 40), rng.uniform(y_v - 10, y_front - r), rng.uniform(0, z_top)])
        if ((c[0] / (bx0 - sub_fat - 15)) ** 2 + (c[1] / (by0 - sub_fat - 15)) ** 2) > 0.8:
            continue
        if abs(c[0] - x_v) < 75 and c[1] < y_a + 25 + r:
            continue
        if any(np.hypot(*(c[:2] - kc[:2])) < 35 + r and abs(c[2] - kc[2]) < 60 for kc in kidneys):
            continue
        placed += 1
        semi = np.array([r, r * rng.uniform(0.7, 1.0), rng.uniform(20, 60)])
        content = rng.choice(["air", "fluid", "level", "feces"])
        _ellipsoid(hu, affine, c, semi, rng.uniform(30, 50) + 40 * enh)  # wall
        inner = semi - 2.5
        if content == "air":
            _ellipsoid(hu, affine, c, inner, rng.uniform(-1000, -850))
        elif content == "fluid":
            _ellipsoid(hu, affine, c, inner, rng.uniform(0, 25))
        elif content == "feces":
            _ellipsoid(hu, affine, c, inner, rng.uniform(-250, 20))
        else:
            _ellipsoid(hu, affine, c, inner, rng.uniform(0, 25))
            level = c[1] + rng.uniform(-0.3, 0.5) * r  # supine: air above the level (anterior, +y)
            coords, sl = _box_coords(hu.shape, affine, c - inner, c + inner)
            inside = (((coords - c) / inner) ** 2).sum(axis=1) <= 1.0
            box = hu[sl].reshape(-1)
            box[inside & (coords[:, 1] > level)] = -950.0
            hu[sl] = box.reshape(hu[sl].shape)
    for side in (-1, 1):
        for k, z in enumerate(zs):  # psoas: grows towards the pelvis, alongside the vertebral bodies
            grow = np.clip((z_top - z) / max(z_top, 1.0), 0, 1)
            rx, ry = 8 + 14 * grow, 8 + 12 * grow
            cx, cy = x_v + side * (vb_rx + rx - 2), y_v - 2
            sl = hu[:, :, k]
            sl[((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1.0] = muscle

    # ---- retroperitoneal fat around the aorta (variable thickness), IVC, branches, aorta
    _paint_halo(hu, affine, aorta, rng.uniform(3, 14), fat)
    ivc_x = x_a + r_base + rng.uniform(18, 28)
    zi = np.arange(-5.0, z_top + 5.0, 2.0)
    ivc = _Tube(
        np.stack([np.full_like(zi, ivc_x), np.full_like(zi, y_v + vb_ry + 10), zi], axis=1),
        *_simple_sections(len(zi), rng.uniform(11, 15), ratio=rng.uniform(0.5, 0.75), psi=0.0),
    )
    _paint_tube(hu, affine, ivc, ivc_hu, ivc_hu, ivc_hu)
    for side in (-1, 1):  # renal arteries to the hilum, slightly descending
        kc = kidneys[(side + 1) // 2]
        start = ren_pt + [side * 2.0, 0.0, 0.0]
        end = kc + [-side * 15.0, 5.0, -5.0]
        n = max(6, int(np.linalg.norm(end - start) / 1.0))
        tpath = np.linspace(0, 1, n)[:, None]
        path = start + (end - start) * tpath + np.array([0, 6.0, 0]) * np.sin(np.pi * tpath)
        _paint_tube(hu, affine, _Tube(path, *_simple_sections(n, rng.uniform(2.5, 3.5))), wall_hu, lumen_hu, lumen_hu)
    bif = pts[0]
    for side in (-1, 1):  # common iliac arteries: down and lateral from the bifurcation
        drop = z_bif + 15
        tz = np.linspace(0, 1, max(8, int(drop / 1.0)))[:, None]
        lateral = side * rng.uniform(25, 45)
        path = bif + [0, 0, 6.0] + np.hstack([lateral * tz**1.2, -6.0 * tz, -(drop + 6.0) * tz])
        r_il = rng.uniform(5.0, 7.0)
        _paint_tube(hu, affine, _Tube(path, *_simple_sections(len(path), r_il, wall=1.5)), wall_hu, lumen_hu, lumen_hu)
    label = np.zeros(shape, np.uint8)
    lumen_mask = np.zeros(shape, np.uint8)
    n_plaques = int(rng.integers(0, 6) + (rng.integers(2, 10) if kind == "aneurysm" else 0))
    plaques = _plaques(rng, len(s), (0, len(s) - 1), n_plaques, aorta.ds)
    _paint_tube(hu, affine, aorta, wall_hu, thrombus_hu, lumen_hu, label, lumen_mask, plaques)

    hu = _acquire(hu, spacing, psf, sigma_noise, rng)
    return Phantom(
        hu=hu,
        affine=affine,
        label=label,
        max_diameter_mm=round(max_d, 2),
        max_z_mm=float(pts[i_max, 2]),
        kind=kind,
        contrast=contrast,
        thrombus_fraction=float(thrombus_fraction),
        lumen=lumen_mask,
        lumen_diameter_mm=2.0 * float(aorta.lumen_r[i_max]),
        renal_z_mm=float(z_ren),
        bifurcation_z_mm=float(z_bif),
        tortuosity=tort,
    )


def _simple_sections(n: int, r: float, wall: float = 1.2, ratio: float = 1.0, psi: float = 0.0) -> Sections:
    a = np.full(n, float(r))
    return (
        a,
        a * ratio,
        np.full(n, psi),
        np.zeros((n, 2)),
        np.full(n, wall),
        np.maximum(a * ratio - wall, 0.5),
        np.zeros((n, 2)),
    )


def _acquire(
    hu: np.ndarray, spacing: tuple[float, float, float], psf_mm: float, noise_hu: float, rng: np.random.Generator
) -> np.ndarray:
    """The scanner: PSF blur (Gaussian, sigma in mm) and slightly correlated Gaussian noise."""
    sigma = [psf_mm / sp for sp in spacing]
    out = ndi.gaussian_filter(hu, sigma, mode="nearest").astype(np.float32)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, (0.6, 0.6, 0.0))
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    out += noise
    np.clip(out, -1024, 3071, out=out)
    return out


# ----------------------------------------------------------------------------------------------- sets


def phantom_set(n: int = 48, seed: int = 0) -> list[PhantomSpec]:
    """``n`` study specifications: about half aneurysms, >= 30% thrombus-heavy (fraction >= 0.5) and
    >= 30% without contrast (both by construction, not by chance), mixed tortuosity and sex."""
    rng = np.random.default_rng(seed)
    n_aaa = int(round(n * 0.5))
    n_ect = int(round(n * 0.2))
    kinds = ["aneurysm"] * n_aaa + ["ectatic"] * n_ect + ["normal"] * (n - n_aaa - n_ect)
    n_noncon = math.ceil(0.375 * n)
    contrast = np.array([False] * n_noncon + [True] * (n - n_noncon))
    rng.shuffle(contrast)
    # thrombus-heavy: most aneurysms (70-80% of AAAs carry thrombus) and some ectatic aortas
    heavy = np.zeros(n, bool)
    aaa_idx = [i for i, k in enumerate(kinds) if k == "aneurysm"]
    others = [i for i, k in enumerate(kinds) if k == "ectatic"]
    n_heavy = max(math.ceil(0.35 * n), 1)
    chosen = list(rng.permutation(aaa_idx))[: min(n_heavy, len(aaa_idx))]
    chosen += list(rng.permutation(others))[: max(0, n_heavy - len(chosen))]
    heavy[chosen] = True
    specs = []
    for i, kind in enumerate(kinds):
        lo, hi = DIAMETER_RANGE_MM[kind]
        if heavy[i]:
            tf = float(rng.uniform(0.5, 0.9))
        elif kind == "aneurysm":
            tf = float(rng.uniform(0.0, 0.45))
        else:
            tf = float(rng.uniform(0.0, 0.2))
        specs.append(
            PhantomSpec(
                study_id=f"phantom-{i + 1:03d}",
                seed=int(rng.integers(0, 2**31 - 1)),
                kind=kind,
                contrast=bool(contrast[i]),
                thrombus_fraction=round(tf, 3),
                diameter_mm=round(float(rng.uniform(lo, hi)), 1),
                tortuosity=float(rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])),
                sex=str(rng.choice(["M", "F"], p=[0.6, 0.4])),
            )
        )
    order = rng.permutation(n)
    return [PhantomSpec(**{**asdict(specs[j]), "study_id": f"phantom-{k + 1:03d}"}) for k, j in enumerate(order)]


def render_spec(spec: PhantomSpec, **kwargs) -> Phantom:
    return render_phantom(
        spec.seed,
        spec.kind,
        spec.contrast,
        spec.thrombus_fraction,
        diameter_mm=spec.diameter_mm,
        tortuosity=spec.tortuosity,
        **kwargs,
    )


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype: DTypeLike = np.int16) -> Path:
    """Write a volume as NIfTI (int16 HU or uint8 label), RAS affine in mm."""
    import nibabel as nib

    arr = np.rint(data).astype(dtype) if np.issubdtype(dtype, np.integer) else data.astype(dtype)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def write_phantom_set(
    folder: str | Path,
    specs: list[PhantomSpec],
    progress: Callable[[int, int, PhantomSpec, Phantom], object] | None = None,
    **render_kwargs,
) -> Path:
    """Render ``specs`` into ``folder``: ``studies/study_NNN.nii.gz``, ``labels/label_NNN.nii.gz``, a
    site ``manifest.csv`` (split ``test``, plus ``mask``) and ``truth.csv``. Returns the folder."""
    root = Path(folder)
    (root / "studies").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    manifest, truth = [], []
    for n, spec in enumerate(specs, start=1):
        ph = render_spec(spec, **render_kwargs)
        study = Path("studies") / f"study_{n:03d}.nii.gz"
        mask = Path("labels") / f"label_{n:03d}.nii.gz"
        save_nifti(root / study, ph.hu, ph.affine)
        save_nifti(root / mask, ph.label, ph.affine, np.uint8)
        aaa = int(ph.max_diameter_mm >= 30.0)
        manifest.append(
            [spec.study_id, study.as_posix(), aaa, f"{ph.max_diameter_mm:.1f}", "test", spec.sex, mask.as_posix()]
        )
        truth.append(
            [spec.study_id, spec.kind, int(spec.contrast), f"{spec.thrombus_fraction:.3f}", f"{ph.max_diameter_mm:.2f}",
             f"{ph.max_z_mm:.1f}", f"{ph.lumen_diameter_mm:.2f}", f"{ph.tortuosity:.2f}", spec.seed]
        )  # fmt: skip
        if progress:
            progress(n, len(specs), spec, ph)
        del ph
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_id", "path", "aaa", "max_diameter_mm", "split", "sex", "mask"])
        w.writerows(manifest)
    with open(root / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_id", "kind", "contrast", "thrombus_fraction", "max_diameter_mm", "max_z_mm",
                    "lumen_diameter_mm", "tortuosity", "seed"])  # fmt: skip
        w.writerows(truth)
    return root


# ----------------------------------------------------------------------------------------------- real CT


@dataclass
class RealCase:
    name: str
    hu: np.ndarray
    affine: np.ndarray
    label: np.ndarray
    max_diameter_mm: float
    thrombus_fraction: float
    aaa: bool


def load_real_ct(folder: str | Path = REAL_CT_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real CT (float32 HU, RAS affine) and its aorta label on the full grid.

    ``example_seg.nii.gz`` labels the top slices only (its header repeats the full scan's origin), so it
    is placed on the top ``seg.shape[2]`` slices of ``example_ct.nii.gz``, as its README states."""
    import nibabel as nib

    folder = Path(folder)
    img = nib.load(str(folder / "example_ct.nii.gz"))
    hu = np.asarray(img.dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(str(folder / "example_seg.nii.gz")).dataobj)
    label = np.zeros(hu.shape, np.uint8)
    label[:, :, hu.shape[2] - seg.shape[2] :] = seg == AORTA_LABEL
    return hu, np.asarray(img.affine, float), label


def track_aorta(hu: np.ndarray, label: np.ndarray, max_slices: int = 18) -> dict[int, tuple[float, float, float]]:
    """Per-slice aorta centre (voxel i, j) and area-equivalent radius (voxels): from the label where it
    exists, then tracked downwards in the non-contrast CT as the 15-90 HU blob under a disc of 4.5 voxels
    around the previous centre. Tracking stops at the first slice where the blob jumps (> 1.5 voxels),
    its area leaves 12-50 voxels or its mean leaves 25-60 HU (near the bifurcation), or after
    ``max_slices`` slices."""
    out: dict[int, tuple[float, float, float]] = {}
    zs = np.nonzero(label.any(axis=(0, 1)))[0]
    for z in zs:
        ii, jj = np.nonzero(label[:, :, z])
        if len(ii) >= 10:
            out[int(z)] = (ii.mean(), jj.mean(), math.sqrt(len(ii) / math.pi))
    if not out:
        return out
    z = min(out)
    c = np.array(out[z][:2])
    smooth = ndi.gaussian_filter(hu[:, :, max(0, z - max_slices - 1) : z], (0.7, 0.7, 0.0))
    gi, gj = np.mgrid[: hu.shape[0], : hu.shape[1]]
    for k in range(1, max_slices + 1):
        zk = z - k
        if zk < 0:
            break
        w = smooth[:, :, zk - (z - smooth.shape[2])]
        soft = (w > 15) & (w < 90)
        disc = (gi - c[0]) ** 2 + (gj - c[1]) ** 2 <= 4.5**2
        lab, _ = ndi.label(soft)
        near = lab[disc & soft]
        if not len(near):
            break
        comp = (lab == np.bincount(near).argmax()) & disc
        area = int(comp.sum())
        new = np.array([gi[comp].mean(), gj[comp].mean()])
        if np.abs(new - c).max() > 1.5 or not 12 <= area <= 50 or not 25 <= w[comp].mean() <= 60:
            break
        out[zk] = (float(new[0]), float(new[1]), math.sqrt(area / math.pi))
        c = new
    return out


def insert_aneurysm(
    ct_hu: np.ndarray,
    affine: np.ndarray,
    aorta_label: np.ndarray,
    diameter_mm: float,
    thrombus_fraction: float,
    seed: int,
    centre_z_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Paint an aneurysm of maximum outer diameter ``diameter_mm`` into a real non-contrast CT's aorta.

    The centreline is the per-slice aorta centre (label, then :func:`track_aorta` below it), smoothed and
    splined; sections are circles perpendicular to it (outer wall, wall rim, eccentric thrombus crescent
    around a lumen of the original size, calcified arcs), drawn with the local noise level, inside a
    2-4 mm rim of periaortic fat. Returns ``(hu, label, max_diameter_mm)``; the label is the original
    aorta label united with the new outer wall, and voxels beyond the new wall's fat rim are untouched.

    ``max_diameter_mm`` is 2 x the largest section radius actually drawn (within ~0.2 mm of the request:
    the sac rides on the real aorta's varying radius), i.e. the maximum outer-to-outer diameter
    perpendicular to the centreline. The real centreline is tilted (3-24 degrees here) and the sac is short
    (half length 1-1.4 x its radius), so an axial slice through the sac cuts narrower sections along the
    tilt: its area-equivalent diameter or minor width is smaller than the truth, more so for larger sacs.
    """
    rng = np.random.default_rng(seed)
    centres = track_aorta(ct_hu, aorta_label)
    if len(centres) < 8:
        raise ValueError("too few aorta slices to fit a centreline")
    ks = np.array(sorted(centres))
    ci = ndi.gaussian_filter1d(np.array([centres[k][0] for k in ks]), 1.5, mode="nearest")
    cj = ndi.gaussian_filter1d(np.array([centres[k][1] for k in ks]), 1.5, mode="nearest")
    rr = ndi.gaussian_filter1d(np.array([centres[k][2] for k in ks]), 2.0, mode="nearest")
    vox = np.stack([ci, cj, ks.astype(float), np.ones(len(ks))])
    world = (affine @ vox)[:3].T
    zmm = world[:, 2]
    fx, fy = CubicSpline(zmm, world[:, 0]), CubicSpline(zmm, world[:, 1])
    zz = np.arange(zmm[0], zmm[-1] + 1e-6, 0.5)
    pts = np.stack([fx(zz), fy(zz), zz], axis=1)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    vsize = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    base_r = np.interp(zz, zmm, rr) * vsize  # area-equivalent outer radius of the real aorta, mm
    R = diameter_mm / 2.0
    half = float(np.clip(rng.uniform(1.0, 1.4) * R, 25.0, 0.45 * s[-1]))  # raised-cosine half length
    if centre_z_mm is None:
        s_c = rng.uniform(half, max(half + 1, s[-1] - half - 0.25 * s[-1]))
    else:
        s_c = float(np.clip(np.interp(centre_z_mm, zz, s), half, s[-1] - half))
    g = _bulge(s, s_c, half, saccular=True)
    a = base_r + (R - float(np.interp(s_c, s, base_r))) * g
    a = np.maximum(a, base_r)
    wall = rng.uniform(1.5, 2.5)
    ecc, sac_dir = rng.uniform(0.0, 0.5), rng.uniform(-np.pi, np.pi)
    sections = _sections(rng, s, base_r, a - base_r, np.ones_like(s), 1.0, wall, thrombus_fraction, ecc, sac_dir, 0.0)
    # only the bulge is drawn: sections outside it are shrunk away
    drawn = g > 1e-3
    tube = _Tube(pts[drawn], *(x[drawn] for x in sections))
    max_d = 2.0 * float(tube.a.max())

    inside = aorta_label > 0
    noise = float(np.std(ct_hu[inside])) if inside.sum() > 30 else 12.0
    noise = float(np.clip(noise, 5.0, 25.0))
    lumen_hu = float(np.median(ct_hu[inside])) if inside.any() else 40.0
    thrombus_hu = lumen_hu + rng.choice([-1, 1]) * rng.uniform(6, 15)
    wall_hu = lumen_hu + rng.uniform(5, 20)
    fat_hu = rng.uniform(-110, -80)
    halo = rng.uniform(2.0, 4.0)

    hu = ct_hu.astype(np.float32, copy=True)
    lo = tube.pts.min(axis=0) - tube.reach() - halo - 4
    hi = tube.pts.max(axis=0) + tube.reach() + halo + 4
    coords, sl = _box_coords(hu.shape, affine, lo, hi)
    outer, inner, lumen, grown, idx, rho, ang = tube.masks(coords, halo=halo)
    box = hu[sl].reshape(-1).copy()
    orig = box.copy()
    rim = grown & ~outer & (orig > -300) & (orig < 250)  # soft tissue next to the sac becomes fat, bone stays
    box[rim] = fat_hu + rng.normal(0, noise, int(rim.sum()))
    box[outer] = wall_hu
    box[inner] = thrombus_hu
    box[lumen] = lumen_hu
    for i0, i1, theta, half_ang, value in _plaques(
        rng, len(tube.pts), (0, len(tube.pts) - 1), int(rng.integers(2, 8)), tube.ds
    ):
        ring = outer & ~lumen & (rho >= 1.0 - (tube.wall[idx] + 1.5) / tube.a[idx])
        box[ring & (np.abs(np.angle(np.exp(1j * (ang - theta)))) <= half_ang) & (idx >= i0) & (idx <= i1)] = value
    painted = outer
    box[painted] += rng.normal(0, noise, int(painted.sum())).astype(np.float32)
    hu[sl] = box.reshape(hu[sl].shape)
    label = aorta_label.astype(np.uint8, copy=True)
    lb = label[sl].reshape(-1)
    lb[outer] = 1
    label[sl] = lb.reshape(label[sl].shape)
    return hu, label, round(max_d, 2)


def real_aorta_diameter(label: np.ndarray, affine: np.ndarray) -> float:
    """Largest per-slice area-equivalent diameter of an aorta label (mm)."""
    area_vox = float(abs(np.linalg.det(affine[:2, :2])))
    counts = label.reshape(-1, label.shape[2]).sum(axis=0)
    return round(2.0 * math.sqrt(counts.max() * area_vox / math.pi), 2)


def real_ct_cases(n: int = 10, seed: int = 0, folder: str | Path = REAL_CT_DIR) -> list[RealCase]:
    """The unmodified real CT (truth: its aorta's largest area-equivalent diameter) and ``n`` copies
    with an inserted aneurysm of 30-80 mm (half of them thrombus-heavy)."""
    hu, affine, label = load_real_ct(folder)
    cases = [RealCase("real-unmodified", hu, affine, label, real_aorta_diameter(label, affine), 0.0, False)]
    rng = np.random.default_rng(seed)
    diameters = np.linspace(30.0, 80.0, n) + rng.uniform(-2, 2, n)
    diameters = np.clip(diameters, 30.0, 80.0)
    for k, d in enumerate(diameters):
        tf = float(rng.uniform(0.5, 0.85) if k % 2 else rng.uniform(0.0, 0.4))
        out, lab, truth = insert_aneurysm(hu, affine, label, float(d), tf, seed=int(rng.integers(0, 2**31 - 1)))
        cases.append(RealCase(f"real-aaa-{k + 1:02d}", out, affine, lab, truth, tf, True))
    return cases
