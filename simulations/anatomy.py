"""What a synthetic patient looks like: :func:`draw_patient` draws one :class:`Patient` from ``rng``, before any
scanner is involved (simulations.scanner samples it, simulations.synth composes the two).

A patient's :class:`Anatomy` (body, spine, kidneys, bowel and :class:`Aorta`) is a set of continuous structures in
DICOM patient coordinates (LPS, mm: +x patient left, +y posterior, +z head), as functions of the height ``h`` above
the caudal edge of the scan (patient z = z_lo_mm + h). Aortic diameters follow the usual adult infrarenal range
(about 17 mm in women, 19 mm in men) and the AAA definition (outer-wall diameter >= 30 mm). The order of the draws
is fixed: the same ``rng`` state gives the same patient, whatever scanner later samples it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("normal", "ectatic", "aneurysm")

_AGE = {"aneurysm": (72, 7), "ectatic": (68, 9), "normal": (58, 12)}  # years: mean, SD (clipped to 35-90)


# The patient is a set of continuous structures in mm; ``h`` is the height above the caudal edge of the scan
# (patient z = z_lo_mm + h). Every field below is drawn by draw_patient, before any scanner is involved.
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
    top_h: float  # the scanned length: h of the head-most possible slice
    at_bifurcation_mm: float
    taper_mm: float  # baseline gain from the bifurcation to top_h
    max_h: float  # height of the largest diameter inside the scan, on a 0.5 mm grid
    peak_mm: float | None = None  # None: no bulge (normal aorta)
    sac_length_mm: float | None = None

    def baseline(self, h: float | np.ndarray) -> float | np.ndarray:
        """Diameter without the bulge."""
        return self.at_bifurcation_mm + self.taper_mm * (np.asarray(h) - self.bifurcation_h) / (
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
    """Mural thrombus lining an aneurysm sac."""

    hu: float
    fill: float  # share of the bulge (between baseline lumen and inner wall) it fills
    eccentricity: float  # how far the residual lumen is pushed off-centre (share of the thrombus thickness)
    direction: float  # rad, in-plane direction of that push


@dataclass(frozen=True)
class Calcification:
    """Wall calcification: a short arc of ``segments`` small tubes just inside the outer wall."""

    h: float
    half_length: float
    angle: float  # rad, first segment
    segments: int
    radius: float
    hu: float


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
    x_mm: float  # moved laterally when needed to keep 10 mm of fat from the aorta
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
class Anatomy:
    """One patient's abdomen as continuous functions of height ``h`` (mm above the scan's caudal edge)."""

    length_mm: float  # scanned length: slices lie in h = 0..length_mm
    z_lo_mm: float  # patient z (LPS) of h = 0
    body: Body
    aorta: Aorta
    kidneys: tuple[Kidney, ...]
    kidney_enhancement: float  # 0..1 inside the contrast phase's kidney HU range (scanner._KIDNEY_HU)
    bowel: tuple[BowelLoop, ...]


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
    shell = rng.uniform(2, 3)
    return Body(
        half_width=a,
        half_depth=b,
        fat_mm=fat,
        muscle_mm=muscle,
        vertebra_radius=vr,
        vertebra_y=vc,
        cortex_mm=shell,
        marrow_hu=rng.uniform(200, 250),
    )


def _draw_diameter(
    rng: np.random.Generator, top_h: float, bifurcation_h: float, male: bool, kind: str
) -> AorticDiameter:
    """Sex-specific baseline diameter; ectatic 25-29.5 mm or aneurysm 30-80 mm infrarenal bulge."""
    taper = rng.uniform(1.0, 2.5)
    d0 = float(np.clip(rng.normal(*((19.3, 1.8) if male else (16.7, 1.6))), 15.0, 24.0 - taper))
    if kind == "normal":
        return AorticDiameter(bifurcation_h, top_h, d0, taper, max_h=np.floor(top_h * 2) / 2)  # head-most slice
    peak = 30 + 50 * rng.beta(1.8, 3.2) if kind == "aneurysm" else rng.uniform(25.0, 29.5)
    length = min(rng.uniform(40, 120), 2 * (top_h - 120 - bifurcation_h))  # infrarenal: sac ends >= 90 mm below top
    hp = round(rng.uniform(bifurcation_h + 30, min(bifurcation_h + 110, top_h - 90 - length / 2)) * 2) / 2
    return AorticDiameter(bifurcation_h, top_h, d0, taper, max_h=hp, peak_mm=peak, sac_length_mm=length)


def _draw_thrombus(rng: np.random.Generator, kind: str) -> Thrombus | None:
    """Thrombus in 3 of 4 aneurysms (its parameters are drawn for every patient, to keep the draw order)."""
    present = kind == "aneurysm" and rng.random() < 0.75
    thrombus = Thrombus(
        hu=rng.uniform(35, 50),
        fill=rng.uniform(0.3, 0.7),
        eccentricity=rng.uniform(0.3, 0.9),
        direction=rng.uniform(0, 2 * np.pi),
    )
    return thrombus if present else None


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
    thrombus = _draw_thrombus(rng, kind)
    calcifications = _draw_calcifications(rng, age, h_bif, length)
    iliac_radius, iliac_spread = rng.uniform(4.5, 6.5), rng.uniform(0.35, 0.6)
    kidney_enhancement = rng.random()
    kidneys = tuple(_draw_kidney(rng, side, length, body) for side in (1, -1))
    bowel = tuple(_draw_bowel_loop(rng, body) for _ in range(rng.integers(6, 11)))
    bend_x, bend_y = _draw_wander(rng, 25.0, (150, 300)), _draw_wander(rng, 40.0, (150, 300))
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
    )
    anatomy = Anatomy(
        length_mm=length,
        z_lo_mm=z_lo,
        body=body,
        aorta=aorta,
        kidneys=kidneys,
        kidney_enhancement=kidney_enhancement,
        bowel=bowel,
    )
    return Patient(kind=kind, sex=sex, age=age, anatomy=anatomy)
