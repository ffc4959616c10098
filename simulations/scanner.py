"""How a scanner samples a patient: :func:`scan_patient` samples a :class:`~fedaaa.simulations.anatomy.Patient` on a
:class:`ScannerProfile`'s grid (matrix, FOV, slice spacing, contrast phase...) with no random draw, giving a
:class:`SyntheticStudy`; :func:`add_noise` adds the scanner noise.

Every structure has a signed distance ``d`` (mm, negative inside) and is composited with partial-volume coverage
``clip(0.5 - d / pixel_spacing, 0, 1)`` (painter's algorithm), so the aortic outer-wall diameter is encoded below
voxel size. HU values follow published CT attenuation of each tissue (the ``_HU``, ``_LUMEN_HU`` and ``_KIDNEY_HU``
tables below: fat -100/-90, muscle and aortic wall 45-50, cortical bone 800, thrombus 35-50, calcification
400-1200, lumen 200-400 arterial, 130-200 portal, ~40 without contrast).

Slices are point samples along z (SliceThickness is a header value); the slice grid is anchored on the aortic
maximum (on the head-most slice for normals), so that maximum is a slice centre under every spacing. The profile's
storage fields (orientation, transfer syntax, layout, extras...) are used by the DICOM export,
simulations.synth_dicom.write_study.

The aorta label (``SyntheticStudy.aorta_mask``) comes from the same geometry: a voxel is aorta where the outer
wall's partial-volume coverage is >= 0.5 (signed distance <= 0), lumen, thrombus, calcification and wall alike;
the iliacs below the bifurcation are not aorta. :meth:`SyntheticStudy.ras_affine` and
:meth:`SyntheticStudy.ras_mask` give it on the RAS voxel grid that fedaaa.common.io.read_study returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedaaa.common.clinical import AAA_THRESHOLD_MM
from fedaaa.simulations.anatomy import Anatomy, Aorta, Body, Patient
from fedaaa.simulations.defaults import DEFAULT_MATRIX

ORIENTATIONS = ("standard", "flip_rows", "flip_cols", "flip_both", "coronal")
FILE_ORDERS = ("shuffled", "ascending", "descending")
TRANSFER_SYNTAXES = ("explicit", "implicit", "rle", "jpeg2000", "jpegls", "enhanced")
EXTRAS = ("localizer", "thick", "secondary", "dose", "stray")
LAYOUTS = ("flat", "nested", "noext")
CONTRAST_PHASES = ("arterial", "portal")
_LUMEN_HU = {"arterial": (200, 400), "portal": (130, 200), "none": (35, 45)}
_KIDNEY_HU = {"arterial": (140, 180), "portal": (100, 140), "none": (28, 35)}
_HU = {  # fixed tissue HU (ints stay ints: they composite into float32 slices)
    "air": -1000.0,
    "subcutaneous_fat": -100,
    "visceral_fat": -90,
    "muscle": 50,
    "vessel_wall": 45,
    "bowel_wall": 40,
    "cortical_bone": 800,
    "vertebral_arch": 450,
    "spinal_canal": 15,
}


@dataclass(frozen=True)
class ScannerProfile:
    """How a site's scanner samples and exports a patient (never what the patient looks like)."""

    name: str = "generic"
    manufacturer: str = "SYNTH"
    matrix: int = DEFAULT_MATRIX  # rows = columns
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

    def __post_init__(self) -> None:
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
    ``aorta_mask`` (same shape as ``hu``, bool) is the aorta to its outer wall: outer-wall coverage >= 0.5.
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
    aorta_mask: np.ndarray | None = None

    @property
    def aaa(self) -> int:
        return int(self.max_diameter_mm >= AAA_THRESHOLD_MM)

    def truth(self, study_id: str) -> StudyTruth:
        """The ground-truth record of this study under ``study_id``."""
        return StudyTruth(study_id, self.aaa, self.max_diameter_mm, self.kind, self.sex, self.max_z_mm)

    def ras_affine(self) -> np.ndarray:
        """The 4x4 affine of :meth:`ras_mask`'s grid: voxel (i, j, k) -> RAS mm, i toward the patient's Right
        (columns reversed), j toward Anterior (rows reversed), k toward Superior (slices reversed), as
        fedaaa.common.io.read_study orders any export of this study."""
        n, rows, cols = self.hu.shape
        ps, (x0, y0) = self.pixel_spacing_mm, self.origin_mm
        z = np.asarray(self.z_mm, float)
        dz = float(z[0] - z[-1]) / (n - 1) if n > 1 else float(self.slice_spacing_mm or 1.0)
        affine = np.diag([ps, ps, dz, 1.0])
        # RAS x = -LPS x of column cols-1-i; RAS y = -LPS y of row rows-1-j; z of slice n-1-k
        affine[:3, 3] = (-(x0 + (cols - 1) * ps), -(y0 + (rows - 1) * ps), float(z[-1]))
        return affine

    def ras_mask(self) -> np.ndarray:
        """``aorta_mask`` as uint8 (1 = aorta to its outer wall) on the grid of :meth:`ras_affine`."""
        if self.aorta_mask is None:
            raise ValueError("this study has no aorta mask")
        return np.ascontiguousarray(self.aorta_mask[::-1, ::-1, ::-1].transpose(2, 1, 0), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class _Shape:
    """A structure in the axial plane: bounding box (mm) and signed distance ``sdf(X, Y)`` (mm, < 0 inside)."""

    x0: float
    x1: float
    y0: float
    y1: float
    sdf: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _circle(cx: float, cy: float, r: float) -> _Shape:
    return _Shape(cx - r, cx + r, cy - r, cy + r, lambda X, Y: np.hypot(X - cx, Y - cy) - r)


def _ellipse(cx: float, cy: float, a: float, b: float, theta: float = 0.0) -> _Shape:
    """Ellipse with semi-axes a (along angle theta) and b; first-order signed distance (f - 1) / |grad f|."""
    c, s = np.cos(theta), np.sin(theta)

    def sdf(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        u, v = (X - cx) * c + (Y - cy) * s, (Y - cy) * c - (X - cx) * s
        f = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        g = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(g > 1e-12, (f - 1) * f / g, -min(a, b))

    ex, ey = np.hypot(a * c, b * s), np.hypot(a * s, b * c)
    return _Shape(cx - ex, cx + ex, cy - ey, cy + ey, sdf)


def _tube(cx: float, cy: float, r: float, phi: float, sec: float) -> _Shape:
    """Axial cut of a straight tube of radius r tilted toward in-plane angle phi (sec = 1 / cos(tilt))."""
    return _circle(cx, cy, r) if sec == 1.0 else _ellipse(cx, cy, r * sec, r, phi)


def _stretch(dx: float, dy: float, phi: float, sec: float) -> tuple[float, float]:
    """Map an offset in the tube's perpendicular section onto the axial plane (stretch sec along phi)."""
    c, s = np.cos(phi), np.sin(phi)
    u, v = (dx * c + dy * s) * sec, dy * c - dx * s
    return u * c - v * s, u * s + v * c


class _Grid:
    """The scanner's square pixel grid, centred on x = y = 0."""

    def __init__(self, matrix: int, fov: float) -> None:
        self.ps = fov / matrix
        self.c = -fov / 2 + self.ps / 2 + np.arange(matrix) * self.ps  # pixel centres, same for x and y

    def coverage(self, shape: _Shape) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Partial-volume coverage of ``shape`` inside its bounding box (plus one pixel): (rows, cols), cov."""
        ps, c = self.ps, self.c
        i0, i1 = np.searchsorted(c, [shape.x0 - ps, shape.x1 + ps])
        j0, j1 = np.searchsorted(c, [shape.y0 - ps, shape.y1 + ps])
        if i0 < i1 and j0 < j1:
            return (slice(j0, j1), slice(i0, i1)), np.clip(
                0.5 - shape.sdf(c[None, i0:i1], c[j0:j1, None]) / ps, 0.0, 1.0
            )
        return None

    def paint(self, img: np.ndarray, shape: _Shape, hu: float, label: np.ndarray | None = None) -> None:
        """Composite one structure over ``img``; where ``label`` is given, mark coverage >= 0.5 in it too."""
        box = self.coverage(shape)
        if box is not None:
            where, cov = box
            sub = img[where]
            sub += (hu - sub) * cov
            if label is not None:
                label[where] |= cov >= 0.5


# ---------------------------------------------------------------------------------------------- scanning
@dataclass(frozen=True, eq=False)
class _AorticSlices:
    """The aortic centreline sampled at the slice heights (arrays, one entry per slice)."""

    aortic: np.ndarray  # bool: slice above the bifurcation (else it cuts the two iliacs)
    diameter: np.ndarray  # outer diameter perpendicular to the centreline, 0 below the bifurcation
    baseline: np.ndarray  # diameter without the bulge
    x: np.ndarray  # centre
    y: np.ndarray
    dx_dh: np.ndarray  # centreline tangent (dx/dh, dy/dh, 1)
    dy_dh: np.ndarray
    slope: np.ndarray  # tan(tilt to the z axis), 0 below the bifurcation
    phi: np.ndarray  # in-plane direction of the tilt
    sec: np.ndarray  # 1 / cos(tilt)
    half_width_x: np.ndarray  # half extent along x of the oblique cut
    iliac_offset: np.ndarray  # x offset of each iliac from the centreline


@dataclass(frozen=True)
class _VesselCut:
    """Axial cut of a vessel: centre, radius (perpendicular), tilt direction phi and sec = 1 / cos(tilt)."""

    x: float
    y: float
    radius: float
    phi: float
    sec: float


def _body_structures(body: Body) -> list[tuple[_Shape, float]]:
    """The trunk's (shape, HU) in painting order."""
    a, b, fat, vr, vc = body.half_width, body.half_depth, body.fat_mm, body.vertebra_radius, body.vertebra_y
    return [
        (_ellipse(0, 0, a, b), _HU["subcutaneous_fat"]),
        (_ellipse(0, 0, a - fat, b - fat), _HU["muscle"]),
        (_ellipse(0, 0, body.inner_half_width, body.inner_half_depth), _HU["visceral_fat"]),
        *((_ellipse(s * (vr + 14), vc + 4, 13, 19), _HU["muscle"]) for s in (-1, 1)),  # psoas
        *((_ellipse(s * 28, vc + vr + 8, 18, 12), _HU["muscle"]) for s in (-1, 1)),  # erectors
        (_circle(0, vc, vr), _HU["cortical_bone"]),
        (_circle(0, vc, vr - body.cortex_mm), body.marrow_hu),
        (_ellipse(0, vc + vr + 10, 20, 9), _HU["vertebral_arch"]),
        (_circle(0, vc + vr + 7, 6), _HU["spinal_canal"]),
    ]


def _slice_heights(anchor: float, cover: float, spacing: float) -> np.ndarray:
    """Slice centre heights in [0, cover] on the grid anchor + m * spacing, head-most first."""
    m = np.arange(np.floor((cover - anchor) / spacing + 1e-9), np.ceil(-anchor / spacing - 1e-9) - 1, -1)
    return anchor + m * spacing


def _sample_aorta(anatomy: Anatomy, h: np.ndarray, tortuosity: float) -> _AorticSlices:
    """The centreline, its tilt and the diameters at heights ``h``, bends scaled by ``tortuosity``."""
    aorta, tau = anatomy.aorta, tortuosity
    h_bif = aorta.diameter.bifurcation_h
    aortic = h >= h_bif
    D = np.where(aortic, aorta.diameter.outer(h), 0.0)
    R = D / 2
    # tortuous centreline: x wanders both ways, y only anteriorly (the aorta lies on the spine)
    hb = np.maximum(h, h_bif)
    tx, ty = tau * aorta.bend_x(hb), -tau * (aorta.bend_y(hb) + 40.0) / 2
    dtx, dty = tau * aorta.bend_x.slope(h), -tau * aorta.bend_y.slope(h) / 2
    slope = np.where(aortic, np.hypot(dtx, dty), 0.0)
    phi, sec = np.arctan2(dty, dtx), np.sqrt(1 + slope**2)
    ex = R * np.sqrt((sec * np.cos(phi)) ** 2 + np.sin(phi) ** 2)  # half extents of the oblique cut
    ey = R * np.sqrt((sec * np.sin(phi)) ** 2 + np.cos(phi) ** 2)
    r_il = aorta.iliac_radius
    iliac_offset_at_bif = max(r_il * 1.05, float(aorta.diameter.outer(h_bif)) / 2 - r_il)
    il_dx = iliac_offset_at_bif + aorta.iliac_spread * np.clip(h_bif - h, 0, None)
    return _AorticSlices(
        aortic=aortic,
        diameter=D,
        baseline=aorta.diameter.baseline(h),
        x=aorta.x_mm + aorta.wander_x(h) + tx,
        y=anatomy.body.spine_front_y - 3 - ey + ty,
        dx_dh=dtx,
        dy_dh=dty,
        slope=slope,
        phi=phi,
        sec=sec,
        half_width_x=ex,
        iliac_offset=il_dx,
    )


def _vessel_cuts(anatomy: Anatomy, aorta: _AorticSlices, k: int) -> list[_VesselCut]:
    """The aorta's cut on slice k, or the two iliacs' below the bifurcation."""
    if aorta.aortic[k]:
        return [_VesselCut(aorta.x[k], aorta.y[k], aorta.diameter[k] / 2, aorta.phi[k], aorta.sec[k])]
    r_il, y = anatomy.aorta.iliac_radius, anatomy.body.spine_front_y - 3
    return [_VesselCut(aorta.x[k] + s * aorta.iliac_offset[k], y - r_il, r_il, 0.0, 1.0) for s in (1, -1)]


def _paint_kidneys(
    img: np.ndarray, grid: _Grid, anatomy: Anatomy, aorta: _AorticSlices, h: float, k: int, hu: float
) -> None:
    """Kidney cuts on slice k (height h), kept at least 10 mm lateral to the aorta."""
    for kid in anatomy.kidneys:
        q = 1 - ((h - kid.h_centre) / kid.half_length) ** 2
        if q > 0:
            sa, sb, th = kid.semi_major * np.sqrt(q), kid.semi_minor * np.sqrt(q), kid.rotation
            kex = np.hypot(sa * np.cos(th), sb * np.sin(th))
            s = kid.side
            kx = s * max(abs(kid.x_mm), s * aorta.x[k] + aorta.half_width_x[k] + 10 + kex)
            grid.paint(img, _ellipse(kx, kid.y_mm, sa, sb, th), hu)


def _paint_bowel(img: np.ndarray, grid: _Grid, anatomy: Anatomy, vessels: list[_VesselCut], h: float) -> None:
    """Loops inside the visceral cavity, in front of the spine and at least 15 mm from every vessel."""
    body = anatomy.body
    a_in, b_in = body.inner_half_width, body.inner_half_depth
    for loop in anatomy.bowel:
        lam, ph = loop.wavelengths, loop.phases
        bx = loop.x_mm + loop.sway_mm * np.sin(2 * np.pi * h / lam[0] + ph[0])
        by = loop.y_mm + loop.sway_mm * np.cos(2 * np.pi * h / lam[1] + ph[1])
        r = loop.radius * (0.6 + 0.4 * np.sin(2 * np.pi * h / lam[0] + ph[2]) ** 2)
        inside = (bx / (a_in - r - 3)) ** 2 + (by / (b_in - r - 3)) ** 2 < 1 and by + r < body.spine_front_y - 5
        if inside and all(np.hypot(bx - v.x, by - v.y) - v.radius * v.sec - r > 15 for v in vessels):
            grid.paint(img, _circle(bx, by, r), _HU["bowel_wall"])
            grid.paint(img, _circle(bx, by, r - 2), loop.content_hu)


def _paint_vessel(
    img: np.ndarray,
    grid: _Grid,
    v: _VesselCut,
    aorta: Aorta,
    baseline: float | None,
    lumen_hu: float,
    label: np.ndarray | None = None,
) -> None:
    """Wall, thrombus (where ``baseline``, the aortic diameter without the bulge, is given) and lumen; the
    outer wall's coverage >= 0.5 is marked in ``label`` where given."""
    grid.paint(img, _tube(v.x, v.y, v.radius, v.phi, v.sec), _HU["vessel_wall"], label)
    ri, t = v.radius - aorta.wall_mm, aorta.thrombus  # inner wall radius
    rl = ri  # lumen radius
    if t is not None and baseline is not None:
        rl = min(ri, baseline / 2 - aorta.wall_mm + t.fill * (ri - baseline / 2 + aorta.wall_mm))
    if rl < ri:  # thrombus fills the sac; the residual lumen is pushed off-centre
        grid.paint(img, _tube(v.x, v.y, ri, v.phi, v.sec), t.hu)
        shift = t.eccentricity * (ri - rl)
        dx, dy = _stretch(shift * np.cos(t.direction), shift * np.sin(t.direction), v.phi, v.sec)
        grid.paint(img, _tube(v.x + dx, v.y + dy, rl, v.phi, v.sec), lumen_hu)
    else:
        grid.paint(img, _tube(v.x, v.y, rl, v.phi, v.sec), lumen_hu)


def _paint_calcifications(
    img: np.ndarray, grid: _Grid, anatomy: Anatomy, aorta: _AorticSlices, h: float, k: int
) -> None:
    """Wall calcifications crossing slice k (height h)."""
    x, y, phi, sec = aorta.x[k], aorta.y[k], aorta.phi[k], aorta.sec[k]
    for c in anatomy.aorta.calcifications:
        if abs(h - c.h) <= c.half_length:
            rr = aorta.diameter[k] / 2 - c.radius - 0.3  # inside the outer wall
            for a_j in c.angle + 0.15 * np.arange(c.segments):
                dx, dy = _stretch(rr * np.cos(a_j), rr * np.sin(a_j), phi, sec)
                grid.paint(img, _tube(x + dx, y + dy, c.radius, phi, sec), c.hu)


def _in_range(hu_range: tuple[int, int], u: float) -> float:
    """The HU at quantile ``u`` (0..1) of ``hu_range``."""
    lo, hi = hu_range
    return lo + u * (hi - lo)


def scan_patient(patient: Patient, profile: ScannerProfile) -> SyntheticStudy:
    """Sample ``patient`` on ``profile``'s slice and pixel grid, in its contrast phase: noise-free HU slices
    and the per-slice aortic truth. Makes no random draws (:func:`add_noise` does)."""
    anatomy, grid = patient.anatomy, _Grid(profile.matrix, profile.fov_mm)
    lumen_hu = _in_range(_LUMEN_HU[profile.phase], anatomy.aorta.enhancement)
    kidney_hu = _in_range(_KIDNEY_HU[profile.phase], anatomy.kidney_enhancement)
    h = _slice_heights(anatomy.aorta.diameter.max_h, anatomy.length_mm, profile.spacing_mm)
    aorta = _sample_aorta(anatomy, h, profile.tortuosity)

    body_img = np.full((profile.matrix,) * 2, _HU["air"], np.float32)
    for shape, v in _body_structures(anatomy.body):
        grid.paint(body_img, shape, v)
    hu = np.empty((len(h), profile.matrix, profile.matrix), np.float32)
    mask = np.zeros(hu.shape, bool)
    for k in range(len(h)):
        img = hu[k]
        img[:] = body_img
        vessels = _vessel_cuts(anatomy, aorta, k)
        _paint_kidneys(img, grid, anatomy, aorta, h[k], k, kidney_hu)
        _paint_bowel(img, grid, anatomy, vessels, h[k])
        baseline = aorta.baseline[k] if aorta.aortic[k] else None
        for v in vessels:  # the iliacs (below the bifurcation) are not labelled
            _paint_vessel(img, grid, v, anatomy.aorta, baseline, lumen_hu, mask[k] if aorta.aortic[k] else None)
        if aorta.aortic[k]:
            _paint_calcifications(img, grid, anatomy, aorta, h[k], k)
    return _study(patient, profile, grid, h, aorta, hu, mask)


def _study(
    patient: Patient,
    profile: ScannerProfile,
    grid: _Grid,
    h: np.ndarray,
    aorta: _AorticSlices,
    hu: np.ndarray,
    mask: np.ndarray | None = None,
) -> SyntheticStudy:
    """Wrap the sampled slices and the per-slice aortic truth as a :class:`SyntheticStudy`."""
    z, aortic, D = patient.anatomy.z_lo_mm + h, aorta.aortic, aorta.diameter
    k_max = int(np.argmax(D))
    tangent = np.stack([aorta.dx_dh, aorta.dy_dh, np.ones(len(h))], 1) / aorta.sec[:, None]
    return SyntheticStudy(
        hu=hu,
        z_mm=z,
        pixel_spacing_mm=grid.ps,
        origin_mm=(float(grid.c[0]), float(grid.c[0])),
        diameter_mm=D,
        aorta_center_mm=np.where(aortic[:, None], np.stack([aorta.x, aorta.y], 1), np.nan),
        kind=patient.kind,
        sex=patient.sex,
        age=patient.age,
        max_diameter_mm=round(float(D[k_max]), 1),
        max_z_mm=float(z[k_max]),
        aorta_tilt_deg=np.where(aortic, np.degrees(np.arctan(aorta.slope)), np.nan),
        aorta_direction=np.where(aortic[:, None], tangent, np.nan),
        slice_spacing_mm=profile.spacing_mm,
        aorta_mask=mask,
    )


def add_noise(hu: np.ndarray, noise_hu: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise of SD ``noise_hu`` to the float32 volume ``hu`` in place (nothing drawn when 0)."""
    if noise_hu > 0:
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
