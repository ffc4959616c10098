"""What a synthetic patient looks like: :func:`draw_patient` draws one :class:`Patient` from ``rng``, before any
scanner is involved (simulations.scanner samples it, simulations.synth composes the two).

A patient's :class:`Anatomy` (body, spine, kidneys, bowel, :class:`Aorta` and its unlabelled neighbours: the
inferior vena cava and iliac veins, the left renal vein) is a set of continuous structures in DICOM patient
coordinates (LPS, mm: +x patient left, +y posterior, +z head), as functions of the height ``h`` in the patient's
frame (patient z = z_lo_mm + h; the aortic taper and the kidneys are placed on h = 0..length_mm, the scan covers
h = scan_lo_mm..scan_hi_mm). Aortic diameters follow the usual adult infrarenal range (about 17 mm in women, 19 mm
in men) and the AAA definition (outer-wall diameter >= 30 mm). The order of the draws is fixed: the same ``rng``
state gives the same patient, whatever scanner later samples it.

The generator teaches anatomy rather than one renderer's style (in the spirit of SynthSeg): every patient has its
own tissue HU (:class:`Tissues`), thrombus from none to 90% of the sac (often a crescent), from no calcification to
rings of it, a scanned length of 200-320 mm with the bifurcation 15-110 mm above its caudal end, sacs that grow
backward beside the vertebral body as well as forward (:attr:`Aorta.sink`), intervertebral discs of soft tissue right
behind the aorta, and neighbours that may touch the aorta (IVC, left renal vein, bowel; thin patients with little
retroperitoneal fat). Only the
aorta is ever labelled, and the truth is always its outer wall. Draws added for this come after every earlier
draw, so the fields drawn before keep their values for a seed.

So that a network learns what is not aorta, every patient also has unlabelled :class:`Distractors`, drawn after all
of the above: the pelvis at the caudal end of the scan (iliac wings from crests near the bifurcation, sacral alae,
in the scans reaching low enough acetabula and femoral heads; a bladder in about two patients in three), and at the
head end the liver (right, its left lobe across the midline), the spleen (left posterolateral) and, in the scans
reaching high enough, the lung bases (posterolateral air growing upwards, with vessels).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

KINDS = ("normal", "ectatic", "aneurysm")

_AGE = {"aneurysm": (72, 7), "ectatic": (68, 9), "normal": (58, 12)}  # years: mean, SD (clipped to 35-90)


# The patient is a set of continuous structures in mm; ``h`` is the height in the patient's frame (patient
# z = z_lo_mm + h; the scan covers Anatomy.scan_range). Every field below is drawn by draw_patient, before any
# scanner is involved.
@dataclass(frozen=True)
class Wander:
    """Smooth zero-mean displacement (mm) along height h: two weighted sinusoids, peak about ``amplitude``."""

    amplitude: float
    wavenumbers: tuple[float, float]  # rad / mm
    phases: tuple[float, float]
    weights: tuple[float, float]  # sum to 1

    def __call__(self, h: float | np.ndarray) -> float | np.ndarray:
        return self.amplitude * sum(
            self.weights[i] * np.sin(self.wavenumbers[i] * h + self.phases[i]) for i in range(2)
        )

    def slope(self, h: float | np.ndarray) -> float | np.ndarray:
        """d/dh of the displacement."""
        return self.amplitude * sum(
            self.weights[i] * self.wavenumbers[i] * np.cos(self.wavenumbers[i] * h + self.phases[i]) for i in range(2)
        )


@dataclass(frozen=True)
class AorticDiameter:
    """Aortic outer diameter (mm) as a function of height: a baseline widening linearly from the bifurcation
    to the top of the scan, plus (ectatic, aneurysm) a fusiform cos^2 bulge up to ``peak_mm``."""

    bifurcation_h: float
    top_h: float  # Anatomy.length_mm: the taper ends there (renal level reference, the kidneys' upper poles)
    at_bifurcation_mm: float
    taper_mm: float  # baseline gain from the bifurcation to top_h
    max_h: float  # height of the largest diameter inside the scan, on a 0.5 mm grid (the head-most slice: normals)
    peak_mm: float | None = None  # None: no bulge (normal aorta)
    sac_length_mm: float | None = None

    def baseline(self, h: float | np.ndarray) -> float | np.ndarray:
        """Diameter without the bulge (constant above ``top_h``)."""
        return self.at_bifurcation_mm + self.taper_mm * (np.minimum(h, self.top_h) - self.bifurcation_h) / (
            self.top_h - self.bifurcation_h
        )

    def outer(self, h: float | np.ndarray) -> float | np.ndarray:
        """Outer-wall diameter, bulge included."""
        if self.peak_mm is None:
            return self.baseline(h)
        bulge = np.cos(np.clip((np.asarray(h) - self.max_h) / (self.sac_length_mm / 2), -1, 1) * np.pi / 2) ** 2
        return self.baseline(h) + (self.peak_mm - self.baseline(h)) * bulge


@dataclass(frozen=True)
class Thrombus:
    """Mural thrombus lining an aneurysm sac (or a thin layer in an ectatic aorta)."""

    hu: float  # 25-60
    fill: float  # share of the area inside the wall it fills at the sac's maximum (0..0.9), less toward its ends
    eccentricity: float  # how far the residual lumen is pushed off-centre (share of the thrombus thickness;
    # 1: the lumen touches the wall on one side and the thrombus is a crescent)
    direction: float  # rad, in-plane direction of that push


@dataclass(frozen=True)
class Calcification:
    """Wall calcification: an arc plaque of half-thickness ``radius`` just inside the outer wall, from ``angle``
    over ``span`` rad (a ring when span >= 2 pi; None: ``segments`` tubes 0.15 rad apart, a short arc)."""

    h: float
    half_length: float
    angle: float  # rad, where the arc starts
    segments: int
    radius: float
    hu: float
    span: float | None = None

    @property
    def arc(self) -> float:
        """Angular length of the plaque (rad)."""
        return 0.15 * (self.segments - 1) if self.span is None else self.span


@dataclass(frozen=True)
class Aorta:
    """Abdominal aorta and iliac arteries. Centreline x = x_mm + wander_x(h) (+ tortuosity bends), lying on the
    spine; below the bifurcation two iliacs diverge by ``iliac_spread`` mm per mm of height."""

    diameter: AorticDiameter
    x_mm: float
    wander_x: Wander
    wall_mm: float
    enhancement: float  # 0..1: where the lumen HU falls inside the contrast phase's range (scanner._LUMEN_HU)
    thrombus: Thrombus | None
    calcifications: tuple[Calcification, ...]
    iliac_radius: float
    iliac_spread: float
    bend_x: Wander  # tortuous centreline, scaled by ScannerProfile.tortuosity when scanned
    bend_y: Wander
    # share of a sac's growth in depth that goes backward, beside the vertebral body and over the psoas (which it
    # displaces), instead of forward: 0 keeps the back of the wall 3 mm in front of the spine at every height
    sink: float = 0.0


@dataclass(frozen=True)
class Body:
    """The z-invariant trunk cross-section: skin/fat/muscle ellipses, psoas and erector muscles, vertebra
    (painted by simulations.scanner)."""

    half_width: float
    half_depth: float
    fat_mm: float
    muscle_mm: float
    vertebra_radius: float
    vertebra_y: float  # centre of the vertebral body
    cortex_mm: float
    marrow_hu: float
    # intervertebral discs (GENERATOR_VERSION 7): soft tissue in place of the vertebral body over ``disc_mm`` of
    # height every ``disc_period_mm`` (0: none), the first at height ``disc_phase_mm``
    disc_period_mm: float = 0.0
    disc_phase_mm: float = 0.0
    disc_mm: float = 0.0
    disc_hu: float = 0.0

    def is_disc(self, h: float) -> bool:
        """Whether height ``h`` cuts an intervertebral disc."""
        return self.disc_period_mm > 0 and (h - self.disc_phase_mm) % self.disc_period_mm < self.disc_mm

    @property
    def inner_half_width(self) -> float:
        """Semi-axes of the visceral cavity (inside fat and muscle)."""
        return self.half_width - self.fat_mm - self.muscle_mm

    @property
    def inner_half_depth(self) -> float:
        return self.half_depth - self.fat_mm - self.muscle_mm

    @property
    def spine_front_y(self) -> float:
        """y of the anterior surface of the vertebral body."""
        return self.vertebra_y - self.vertebra_radius


@dataclass(frozen=True)
class Kidney:
    """An ellipsoidal kidney; its axial cut shrinks as sqrt(1 - ((h - h_centre) / half_length)^2)."""

    side: int  # +1 patient left, -1 right
    h_centre: float
    half_length: float
    semi_major: float
    semi_minor: float
    x_mm: float  # moved laterally when needed to keep Anatomy.kidney_gap_mm of fat from the aorta and IVC
    y_mm: float
    rotation: float  # rad


@dataclass(frozen=True)
class BowelLoop:
    """A bowel loop (wall and content) whose centre and radius sway sinusoidally with height."""

    x_mm: float
    y_mm: float
    radius: float
    sway_mm: float
    wavelengths: tuple[float, float]  # mm, of the x and y sway
    phases: tuple[float, float, float]  # x sway, y sway, radius
    content_hu: float  # gas (-1000) or fluid


@dataclass(frozen=True)
class Tissues:
    """One patient's tissue HU (per-study intensity randomisation: the aortic wall and thrombus against their
    neighbours have a different contrast in every study)."""

    subcutaneous_fat: float  # -130..-70
    visceral_fat: float  # -130..-60, periaortic included
    muscle: float  # 30-70
    vessel_wall: float  # 30-70
    bowel_wall: float  # 25-80
    cortical_bone: float  # 600-1000
    vertebral_arch: float  # 300-600
    spinal_canal: float  # 0-30
    marrow_shift: float  # added to Body.marrow_hu
    kidney_shift: float  # added to the kidney HU of the contrast phase (scanner._KIDNEY_HU)


@dataclass(frozen=True)
class Cava:
    """Inferior vena cava, right of the aorta (an ovoid cut, never labelled), splitting into two common iliac
    veins below ``confluence_h``. Its left edge lies gap_mm + max(0, drift_mm + wander_x(h)) right of the aorta's
    right edge (of the right iliac artery below the bifurcation): a gap of 0 touches, an aneurysm pushes it aside."""

    gap_mm: float  # least fat between it and the arteries' outer wall
    drift_mm: float  # mean extra fat beyond that gap
    wander_x: Wander
    semi_x: float  # 9-14 mm: 18-28 mm wide
    semi_y: float  # 6-10 mm: 12-20 mm deep
    y_shift: float  # its posterior edge lies 3 + y_shift mm in front of the vertebral body
    confluence_h: float
    iliac_radius: float
    enhancement: float  # 0..1 inside the contrast phase's vein HU range (scanner._VEIN_HU)


@dataclass(frozen=True)
class RenalVein:
    """Left renal vein: a horizontal tube at height ``h`` from the left kidney to the IVC, crossing just anterior to
    the aorta (``gap_mm`` of fat between them, 0: touching). Same HU as the IVC; never labelled."""

    h: float
    radius: float
    gap_mm: float


@dataclass(frozen=True)
class Crura:
    """The diaphragmatic crura: two muscle bands wrapped around the upper abdominal aorta with little or no fat
    between (real upper abdomens have no fat plane there). Above ``arcuate_h`` (the median arcuate ligament) they
    meet in front of the aorta; below it they part, and each tapers out at its ``low_h`` (left, right: the right crus
    reaches lower). Muscle HU; never labelled."""

    arcuate_h: float
    low_h: tuple[float, float]  # (left, right)
    half_thickness_mm: tuple[float, float]  # (left, right)
    gap_mm: float  # fat between them and the aorta's outer wall (0: touching)
    reach: float  # how far round the back each one reaches, as a fraction of a half turn from the front


@dataclass(frozen=True)
class Pelvis:
    """Unlabelled pelvic bones at the caudal end of the scan: iliac wings, sacral alae, acetabula, femoral heads.
    Given for the patient's left (x > 0); the right side is its mirror image, ``shift_mm`` higher. A wing's axial cut
    is an arc of the circle of ``wing_radius`` around ``wing_centre`` (x, y), stretched ``wing_stretch`` times along
    y, from the anterior superior spine (angle ``wing_angles[0]``, rad) over the lateral bulge to the sacroiliac
    joint (``wing_angles[1]``): just below the crest a short piece around ``crest_angle``, the whole arc ``flare_mm``
    lower, then from ``notch_h`` down only its anterior part, thickening, over the acetabular roof and the femoral
    head (``head_radius``, centre (x, y) ``head_xy`` at height ``head_h``)."""

    crest_h: float  # top of the iliac crests, near the aortic bifurcation
    flare_mm: float
    sacrum_h: float  # the sacral alae, joining the wings, start here
    notch_h: float  # greater sciatic notch: the wing leaves the sacrum below it
    roof_h: float  # top of the acetabular roof
    head_h: float
    wing_centre: tuple[float, float]
    wing_radius: float
    wing_stretch: float
    wing_angles: tuple[float, float]
    crest_angle: float
    wing_mm: float  # half-thickness of a wing (cortex and marrow)
    sleeve_mm: float  # iliacus and gluteal muscle around it
    sacrum_mm: float  # half-thickness (y) of the sacral alae
    cortex_mm: float
    cortex_hu: float  # 700-1000
    marrow_hu: float
    head_radius: float  # 20-27.5 mm: 40-55 mm across
    head_xy: tuple[float, float]
    shift_mm: float


@dataclass(frozen=True)
class Bladder:
    """The urinary bladder: an ellipsoid of water (0-15 HU) with a thin wall, anterior midline in the pelvis."""

    h: float
    half_height: float
    x: float
    y: float
    semi_x: float
    semi_y: float
    wall_mm: float
    hu: float


@dataclass(frozen=True)
class Liver:
    """The liver: a right lobe whose cut grows from its inferior tip (``tip_h``, centre ``tip``) to full size
    (``right``: centre x, y and semi-axes) over ``rise_mm``, and above ``left_h`` a left lobe (``left``) reaching
    across the midline in front of the aorta; kept ``keep_mm`` of fat from the aorta."""

    tip_h: float
    rise_mm: float
    tip: tuple[float, float]
    right: tuple[float, float, float, float]
    left_h: float
    left: tuple[float, float, float, float]
    hu: float  # unenhanced 50-70
    enhancement: float  # 0..1 inside the contrast phase's liver gain (scanner._LIVER_GAIN)
    keep_mm: float


@dataclass(frozen=True)
class Spleen:
    """The spleen: an ellipsoid along the left posterolateral wall, its long axis (in-plane angle ``theta``) along
    the wall."""

    h_centre: float
    half_length: float
    x: float
    y: float
    semi_major: float
    semi_minor: float
    theta: float
    hu: float  # unenhanced 40-55
    enhancement: float  # 0..1 inside the contrast phase's spleen gain (scanner._SPLEEN_GAIN)


@dataclass(frozen=True)
class Lungs:
    """The lung bases (posterior costophrenic recesses): from ``base_h`` (left, right) up, an air ellipse centred on
    the posterolateral wall at (x, y) = ``centre`` (x > 0, mirrored for the right), its semi-axes growing
    ``growth`` mm per mm of height, inside the chest wall (``wall_mm`` inside the visceral cavity); vessels at
    (u, v) (share of the semi-axes from the centre) of radius r."""

    base_h: tuple[float, float]
    centre: tuple[float, float]
    growth: float
    wall_mm: float
    hu: float  # -950..-850
    vessels: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class Distractors:
    """Unlabelled organs above and below the aorta's neighbourhood, so that a network learns what is not aorta:
    pelvic bones and bladder at the caudal end, liver, spleen and lung bases at the head end."""

    pelvis: Pelvis
    bladder: Bladder | None
    liver: Liver
    spleen: Spleen
    lungs: Lungs


@dataclass(frozen=True)
class Anatomy:
    """One patient's abdomen as continuous functions of height ``h`` (mm; patient z = z_lo_mm + h)."""

    length_mm: float  # the anatomical frame: aortic taper up to h = length_mm, kidneys' upper poles near it
    z_lo_mm: float  # patient z (LPS) of h = 0
    body: Body
    aorta: Aorta
    kidneys: tuple[Kidney, ...]
    kidney_enhancement: float  # 0..1 inside the contrast phase's kidney HU range (scanner._KIDNEY_HU)
    bowel: tuple[BowelLoop, ...]
    # drawn after the fields above (None / defaults: the structure is absent, the fixed scanner._HU table is used)
    tissues: Tissues | None = None
    cava: Cava | None = None
    renal_vein: RenalVein | None = None
    scan_lo_mm: float = 0.0  # slices lie in h = scan_lo_mm..scan_hi_mm
    scan_hi_mm: float | None = None  # None: length_mm
    thin: bool = False  # little retroperitoneal fat: the IVC, renal vein, bowel and kidneys come close
    kidney_gap_mm: float = 10.0  # least fat between a kidney and the aorta (or the IVC)
    bowel_gap_mm: float = 15.0  # least fat between a bowel loop and any vessel (0: abutting)
    distractors: Distractors | None = None  # unlabelled pelvis, bladder, liver, spleen, lung bases (None: none)
    crura: Crura | None = None  # diaphragmatic crura hugging the upper aorta (None: none)

    @property
    def scan_range(self) -> tuple[float, float]:
        """(lowest, highest) h a slice may lie at."""
        return self.scan_lo_mm, self.length_mm if self.scan_hi_mm is None else self.scan_hi_mm


@dataclass(frozen=True)
class Patient:
    kind: str  # "normal" | "ectatic" | "aneurysm"
    sex: str  # "M" | "F"
    age: int
    anatomy: Anatomy


def _draw_wander(rng: np.random.Generator, amp: float, lam: tuple[float, float] = (80, 250)) -> Wander:
    """A random :class:`Wander` of peak about ``amp`` mm and wavelengths within ``lam`` mm."""
    lam, ph, w = rng.uniform(*lam, 2), rng.uniform(0, 2 * np.pi, 2), rng.dirichlet([2, 2])
    k = 2 * np.pi / lam
    return Wander(amp, (float(k[0]), float(k[1])), (float(ph[0]), float(ph[1])), (float(w[0]), float(w[1])))


def _draw_body(rng: np.random.Generator, male: bool) -> Body:
    """Trunk size, fat and muscle thickness, vertebra."""
    a, b = rng.uniform(*((150, 175) if male else (140, 165))), rng.uniform(*((110, 130) if male else (100, 120)))
    fat = float(np.clip(10 + (a - 140) * 0.5 + rng.normal(0, 4), 10, 30))
    muscle = rng.uniform(8, 12)
    vr, vc = rng.uniform(18, 22), b - rng.uniform(45, 55)
    # GENERATOR_VERSION 8: the vertebral body of the screened population, young to osteoporotic. Its cortical shell
    # is well under a millimetre (drawn 0.6-2.5 mm: partial volume widens it on a scan), and the trabecular bone
    # reads 70-280 HU with the patient's marrow_shift (at L1, 110 HU or less is osteoporosis in most older adults
    # and 160 HU or less in almost all of them; Pickhardt et al., Ann Intern Med 2013). Before, a 2-3 mm shell and
    # 160-280 HU drew a bright ring round dense bone that no elderly spine shows
    shell = rng.uniform(0.6, 2.5)
    return Body(
        half_width=a,
        half_depth=b,
        fat_mm=fat,
        muscle_mm=muscle,
        vertebra_radius=vr,
        vertebra_y=vc,
        cortex_mm=shell,
        marrow_hu=rng.uniform(110, 250),
    )


def _draw_diameter(
    rng: np.random.Generator, top_h: float, bifurcation_h: float, male: bool, kind: str
) -> AorticDiameter:
    """Sex-specific baseline diameter; ectatic 25-29.5 mm or aneurysm 30-80 mm infrarenal bulge."""
    taper = rng.uniform(1.0, 2.5)
    d0 = float(np.clip(rng.normal(*((19.3, 1.8) if male else (16.7, 1.6))), 15.0, 24.0 - taper))
    if kind == "normal":
        return AorticDiameter(bifurcation_h, top_h, d0, taper, max_h=np.floor(top_h * 2) / 2)  # head-most slice
    # aneurysms 30-82 mm, mean 53 (GENERATOR_VERSION 6; 30-80, mean 48 and few above 60 before): large sacs, whose
    # middle lies far from their wall, are where a network that learned "a 20-30 mm tube" fails
    peak = 30 + 52 * rng.beta(1.2, 1.5) if kind == "aneurysm" else rng.uniform(25.0, 29.5)
    length = min(rng.uniform(40, 120), 2 * (top_h - 120 - bifurcation_h))  # infrarenal: sac ends >= 90 mm below top
    hp = round(rng.uniform(bifurcation_h + 30, min(bifurcation_h + 110, top_h - 90 - length / 2)) * 2) / 2
    return AorticDiameter(bifurcation_h, top_h, d0, taper, max_h=hp, peak_mm=peak, sac_length_mm=length)


def _draw_thrombus(rng: np.random.Generator, kind: str) -> tuple[bool, Thrombus]:
    """Thrombus in 4 of 5 aneurysms, filling 0-90% of the sac, often a crescent (its parameters are drawn for
    every patient, to keep the draw order): (present, parameters)."""
    present = kind == "aneurysm" and rng.random() < 0.8
    thrombus = Thrombus(
        hu=rng.uniform(25, 60),
        fill=rng.uniform(0.0, 0.9),
        eccentricity=rng.uniform(0.2, 1.0),
        direction=rng.uniform(0, 2 * np.pi),
    )
    return present, thrombus


def _draw_calcifications(
    rng: np.random.Generator, age: int, bifurcation_h: float, top_h: float
) -> tuple[Calcification, ...]:
    """2-6 calcifications, more likely with age (none below 50)."""
    if rng.random() >= np.clip((age - 50) / 30, 0, 0.9):
        return ()
    return tuple(
        Calcification(
            h=rng.uniform(bifurcation_h, top_h),
            half_length=rng.uniform(2.5, 10),
            angle=rng.uniform(0, 2 * np.pi),
            segments=int(rng.integers(1, 5)),
            radius=rng.uniform(0.8, 1.6),
            hu=rng.uniform(400, 1200),
        )
        for _ in range(rng.integers(2, 7))
    )


def _draw_more_calcifications(
    rng: np.random.Generator, bifurcation_h: float, top_h: float, calcified: bool
) -> tuple[Calcification, ...]:
    """More plaques, from none to many: up to 14 more where :func:`_draw_calcifications` gave some (few are
    usual), 1-3 in 15% of the others; arcs of 10-140 degrees, one in ten a whole ring."""
    many, few = rng.random(), rng.random()
    n = int(15 * many**2) if calcified else (int(rng.integers(1, 4)) if few < 0.15 else 0)
    return tuple(
        Calcification(
            h=rng.uniform(bifurcation_h, top_h),
            half_length=rng.uniform(2.0, 15.0),
            angle=rng.uniform(0, 2 * np.pi),
            segments=1,
            radius=rng.uniform(0.4, 1.5),
            hu=rng.uniform(300, 1200),
            span=2 * np.pi if rng.random() < 0.1 else rng.uniform(0.17, 2.4),
        )
        for _ in range(n)
    )


def _draw_kidney(rng: np.random.Generator, side: int, top_h: float, body: Body) -> Kidney:
    """The kidney on ``side`` (+1 left, -1 right), its upper pole near the top of the scan."""
    return Kidney(
        side=side,
        h_centre=top_h - rng.uniform(40, 55) - (8 if side < 0 else 0),  # the right kidney lies lower
        half_length=rng.uniform(45, 55),
        semi_major=rng.uniform(26, 30),
        semi_minor=rng.uniform(14, 17),
        x_mm=side * (body.vertebra_radius + rng.uniform(40, 50)),
        y_mm=body.vertebra_y + rng.uniform(-5, 10),
        rotation=side * rng.uniform(0.3, 0.6),
    )


def _draw_bowel_loop(rng: np.random.Generator, body: Body) -> BowelLoop:
    """A loop somewhere in front of the spine, gas-filled in 40% of cases."""
    a_in, b_in = body.inner_half_width, body.inner_half_depth
    return BowelLoop(
        x_mm=rng.uniform(-(a_in - 25), a_in - 25),
        y_mm=rng.uniform(-(b_in - 20), body.spine_front_y - 25),
        radius=rng.uniform(8, 20),
        sway_mm=rng.uniform(5, 15),
        wavelengths=tuple(float(v) for v in rng.uniform(60, 160, 2)),
        phases=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 3)),
        content_hu=-1000.0 if rng.random() < 0.4 else rng.uniform(10, 30),
    )


def _draw_scan_range(rng: np.random.Generator, top_h: float, bifurcation_h: float) -> tuple[float, float]:
    """The scanned h range: 200-320 mm long (at least enough for the margins), its head end 20 mm below to 60 mm
    above ``top_h`` (above the renal veins by varying amounts), its caudal end 15-110 mm below the bifurcation."""
    core = top_h - bifurcation_h
    length = max(rng.uniform(200, 320), core - 20 + 15)
    lo, hi = max(-20.0, length - core - 110), min(60.0, length - core - 15)
    above = lo + rng.random() * (hi - lo)
    return top_h + above - length, top_h + above


def _draw_tissues(rng: np.random.Generator) -> Tissues:
    """Per-patient tissue HU."""
    subcutaneous = rng.uniform(-130, -70)
    return Tissues(
        subcutaneous_fat=subcutaneous,
        visceral_fat=float(np.clip(subcutaneous + rng.uniform(-10, 35), -130, -60)),
        muscle=rng.uniform(30, 70),
        vessel_wall=rng.uniform(30, 70),
        bowel_wall=rng.uniform(25, 80),
        cortical_bone=rng.uniform(600, 1000),
        vertebral_arch=rng.uniform(300, 600),
        spinal_canal=rng.uniform(0, 30),
        marrow_shift=rng.uniform(-40, 30),
        kidney_shift=rng.uniform(-20, 20),
    )


def _draw_cava(rng: np.random.Generator, bifurcation_h: float, thin: bool) -> Cava:
    """The IVC: 0-2 mm from the aorta in thin patients (often touching), 0.5-16 mm in the others."""
    return Cava(
        gap_mm=rng.uniform(0, 1) if thin else rng.uniform(0.5, 6),
        drift_mm=rng.uniform(0, 1) if thin else rng.uniform(0, 10),
        wander_x=_draw_wander(rng, rng.uniform(0.5, 2 if thin else 4)),
        semi_x=rng.uniform(9, 14),
        semi_y=rng.uniform(6, 10),
        y_shift=rng.uniform(0, 6),
        confluence_h=bifurcation_h - rng.uniform(0, 25),
        iliac_radius=rng.uniform(5, 7),
        enhancement=rng.random(),
    )


def _draw_pelvis(rng: np.random.Generator, body: Body, bifurcation_h: float) -> Pelvis:
    """Iliac crests 10 mm below to 15 mm above the bifurcation, the acetabular roofs 75-100 mm below the crests
    (in a third of the scans or so; the femoral heads' centres in about one in ten)."""
    a_in, b_in, vr = body.inner_half_width, body.inner_half_depth, body.vertebra_radius
    crest = bifurcation_h + rng.uniform(-10, 15)
    roof = crest - rng.uniform(75, 100)
    wing, sleeve, head_r = rng.uniform(2.5, 4), rng.uniform(6, 14), rng.uniform(20, 27.5)
    # the sacroiliac joint (xp, yp) beside the vertebra, the lateral bulge inside the cavity, the anterior spine
    # (ya) in the front half: a circle through the joint and the bulge, stretched along y to reach ya
    xp = vr + rng.uniform(20, 30)
    yp = min(body.vertebra_y + rng.uniform(5, 15), b_in * np.sqrt(1 - (xp / a_in) ** 2) - wing - 4)
    xl = a_in - sleeve - wing - rng.uniform(2, 8)
    t_p, t_a = np.radians(rng.uniform(100, 115)), np.radians(rng.uniform(-55, -35))
    radius = (xl - xp) / (1 - np.cos(t_p))
    ya = -rng.uniform(0.1, 0.4) * b_in
    stretch = float(np.clip((yp - ya) / (radius * (np.sin(t_p) - np.sin(t_a))), 1.0, 2.0))
    cx, cy = xp - radius * np.cos(t_p), yp - stretch * radius * np.sin(t_p)
    t_f = t_a + rng.uniform(0.25, 0.4) * (t_p - t_a)  # the femoral head under the wing's anterolateral part
    head = (cx + radius * np.cos(t_f) - rng.uniform(5, 15), cy + stretch * radius * np.sin(t_f))
    return Pelvis(
        crest_h=crest,
        flare_mm=rng.uniform(25, 45),
        sacrum_h=crest - rng.uniform(20, 40),
        notch_h=roof + rng.uniform(25, 40),
        roof_h=roof,
        head_h=roof - head_r - rng.uniform(3, 6),
        wing_centre=(float(cx), float(cy)),
        wing_radius=float(radius),
        wing_stretch=stretch,
        wing_angles=(float(t_a), float(t_p)),
        crest_angle=float(np.radians(rng.uniform(0, 30))),
        wing_mm=wing,
        sleeve_mm=sleeve,
        sacrum_mm=rng.uniform(8, 12),
        cortex_mm=rng.uniform(1.2, 2.0),
        cortex_hu=rng.uniform(700, 1000),
        marrow_hu=rng.uniform(120, 270),  # the pelvis's own (its range before GENERATOR_VERSION 8)
        head_radius=head_r,
        head_xy=(float(head[0]), float(head[1])),
        shift_mm=rng.uniform(-6, 6),
    )


def _draw_bladder(rng: np.random.Generator, body: Body, roof_h: float) -> Bladder | None:
    """A bladder (water, thin wall) in 65% of patients, its centre up to 40 mm above the acetabular roofs."""
    present = rng.random() < 0.65
    b_in = body.inner_half_depth
    semi_y = rng.uniform(20, 40)
    bladder = Bladder(
        h=roof_h + rng.uniform(0, 40),
        half_height=rng.uniform(20, 45),
        x=rng.uniform(-10, 10),
        y=-b_in + semi_y + rng.uniform(5, 20),
        semi_x=rng.uniform(25, 50),
        semi_y=semi_y,
        wall_mm=rng.uniform(1.5, 3),
        hu=rng.uniform(0, 15),
    )
    return bladder if present else None


def _draw_liver(rng: np.random.Generator, body: Body, top_h: float) -> Liver:
    """The liver's tip 40-120 mm below the kidneys' upper poles, its left lobe 40-90 mm higher."""
    a_in, b_in = body.inner_half_width, body.inner_half_depth
    tip = top_h - rng.uniform(40, 120)
    rx, ra = -rng.uniform(0.4, 0.55) * a_in, rng.uniform(0.42, 0.55) * a_in
    right_y, right_b = rng.uniform(-0.15, 0.1) * b_in, rng.uniform(0.65, 0.85) * b_in
    left_h = tip + rng.uniform(40, 90)
    overlap, la = rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.5) * a_in  # from inside the right lobe's front across
    return Liver(
        tip_h=tip,
        rise_mm=rng.uniform(40, 80),
        tip=(-rng.uniform(0.6, 0.75) * a_in, -rng.uniform(0.0, 0.4) * b_in),
        right=(rx, right_y, ra, right_b),
        left_h=left_h,
        left=(rx + ra * overlap + la * 0.8, -rng.uniform(0.4, 0.55) * b_in, la, rng.uniform(0.15, 0.28) * b_in),
        hu=rng.uniform(50, 70),
        enhancement=rng.random(),
        keep_mm=rng.uniform(3, 10),
    )


def _draw_spleen(rng: np.random.Generator, body: Body, top_h: float) -> Spleen:
    """The spleen's lower pole 10-60 mm below the kidneys' upper poles, along the left posterolateral wall."""
    a_in, b_in = body.inner_half_width, body.inner_half_depth
    half = rng.uniform(50, 65)
    x, y = a_in - rng.uniform(25, 40), body.vertebra_y - rng.uniform(5, 35)
    return Spleen(
        h_centre=top_h - rng.uniform(10, 60) + half,
        half_length=half,
        x=x,
        y=y,
        semi_major=rng.uniform(35, 55),
        semi_minor=rng.uniform(15, 25),
        theta=float(np.arctan2(x / a_in**2, -y / b_in**2) + rng.uniform(-0.2, 0.2)),  # along the wall
        hu=rng.uniform(40, 55),
        enhancement=rng.random(),
    )


def _draw_lungs(rng: np.random.Generator, body: Body, top_h: float) -> Lungs:
    """Lung bases from 20 mm below to 30 mm above the kidneys' upper poles (so only the scans reaching high show
    them), centred on the posterolateral wall."""
    a_in, b_in = body.inner_half_width, body.inner_half_depth
    base = top_h + rng.uniform(-20, 30)
    x = rng.uniform(0.5, 0.7) * a_in
    n = int(rng.integers(4, 11))
    return Lungs(
        base_h=(base, base + rng.uniform(-10, 10)),
        centre=(x, b_in * np.sqrt(1 - (x / a_in) ** 2) - rng.uniform(0, 10)),
        growth=rng.uniform(0.9, 1.5),
        wall_mm=rng.uniform(3, 6),
        hu=rng.uniform(-950, -850),
        vessels=tuple(
            (float(u), float(v), float(r))
            for u, v, r in zip(rng.uniform(-0.8, 0.8, n), rng.uniform(-0.8, 0.8, n), rng.uniform(1.2, 3.0, n))
        ),
    )


def _draw_distractors(rng: np.random.Generator, body: Body, top_h: float, bifurcation_h: float) -> Distractors:
    """Pelvis and bladder, liver, spleen, lung bases (in this order)."""
    pelvis = _draw_pelvis(rng, body, bifurcation_h)
    bladder = _draw_bladder(rng, body, pelvis.roof_h)
    return Distractors(
        pelvis=pelvis,
        bladder=bladder,
        liver=_draw_liver(rng, body, top_h),
        spleen=_draw_spleen(rng, body, top_h),
        lungs=_draw_lungs(rng, body, top_h),
    )


def _draw_crura(rng: np.random.Generator, top_h: float) -> Crura:
    """The crura: they meet in front of the aorta 20 mm below to 25 mm above the kidneys' upper poles, end 20-55 mm
    (left) and 30-75 mm (right) below them, 2-5 mm half thick (the right up to 1.4x), 0-1.5 mm from the wall."""
    t = rng.uniform(2.0, 5.0)
    return Crura(
        arcuate_h=top_h + rng.uniform(-20, 25),
        low_h=(top_h - rng.uniform(20, 55), top_h - rng.uniform(30, 75)),
        half_thickness_mm=(t, t * rng.uniform(1.0, 1.4)),
        gap_mm=rng.uniform(0.0, 1.5),
        reach=rng.uniform(0.7, 0.9),
    )


def draw_patient(rng: np.random.Generator, kind: str, sex: str) -> Patient:
    """Draw one patient of ``kind`` ("normal" | "ectatic" | "aneurysm") and ``sex`` ("M" | "F") from ``rng``.
    Uses no scanner setting; the order of the draws is fixed (same seed, same patient)."""
    if kind not in KINDS or sex not in ("M", "F"):
        raise ValueError(f"kind must be one of {KINDS} and sex 'M' or 'F', got {kind!r}, {sex!r}")
    male = sex == "M"
    age = int(np.clip(rng.normal(*_AGE[kind]), 35, 90))
    body = _draw_body(rng, male)
    length = rng.uniform(220, 260)
    z_lo = round(rng.uniform(-320, -220) * 2) / 2
    h_bif = rng.uniform(40, 60)
    diameter = _draw_diameter(rng, length, h_bif, male, kind)
    x0 = rng.uniform(10, 20)
    wander_x = _draw_wander(rng, rng.uniform(1.5, 4))
    wall, lumen = rng.uniform(1.5, 2.5), rng.random()
    has_thrombus, thrombus = _draw_thrombus(rng, kind)
    calcifications = _draw_calcifications(rng, age, h_bif, length)
    iliac_radius, iliac_spread = rng.uniform(4.5, 6.5), rng.uniform(0.35, 0.6)
    kidney_enhancement = rng.random()
    kidneys = tuple(_draw_kidney(rng, side, length, body) for side in (1, -1))
    bowel = tuple(_draw_bowel_loop(rng, body) for _ in range(rng.integers(6, 11)))
    bend_x, bend_y = _draw_wander(rng, 25.0, (150, 300)), _draw_wander(rng, 40.0, (150, 300))
    # every draw below was added after the ones above (which keep their values for a seed)
    scan_lo, scan_hi = _draw_scan_range(rng, length, h_bif)
    if diameter.peak_mm is None:  # a normal aorta is widest on the head-most slice
        diameter = replace(diameter, max_h=float(np.floor(scan_hi * 2) / 2))
    tissues = _draw_tissues(rng)
    thin = bool(rng.random() < 0.15)
    cava = _draw_cava(rng, h_bif, thin)
    renal_vein = RenalVein(
        h=kidneys[0].h_centre + rng.uniform(-8, 8),
        radius=rng.uniform(3.5, 5.5),
        gap_mm=rng.uniform(0, 1) if thin else rng.uniform(0.5, 4),
    )
    abutting, kidney_gap = rng.random() < 0.25, rng.uniform(2, 5)  # bowel abutting the aorta; a thin one's kidneys
    bowel_gap = rng.uniform(0, 2) if thin or abutting else rng.uniform(6, 15)
    thin_layer, thin_fill = rng.random() < 0.3, rng.uniform(0.08, 0.3)
    if not has_thrombus:
        thrombus = replace(thrombus, fill=thin_fill) if kind == "ectatic" and thin_layer else None
    calcifications += _draw_more_calcifications(rng, h_bif, length, bool(calcifications))
    distractors = _draw_distractors(rng, body, length, h_bif)  # after every draw above (they keep their values)
    crura = _draw_crura(rng, length)  # after every draw above (GENERATOR_VERSION 5)
    # after every draw above (GENERATOR_VERSION 7): a large sac grows sideways and backward round the vertebral body
    # as well as forward; with the back of its wall always pinned in front of the spine, a network learned that
    # nothing beside the vertebra is aorta and cut the back and sides off sacs drawn by anyone else
    sink = rng.uniform(0.0, 0.7)
    # the discs between the vertebral bodies: soft tissue right behind the aorta, which is not aorta either
    period = rng.uniform(30, 38)
    body = replace(
        body,
        disc_period_mm=period,
        disc_phase_mm=rng.uniform(0, period),
        disc_mm=rng.uniform(6, 10),
        disc_hu=rng.uniform(60, 110),
    )
    aorta = Aorta(
        diameter=diameter,
        x_mm=x0,
        wander_x=wander_x,
        wall_mm=wall,
        enhancement=lumen,
        thrombus=thrombus,
        calcifications=calcifications,
        iliac_radius=iliac_radius,
        iliac_spread=iliac_spread,
        bend_x=bend_x,
        bend_y=bend_y,
        sink=sink,
    )
    anatomy = Anatomy(
        length_mm=length,
        z_lo_mm=z_lo,
        body=body,
        aorta=aorta,
        kidneys=kidneys,
        kidney_enhancement=kidney_enhancement,
        bowel=bowel,
        tissues=tissues,
        cava=cava,
        renal_vein=renal_vein,
        scan_lo_mm=scan_lo,
        scan_hi_mm=scan_hi,
        thin=thin,
        kidney_gap_mm=kidney_gap if thin else 10.0,
        bowel_gap_mm=bowel_gap,
        distractors=distractors,
        crura=crura,
    )
    return Patient(kind=kind, sex=sex, age=age, anatomy=anatomy)
