"""How a scanner samples a patient: :func:`scan_patient` samples a :class:`~fedaaa.simulations.anatomy.Patient` on a
:class:`ScannerProfile`'s grid (matrix, FOV, slice spacing, contrast phase...) with no random draw, giving a
:class:`SyntheticStudy`; :func:`add_noise` adds the scanner noise.

Every structure has a signed distance ``d`` (mm, negative inside) and is composited with partial-volume coverage
``clip(0.5 - d / pixel_spacing, 0, 1)`` (painter's algorithm), so the aortic outer-wall diameter is encoded below
voxel size. HU values follow published CT attenuation of each tissue, drawn per patient
(:class:`~fedaaa.simulations.anatomy.Tissues`: fat -130..-60, muscle and aortic wall 30-70, cortical bone
600-1000, thrombus 25-60, calcification 300-1200; the fixed ``_HU`` table below is used for an anatomy without
them) and by contrast phase (``_LUMEN_HU``: lumen 200-400 arterial, 130-200 portal, ~40 without contrast;
``_VEIN_HU``: IVC and renal vein 60-120 arterial, 120-180 portal; ``_KIDNEY_HU``).

Painting order on each slice: body and spine, the distractors (bladder, pelvic bones in their muscle sleeves, liver,
spleen, lung bases: :class:`_DistractorPainter`; liver 50-70 HU plus ``_LIVER_GAIN``, spleen 40-55 plus
``_SPLEEN_GAIN``), IVC (or the iliac veins) and left renal vein, kidneys, bowel (loops reaching into a distractor
left out), aorta (or iliac arteries: wall, thrombus, lumen) and its calcifications, then the vertebral body again
where a sunken sac (``Aorta.sink``) reached back past the spine's front (the sac wraps round it; the body is a disc
of soft tissue at the disc levels, ``Body.is_disc``). The neighbours may touch the aorta (the scanner keeps only
each anatomy's least gaps) but never overlap it; the distractors keep at least 3 mm of fat from its outer wall, off
the vertebra, and change neither the label nor the truth.

Slices are point samples along z (SliceThickness is a header value); the slice grid is anchored on the aortic
maximum (on the head-most slice for normals), so that maximum is a slice centre under every spacing. The profile's
storage fields (orientation, transfer syntax, layout, extras...) are used by the DICOM export,
simulations.synth_dicom.write_study.

The aorta label (``SyntheticStudy.aorta_mask``) comes from the same geometry: a voxel is aorta where the outer
wall's partial-volume coverage is >= 0.5 (signed distance <= 0), lumen, thrombus, calcification and wall alike;
the iliacs below the bifurcation, the veins, bowel and kidneys are not aorta. :meth:`SyntheticStudy.ras_affine` and
:meth:`SyntheticStudy.ras_mask` give it on the RAS voxel grid that fedaaa.common.io.read_study returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedaaa.common.clinical import AAA_THRESHOLD_MM
from fedaaa.simulations.anatomy import Anatomy, Aorta, Body, Distractors, Patient
from fedaaa.simulations.defaults import DEFAULT_MATRIX

ORIENTATIONS = ("standard", "flip_rows", "flip_cols", "flip_both", "coronal")
FILE_ORDERS = ("shuffled", "ascending", "descending")
TRANSFER_SYNTAXES = ("explicit", "implicit", "rle", "jpeg2000", "jpegls", "enhanced")
EXTRAS = ("localizer", "thick", "secondary", "dose", "stray")
LAYOUTS = ("flat", "nested", "noext")
CONTRAST_PHASES = ("arterial", "portal")
_LUMEN_HU = {"arterial": (200, 400), "portal": (130, 200), "none": (35, 45)}
_VEIN_HU = {"arterial": (60, 120), "portal": (120, 180), "none": (35, 45)}  # IVC, iliac and renal veins
_KIDNEY_HU = {"arterial": (140, 180), "portal": (100, 140), "none": (28, 35)}
_LIVER_GAIN = {"arterial": (5, 25), "portal": (30, 60), "none": (0, 0)}  # added to the liver's unenhanced 50-70 HU
_SPLEEN_GAIN = {"arterial": (50, 90), "portal": (60, 80), "none": (0, 0)}  # added to the spleen's 40-55 HU
_HU = {  # tissue HU of an anatomy without Tissues (ints stay ints: they composite into float32 slices)
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
        if s == 0.0 and c == 1.0:  # not rotated: the same values, from the row and the column (fewer full arrays)
            u, v = X - cx, Y - cy
        else:
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


def _arc(cx: float, cy: float, rc: float, t: float, start: float, span: float, phi: float, sec: float) -> _Shape:
    """A round-capped arc of half-thickness t along the circle of radius rc, from angle ``start`` over ``span`` rad
    (a ring when span >= 2 pi), drawn in the perpendicular section of a vessel tilted toward phi (sec = 1 / cos(tilt))
    and stretched by sec along phi in the axial plane (distances measured in the section)."""
    c, s, half = np.cos(phi), np.sin(phi), min(span / 2, np.pi)
    mid = start + half
    ends = ((rc * np.cos(mid + half), rc * np.sin(mid + half)), (rc * np.cos(mid - half), rc * np.sin(mid - half)))

    def sdf(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        dx, dy = X - cx, Y - cy
        if sec != 1.0:  # back into the section: shrink the component along phi
            u, v = (dx * c + dy * s) / sec, dy * c - dx * s
            dx, dy = u * c - v * s, u * s + v * c
        d = np.abs(np.hypot(dx, dy) - rc)
        if half < np.pi:  # outside the sector: distance to the nearer end
            delta = (np.arctan2(dy, dx) - mid + np.pi) % (2 * np.pi) - np.pi
            (ax, ay), (bx, by) = ends
            cap = np.where(delta > 0, np.hypot(dx - ax, dy - ay), np.hypot(dx - bx, dy - by))
            d = np.where(np.abs(delta) <= half, d, cap)
        return d - t

    if half >= np.pi / 2:
        ex, ey = (rc + t) * np.hypot(sec * c, s), (rc + t) * np.hypot(sec * s, c)
        return _Shape(cx - ex, cx + ex, cy - ey, cy + ey, sdf)
    a = np.linspace(start, start + span, 9)  # tight box of a short arc: its points, the sag between, the thickness
    px, py = _stretch(rc * np.cos(a), rc * np.sin(a), phi, sec)
    pad = (t + rc * (1 - np.cos(span / 16))) * sec
    return _Shape(cx + px.min() - pad, cx + px.max() + pad, cy + py.min() - pad, cy + py.max() + pad, sdf)


def _polyline(points: np.ndarray, t: float) -> _Shape:
    """A band of half-width t around the polyline through ``points`` (n x 2; round ends and joints)."""
    p = np.asarray(points, float)

    def sdf(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        d = None
        for (ax, ay), (bx, by) in zip(p[:-1], p[1:]):
            vx, vy = bx - ax, by - ay
            w = max(vx * vx + vy * vy, 1e-12)
            q = np.clip(((X - ax) * vx + (Y - ay) * vy) / w, 0.0, 1.0)
            dd = np.hypot(X - ax - q * vx, Y - ay - q * vy)
            d = dd if d is None else np.minimum(d, dd)
        return d - t

    (x0, y0), (x1, y1) = p.min(0), p.max(0)
    return _Shape(x0 - t, x1 + t, y0 - t, y1 + t, sdf)


def _union(a: _Shape, b: _Shape) -> _Shape:
    """Both shapes: the minimum of their signed distances."""
    return _Shape(
        min(a.x0, b.x0),
        max(a.x1, b.x1),
        min(a.y0, b.y0),
        max(a.y1, b.y1),
        lambda X, Y: np.minimum(a.sdf(X, Y), b.sdf(X, Y)),
    )


_HOLE_PAD = 6.0  # mm: beyond its box grown by this and its margin a hole changes no coverage (pixels up to 12 mm)


def _carve(shape: _Shape, holes: Sequence[tuple[_Shape, float]] = ()) -> _Shape:
    """``shape`` less every hole grown by its margin (mm): the maximum of the signed distances. Each hole is evaluated
    only over the pixels near it (``sdf`` takes a row X (1, n) and a column Y (m, 1) of ascending pixel centres)."""
    near = []
    for hole, margin in holes:
        pad = margin + _HOLE_PAD
        box = (hole.x0 - pad, hole.x1 + pad, hole.y0 - pad, hole.y1 + pad)
        if box[0] < shape.x1 and shape.x0 < box[1] and box[2] < shape.y1 and shape.y0 < box[3]:
            near.append((hole, margin, box))
    if not near:
        return shape

    def sdf(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        d = shape.sdf(X, Y)
        xs, ys = X[0], Y[:, 0]
        for hole, margin, box in near:
            i0, i1 = np.searchsorted(xs, box[:2])
            j0, j1 = np.searchsorted(ys, box[2:])
            if i0 < i1 and j0 < j1:
                sub = d[j0:j1, i0:i1]
                np.maximum(sub, margin - hole.sdf(X[:, i0:i1], Y[j0:j1]), out=sub)
        return d

    return _Shape(shape.x0, shape.x1, shape.y0, shape.y1, sdf)


def _inside(shape: _Shape, x: float, y: float, r: float = 0.0) -> bool:
    """Whether the disc of radius r around (x, y) reaches into ``shape``."""
    if x + r < shape.x0 or x - r > shape.x1 or y + r < shape.y0 or y - r > shape.y1:
        return False
    return bool(shape.sdf(np.array([[x]]), np.array([[y]]))[0, 0] < r)


class _Grid:
    """The scanner's square pixel grid, centred on x = y = 0."""

    def __init__(self, matrix: int, fov: float) -> None:
        self.ps = fov / matrix
        self.n = matrix
        self.c0 = -fov / 2 + self.ps / 2
        self.c = self.c0 + np.arange(matrix) * self.ps  # pixel centres, same for x and y

    def _first(self, v: float) -> int:
        """Index of the first pixel centre >= v (as np.searchsorted, up to rounding), within 0..matrix."""
        return min(max(math.ceil((v - self.c0) / self.ps), 0), self.n)

    def coverage(self, shape: _Shape) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Partial-volume coverage of ``shape`` inside its bounding box (plus one pixel): (rows, cols), cov."""
        ps, c = self.ps, self.c
        i0, i1 = self._first(shape.x0 - ps), self._first(shape.x1 + ps)
        j0, j1 = self._first(shape.y0 - ps), self._first(shape.y1 + ps)
        if i0 < i1 and j0 < j1:
            cov = shape.sdf(c[None, i0:i1], c[j0:j1, None]) * (-1 / ps)
            cov += 0.5
            return (slice(j0, j1), slice(i0, i1)), np.clip(cov, 0.0, 1.0, out=cov)
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

    def erase(self, label: np.ndarray, shape: _Shape) -> None:
        """Unmark in ``label`` the pixels that ``shape`` covers by >= 0.5."""
        box = self.coverage(shape)
        if box is not None:
            label[box[0]] &= box[1] < 0.5

    def field(self, shape: _Shape, grow: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """0.5 - signed distance / pixel spacing over ``shape``'s box grown by ``grow`` mm (and one pixel): the
        coverage, before clipping, of the shape and (adding offset / pixel spacing) of its offsets up to ``grow``."""
        ps, c = self.ps, self.c
        i0, i1 = self._first(shape.x0 - grow - ps), self._first(shape.x1 + grow + ps)
        j0, j1 = self._first(shape.y0 - grow - ps), self._first(shape.y1 + grow + ps)
        if i0 >= i1 or j0 >= j1:
            return None
        d = shape.sdf(c[None, i0:i1], c[j0:j1, None]) * (-1 / ps)
        d += 0.5
        return (slice(j0, j1), slice(i0, i1)), d

    def paint_layers(
        self,
        img: np.ndarray,
        field: tuple[tuple[slice, slice], np.ndarray] | None,
        layers: Sequence[tuple[float, float]],
        allowed: np.ndarray | None = None,
    ) -> None:
        """Composite the shape of ``field`` (see :meth:`field`) grown by each (offset mm, HU) of ``layers`` in turn
        (outermost first: a sleeve, a cortex, its marrow...); coverage capped by the full-image map ``allowed``
        (0..1) where given."""
        if field is None:
            return
        where, d = field
        sub = img[where]
        cap = None if allowed is None else allowed[where]
        for offset, hu in layers:
            cov = np.clip(d + offset / self.ps, 0.0, 1.0)
            if cap is not None:
                np.minimum(cov, cap, out=cov)
            sub += (hu - sub) * cov

    def outside(self, *shapes: _Shape) -> np.ndarray:
        """Full-image map of 1 - coverage of the union of ``shapes`` (where a structure kept out of them may lie)."""
        out = np.ones((self.n, self.n), np.float32)
        for shape in shapes:
            box = self.coverage(shape)
            if box is not None:
                np.minimum(out[box[0]], 1 - box[1], out=out[box[0]])
        return out

    def inside(self, shape: _Shape) -> np.ndarray:
        """Full-image coverage map of ``shape``."""
        out = np.zeros((self.n, self.n), np.float32)
        box = self.coverage(shape)
        if box is not None:
            out[box[0]] = box[1]
        return out


# ---------------------------------------------------------------------------------------------- scanning
@dataclass(frozen=True, eq=False)
class _AorticSlices:
    """The aortic centreline sampled at the slice heights (arrays, one entry per slice)."""

    aortic: np.ndarray  # bool: slice above the bifurcation (else it cuts the two iliacs)
    diameter: np.ndarray  # outer diameter perpendicular to the centreline, 0 below the bifurcation
    baseline: np.ndarray  # diameter without the bulge
    bulge: np.ndarray  # 0..1: the bulge's share of its value at the maximum (0 outside the sac, normals)
    x: np.ndarray  # centre
    y: np.ndarray
    dx_dh: np.ndarray  # centreline tangent (dx/dh, dy/dh, 1)
    dy_dh: np.ndarray
    slope: np.ndarray  # tan(tilt to the z axis), 0 below the bifurcation
    phi: np.ndarray  # in-plane direction of the tilt
    sec: np.ndarray  # 1 / cos(tilt)
    half_width_x: np.ndarray  # half extents along x and y of the oblique cut
    half_width_y: np.ndarray
    iliac_offset: np.ndarray  # x offset of each iliac from the centreline


@dataclass(frozen=True)
class _VesselCut:
    """Axial cut of a vessel: centre, radius (perpendicular), tilt direction phi and sec = 1 / cos(tilt)."""

    x: float
    y: float
    radius: float
    phi: float
    sec: float

    @property
    def half_x(self) -> float:
        """Half extent of the cut along x."""
        return float(self.radius * np.hypot(self.sec * np.cos(self.phi), np.sin(self.phi)))


@dataclass(frozen=True)
class _VeinCut:
    """Axial cut of the IVC or an iliac vein: an ellipse of semi-axes a (along x) and b."""

    x: float
    y: float
    a: float
    b: float


@dataclass(frozen=True)
class _KidneyCut:
    """Axial cut of a kidney: an ellipse of semi-axes a (along angle theta) and b."""

    side: int
    x: float
    y: float
    a: float
    b: float
    theta: float


def _tissue_hu(anatomy: Anatomy) -> dict[str, float]:
    """The patient's HU of every fixed tissue (``_HU`` names, plus "marrow" and "kidney_shift")."""
    t = anatomy.tissues
    if t is None:
        return {**_HU, "marrow": anatomy.body.marrow_hu, "kidney_shift": 0.0}
    names = ("subcutaneous_fat", "visceral_fat", "muscle", "vessel_wall", "bowel_wall", "cortical_bone")
    return {
        "air": _HU["air"],
        **{name: getattr(t, name) for name in (*names, "vertebral_arch", "spinal_canal")},
        "marrow": anatomy.body.marrow_hu + t.marrow_shift,
        "kidney_shift": t.kidney_shift,
    }


def _body_structures(body: Body, hu: dict[str, float]) -> list[tuple[_Shape, float]]:
    """The trunk's (shape, HU) in painting order."""
    a, b, fat, vr, vc = body.half_width, body.half_depth, body.fat_mm, body.vertebra_radius, body.vertebra_y
    return [
        (_ellipse(0, 0, a, b), hu["subcutaneous_fat"]),
        (_ellipse(0, 0, a - fat, b - fat), hu["muscle"]),
        (_ellipse(0, 0, body.inner_half_width, body.inner_half_depth), hu["visceral_fat"]),
        *((_ellipse(s * (vr + 14), vc + 4, 13, 19), hu["muscle"]) for s in (-1, 1)),  # psoas
        *((_ellipse(s * 28, vc + vr + 8, 18, 12), hu["muscle"]) for s in (-1, 1)),  # erectors
        (_circle(0, vc, vr), hu["cortical_bone"]),
        (_circle(0, vc, vr - body.cortex_mm), hu["marrow"]),
        (_ellipse(0, vc + vr + 10, 20, 9), hu["vertebral_arch"]),
        (_circle(0, vc + vr + 7, 6), hu["spinal_canal"]),
    ]


def _slice_heights(anchor: float, lo: float, hi: float, spacing: float) -> np.ndarray:
    """Slice centre heights in [lo, hi] on the grid anchor + m * spacing, head-most first."""
    m = np.arange(np.floor((hi - anchor) / spacing + 1e-9), np.ceil((lo - anchor) / spacing - 1e-9) - 1, -1)
    return anchor + m * spacing


_ILIAC_RUN_MM = 60.0  # the iliacs diverge over this height below the bifurcation, then run straight down


def _sample_aorta(anatomy: Anatomy, h: np.ndarray, tortuosity: float) -> _AorticSlices:
    """The centreline, its tilt and the diameters at heights ``h``, bends scaled by ``tortuosity``."""
    aorta, tau = anatomy.aorta, tortuosity
    dia = aorta.diameter
    h_bif = dia.bifurcation_h
    aortic = h >= h_bif
    D = np.where(aortic, dia.outer(h), 0.0)
    R = D / 2
    baseline = dia.baseline(h)
    if dia.peak_mm is None:
        bulge = np.zeros(len(h))
    else:
        bulge = np.where(aortic, np.clip((D - baseline) / max(dia.peak_mm - dia.baseline(dia.max_h), 1e-6), 0, 1), 0)
    # tortuous centreline: x wanders both ways, y only anteriorly (the aorta lies on the spine)
    hb = np.maximum(h, h_bif)
    tx, ty = tau * aorta.bend_x(hb), -tau * (aorta.bend_y(hb) + 40.0) / 2
    dtx, dty = tau * aorta.bend_x.slope(h), -tau * aorta.bend_y.slope(h) / 2
    slope = np.where(aortic, np.hypot(dtx, dty), 0.0)
    phi, sec = np.arctan2(dty, dtx), np.sqrt(1 + slope**2)
    ex = R * np.sqrt((sec * np.cos(phi)) ** 2 + np.sin(phi) ** 2)  # half extents of the oblique cut
    stretch_y = np.sqrt((sec * np.sin(phi)) ** 2 + np.cos(phi) ** 2)
    ey = R * stretch_y
    # the back of the wall lies 3 mm in front of the spine, less the sac's sunken share of its growth in depth
    sunk = aorta.sink * np.maximum(ey - np.where(aortic, baseline, 0.0) / 2 * stretch_y, 0.0)
    r_il = aorta.iliac_radius
    iliac_offset_at_bif = max(r_il * 1.05, float(dia.outer(h_bif)) / 2 - r_il)
    il_dx = iliac_offset_at_bif + aorta.iliac_spread * np.clip(h_bif - h, 0, _ILIAC_RUN_MM)
    return _AorticSlices(
        aortic=aortic,
        diameter=D,
        baseline=baseline,
        bulge=bulge,
        x=aorta.x_mm + aorta.wander_x(h) + tx,
        y=anatomy.body.spine_front_y - 3 - ey + sunk + ty,
        dx_dh=dtx,
        dy_dh=dty,
        slope=slope,
        phi=phi,
        sec=sec,
        half_width_x=ex,
        half_width_y=ey,
        iliac_offset=il_dx,
    )


def _vessel_cuts(anatomy: Anatomy, aorta: _AorticSlices, k: int) -> list[_VesselCut]:
    """The aorta's cut on slice k, or the two iliacs' below the bifurcation (left one first)."""
    if aorta.aortic[k]:
        return [_VesselCut(aorta.x[k], aorta.y[k], aorta.diameter[k] / 2, aorta.phi[k], aorta.sec[k])]
    r_il, y = anatomy.aorta.iliac_radius, anatomy.body.spine_front_y - 3
    return [_VesselCut(aorta.x[k] + s * aorta.iliac_offset[k], y - r_il, r_il, 0.0, 1.0) for s in (1, -1)]


def _vein_cuts(anatomy: Anatomy, vessels: list[_VesselCut], h: float) -> list[_VeinCut]:
    """The IVC on a slice at height h, right of the arteries and at least its gap away from them; or, below its
    confluence, the two common iliac veins beside the iliac arteries (right one lateral, left one medial)."""
    cava = anatomy.cava
    if cava is None:
        return []
    spine = anatomy.body.spine_front_y
    edge = min(v.x - v.half_x for v in vessels)  # right edge of the arteries
    if h >= cava.confluence_h:
        a, b = cava.semi_x, cava.semi_y
        gap = cava.gap_mm + max(0.0, cava.drift_mm + float(cava.wander_x(h)))
        return [_VeinCut(edge - gap - a, spine - 3 - cava.y_shift - b, a, b)]
    r = cava.iliac_radius  # below the confluence (so below the bifurcation): two iliac arteries
    return [_VeinCut(v.x - v.radius - cava.gap_mm - r, spine - 3 - r, r, r) for v in vessels]


def _kidney_cuts(anatomy: Anatomy, aorta: _AorticSlices, veins: list[_VeinCut], h: float, k: int) -> list[_KidneyCut]:
    """Kidney cuts on slice k (height h), kept at least the anatomy's kidney gap lateral to the aorta and veins."""
    cuts, gap = [], anatomy.kidney_gap_mm
    for kid in anatomy.kidneys:
        q = 1 - ((h - kid.h_centre) / kid.half_length) ** 2
        if q > 0:
            sa, sb, th = kid.semi_major * np.sqrt(q), kid.semi_minor * np.sqrt(q), kid.rotation
            kex = np.hypot(sa * np.cos(th), sb * np.sin(th))
            s = kid.side
            reach = s * aorta.x[k] + aorta.half_width_x[k] + gap + kex
            reach = max([reach, *(s * v.x + v.a + gap + kex for v in veins if s * v.x < s * kid.x_mm)])
            cuts.append(_KidneyCut(s, s * max(abs(kid.x_mm), reach), kid.y_mm, sa, sb, th))
    return cuts


def _paint_renal_vein(
    img: np.ndarray,
    grid: _Grid,
    anatomy: Anatomy,
    aorta: _AorticSlices,
    veins: list[_VeinCut],
    kidneys: list[_KidneyCut],
    h: float,
    k: int,
    hu: float,
) -> None:
    """The left renal vein where it crosses slice k: left kidney -> anterior to the aorta (its gap away) -> IVC."""
    rv = anatomy.renal_vein
    left = [c for c in kidneys if c.side > 0]
    if rv is None or abs(h - rv.h) >= rv.radius or len(veins) != 1 or not left or not aorta.aortic[k]:
        return
    t = np.sqrt(rv.radius**2 - (h - rv.h) ** 2)  # a horizontal tube cut by the slice plane
    p0, p2 = np.array([left[0].x, left[0].y]), np.array([veins[0].x, veins[0].y])
    mid = np.array([aorta.x[k], aorta.y[k] - aorta.half_width_y[k] - rv.gap_mm - rv.radius])  # in front of it
    q = np.linspace(0, 1, 13)[:, None]  # a quadratic Bezier from the kidney through ``mid`` to the IVC
    curve = (1 - q) ** 2 * p0 + 2 * q * (1 - q) * (2 * mid - (p0 + p2) / 2) + q**2 * p2
    grid.paint(img, _polyline(curve, t), hu)


def _paint_bowel(
    img: np.ndarray,
    grid: _Grid,
    anatomy: Anatomy,
    obstacles: list[tuple[float, float, float]],
    h: float,
    wall_hu: float,
    solids: Sequence[_Shape] = (),
) -> None:
    """Loops inside the visceral cavity, in front of the spine and at least the anatomy's bowel gap from every
    vessel (``obstacles``: x, y and the radius of a circle around each), and out of the ``solids`` (distractor
    organs and bones)."""
    body, gap = anatomy.body, anatomy.bowel_gap_mm
    a_in, b_in = body.inner_half_width, body.inner_half_depth
    for loop in anatomy.bowel:
        lam, ph = loop.wavelengths, loop.phases
        bx = loop.x_mm + loop.sway_mm * np.sin(2 * np.pi * h / lam[0] + ph[0])
        by = loop.y_mm + loop.sway_mm * np.cos(2 * np.pi * h / lam[1] + ph[1])
        r = loop.radius * (0.6 + 0.4 * np.sin(2 * np.pi * h / lam[0] + ph[2]) ** 2)
        inside = (bx / (a_in - r - 3)) ** 2 + (by / (b_in - r - 3)) ** 2 < 1 and by + r < body.spine_front_y - 5
        if (
            inside
            and all(np.hypot(bx - x, by - y) - rad - r > gap for x, y, rad in obstacles)
            and not any(_inside(solid, bx, by, r) for solid in solids)
        ):
            grid.paint(img, _circle(bx, by, r), wall_hu)
            grid.paint(img, _circle(bx, by, r - 2), loop.content_hu)


def _paint_vessel(
    img: np.ndarray,
    grid: _Grid,
    v: _VesselCut,
    aorta: Aorta,
    bulge: float | None,
    lumen_hu: float,
    wall_hu: float,
    label: np.ndarray | None = None,
) -> None:
    """Wall, thrombus (where ``bulge``, the sac's share of its maximum bulge, is given) and lumen; the outer wall's
    coverage >= 0.5 is marked in ``label`` where given."""
    grid.paint(img, _tube(v.x, v.y, v.radius, v.phi, v.sec), wall_hu, label)
    ri, t = v.radius - aorta.wall_mm, aorta.thrombus  # inner wall radius
    rl = ri  # lumen radius
    if t is not None and bulge:  # thrombus fills t.fill of the area inside the wall at the maximum, less around
        rl = max(ri * np.sqrt(1 - t.fill * bulge), min(ri, 4.0))
    if rl < ri - 0.05:  # the residual lumen is pushed off-centre: toward a crescent of thrombus
        grid.paint(img, _tube(v.x, v.y, ri, v.phi, v.sec), t.hu)
        shift = t.eccentricity * (ri - rl)
        dx, dy = _stretch(shift * np.cos(t.direction), shift * np.sin(t.direction), v.phi, v.sec)
        grid.paint(img, _tube(v.x + dx, v.y + dy, rl, v.phi, v.sec), lumen_hu)
    else:
        grid.paint(img, _tube(v.x, v.y, ri, v.phi, v.sec), lumen_hu)


def _paint_crura(img: np.ndarray, grid: _Grid, anatomy: Anatomy, v: _VesselCut, h: float, hu: float) -> None:
    """The crura crossing height h, each an arc around the aorta's cut ``v`` from behind its side to its front
    (joined there above the arcuate ligament), tapering out over the 15 mm above its lower end."""
    c, body = anatomy.crura, anatomy.body
    open_ = 0.0 if h >= c.arcuate_h else min((c.arcuate_h - h) / 20.0, 1.0) * 0.3 * np.pi  # parted in front
    span = c.reach * np.pi - open_
    front = -np.pi / 2  # anterior is -y (LPS)
    for side, (low, t) in enumerate(zip(c.low_h, c.half_thickness_mm)):
        t *= min((h - low) / 15.0, 1.0)
        if t <= 0.5 or span <= 0:
            continue
        rc = v.radius + c.gap_mm + t
        start = front + open_ if side == 0 else front - open_ - span  # left (+x) or right (-x) of the front
        band = _arc(v.x, v.y, rc, t, start, span, v.phi, v.sec)
        grid.paint(img, _carve(band, [(_circle(0, body.vertebra_y, body.vertebra_radius), 0.0)]), hu)


def _paint_calcifications(
    img: np.ndarray, grid: _Grid, anatomy: Anatomy, aorta: _AorticSlices, h: float, k: int
) -> None:
    """Wall calcifications crossing slice k (height h): arcs just inside the outer wall."""
    x, y, phi, sec = aorta.x[k], aorta.y[k], aorta.phi[k], aorta.sec[k]
    for c in anatomy.aorta.calcifications:
        if abs(h - c.h) <= c.half_length:
            rr = aorta.diameter[k] / 2 - c.radius - 0.3  # inside the outer wall
            grid.paint(img, _arc(x, y, rr, c.radius, c.angle, c.arc, phi, sec), c.hu)


def _restore_vertebra(
    img: np.ndarray, grid: _Grid, anatomy: Anatomy, aorta: _AorticSlices, h: float, k: int, label: np.ndarray
) -> None:
    """Where a sunken sac (Aorta.sink) reaches back past the spine's front, the vertebral body stays in front of
    it: repaint its cortex and marrow and take it out of the label (the sac wraps round it)."""
    body = anatomy.body
    if aorta.y[k] + aorta.half_width_y[k] <= body.spine_front_y - 3 + 1e-6:
        return
    vertebra = _paint_vertebra(img, grid, anatomy, h)
    grid.erase(label, vertebra)


def _paint_vertebra(img: np.ndarray, grid: _Grid, anatomy: Anatomy, h: float) -> _Shape:
    """The vertebral body at height h, or the intervertebral disc there; returns its outline."""
    body = anatomy.body
    vertebra = _circle(0, body.vertebra_y, body.vertebra_radius)
    if body.is_disc(h):
        grid.paint(img, vertebra, body.disc_hu)
    else:
        tissue = _tissue_hu(anatomy)
        grid.paint(img, vertebra, tissue["cortical_bone"])
        grid.paint(img, _circle(0, body.vertebra_y, body.vertebra_radius - body.cortex_mm), tissue["marrow"])
    return vertebra


class _DistractorPainter:
    """Paints a patient's unlabelled distractors (simulations.anatomy.Distractors) on a slice: bladder, pelvic bones
    (iliac wings in their muscle sleeves, sacral alae, acetabula, femoral heads), liver, spleen, lung bases and their
    vessels. None overlaps the aorta or the iliac arteries (each keeps at least 3 mm, the liver its ``keep_mm``, of
    fat from their outer wall) nor the vertebra; the organs stay inside the visceral cavity and off the psoas, the
    lungs off the erector muscles too (coverage maps computed once per scan)."""

    def __init__(
        self, d: Distractors, body: Body, grid: _Grid, hu: dict[str, float], phase: str, vessel_hu: float
    ) -> None:
        self.d, self.hu, self.vessel_hu, self.grid = d, hu, vessel_hu, grid
        self.liver_hu = d.liver.hu + _in_range(_LIVER_GAIN[phase], d.liver.enhancement)
        self.spleen_hu = d.spleen.hu + _in_range(_SPLEEN_GAIN[phase], d.spleen.enhancement)
        vr, vc = body.vertebra_radius, body.vertebra_y
        a_in, b_in = body.inner_half_width, body.inner_half_depth
        spine = (_circle(0, vc, vr), _ellipse(0, vc + vr + 10, 20, 9))
        psoas = tuple(_ellipse(s * (vr + 14), vc + 4, 13, 19) for s in (-1, 1))
        erectors = tuple(_ellipse(s * 28, vc + vr + 8, 18, 12) for s in (-1, 1))
        crura = _ellipse(0, vc - vr, vr + 18, vr + 6)  # the diaphragmatic crura around the aorta keep the lungs off
        w = d.lungs.wall_mm
        self.bone_ok = grid.outside(*spine)
        self.organ_ok = np.minimum(grid.outside(*psoas), self.bone_ok)
        self.lung_ok = np.minimum(grid.outside(*erectors, crura), self.organ_ok)
        self.lung_ok = np.minimum(grid.inside(_ellipse(0, 0, a_in - w, b_in - w)), self.lung_ok)
        self.organ_ok = np.minimum(grid.inside(_ellipse(0, 0, a_in - 1, b_in - 1)), self.organ_ok)
        self.a_in, self.b_in = a_in, b_in

    def paint(self, img: np.ndarray, vessels: list[_VesselCut], h: float) -> list[_Shape]:
        """Paint the distractors crossing height h (``vessels``: the arteries' cuts there); returns the solid
        shapes that bowel loops keep out of."""
        grid, d, hu = self.grid, self.d, self.hu
        arteries = [(_tube(v.x, v.y, v.radius, v.phi, v.sec), 3.0) for v in vessels]
        solids: list[_Shape] = []
        b = d.bladder
        if b is not None and abs(h - b.h) < b.half_height:
            sc = np.sqrt(1 - ((h - b.h) / b.half_height) ** 2)
            bladder = _carve(_ellipse(b.x, b.y, b.semi_x * sc, b.semi_y * sc), arteries)
            field = grid.field(bladder, b.wall_mm)
            grid.paint_layers(img, field, ((b.wall_mm, hu["muscle"]), (0.0, b.hu)), self.organ_ok)
            solids.append(bladder)
        if h < d.pelvis.crest_h + abs(d.pelvis.shift_mm):
            solids += self._paint_pelvis(img, arteries, h)
        liver = self._liver(h, arteries)
        if liver is not None:
            grid.paint_layers(img, grid.field(liver), ((0.0, self.liver_hu),), self.organ_ok)
            solids.append(liver)
        sp = d.spleen
        if abs(h - sp.h_centre) < sp.half_length:
            sc = np.sqrt(1 - ((h - sp.h_centre) / sp.half_length) ** 2)
            shape = _ellipse(sp.x, sp.y, sp.semi_major * sc, sp.semi_minor * sc, sp.theta)
            spleen = _carve(shape, arteries)
            grid.paint_layers(img, grid.field(spleen), ((0.0, self.spleen_hu),), self.organ_ok)
            solids.append(spleen)
        lungs = d.lungs
        for i, s in enumerate((1, -1)):
            dh = h - lungs.base_h[i]
            if dh <= 0:
                continue
            cx, cy = s * lungs.centre[0], lungs.centre[1]
            ax, ay = min(8 + 1.3 * lungs.growth * dh, 0.6 * self.a_in), min(6 + lungs.growth * dh, 0.6 * self.b_in)
            lung = _carve(_ellipse(cx, cy, ax, ay), arteries)
            grid.paint_layers(img, grid.field(lung), ((0.0, lungs.hu),), self.lung_ok)
            solids.append(lung)
            for u, v, r in lungs.vessels:
                px, py = cx + s * u * ax, cy + v * ay
                col, row = grid._first(px - grid.ps / 2), grid._first(py - grid.ps / 2)
                if row < grid.n and col < grid.n and self.lung_ok[row, col] == 1 and _inside(lung, px, py, -r - 1.0):
                    grid.paint(img, _circle(px, py, r), self.vessel_hu)
        return solids

    def _liver(self, h: float, arteries: list[tuple[_Shape, float]]) -> _Shape | None:
        """The liver's cut at height h (None: below its tip)."""
        lv = self.d.liver
        f = (h - lv.tip_h) / lv.rise_mm
        if f <= 0:
            return None
        g = min(f, 1.0)
        (tx, ty), (rx, ry, ra, rb) = lv.tip, lv.right
        shape = _ellipse(tx + (rx - tx) * g, ty + (ry - ty) * g, ra * (0.2 + 0.8 * g), rb * (0.2 + 0.8 * g))
        if h > lv.left_h:
            gl = min((h - lv.left_h) / 30.0, 1.0)
            lx, ly, la, lb = lv.left
            shape = _union(shape, _ellipse(lx, ly, la * (0.3 + 0.7 * gl), lb * (0.3 + 0.7 * gl)))
        return _carve(shape, [(hole, max(lv.keep_mm, margin)) for hole, margin in arteries])

    def _paint_pelvis(self, img: np.ndarray, arteries: list[tuple[_Shape, float]], h: float) -> list[_Shape]:
        """Wings (or acetabula and femoral heads below the roofs) on both sides, and the sacral alae: each a bone
        shape painted as (muscle sleeve,) cortex and marrow."""
        p, grid = self.d.pelvis, self.grid
        cortex, marrow, sleeve, muscle = p.cortex_hu, p.marrow_hu, p.sleeve_mm, self.hu["muscle"]
        (cx, cy), R, e = p.wing_centre, p.wing_radius, p.wing_stretch
        t_a, t_p = p.wing_angles
        bones: list[tuple[_Shape, float]] = []  # (shape, sleeve mm)
        for s in (1, -1):
            hs = h - (p.shift_mm if s < 0 else 0.0)  # the right side lies shift_mm higher
            if hs > p.crest_h:
                continue
            if hs > p.roof_h:  # the wing: grows from the crest, leaves the sacrum below the notch, thickens
                f = min((p.crest_h - hs) / p.flare_mm, 1.0)
                lo, hi = p.crest_angle - (p.crest_angle - t_a) * f, p.crest_angle + (t_p - p.crest_angle) * f
                g = float(np.clip((p.notch_h - hs) / (p.notch_h - p.roof_h), 0.0, 1.0))
                hi -= (hi - lo) * 0.65 * g
                t = p.wing_mm * (1 + 1.5 * g)
                x = cx - min(0.3 * max(p.crest_h - hs - p.flare_mm, 0.0), 20.0)  # the wing comes in downwards
                bones.append((_arc(s * x, cy, R, t, lo if s > 0 else np.pi - hi, hi - lo, np.pi / 2, e), sleeve))
            hx, hy = s * p.head_xy[0], p.head_xy[1]
            dz, rh = hs - p.head_h, p.head_radius
            outer = rh + 6.5  # the bony cup: 1.5 mm of joint space and 5 mm of bone around the head
            if hs > p.roof_h + 2 or abs(dz) >= outer:
                continue
            ro = np.sqrt(outer**2 - dz**2)
            if abs(dz) >= rh + 1.5:  # over (or under) the head: the roof, a disc of bone
                bones.append((_circle(hx, hy, ro), 0.8 * sleeve))
                continue
            ri = np.sqrt((rh + 1.5) ** 2 - dz**2)
            mid, span = (np.pi if s > 0 else 0.0), np.radians(230)
            bones.append((_arc(hx, hy, (ro + ri) / 2, (ro - ri) / 2, mid - span / 2, span, 0.0, 1.0), 0.8 * sleeve))
            if abs(dz) < rh:
                bones.append((_circle(hx, hy, np.sqrt(rh**2 - dz**2)), 0.0))
        bottom = p.head_h - p.head_radius
        if bottom < h <= p.sacrum_h:  # the sacral alae, narrowing and moving back downwards
            g = (p.sacrum_h - h) / (p.sacrum_h - bottom)
            x = cx - min(0.3 * max(p.crest_h - h - p.flare_mm, 0.0), 20.0)  # as the wings come in
            xp, yp = x + R * np.cos(t_p), cy + e * R * np.sin(t_p)
            sx, sy, y = (xp - p.wing_mm - 2.5) * (1 - 0.55 * g), p.sacrum_mm * (1 - 0.4 * g), yp + 25 * g
            bones.append((_ellipse(0, y, sx, sy), 0.0))
        carved = [(_carve(shape, arteries), grow) for shape, grow in bones]
        fields = [(grid.field(shape, grow), grow) for shape, grow in carved]
        for field, grow in fields:  # the muscle sleeves under every bone
            if grow > 0:
                grid.paint_layers(img, field, ((grow, muscle),), self.bone_ok)
        for field, _ in fields:
            grid.paint_layers(img, field, ((0.0, cortex), (-p.cortex_mm, marrow)), self.bone_ok)
        return [shape for shape, _ in carved]


def _in_range(hu_range: tuple[int, int], u: float) -> float:
    """The HU at quantile ``u`` (0..1) of ``hu_range``."""
    lo, hi = hu_range
    return lo + u * (hi - lo)


def scan_patient(patient: Patient, profile: ScannerProfile) -> SyntheticStudy:
    """Sample ``patient`` on ``profile``'s slice and pixel grid, in its contrast phase: noise-free HU slices
    and the per-slice aortic truth. Makes no random draws (:func:`add_noise` does)."""
    anatomy, grid = patient.anatomy, _Grid(profile.matrix, profile.fov_mm)
    tissue = _tissue_hu(anatomy)
    lumen_hu = _in_range(_LUMEN_HU[profile.phase], anatomy.aorta.enhancement)
    kidney_hu = _in_range(_KIDNEY_HU[profile.phase], anatomy.kidney_enhancement) + tissue["kidney_shift"]
    vein_hu = _in_range(_VEIN_HU[profile.phase], anatomy.cava.enhancement) if anatomy.cava else 0.0
    h = _slice_heights(anatomy.aorta.diameter.max_h, *anatomy.scan_range, profile.spacing_mm)
    aorta = _sample_aorta(anatomy, h, profile.tortuosity)

    body_img = np.full((profile.matrix,) * 2, _HU["air"], np.float32)
    for shape, v in _body_structures(anatomy.body, tissue):
        grid.paint(body_img, shape, v)
    distractors = (
        None
        if anatomy.distractors is None
        else _DistractorPainter(anatomy.distractors, anatomy.body, grid, tissue, profile.phase, vein_hu)
    )
    hu = np.empty((len(h), profile.matrix, profile.matrix), np.float32)
    mask = np.zeros(hu.shape, bool)
    for k in range(len(h)):
        img = hu[k]
        img[:] = body_img
        if anatomy.body.is_disc(h[k]):
            _paint_vertebra(img, grid, anatomy, h[k])
        vessels = _vessel_cuts(anatomy, aorta, k)
        solids = [] if distractors is None else distractors.paint(img, vessels, h[k])
        veins = _vein_cuts(anatomy, vessels, h[k])
        kidneys = _kidney_cuts(anatomy, aorta, veins, h[k], k)
        for v in veins:
            grid.paint(img, _circle(v.x, v.y, v.a) if v.a == v.b else _ellipse(v.x, v.y, v.a, v.b), vein_hu)
        _paint_renal_vein(img, grid, anatomy, aorta, veins, kidneys, h[k], k, vein_hu)
        for c in kidneys:
            grid.paint(img, _ellipse(c.x, c.y, c.a, c.b, c.theta), kidney_hu)
        obstacles = [(v.x, v.y, v.radius * v.sec) for v in vessels] + [(v.x, v.y, max(v.a, v.b)) for v in veins]
        _paint_bowel(img, grid, anatomy, obstacles, h[k], tissue["bowel_wall"], solids)
        if anatomy.crura is not None and aorta.aortic[k]:
            _paint_crura(img, grid, anatomy, vessels[0], h[k], tissue["muscle"])
        bulge = aorta.bulge[k] if aorta.aortic[k] else None
        for v in vessels:  # the iliacs (below the bifurcation) are not labelled
            label = mask[k] if aorta.aortic[k] else None
            _paint_vessel(img, grid, v, anatomy.aorta, bulge, lumen_hu, tissue["vessel_wall"], label)
        if aorta.aortic[k]:
            _paint_calcifications(img, grid, anatomy, aorta, h[k], k)
            _restore_vertebra(img, grid, anatomy, aorta, h[k], k, mask[k])
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
