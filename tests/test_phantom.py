"""The independent evaluation renderer: geometry truth, set proportions, determinism, NIfTI round trip,
and aneurysms inserted into a real CT (small renders, shared between tests: the file runs in seconds)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from fedaaa.common.io import read_study
from fedaaa.simulations.phantom import (
    insert_aneurysm,
    load_real_ct,
    phantom_set,
    real_aorta_diameter,
    render_phantom,
    track_aorta,
    write_phantom_set,
)

# 1 mm in-plane where a label is measured against the truth to one voxel; coarse where only counts matter
FINE = {"spacing": (1.0, 1.0, 3.0), "matrix": 256, "noise_hu": 5.0, "psf_mm": 0.4}
COARSE = {"spacing": (2.0, 2.0, 4.0), "matrix": 160, "noise_hu": 5.0, "psf_mm": 0.4}
REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct"
needs_real_ct = pytest.mark.skipif(
    not (REAL_CT / "example_ct.nii.gz").exists(),
    reason=f"the real CT (example_ct.nii.gz, TotalSegmentator's test files) is not present under {REAL_CT}",
)
_DIRS = np.deg2rad(np.arange(0.0, 180.0, 1.0))
_UNIT = np.stack([np.cos(_DIRS), np.sin(_DIRS)])  # (2, 180) unit vectors, 1-degree steps


def _feret(points: np.ndarray) -> float:
    """Largest extent of 2-D points over directions in 1-degree steps (centre to centre)."""
    proj = points @ _UNIT
    return float((proj.max(axis=0) - proj.min(axis=0)).max())


def _max_slice_extent(ph) -> float:
    """Largest in-plane extent of the label over the infrarenal axial slices (mm): voxel centres' extent
    plus one voxel."""
    zs = ph.affine[2, 3] + ph.affine[2, 2] * np.arange(ph.label.shape[2])
    best = 0.0
    for k in np.nonzero((zs >= ph.bifurcation_z_mm + 3) & (zs <= ph.renal_z_mm))[0]:
        ii, jj = np.nonzero(ph.label[:, :, k])
        if len(ii) > 1:
            xy = np.stack([ii * ph.affine[0, 0], jj * ph.affine[1, 1]], axis=1)
            best = max(best, _feret(xy) + ph.affine[0, 0])
    return best


@pytest.fixture(scope="module")
def straight():
    return render_phantom(7, "aneurysm", True, 0.3, diameter_mm=47.0, tortuosity=0.0, saccular=False, **FINE)


@pytest.fixture(scope="module")
def tortuous():
    return render_phantom(3, "aneurysm", True, 0.3, diameter_mm=40.0, tortuosity=1.0, **FINE)


@pytest.fixture(scope="module")
def thrombus_pair():
    heavy = render_phantom(5, "aneurysm", True, 0.8, diameter_mm=60.0, **COARSE)
    none = render_phantom(5, "aneurysm", True, 0.0, diameter_mm=60.0, **COARSE)
    return heavy, none


def test_straight_phantom_label_matches_truth(straight):
    ph = straight
    assert ph.max_diameter_mm == pytest.approx(47.0, abs=0.2)
    assert ph.hu.dtype == np.float32 and ph.label.dtype == np.uint8
    assert ph.bifurcation_z_mm < ph.max_z_mm < ph.renal_z_mm  # the maximum is infrarenal
    # straight and vertical: the axial section is the perpendicular one, so its extent is the truth
    assert abs(_max_slice_extent(ph) - ph.max_diameter_mm) <= 1.0 + 1e-6  # one voxel


def test_tortuous_axial_extent_exceeds_perpendicular_truth(tortuous):
    ph = tortuous
    assert ph.max_diameter_mm == pytest.approx(40.0, abs=0.2)
    assert ph.tortuosity == 1.0
    # the truth is measured perpendicular to the centreline, not on the (oblique) axial slice
    assert _max_slice_extent(ph) > ph.max_diameter_mm + 2.0


@pytest.mark.parametrize("kind", ["normal", "ectatic"])
def test_kinds_have_their_diameter_range(kind):
    ph = render_phantom(11, kind, False, 0.0, **COARSE)
    lo, hi = {"normal": (16, 24), "ectatic": (25, 29)}[kind]
    assert lo - 0.5 <= ph.max_diameter_mm <= hi + 0.5
    # the label is the aorta to its outer wall: its largest axial section is about the truth's size
    vox = ph.affine[0, 0] * ph.affine[1, 1]
    largest = 2.0 * math.sqrt(ph.label.reshape(-1, ph.label.shape[2]).sum(axis=0).max() * vox / math.pi)
    assert ph.max_diameter_mm - 4.0 <= largest <= 1.6 * ph.max_diameter_mm


def test_unknown_kind_and_thrombus_fraction_are_refused():
    with pytest.raises(ValueError, match="kind"):
        render_phantom(1, "giant", **COARSE)
    with pytest.raises(ValueError, match="thrombus_fraction"):
        render_phantom(1, "aneurysm", True, 0.99, **COARSE)


def test_thrombus_makes_the_lumen_smaller_than_the_wall(thrombus_pair):
    heavy, none = thrombus_pair
    assert heavy.max_diameter_mm == pytest.approx(60.0, abs=0.3)
    assert heavy.lumen_diameter_mm < 0.6 * heavy.max_diameter_mm
    assert none.lumen_diameter_mm > 0.8 * none.max_diameter_mm
    assert heavy.lumen.sum() < 0.5 * heavy.label.sum()
    assert heavy.lumen.sum() < none.lumen.sum()
    assert np.all(heavy.label[heavy.lumen > 0] == 1)  # the lumen lies inside the outer wall


def test_phantom_set_proportions_and_determinism():
    specs = phantom_set(48, seed=0)
    assert len(specs) == 48 and len({s.study_id for s in specs}) == 48
    assert sum(s.thrombus_fraction >= 0.5 for s in specs) >= 0.3 * 48
    assert sum(not s.contrast for s in specs) >= 0.3 * 48
    assert 0.4 * 48 <= sum(s.kind == "aneurysm" for s in specs) <= 0.6 * 48
    assert specs == phantom_set(48, seed=0)
    assert specs != phantom_set(48, seed=1)
    small = phantom_set(10, seed=3)
    assert sum(s.thrombus_fraction >= 0.5 for s in small) >= 3 and sum(not s.contrast for s in small) >= 3


def test_render_is_deterministic_per_seed():
    kw = {**COARSE, "matrix": 128, "spacing": (2.5, 2.5, 5.0)}
    a = render_phantom(9, "aneurysm", False, 0.6, **kw)
    b = render_phantom(9, "aneurysm", False, 0.6, **kw)
    c = render_phantom(10, "aneurysm", False, 0.6, **kw)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.label, b.label)
    assert a.max_diameter_mm == b.max_diameter_mm
    assert not np.array_equal(a.hu, c.hu)


def test_nifti_round_trip_through_read_study(tmp_path):
    kw = {**COARSE, "matrix": 128, "spacing": (2.5, 2.5, 5.0)}
    specs = phantom_set(2, seed=4)
    rendered = {}
    root = write_phantom_set(tmp_path / "set", specs, progress=lambda i, n, spec, ph: rendered.update({i: ph}), **kw)
    assert sorted(rendered) == [1, 2]
    manifest = (root / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "study_id,path,aaa,max_diameter_mm,split,sex,mask"
    assert len(manifest) == 3 and all(",test," in line for line in manifest[1:])
    truth = (root / "truth.csv").read_text().splitlines()
    assert len(truth) == 3 and truth[1].split(",")[0] == specs[0].study_id
    ph = rendered[1]
    assert float(manifest[1].split(",")[3]) == pytest.approx(ph.max_diameter_mm, abs=0.05)
    vol = read_study(root / manifest[1].split(",")[1])
    assert vol.hu.shape == ph.hu.shape
    assert np.allclose(vol.affine, ph.affine, atol=1e-3)
    assert np.abs(vol.hu - np.rint(ph.hu)).max() <= 0.5  # values in HU
    assert -1100 < float(vol.hu.min()) and float(vol.hu.max()) > 150


# ----------------------------------------------------------------------------------------------- real CT


@pytest.fixture(scope="module")
def real_ct():
    hu, affine, label = load_real_ct(REAL_CT)
    return hu, affine, label


def _centreline(hu: np.ndarray, affine: np.ndarray, label: np.ndarray):
    """The real aorta's centreline as smooth x(z), y(z) (quadratic fits, mm) through the per-slice centres
    that the insertion follows, and its z range."""
    centres = track_aorta(hu, label)
    ks = np.array(sorted(centres), float)
    vox = np.stack([[centres[k][0] for k in ks], [centres[k][1] for k in ks], ks, np.ones(len(ks))])
    world = (affine @ vox)[:3].T
    return np.polyfit(world[:, 2], world[:, 0], 2), np.polyfit(world[:, 2], world[:, 1], 2), world[:, 2]


def _perpendicular_diameter(mask: np.ndarray, affine: np.ndarray, centreline) -> float:
    """Largest extent of a label perpendicular to the centreline (mm): for planes perpendicular to it every
    0.5 mm, the labelled voxel centres within half a voxel of the plane, projected into it; their largest
    extent over directions (centre to centre, not plus one voxel: the projections of a 3 mm slab are dense)."""
    px, py, zs = centreline
    vox = abs(affine[2, 2])
    ijk = np.argwhere(mask)
    world = (affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    best = 0.0
    for z in np.arange(zs.min(), zs.max(), 0.5):
        p0 = np.array([np.polyval(px, z), np.polyval(py, z), z])
        t = np.array([np.polyval(np.polyder(px), z), np.polyval(np.polyder(py), z), 1.0])
        t /= np.linalg.norm(t)
        e1 = np.cross(t, [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(t, e1)
        d = world - p0
        sel = np.abs(d @ t) <= vox / 2
        if sel.sum() > 10:
            best = max(best, _feret(np.stack([d[sel] @ e1, d[sel] @ e2], axis=1)))
    return best


@needs_real_ct
def test_real_ct_loads_with_a_normal_aorta(real_ct):
    hu, affine, label = real_ct
    assert hu.dtype == np.float32 and label.shape == hu.shape
    assert label[:, :, : hu.shape[2] - 30].sum() == 0 and label[:, :, -30:].sum() > 0  # top 30 slices
    assert 17.0 <= real_aorta_diameter(label, affine) <= 23.0
    assert len(track_aorta(hu, label)) > 30  # the label's slices and the tracked ones below them


@needs_real_ct
@pytest.mark.parametrize(("diameter", "seed"), [(34.0, 2), (50.0, 5), (62.0, 2), (75.0, 5)])
def test_inserted_aneurysm_in_real_ct(real_ct, diameter, seed):
    hu, affine, label = real_ct
    before = hu.copy()
    out, new_label, truth = insert_aneurysm(hu, affine, label, diameter, 0.7, seed=seed)
    assert np.array_equal(hu, before)  # the input is not modified
    # the truth is what was drawn: within 0.25 mm of the request (the sac rides on the real radius)
    assert truth == pytest.approx(diameter, abs=0.25)
    # Measured like the truth: perpendicular to the centreline (which is tilted 3-24 degrees here; an axial
    # slice cuts the short sac obliquely and reads up to 3 mm small at 75 mm). Every labelled voxel centre
    # lies inside the drawn wall, so the centres' extent exceeds the truth only by the error of the fitted
    # centreline's direction (a few degrees: < 0.5 mm); each extreme centre lies within half a 3 mm voxel
    # of the wall, so the extent is at most one voxel under the truth.
    measured = _perpendicular_diameter(new_label > 0, affine, _centreline(hu, affine, label))
    vox = abs(affine[2, 2])
    assert truth - vox <= measured <= truth + 0.5
    # unchanged outside a margin (the new wall's fat rim, <= 4 mm, plus one voxel) around the aorta
    near = ndi.binary_dilation(new_label > 0, iterations=3)
    changed = out != hu
    assert changed.any() and not (changed & ~near).any()
    assert (new_label >= (label > 0)).all()  # the original aorta stays labelled
    assert new_label.sum() > label.sum()
