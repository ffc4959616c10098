"""Maximum aortic diameter, outer wall to outer wall, in planes perpendicular to the centreline.

The network gives, for one CT study, a probability map of the whole aorta (lumen, thrombus and wall) on
the study's grid. :func:`measure_aorta` turns it into the clinical number:

1. the map is thresholded at ``level``; of its 3D connected components (26-connectivity) the most
   aorta-like is kept, not the largest (a network may well light up a hip bone more strongly than the
   aorta): the longest in z, tube-like (compact axial sections 8-100 mm across, several times longer
   than wide, whose area and centroid change smoothly), of near ties the larger; its holes are filled
   slice by slice. A component that cannot be an aorta (crab-like or fragmented sections, an area
   jumping between slices, or short and wider than long in a long scan) is found but not measured;
   below the aortic bifurcation its axial sections are two pieces (the common iliac arteries): that run,
   from the component's caudal end up, is cut off, and cuts within 10 mm above it (the crotch, which a
   centreline turning out of an iliac slices obliquely) do not count for the maximum; a section with a piece
   as wide as an aneurysm ends that run (a sac beside another vessel is never cut off);
2. a centreline is drawn through the component's centroid in each axial slice, smoothed along z (a
   Gaussian of 7 mm, with the ends extended linearly so that a tilted vessel keeps its direction) and
   resampled every ``step_mm`` of arc length; it is then moved twice to the centroids of its own
   perpendicular cuts (1 mm pixels) and smoothed again, since an axial slice's centroid leaves the axis
   where a tilted vessel widens or narrows (a 35-degree fusiform aneurysm: tangent error 24 -> 6 degrees).
   A sac about as wide as it is long can lead those passes astray (each tilts the cuts further). When the
   refined maximum exceeds that of the cuts along the axial centroids (read on the first pass's planes) by
   more than :data:`ASTRAY_MM`, those cuts are measured as well and the set whose largest counted cut is
   smaller is kept, since a cut leaning off the perpendicular is longer across a tube, never shorter;
3. at each centreline point the probability map of the component (with its partial-volume edge) is
   sampled on a plane perpendicular to the tangent (0.5 mm pixels, a window sized to the vessel, up to
   +-75 mm); the ``level`` iso-contour of the region that contains the centreline (or is nearest to it)
   is found with sub-pixel accuracy (contourpy), its closed lines are smoothed (their first
   :data:`CONTOUR_HARMONICS` Fourier harmonics along the arc length are kept) and its maximum Feret diameter
   (the largest caliper distance: the clinical outer-to-outer diameter) is measured. A region that reaches the
   plane's border or the scanned grid's border is not measured (its true size is unknown);
4. the largest of these, over the levels ``valid_z`` allows, is the answer, after plausibility checks
   (its size, and a compact cut: area over convex-hull area at least 0.75).

Why step 3 smooths the contour. The largest caliper distance of a contour picks the outline's noise as well as
its size: the raw 0.5 contour of a hard-edged (binary) map of a perfect 25 mm tube on the 1.5 mm grid measures
26.1 mm (its pixel staircase), 25.6 mm after the low-pass; a soft-edged map 25.25 mm, 25.1 mm after it. The
low-pass keeps ellipses and sacs, whose outlines vary over centimetres.

Coordinates are RAS world millimetres: ``world = affine @ [i, j, k, 1]``. The grid must be axis-aligned
(the affine's 3x3 part diagonal with positive entries), as FedAAA's preprocessing makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

__all__ = ["Measurement", "Section", "component_field", "measure_aorta", "plane_basis", "sample_plane"]

MIN_VOLUME_MM3 = 500.0  # a smaller largest component is not an aorta
MAX_PLAUSIBLE_MM = 130.0  # a larger maximum cross-section is a failed segmentation, not an aneurysm
MIN_PLAUSIBLE_MM = 8.0  # a thinner one is not an adult aorta
PIXEL_MM = 0.5  # pixel of the perpendicular planes
CONTOUR_HARMONICS = 6  # Fourier harmonics kept of each closed contour line (arc-length parametrised)
CONTOUR_POINTS = 128  # points a closed contour line is resampled to before its low-pass
FERET_ALL_PAIRS = 1024  # up to this many contour points, every pair is compared (no convex hull first)
NECK_SHARE = 0.75  # a piece joined to the cut's body by a neck narrower than this share of the body's width ...
NECK_MAX_MM = 7.0  # ... (at most twice this radius) is a neighbour touching the aorta, not aorta
NECK_MIN_MM = 3.0
RIM_MM = 4.0  # what the opening took but reaches no further than this beyond the body (wall, thrombus) is kept
MAX_HALF_WIDTH_MM = 75.0  # widest plane: room for a 120 mm aneurysm off-centre
MIN_HALF_WIDTH_MM = 10.0
SMOOTH_SIGMA_MM = 7.0  # centreline smoothing along z
REFINE_PASSES = 2  # centreline moved to the centroids of its perpendicular cuts, this many times
REFINE_PIXEL_MM = 1.0  # pixel of the planes of those passes
ASTRAY_MM = 2.0  # refined maximum larger than the axial centroids' cuts' by more: the refinement went astray
EDGE_MM = 5.0  # a maximum this close to the first or last slice may continue outside the scan
MAX_STEP_MM = 2.0
# choosing the component (the most aorta-like, not the largest) and refusing implausible ones
MAX_CANDIDATES = 32  # components described (the longest)
SOLIDITY_SLICES = 24  # axial sections per component whose solidity is measured
AXIAL_SIZE_MM = (8.0, 100.0)  # median equivalent diameter of an aorta's axial sections
MIN_ELONGATION = 3.0  # length over axial diameter below which the score falls (a ball, a bone's blob)
MAX_WANDER = 1.5  # mm of centroid shift per mm of z (56 degrees of tilt) before the score falls
NEAR_TIE = 0.9  # components scoring within this share of the best: the larger is taken
AREA_JUMP = 3.0  # neighbouring axial sections whose areas differ more than this many-fold ...
MAX_JUMP_SHARE = 0.25  # ... over more than this share of the component's length: not a vessel
MIN_AXIAL_SOLIDITY = 0.6  # median solidity (area / convex-hull area) of its axial sections
MIN_CUT_SOLIDITY = 0.75  # solidity of the perpendicular cut at the maximum
SHORT_SHARE = 0.5  # shorter than this share of the abdominal range and wider than long: not an aorta
# the aortic bifurcation: below it an axial section of the component is two pieces (the common iliac arteries)
MIN_PIECE_MM2 = 15.0  # a smaller piece of an axial section is not an iliac artery
BIFURCATION_START_MM = 15.0  # the two-piece run must begin this close to the component's caudal end
BIFURCATION_MARGIN_MM = 10.0  # cuts this close above the bifurcation (its crotch) are not counted
AAA_PIECE_MM = 30.0  # an axial piece this wide (area-equivalent) is an aneurysm's, never an iliac artery's
_EPS = 1e-6  # voxel coordinates this far outside the grid still count as inside (rounding)
_RING = np.ones((3, 3), dtype=bool)  # 8-connectivity in the plane


@dataclass(frozen=True, eq=False)
class Section:
    """One cut perpendicular to the centreline (arrays do not compare with ``==``)."""

    centre_mm: np.ndarray  # (3,) RAS world mm: the centreline point
    normal: np.ndarray  # (3,) unit tangent of the centreline (towards +z)
    diameter_mm: float  # maximum outer-to-outer (max Feret) diameter of the cut's region holding the centreline
    ends_mm: np.ndarray  # (2, 3) RAS world mm: the two caliper end points of that maximum
    counted: bool = True  # its level is one ``valid_z`` allows: it takes part in the maximum


@dataclass(frozen=True, eq=False)
class Measurement:
    """The outcome of :func:`measure_aorta` (arrays do not compare with ``==``)."""

    found: bool  # an aorta-like component exists
    measurable: bool  # a number can be given
    reason: str  # "" when measurable, else one plain sentence why not
    max_diameter_mm: float | None  # None unless measurable
    max_section: Section | None  # None unless measurable
    centreline_mm: np.ndarray  # (n, 3) RAS world mm, foot to head; (0, 3) when not found
    sections: tuple[Section, ...]  # every cut that could be measured (closed, whole contour), in centreline order
    mask: np.ndarray  # bool, the grid's shape: the component measured (all False when not found)
    warnings: tuple[str, ...]  # facts a reader of the number must know


def _grid(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spacing and origin (mm) of an axis-aligned affine; ValueError for any other."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"the affine must be a finite 4x4 matrix, not shape {a.shape}")
    lin = a[:3, :3]
    spacing = np.diag(lin).copy()
    if not np.all(spacing > 0):
        raise ValueError(f"the affine's diagonal must be positive (axis-aligned RAS grid), not {spacing.tolist()}")
    if np.max(np.abs(lin - np.diag(spacing))) > 1e-6 * float(spacing.max()):
        raise ValueError("the affine must be axis-aligned (its 3x3 part diagonal): resample the study first")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"the affine's last row must be [0, 0, 0, 1], not {a[3].tolist()}")
    return spacing, a[:3, 3].copy()


def _not_found(shape: tuple[int, ...], reason: str) -> Measurement:
    return Measurement(
        found=False,
        measurable=False,
        reason=reason,
        max_diameter_mm=None,
        max_section=None,
        centreline_mm=np.zeros((0, 3)),
        sections=(),
        mask=np.zeros(shape, dtype=bool),
        warnings=(),
    )


def _hull_area(pixels: np.ndarray, dx: float, dy: float) -> float:
    """Area (mm²) of the convex hull of the ``dx`` x ``dy`` pixel squares centred on ``pixels`` (n, 2)."""
    pts = pixels * np.array([dx, dy])
    area = 0.0
    if len(pts) >= 3:
        try:
            area = float(ConvexHull(pts).volume)  # a 2D hull's "volume" is its area
        except QhullError:  # collinear centres: a strip
            area = 0.0
    w, h = np.ptp(pts, axis=0)
    return area + dx * float(h) + dy * float(w) + dx * dy  # the centres' hull grown by a pixel (Minkowski)


def _solidity(region: np.ndarray, dx: float, dy: float) -> float:
    """Area of a 2D region (holes filled) over the area of its convex hull: near 1 for a vessel's section,
    low for a crab-like or fragmented one."""
    filled = ndimage.binary_fill_holes(region)
    n = int(filled.sum())
    if n == 0:
        return 1.0
    edge = np.argwhere(filled & ~ndimage.binary_erosion(filled))  # the hull's corners are edge pixels
    return min(1.0, n * dx * dy / _hull_area(edge, dx, dy))


@dataclass(frozen=True)
class _Candidate:
    """One 3D component of the thresholded map, described by how aorta-like it is."""

    label: int
    box: tuple[slice, ...]
    volume_mm3: float
    length_mm: float  # craniocaudal extent of the slices it occupies
    width_mm: float  # its larger in-plane (x or y) extent
    solidity_mean: float  # of its axial sections (a sample of them)
    solidity_median: float
    diameter_mm: float  # median equivalent-circle diameter of its axial sections
    pairs: int  # neighbouring slice pairs
    jumps: float  # share of those pairs whose areas differ more than AREA_JUMP-fold
    wander: float  # median in-plane shift of its sections' centroid per mm of z
    score: float  # length times its tube-likeness factors: the most aorta-like component has the highest


def _describe(labels: np.ndarray, label: int, box: tuple[slice, ...], spacing: np.ndarray) -> _Candidate:
    """How aorta-like component ``label`` (bounding box ``box``) is: long in z, with compact axial sections
    8-100 mm across, several times longer than wide, whose area and centroid change smoothly."""
    sub = labels[box] == label
    dx, dy, dz = (float(v) for v in spacing)
    nz = sub.shape[2]
    i, j, k = np.nonzero(sub)
    count = np.bincount(k, minlength=nz).astype(np.float64)  # > 0 in every slice: the component is connected
    area = count * dx * dy
    if nz > 1:
        ratio = np.maximum(area[1:], area[:-1]) / np.maximum(np.minimum(area[1:], area[:-1]), 1e-9)
        jumps = float(np.mean(ratio > AREA_JUMP))
        ci = np.bincount(k, weights=i, minlength=nz) / count
        cj = np.bincount(k, weights=j, minlength=nz) / count
        wander = float(np.median(np.hypot(np.diff(ci) * dx, np.diff(cj) * dy))) / dz
    else:
        jumps = wander = 0.0
    picks = np.unique(np.rint(np.linspace(0, nz - 1, min(nz, SOLIDITY_SLICES))).astype(int))
    solidity = np.array([_solidity(sub[:, :, kk], dx, dy) for kk in picks])
    diameter = float(np.median(2.0 * np.sqrt(area / np.pi)))
    length = nz * dz
    size_factor = 1.0 if AXIAL_SIZE_MM[0] <= diameter <= AXIAL_SIZE_MM[1] else 0.3
    elongation = min(1.0, length / max(diameter, 1e-9) / MIN_ELONGATION)  # a ball is no vessel
    smooth = (1.0 - 0.5 * jumps) * min(1.0, MAX_WANDER / max(wander, 1e-9))
    score = length * float(solidity.mean()) * size_factor * elongation * smooth
    return _Candidate(
        label=label,
        box=box,
        volume_mm3=float(count.sum()) * dx * dy * dz,
        length_mm=length,
        width_mm=max(sub.shape[0] * dx, sub.shape[1] * dy),
        solidity_mean=float(solidity.mean()),
        solidity_median=float(np.median(solidity)),
        diameter_mm=diameter,
        pairs=nz - 1,
        jumps=jumps,
        wander=wander,
        score=score,
    )


def _component(
    prob: np.ndarray, level: float, spacing: np.ndarray, min_length_mm: float
) -> tuple[np.ndarray, tuple[slice, ...], _Candidate] | None:
    """The most aorta-like 26-connected component of ``prob >= level`` among those of at least
    MIN_VOLUME_MM3 (and, where any is, at least ``min_length_mm`` long in z), holes filled per axial slice,
    as a mask of its bounding box, that box and its description; None when there is no such component.

    The aorta is the longest of them, tube-like; of near ties the larger wins (not the largest overall: a
    network's false positive on a hip bone may well be larger than a weakly seen aorta)."""
    labels, n = ndimage.label(prob >= level, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel()).astype(np.float64) * float(np.prod(spacing))
    sizes[0] = 0.0
    big = np.nonzero(sizes >= MIN_VOLUME_MM3)[0]
    if len(big) == 0:
        return None
    boxes = ndimage.find_objects(labels)
    lengths = np.array([(boxes[b - 1][2].stop - boxes[b - 1][2].start) * float(spacing[2]) for b in big])
    long = lengths >= min_length_mm
    pool, pool_lengths = (big[long], lengths[long]) if long.any() else (big, lengths)
    order = np.lexsort((-sizes[pool], -pool_lengths))[:MAX_CANDIDATES]  # the longest, then the largest
    candidates = [_describe(labels, int(b), boxes[b - 1], spacing) for b in pool[order]]
    top = max(c.score for c in candidates)
    chosen = max((c for c in candidates if c.score >= NEAR_TIE * top), key=lambda c: c.volume_mm3)
    comp = labels[chosen.box] == chosen.label
    for k in range(comp.shape[2]):
        comp[:, :, k] = ndimage.binary_fill_holes(comp[:, :, k])
    return comp, chosen.box, chosen


def _below_bifurcation(comp: np.ndarray, spacing: np.ndarray) -> int:
    """How many caudal slices of ``comp`` (a component's box) lie below the aortic bifurcation: the run of axial
    sections of two or more pieces of at least MIN_PIECE_MM2 (the common iliac arteries) that begins within
    BIFURCATION_START_MM of the component's caudal end and goes on, with gaps of at most one slice, up to the
    crotch; 0 when there is no such run of at least two slices (the iliacs not segmented, or not in the scan).
    A section with a piece as wide as an aneurysm (AAA_PIECE_MM across) ends the run below it: a sac lying
    beside another vessel is never cut off as an iliac artery."""
    nk = comp.shape[2]
    px_mm2 = float(spacing[0] * spacing[1])
    start_k = int(np.ceil(BIFURCATION_START_MM / float(spacing[2])))

    def pieces(k: int) -> tuple[bool, bool]:
        """(two or more pieces, a piece as wide as an aneurysm)"""
        labels, n = ndimage.label(comp[:, :, k], structure=_RING)
        areas = np.bincount(labels.ravel())[1:] * px_mm2
        wide = bool(n) and float(areas.max()) >= np.pi * (AAA_PIECE_MM / 2) ** 2
        return int((areas >= MIN_PIECE_MM2).sum()) >= 2, wide

    first = None
    for k in range(min(start_k, nk)):
        split, wide = pieces(k)
        if wide:
            return 0
        if split:
            first = k
            break
    if first is None:
        return 0
    top, k, count = first, first + 1, 1
    while k < nk // 2 and k - top <= 2:  # the iliacs lie in the caudal half; a gap of one slice is bridged
        split, wide = pieces(k)
        if wide:
            break
        if split:
            top, count = k, count + 1
        k += 1
    return top + 1 if count >= 2 else 0


def _implausible_shape(c: _Candidate, z_range_mm: float) -> str:
    """Why the chosen component cannot be an aorta, from its shape, or "" (conservative: a tube of any
    calibre or tilt, an aneurysm and a tortuous vessel all pass)."""
    head = "the segmented region is implausible for an aorta:"
    if c.solidity_median < MIN_AXIAL_SOLIDITY:
        return f"{head} its axial cross-sections are crab-like or fragmented (median solidity {c.solidity_median:.2f})"
    if c.pairs >= 4 and c.jumps > MAX_JUMP_SHARE:
        return (
            f"{head} its cross-sectional area changes more than {AREA_JUMP:.0f}-fold between neighbouring slices "
            f"over {100 * c.jumps:.0f}% of its length"
        )
    if c.length_mm < SHORT_SHARE * z_range_mm and c.width_mm > c.length_mm:
        return (
            f"{head} it is {c.length_mm:.0f} mm long and {c.width_mm:.0f} mm wide, in a scan covering "
            f"{z_range_mm:.0f} mm below the lungs"
        )
    return ""


def _component_box(prob: np.ndarray, mask: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The component's probability with its 1-voxel ring (the partial-volume edge) and its filled holes
    (as 1), zero elsewhere, on the component's bounding box grown by one voxel; and that box's start."""
    box = ndimage.find_objects(mask.astype(np.int8))[0]
    lo = np.maximum(np.array([s.start for s in box]) - 1, 0)
    hi = np.minimum(np.array([s.stop for s in box]) + 1, mask.shape)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    near = ndimage.binary_dilation(mask[sub], structure=np.ones((3, 3, 3), dtype=bool))
    field = np.where(near, prob[sub], np.float32(0.0)).astype(np.float32)
    field[mask[sub] & (field < level)] = 1.0  # the holes filled in the mask count as vessel
    return field, lo


def component_field(prob: np.ndarray, mask: np.ndarray, level: float = 0.5) -> np.ndarray:
    """What the cuts of :func:`measure_aorta` see: ``prob`` on the measured component (``mask``) and its
    1-voxel partial-volume ring, its filled holes as 1, zero elsewhere (the ``level`` contour of a plane
    sampled from it is the outline that was measured)."""
    out = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any():
        return out
    field, lo = _component_box(np.nan_to_num(np.asarray(prob, dtype=np.float32)), mask, level)
    out[tuple(slice(int(a), int(a) + n) for a, n in zip(lo, field.shape))] = field
    return out


def _extend_linearly(x: np.ndarray, pad: int, fit: int) -> np.ndarray:
    """``x`` (n, d) with ``pad`` samples added at each end, continuing a straight line fitted to the
    ``fit`` samples nearest that end (so that smoothing does not bend a tilted centreline at its ends)."""
    n = len(x)
    fit = max(2, min(fit, n))
    t = np.arange(fit, dtype=np.float64)
    out = [x]
    for end in (0, 1):
        seg = x[:fit] if end == 0 else x[n - fit :]
        slope, intercept = np.polyfit(t, seg, 1)  # (d,), (d,)
        if end == 0:
            ext = intercept[None, :] + slope[None, :] * np.arange(-pad, 0)[:, None]
            out.insert(0, ext)
        else:
            ext = intercept[None, :] + slope[None, :] * (fit - 1 + np.arange(1, pad + 1))[:, None]
            out.append(ext)
    return np.concatenate(out, axis=0)


def _centreline(
    comp: np.ndarray, offset: np.ndarray, spacing: np.ndarray, origin: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axial slice of the component: smoothed centroid (n, 3) and in-plane radius (n,) in world mm,
    with the slices' z indices (n,). End slices where the vessel leaves the grid through its side are left
    out (their centroid is pulled inwards)."""
    i, j, k = np.nonzero(comp)
    nk = comp.shape[2]
    count = np.bincount(k, minlength=nk).astype(np.float64)
    present = count > 0  # contiguous: the component is connected
    gi, gj = i + int(offset[0]), j + int(offset[1])
    side = (gi == 0) | (gi == shape[0] - 1) | (gj == 0) | (gj == shape[1] - 1)
    cut = np.bincount(k[side], minlength=nk) > 0
    inner = np.nonzero(present & ~cut)[0]
    if len(inner):  # trim the ends only: a slice inside the run keeps its place
        present[: inner[0]] = False
        present[inner[-1] + 1 :] = False
        keep = present[k]
        i, j, k = i[keep], j[keep], k[keep]
    ci = np.bincount(k, weights=i, minlength=nk)[present] / count[present]
    cj = np.bincount(k, weights=j, minlength=nk)[present] / count[present]
    ks = np.nonzero(present)[0]
    raw = np.stack([ci, cj, ks.astype(np.float64)], axis=1) + offset[None, :]
    world = origin[None, :] + raw * spacing[None, :]
    # radius: farthest voxel centre from its slice's centroid, plus half a voxel diagonal
    slot = np.searchsorted(ks, k)
    d = np.hypot((i + offset[0] - raw[slot, 0]) * spacing[0], (j + offset[1] - raw[slot, 1]) * spacing[1])
    radius = np.zeros(len(ks))
    np.maximum.at(radius, slot, d)
    radius += 0.5 * float(np.hypot(spacing[0], spacing[1]))
    n = len(ks)
    if n >= 3:
        sigma = SMOOTH_SIGMA_MM / spacing[2]
        pad = int(np.ceil(4 * sigma)) + 1
        ext = _extend_linearly(world[:, :2], pad, int(round(2 * sigma)) + 1)
        world[:, :2] = ndimage.gaussian_filter1d(ext, sigma, axis=0, mode="nearest")[pad : pad + n]
    return world, radius, ks


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Points every ``step`` mm (or less) of arc length along a polyline, their unit tangents and the
    polyline's length."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(s[-1])
    if len(points) < 2 or length <= 0:
        return points[:1].copy(), np.array([[0.0, 0.0, 1.0]]), 0.0
    m = int(np.ceil(length / step)) + 1
    t = np.linspace(0.0, length, m)
    out = np.stack([np.interp(t, s, points[:, a]) for a in range(3)], axis=1)
    tangent = np.gradient(out, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    return out, tangent, length


def plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane perpendicular to ``normal``: the first as close to +x (patient
    left) as possible, the second ``normal x first`` (close to +y, anterior, for an axial plane)."""
    ref = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = ref - np.dot(ref, normal) * normal
    e1 /= np.linalg.norm(e1)
    n = normal
    e2 = np.array([n[1] * e1[2] - n[2] * e1[1], n[2] * e1[0] - n[0] * e1[2], n[0] * e1[1] - n[1] * e1[0]])
    return e1, e2  # normal x e1, written out (np.cross costs more than the rest of this)


def sample_plane(
    volume: np.ndarray,
    affine: np.ndarray,
    centre_mm: np.ndarray,
    normal: np.ndarray,
    half_mm: float,
    *,
    pixel_mm: float = PIXEL_MM,
    cval: float = float("nan"),
) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` resampled (trilinear) on the square plane through ``centre_mm`` perpendicular to ``normal``.

    Returns the pixel positions ``t`` (m,) in mm from the centre, the same along both plane axes, and the
    values (m, m) indexed ``[v, u]``: world = centre + u * e1 + v * e2 with ``e1, e2 = plane_basis(normal)``.
    Pixels outside the grid get ``cval``.
    """
    spacing, origin = _grid(affine)
    normal = np.asarray(normal, dtype=np.float64)
    normal = normal / np.linalg.norm(normal)
    e1, e2 = plane_basis(normal)
    n = int(np.ceil(half_mm / pixel_mm))
    t = np.arange(-n, n + 1) * pixel_mm
    centre = np.asarray(centre_mm, dtype=np.float64)
    world = centre[:, None, None] + e1[:, None, None] * t[None, None, :] + e2[:, None, None] * t[None, :, None]
    vox = (world - origin[:, None, None]) / spacing[:, None, None]
    hi = np.array(volume.shape, dtype=np.float64)[:, None, None] - 1
    outside = np.any((vox < -_EPS) | (vox > hi + _EPS), axis=0)
    np.clip(vox, 0.0, hi, out=vox)
    values = ndimage.map_coordinates(
        np.asarray(volume, dtype=np.float32), vox.reshape(3, -1), order=1, mode="nearest", prefilter=False
    ).reshape(outside.shape)
    values[outside] = cval
    return t, values


def _smooth_contour(line: np.ndarray) -> np.ndarray:
    """A closed contour line (n, 2) resampled by arc length and low-passed (its first :data:`CONTOUR_HARMONICS`
    Fourier harmonics kept): the pixel staircase of a hard-edged map goes, an ellipse or a sac's outline stays.
    An open or very short line is returned as it is."""
    if len(line) < 8 or np.any(np.abs(line[0] - line[-1]) > 1e-8 + 1e-5 * np.abs(line[-1])):  # np.allclose's test
        return line
    seg = np.hypot(*np.diff(line, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return line
    u = np.linspace(0.0, s[-1], CONTOUR_POINTS, endpoint=False)
    z = np.fft.fft(np.interp(u, s, line[:, 0]) + 1j * np.interp(u, s, line[:, 1]))
    z[np.abs(np.fft.fftfreq(CONTOUR_POINTS, 1.0 / CONTOUR_POINTS)) > CONTOUR_HARMONICS] = 0.0
    w = np.fft.ifft(z)
    return np.stack([w.real, w.imag], axis=1)


def _feret(points: np.ndarray) -> tuple[float, int, int]:
    """Largest distance between two of ``points`` (n, 2): the maximum Feret diameter, and the two points."""
    idx = np.arange(len(points))
    if len(points) > FERET_ALL_PAIRS:  # many points: only the convex hull's can be the farthest pair
        try:
            idx = ConvexHull(points).vertices
        except QhullError:  # degenerate (collinear): every point is a candidate
            pass
    if len(idx) < 2:
        return 0.0, int(idx[0]), int(idx[0])
    dist = pdist(points[idx])  # pairs (0, 1), (0, 2), ... (0, n-1), (1, 2), ...
    best = int(np.argmax(dist))
    row_ends = np.cumsum(np.arange(len(idx) - 1, 0, -1))  # where each first point's pairs end
    a = int(np.searchsorted(row_ends, best, side="right"))
    b = best - (int(row_ends[a - 1]) if a else 0) + a + 1
    return float(dist[best]), int(idx[a]), int(idx[b])


def _grow(region: np.ndarray) -> np.ndarray:
    """``region`` dilated by one pixel (8-connectivity); it must not touch the array's border."""
    grown = region.copy()
    grown[1:] |= region[:-1]
    grown[:-1] |= region[1:]
    out = grown.copy()
    out[:, 1:] |= grown[:, :-1]
    out[:, :-1] |= grown[:, 1:]
    return out


class _Sampler:
    """Samples the component's probability on planes (world mm) through the grid."""

    def __init__(
        self, field: np.ndarray, box_start: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray, origin: np.ndarray
    ) -> None:
        self.field = field  # probability restricted to the component and its 1-voxel ring, on a box
        self.start = box_start.astype(np.float64)
        self.box_hi = np.array(field.shape, dtype=np.float64) - 1
        self.grid_hi = np.array(shape, dtype=np.float64) - 1
        self.spacing = spacing
        self.origin = origin

    def plane(
        self, centre: np.ndarray, e1: np.ndarray, e2: np.ndarray, half: float, pixel: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel positions (m,), values (m, m) indexed [v, u], and the pixels outside the scanned grid."""
        n = int(np.ceil(half / pixel))
        t = np.arange(-n, n + 1) * pixel
        world = (
            centre[:, None, None] + e1[:, None, None] * t[None, None, :] + e2[:, None, None] * t[None, :, None]
        )  # (3, v, u)
        vox = (world - self.origin[:, None, None]) / self.spacing[:, None, None]
        outside = np.any((vox < -_EPS) | (vox > self.grid_hi[:, None, None] + _EPS), axis=0)
        vox -= self.start[:, None, None]
        off_box = np.any((vox < -_EPS) | (vox > self.box_hi[:, None, None] + _EPS), axis=0)
        np.clip(vox, 0.0, self.box_hi[:, None, None], out=vox)
        values = ndimage.map_coordinates(self.field, vox.reshape(3, -1), order=1, mode="nearest", prefilter=False)
        values = values.reshape(outside.shape)
        values[off_box] = 0.0
        return t, values, outside


@dataclass
class _Region:
    """The region of one cut that holds the centreline: plane axes, pixel positions, sampled values."""

    e1: np.ndarray
    e2: np.ndarray
    t: np.ndarray
    values: np.ndarray
    region: np.ndarray  # bool (m, m): the region, indexed [v, u]


def _region(
    sampler: _Sampler, centre: np.ndarray, normal: np.ndarray, half: float, level: float, pixel: float
) -> _Region | str:
    """The cut's region holding the centre (or nearest to it), or why there is none: "empty", "open" (it
    reaches the plane's border) or "truncated" (it reaches the scanned grid's border)."""
    e1, e2 = plane_basis(normal)
    t, values, outside = sampler.plane(centre, e1, e2, half, pixel)
    region = _centre_region(values >= level)
    if region is None:
        return "empty"
    if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
        return "open"
    if (_grow(region) & outside).any():
        return "truncated"
    return _Region(e1, e2, t, values, region)


def _body(region: np.ndarray, pixel: float) -> np.ndarray:
    """The cut's region without what hangs on it by a narrow neck: a vein, a crus or a loop of bowel that
    touches the aorta and took the segmentation with it. The region is opened (eroded, then dilated) by a
    disk of radius :data:`NECK_SHARE` of its largest inscribed circle's (between :data:`NECK_MIN_MM` and
    :data:`NECK_MAX_MM`): a strip narrower than the disk goes. Where the eroded region is in pieces (two
    vessels side by side, touching), each pixel belongs to the nearest piece, and the largest share is kept.
    Of what was taken away, each piece that reaches no more than :data:`RIM_MM` beyond the body (a rim of
    wall or thrombus along its edge) is given back. A round or oval section, with or without its thrombus,
    is its own opening; the region is returned as it is when the disk fits nowhere."""
    vv, uu = np.nonzero(region)
    if not len(vv):
        return region
    k = int(np.ceil(NECK_MAX_MM / pixel)) + 2
    box = (slice(int(vv.min()), int(vv.max()) + 1), slice(int(uu.min()), int(uu.max()) + 1))
    padded = np.pad(region[box], k)
    inside = ndimage.distance_transform_edt(padded, sampling=pixel)
    radius = float(np.clip(NECK_SHARE * inside.max(), NECK_MIN_MM, NECK_MAX_MM))
    core = inside > radius
    if not core.any():
        return region
    pieces, n = ndimage.label(core, structure=_RING)
    if n > 1:
        distance, nearest = ndimage.distance_transform_edt(~core, sampling=pixel, return_indices=True)
        owner = pieces[nearest[0], nearest[1]]
        kept = int(np.argmax(np.bincount(owner[(distance <= radius) & padded], minlength=n + 1)[1:])) + 1
        distance = ndimage.distance_transform_edt(pieces != kept, sampling=pixel)  # to the kept piece only
        body = (distance <= radius) & padded & (owner == kept)
    else:
        distance = ndimage.distance_transform_edt(~core, sampling=pixel)
        body = (distance <= radius) & padded
    labels, n = ndimage.label(body, structure=_RING)
    if n > 1:
        body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    rest, n = ndimage.label(padded & ~body, structure=_RING)
    if n:  # a rim along the body's edge (a thrombus the network saw in part) is vessel: it stays
        beyond = np.asarray(ndimage.maximum(distance, rest, np.arange(1, n + 1))) - radius  # beyond the body's disks
        body |= np.concatenate([[False], beyond <= RIM_MM])[rest]
    out = np.zeros_like(region)
    out[box] = body[k:-k, k:-k]
    return out


def _centre_region(fg: np.ndarray) -> np.ndarray | None:
    """The piece of a square plane's foreground holding its centre pixel (or nearest to it); None if empty."""
    labels, n = ndimage.label(fg, structure=_RING)
    if n == 0:
        return None
    c = fg.shape[0] // 2
    lab = labels[c, c]
    if lab == 0:  # the centreline lies outside the vessel here (a bend, a bifurcation): the nearest region
        vv, uu = np.nonzero(fg)
        near = int(np.argmin((vv - c) ** 2 + (uu - c) ** 2))
        lab = labels[vv[near], uu[near]]
    return labels == lab


def measured_outline(values: np.ndarray, pixel_mm: float = PIXEL_MM, level: float = 0.5) -> np.ndarray:
    """What a cut measures of a square plane sampled round a centreline point (``values`` from
    :func:`component_field`, odd side, ``pixel_mm`` pixels): the values on the region holding the centre,
    without what hangs on it by a narrow neck, and on its 1-pixel ring; zero elsewhere. Its ``level``
    contour is the outline the caliper spans."""
    values = np.asarray(values, dtype=np.float64)
    region = _centre_region(values >= level)
    if region is None:
        return np.zeros_like(values)
    return np.where(_grow(np.pad(_body(region, pixel_mm), 1))[1:-1, 1:-1], values, 0.0)


def _cut(r: _Region, centre: np.ndarray, level: float) -> tuple[float, np.ndarray] | None:
    """The maximum Feret diameter of the ``level`` contour (sub-pixel, smoothed) of the region's body (what
    hangs on it by a narrow neck left out) and its caliper ends (2, 3)."""
    import contourpy

    grown = _grow(_body(r.region, float(r.t[1] - r.t[0])))
    vv, uu = np.nonzero(grown)  # the contour is traced on the grown region's box and its ring of zeros
    v = slice(max(int(vv.min()) - 1, 0), int(vv.max()) + 2)
    u = slice(max(int(uu.min()) - 1, 0), int(uu.max()) + 2)
    field = np.where(grown[v, u], r.values[v, u], 0.0)  # inner contours (holes) lie inside the hull: harmless
    lines = contourpy.contour_generator(r.t[u], r.t[v], field, line_type=contourpy.LineType.Separate).lines(level)
    lines = [_smooth_contour(ln) for ln in lines if len(ln)]
    pts = np.concatenate(lines, axis=0) if lines else np.zeros((0, 2))
    if len(pts) < 2:
        return None
    diameter, a, b = _feret(pts)
    ends = centre[None, :] + pts[[a, b], 0:1] * r.e1[None, :] + pts[[a, b], 1:2] * r.e2[None, :]
    return diameter, ends


class _Planes:
    """Cuts along a centreline, each plane sized to the vessel there (wider on demand, up to +-75 mm)."""

    def __init__(self, sampler: _Sampler, slice_z: np.ndarray, radius: np.ndarray, level: float) -> None:
        self.sampler, self.slice_z, self.radius, self.level = sampler, slice_z, radius, level

    def region(self, centre: np.ndarray, normal: np.ndarray, pixel: float, reach: float = np.nan) -> _Region | str:
        """The cut's region; ``reach``: how far from the centre it went in an earlier pass, if known."""
        if np.isfinite(reach):
            half = float(np.clip(1.1 * reach + 3.0, MIN_HALF_WIDTH_MM, MAX_HALF_WIDTH_MM))
        else:  # the widest axial radius within 30 mm, with room for a tilt
            nearby = np.abs(self.slice_z - centre[2]) <= 30.0
            local = float(self.radius[nearby].max()) if nearby.any() else float(self.radius.max())
            half = float(np.clip(1.2 * local + 4.0, MIN_HALF_WIDTH_MM, MAX_HALF_WIDTH_MM))
        result = _region(self.sampler, centre, normal, half, self.level, pixel)
        if result == "open" and half < MAX_HALF_WIDTH_MM:
            result = _region(self.sampler, centre, normal, MAX_HALF_WIDTH_MM, self.level, pixel)
        return result


def _refine(
    planes: _Planes, points: np.ndarray, tangents: np.ndarray, reach: np.ndarray, step: float, measure: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centreline moved to the centroids of its perpendicular cuts (where whole), then smoothed (the
    centroid of an axial slice is pulled off the axis where a tilted vessel widens or narrows); how far
    each cut's region reached from the new centre (NaN where unknown); and, with ``measure``, each cut's
    diameter on these coarser planes (NaN where unknown)."""
    moved = points.copy()
    reach_out = np.full(len(points), np.nan)
    diameters = np.full(len(points), np.nan)
    for i, (centre, normal) in enumerate(zip(points, tangents)):
        r = planes.region(centre, normal, REFINE_PIXEL_MM, reach[i])
        if isinstance(r, str):
            continue
        if measure and (result := _cut(r, centre, planes.level)) is not None:
            diameters[i] = result[0]
        vv, uu = np.nonzero(r.region)
        cu, cv = r.t[uu].mean(), r.t[vv].mean()
        moved[i] = centre + cu * r.e1 + cv * r.e2
        reach_out[i] = float(np.sqrt(np.max((r.t[uu] - cu) ** 2 + (r.t[vv] - cv) ** 2))) + REFINE_PIXEL_MM
    if len(moved) >= 3:
        sigma = SMOOTH_SIGMA_MM / step
        pad = int(np.ceil(4 * sigma)) + 1
        ext = _extend_linearly(moved, pad, int(round(2 * sigma)) + 1)
        moved = ndimage.gaussian_filter1d(ext, sigma, axis=0, mode="nearest")[pad : pad + len(moved)]
    return moved, reach_out, diameters


def _counted(points: np.ndarray, valid_z: np.ndarray | None, sampler: _Sampler) -> np.ndarray:
    """Whether each centreline point lies in a slice that ``valid_z`` allows (all when None)."""
    if valid_z is None:
        return np.ones(len(points), dtype=bool)
    k = np.rint((points[:, 2] - sampler.origin[2]) / sampler.spacing[2]).astype(int)
    return np.asarray(valid_z, dtype=bool)[np.clip(k, 0, int(sampler.grid_hi[2]))]


@dataclass
class _Cuts:
    """The cuts along one centreline."""

    centreline: np.ndarray
    sections: list[Section]
    reaches: list[float]  # how far each section's region reached (for the cut at the maximum)
    missed: int  # counted cuts that could not be measured
    counted: int  # cuts at counted levels
    largest: float  # the largest counted diameter (-inf when none)


def _cut_along(
    planes: _Planes, centreline: np.ndarray, tangents: np.ndarray, reach: np.ndarray, valid_z: np.ndarray | None
) -> _Cuts:
    """Every cut perpendicular to ``centreline`` (PIXEL_MM pixels), whether its level counts for the maximum."""
    sections: list[Section] = []
    reaches: list[float] = []
    missed = counted_total = 0
    for i, (centre, normal, counted) in enumerate(
        zip(centreline, tangents, _counted(centreline, valid_z, planes.sampler).tolist())
    ):
        counted_total += counted
        r = planes.region(centre, normal, PIXEL_MM, reach[i])
        result = None if isinstance(r, str) else _cut(r, centre, planes.level)
        if result is None:
            missed += counted
            continue
        diameter, ends = result
        sections.append(Section(centre.copy(), normal.copy(), diameter, ends, counted))
        reaches.append(float(reach[i]))
    largest = max((s.diameter_mm for s in sections if s.counted), default=-np.inf)
    return _Cuts(centreline, sections, reaches, missed, counted_total, largest)


def _carry(values: np.ndarray, m: int) -> np.ndarray:
    """``values`` along a centreline carried to one resampled to ``m`` points (same ends), NaN kept."""
    if len(values) == m:
        return values
    if len(values) < 2:
        return np.full(m, values[0] if len(values) else np.nan)
    pos = np.linspace(0.0, len(values) - 1.0, m)
    return values[np.clip(np.rint(pos).astype(int), 0, len(values) - 1)]


def measure_aorta(
    prob: np.ndarray,
    affine: np.ndarray,
    *,
    level: float = 0.5,
    step_mm: float = 2.0,
    valid_z: np.ndarray | None = None,
    min_length_mm: float = 40.0,
) -> Measurement:
    """The maximum outer-to-outer diameter of the aorta in ``prob`` (X, Y, Z), perpendicular to its centreline.

    ``affine`` maps voxel indices to RAS world mm and must be axis-aligned with a positive diagonal.
    ``valid_z`` (bool, length Z) marks the axial levels whose cuts count for the maximum (None: all); a cut
    counts when its centreline point lies in an allowed slice. Cuts whose region reaches the plane's border
    or the scanned grid's are not measured. ``step_mm`` (0.1 to 2 mm) is the distance between cuts.
    Raises ValueError for arguments of the wrong shape or range.
    """
    prob = np.asarray(prob)
    if prob.ndim != 3 or min(prob.shape) < 1:
        raise ValueError(f"prob must be a 3D array, not shape {prob.shape}")
    spacing, origin = _grid(affine)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level!r}")
    if not 0.1 <= step_mm <= MAX_STEP_MM:
        raise ValueError(f"step_mm must lie between 0.1 and {MAX_STEP_MM} mm, not {step_mm!r}")
    if not np.isfinite(min_length_mm) or min_length_mm < 0:
        raise ValueError(f"min_length_mm must be a non-negative number, not {min_length_mm!r}")
    if valid_z is not None:
        valid_z = np.asarray(valid_z)
        if valid_z.dtype != bool or valid_z.shape != (prob.shape[2],):
            raise ValueError(
                f"valid_z must be a bool array of length {prob.shape[2]}, not {valid_z.dtype} {valid_z.shape}"
            )
    prob = np.nan_to_num(prob.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)

    found = _component(prob, level, spacing, min_length_mm)
    if found is None:
        return _not_found(prob.shape, "no aorta found in the scanned range")
    comp, box, candidate = found
    levels = valid_z
    below = _below_bifurcation(comp, spacing)
    if below:  # the iliac arteries are not aorta: the component is measured from its bifurcation up
        comp = comp.copy()
        comp[:, :, :below] = False
        labels, n = ndimage.label(comp, structure=np.ones((3, 3, 3), dtype=bool))
        comp = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])) if n > 1 else comp
        bifurcation_z = origin[2] + (box[2].start + below - 0.5) * spacing[2]
        allowed = np.ones(prob.shape[2], dtype=bool) if valid_z is None else valid_z.copy()
        allowed[origin[2] + np.arange(prob.shape[2]) * spacing[2] <= bifurcation_z + BIFURCATION_MARGIN_MM] = False
        valid_z = allowed
    mask = np.zeros(prob.shape, dtype=bool)
    mask[box] = comp
    start = np.array([s.start for s in box])

    slice_centres, radius, ks = _centreline(comp, start.astype(np.float64), spacing, origin, prob.shape)
    centreline, tangents, length = _resample(slice_centres, step_mm)
    n_slices = len(ks)
    extent = length * n_slices / (n_slices - 1) if n_slices > 1 else float(spacing[2])  # end slices' halves
    if extent < min_length_mm:
        return Measurement(
            found=True,
            measurable=False,
            reason=f"the aorta found is only {extent:.0f} mm long: too short to measure",
            max_diameter_mm=None,
            max_section=None,
            centreline_mm=centreline,
            sections=(),
            mask=mask,
            warnings=(),
        )
    abdominal = np.nonzero(levels)[0] if levels is not None and levels.any() else np.array([0, prob.shape[2] - 1])
    problem = _implausible_shape(candidate, float(abdominal[-1] - abdominal[0] + 1) * float(spacing[2]))
    if problem:
        return Measurement(True, False, problem, None, None, centreline, (), mask, ())

    field, lo = _component_box(prob, mask, level)
    planes = _Planes(_Sampler(field, lo, prob.shape, spacing, origin), origin[2] + ks * spacing[2], radius, level)
    # the refinement gone astray: where a wide, short sac leads it, each pass tilts the cuts further and the
    # largest grows (a cut leaning off the perpendicular is longer across a tube, never shorter); when the
    # refined maximum exceeds that of the cuts along the axial centroids (measured on the first pass's
    # coarser planes) by more than ASTRAY_MM, those cuts are measured too and the smaller maximum kept
    reach = np.full(len(centreline), np.nan)
    axial_line, axial_tangents, first_max = centreline, tangents, -np.inf
    for p in range(REFINE_PASSES):
        moved, reach, diameters = _refine(planes, centreline, tangents, reach, step_mm, measure=p == 0)
        if p == 0:
            counted_first = diameters[_counted(centreline, valid_z, planes.sampler)]
            first_max = float(np.nanmax(counted_first)) if np.isfinite(counted_first).any() else -np.inf
        centreline, tangents, length = _resample(moved, step_mm)
        reach = _carry(reach, len(centreline))
    refined = _cut_along(planes, centreline, tangents, reach, valid_z)
    if REFINE_PASSES and first_max < refined.largest - ASTRAY_MM:
        axial = _cut_along(planes, axial_line, axial_tangents, np.full(len(axial_line), np.nan), valid_z)
        if axial.largest < refined.largest:
            refined = axial
    sections, reaches, missed, counted_total = refined.sections, refined.reaches, refined.missed, refined.counted
    centreline = refined.centreline

    warnings: list[str] = []

    def unmeasurable(reason: str) -> Measurement:
        return Measurement(True, False, reason, None, None, centreline, tuple(sections), mask, tuple(warnings))

    valid = [s for s in sections if s.counted]
    if not valid:
        if counted_total == 0:
            return unmeasurable("the aorta found does not reach the levels where the diameter is measured")
        return unmeasurable("no cross-section of the aorta could be measured within the scanned range")
    best_at = max((i for i, s in enumerate(sections) if s.counted), key=lambda i: sections[i].diameter_mm)
    best = sections[best_at]
    if best.diameter_mm > MAX_PLAUSIBLE_MM:
        return unmeasurable(f"the segmented aorta is implausible (largest cross-section {best.diameter_mm:.0f} mm)")
    if best.diameter_mm < MIN_PLAUSIBLE_MM:
        return unmeasurable(
            f"the segmented aorta is implausibly thin (largest cross-section {best.diameter_mm:.1f} mm)"
        )
    cut = planes.region(best.centre_mm, best.normal, PIXEL_MM, reaches[best_at])
    solidity = _solidity(cut.region, PIXEL_MM, PIXEL_MM) if not isinstance(cut, str) else 1.0
    if solidity < MIN_CUT_SOLIDITY:
        return unmeasurable(
            "the segmented region is implausible for an aorta: its cross-section at the maximum is crab-like or "
            f"fragmented (solidity {solidity:.2f})"
        )
    z_first, z_last = origin[2], origin[2] + (prob.shape[2] - 1) * spacing[2]
    if min(best.centre_mm[2] - z_first, z_last - best.centre_mm[2]) <= EDGE_MM:
        warnings.append("the maximum is at the edge of the scanned range: the aorta may be wider outside it")
    if missed > 0.5 * counted_total:
        warnings.append(
            f"only {counted_total - missed} of {counted_total} cross-sections could be measured: "
            "the maximum may have been missed"
        )
    return Measurement(
        found=True,
        measurable=True,
        reason="",
        max_diameter_mm=best.diameter_mm,
        max_section=best,
        centreline_mm=centreline,
        sections=tuple(sections),
        mask=mask,
        warnings=tuple(warnings),
    )
