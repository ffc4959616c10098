"""Seeded synthetic abdominal CT studies, written as real DICOM series in hospital "site folders".

:func:`render_study` is three steps. :func:`draw_patient` (simulations.anatomy) draws a :class:`Patient` (its
:class:`Anatomy`: body, spine, kidneys, bowel, :class:`Aorta` and unlabelled neighbours and distractors, as
continuous functions of height in mm) from
``rng``; :func:`scan_patient` (simulations.scanner) samples it on a :class:`ScannerProfile`'s grid (matrix, FOV,
slice spacing, contrast phase...) with no random draw; :func:`add_noise` adds the scanner noise. The same ``rng``
state therefore gives the same anatomy under every profile: one seed rendered under two profiles is one patient
scanned twice. The DICOM export is :func:`write_study` (simulations.synth_dicom).

Site layout written by :func:`write_site`::

    SITE/manifest.csv        study_id,path,aaa,max_diameter_mm,mask,split,sex
    SITE/truth.csv           study_id,kind,sex,aaa,max_diameter_mm,max_z_mm  (simulation ground truth)
    SITE/studies/<id>/...    one study folder as the site's scanner exports it (see synth_dicom.write_study):
                             layout "flat" IMnnnn.dcm, "noext" IMnnnn, "nested" DICOM/<series-no>/<8 hex>
    SITE/masks/<id>.nii.gz   the aorta label (uint8, 1 = aorta to its outer wall) on the RAS voxel grid that
                             fedaaa.common.io.read_study returns for the study (see :func:`write_mask`)
    SITE/.synth.json         the spec the folder was written from (reuse marker, written last)

:data:`ACQUISITION_VARIANTS` and :func:`write_variant` write one anatomy under each acquisition variant, to
check that a DICOM reader recovers the same volume from all of them.

The public names of simulations.anatomy, simulations.scanner and synth_dicom's export are re-exported here
(``__all__``), so ``from fedaaa.simulations.synth import ...`` keeps working for all of them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from fedaaa.common.clinical import AAA_THRESHOLD_MM
from fedaaa.simulations.anatomy import (
    KINDS,
    Anatomy,
    Aorta,
    AorticDiameter,
    Bladder,
    Body,
    BowelLoop,
    Calcification,
    Cava,
    Distractors,
    Kidney,
    Liver,
    Lungs,
    Patient,
    Pelvis,
    RenalVein,
    Spleen,
    Thrombus,
    Tissues,
    Wander,
    draw_patient,
)
from fedaaa.simulations.defaults import DEFAULT_MATRIX, DEFAULT_SEED, DEFAULT_SITES, DEFAULT_STUDIES_PER_SITE
from fedaaa.simulations.scanner import (
    CONTRAST_PHASES,
    EXTRAS,
    FILE_ORDERS,
    LAYOUTS,
    ORIENTATIONS,
    TRANSFER_SYNTAXES,
    ScannerProfile,
    StudyTruth,
    SyntheticStudy,
    add_noise,
    scan_patient,
)
from fedaaa.simulations.synth_dicom import encode_pixels, padding_value, write_study

__all__ = [
    # simulations.anatomy
    "KINDS",
    "Anatomy",
    "Aorta",
    "AorticDiameter",
    "Bladder",
    "Body",
    "BowelLoop",
    "Calcification",
    "Cava",
    "Distractors",
    "Kidney",
    "Liver",
    "Lungs",
    "Patient",
    "Pelvis",
    "RenalVein",
    "Spleen",
    "Thrombus",
    "Tissues",
    "Wander",
    "draw_patient",
    # simulations.scanner
    "CONTRAST_PHASES",
    "EXTRAS",
    "FILE_ORDERS",
    "LAYOUTS",
    "ORIENTATIONS",
    "TRANSFER_SYNTAXES",
    "ScannerProfile",
    "StudyTruth",
    "SyntheticStudy",
    "add_noise",
    "scan_patient",
    # simulations.synth_dicom
    "encode_pixels",
    "padding_value",
    "write_study",
    # shared settings
    "AAA_THRESHOLD_MM",
    "DEFAULT_MATRIX",
    "DEFAULT_SEED",
    "DEFAULT_SITES",
    "DEFAULT_STUDIES_PER_SITE",
    # this module
    "ACQUISITION_VARIANTS",
    "GENERATOR_VERSION",
    "MANIFEST_COLUMNS",
    "OTHER_PROTOCOL_SHARE",
    "RESAMPLED_VARIANTS",
    "TRUTH_COLUMNS",
    "VARIANT_BASE",
    "SiteSpec",
    "default_sites",
    "study_protocols",
    "render_study",
    "variant_profile",
    "write_federation",
    "write_mask",
    "write_site",
    "write_variant",
]

# 3: randomised tissue HU, thrombus, calcification, scan range; IVC, renal vein (site reuse)
# 4: unlabelled distractors (pelvis, bladder, liver, spleen, lung bases)
# 5: the diaphragmatic crura wrapped round the upper aorta (no fat plane there)
# 6: a quarter of each hospital's studies in its other contrast protocol; aneurysms drawn larger (30-82 mm, mean 53)
# 7: sacs also grow backward beside the vertebral body (Aorta.sink), not only forward; intervertebral discs
# 8: vertebral bodies of older patients: a thin cortical shell and trabecular bone of 70-280 HU (osteoporotic to young)
GENERATOR_VERSION = 8
# ``mask`` before the optional ``split,sex`` keeps rows ending in "<split>,<sex>" (tests/test_federation.py
# counts training rows by that ending); readers go by column name.
MANIFEST_COLUMNS = ("study_id", "path", "aaa", "max_diameter_mm", "mask", "split", "sex")
TRUTH_COLUMNS = ("study_id", "kind", "sex", "aaa", "max_diameter_mm", "max_z_mm")
_VENDORS = ("Acme Medical", "Helix Imaging", "Orbis CT", "Nova Systems", "Vertex Health", "Lumen Scan")


@dataclass(frozen=True)
class SiteSpec:
    name: str  # e.g. "hospital-a"; used as folder name
    n_studies: int
    aaa_prevalence: float  # fraction of studies with AAA (max diameter >= 30 mm)
    profile: ScannerProfile
    seed: int


def default_sites(
    n_sites: int = DEFAULT_SITES,
    studies_per_site: int = DEFAULT_STUDIES_PER_SITE,
    seed: int = DEFAULT_SEED,
    matrix: int = DEFAULT_MATRIX,
) -> list[SiteSpec]:
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


def render_study(rng: np.random.Generator, profile: ScannerProfile, kind: str, sex: str) -> SyntheticStudy:
    """Render one abdominal CT volume of the given ``kind`` ("normal" | "ectatic" | "aneurysm") and ``sex``
    ("M" | "F"), noise included: :func:`draw_patient`, :func:`scan_patient` under ``profile``, :func:`add_noise`.
    Deterministic in the state of ``rng``; the anatomy depends only on the rng state, ``kind`` and ``sex``
    (``profile.tortuosity`` only scales an already drawn centreline). Export it with :func:`write_study`."""
    patient = draw_patient(rng, kind, sex)
    study = scan_patient(patient, profile)
    add_noise(study.hu, profile.noise_hu, rng)
    return study


OTHER_PROTOCOL_SHARE = 0.25  # of each hospital's studies, scanned in its other protocol (GENERATOR_VERSION 6)


def study_protocols(profile: ScannerProfile, n: int, rng: np.random.Generator) -> list[ScannerProfile]:
    """Each of a hospital's ``n`` studies' scanner profile: its own, or, for about a quarter of them, its
    other protocol: a contrast hospital's non-contrast scans (AAA surveillance, renal colic), a non-contrast
    hospital's arterial-phase CTs. Every hospital then trains on both, as real ones do, and a sac of
    uniform soft tissue (a non-contrast aneurysm) is common in every site's training data, not only at the
    non-contrast sites. Drawn from its own ``rng``: the anatomy of every study stays as before."""
    other = replace(profile, contrast=not profile.contrast)
    return [other if flip else profile for flip in rng.random(n) < OTHER_PROTOCOL_SHARE]


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
def _split(labels: np.ndarray, splits: Sequence[float], rng: np.random.Generator) -> np.ndarray:
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
        (site / r["path"]).is_dir() and any((site / r["path"]).iterdir()) and (site / (r.get("mask") or "")).is_file()
        for r in rows
    )


def write_mask(path: Path, study: SyntheticStudy) -> Path:
    """Write ``study``'s aorta label as a NIfTI file (uint8, 1 = aorta to its outer wall) on the RAS voxel grid
    that fedaaa.common.io.read_study returns for any export of the study; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(study.ras_mask(), study.ras_affine())
    image.header.set_data_dtype(np.uint8)
    image.set_qform(study.ras_affine(), code=1)
    image.set_sform(study.ras_affine(), code=1)
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(image, tmp)
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    os.replace(tmp, path)


def write_site(
    root: Path,
    spec: SiteSpec,
    splits: Sequence[float] = (0.7, 0.15, 0.15),
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``root/spec.name`` (manifest.csv, truth.csv, studies/<id>/...) and return that folder.

    Prevalence is exact up to rounding; negatives are ~70% normal / ~30% ectatic; the split is stratified by
    ``aaa``. Deterministic in ``spec.seed``. A folder already complete for the same spec is reused untouched;
    otherwise its previous output is removed and rewritten. Each study's aorta label is written to
    ``masks/<id>.nii.gz`` (manifest column ``mask``); it draws nothing, so the DICOM output is the same with or
    without it."""
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
    shutil.rmtree(site / "masks", ignore_errors=True)
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
    children = seq.spawn(n)
    protocols = study_protocols(spec.profile, n, np.random.default_rng(seq.spawn(1)[0]))
    for i, child in enumerate(children):
        srng = np.random.default_rng(child)
        sid = f"{letter}-{i + 1:04d}"
        study = render_study(srng, protocols[i], str(kinds[i]), str(sexes[i]))
        write_study(site / "studies" / sid, study, protocols[i], sid, srng)
        write_mask(site / "masks" / f"{sid}.nii.gz", study)
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
            (
                t.study_id,
                f"studies/{t.study_id}",
                t.aaa,
                f"{t.max_diameter_mm:.1f}",
                f"masks/{t.study_id}.nii.gz",
                s,
                t.sex,
            )
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
