"""simulations.synth's generator as three steps (draw_patient -> scan_patient -> add_noise) and its shared
defaults: the composition is render_study, the draws are pinned to values rendered before the split."""

import inspect
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest

from fedaaa.simulations.synth import (
    DEFAULT_MATRIX,
    DEFAULT_SITES,
    DEFAULT_STUDIES_PER_SITE,
    Patient,
    ScannerProfile,
    add_noise,
    default_sites,
    draw_patient,
    render_study,
    scan_patient,
)

PROFILE = ScannerProfile(matrix=48, slice_thickness_mm=5.0)

# (seed, kind, sex, tortuosity) -> (age, max diameter, its z, slices, mean HU, next rng draw), as rendered by the
# single-function generator this module replaced: the same seed must keep giving the same study.
PINNED = [
    ((0, "normal", "F", 0.0), (59, 18.6, 18.5, 52, -656.21, 827848689)),
    ((1, "ectatic", "M", 0.0), (71, 26.4, -162.0, 44, -555.16, 1015793031)),
    ((2, "aneurysm", "M", 0.5), (73, 47.5, -182.0, 49, -546.16, 548406580)),
    ((3, "aneurysm", "F", 0.0), (86, 36.1, -199.0, 45, -614.72, 891642913)),
]


def test_shared_defaults():
    assert (DEFAULT_SITES, DEFAULT_STUDIES_PER_SITE, DEFAULT_MATRIX) == (3, 60, 128)
    params = inspect.signature(default_sites).parameters
    assert params["n_sites"].default == DEFAULT_SITES
    assert params["studies_per_site"].default == DEFAULT_STUDIES_PER_SITE
    assert params["matrix"].default == DEFAULT_MATRIX
    assert ScannerProfile().matrix == DEFAULT_MATRIX
    sites = default_sites()
    assert len(sites) == DEFAULT_SITES and all(s.profile.matrix == DEFAULT_MATRIX for s in sites)
    # the command line and `simulate` take the same defaults (one source)
    from fedaaa.cli import build_parser
    from fedaaa.simulations.simulate import SimulationPlan

    for argv in (["synth", "--output", "x"], ["simulate", "--output", "x"]):
        args = build_parser().parse_args(argv)
        assert (args.sites, args.studies_per_site, args.matrix) == (3, 60, 128)
    plan = SimulationPlan(output_dir=Path("x"), data_dir=Path("y"))
    assert (plan.n_sites, plan.studies_per_site, plan.matrix) == (3, 60, 128)


@pytest.mark.parametrize(("case", "expected"), PINNED)
def test_render_study_pinned(case, expected):
    seed, kind, sex, tortuosity = case
    rng = np.random.default_rng(seed)
    s = render_study(rng, replace(PROFILE, tortuosity=tortuosity), kind, sex)
    age, max_d, max_z, n, mean_hu, next_draw = expected
    assert (s.age, s.max_diameter_mm, s.max_z_mm, len(s.z_mm)) == (age, max_d, max_z, n)
    assert float(s.hu.mean()) == pytest.approx(mean_hu, abs=0.05)
    assert int(rng.integers(1 << 30)) == next_draw  # same number of draws consumed


@pytest.mark.parametrize("kind", ["normal", "ectatic", "aneurysm"])
def test_render_study_is_the_three_steps(kind):
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    study = render_study(rng1, PROFILE, kind, "F")
    patient = draw_patient(rng2, kind, "F")
    steps = scan_patient(patient, PROFILE)
    add_noise(steps.hu, PROFILE.noise_hu, rng2)
    np.testing.assert_array_equal(study.hu, steps.hu)
    np.testing.assert_array_equal(study.aorta_center_mm, steps.aorta_center_mm)
    assert study.truth("x") == steps.truth("x") and study.age == patient.age
    assert rng1.bit_generator.state == rng2.bit_generator.state


def test_patient_is_drawn_without_a_scanner_and_scanned_without_draws():
    p1, p2 = (
        draw_patient(np.random.default_rng(3), "aneurysm", "M"),
        draw_patient(np.random.default_rng(3), "aneurysm", "M"),
    )
    assert isinstance(p1, Patient) and (p1.kind, p1.sex) == ("aneurysm", "M")
    a = p1.anatomy
    assert 30 <= a.aorta.diameter.outer(a.aorta.diameter.max_h) <= 80 and a.aorta.diameter.peak_mm is not None
    assert [k.side for k in a.kidneys] == [1, -1] and 6 <= len(a.bowel) <= 10
    with pytest.raises(FrozenInstanceError):
        p1.age = 0
    # scanning is deterministic and draws nothing: two scans of one patient are identical
    s1, s2 = scan_patient(p1, PROFILE), scan_patient(p2, PROFILE)
    np.testing.assert_array_equal(s1.hu, s2.hu)
    # the max of a noise-free scan is where the anatomy says, on a slice centre
    assert s1.max_z_mm == pytest.approx(a.z_lo_mm + a.aorta.diameter.max_h)


def test_normal_patients_have_no_bulge_or_thrombus():
    for seed in range(5):
        p = draw_patient(np.random.default_rng(seed), "normal", "F")
        assert p.anatomy.aorta.thrombus is None and p.anatomy.aorta.diameter.peak_mm is None


def test_add_noise_zero_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    hu = np.zeros((2, 4, 4), np.float32)
    add_noise(hu, 0.0, rng)
    assert rng.bit_generator.state == state and not hu.any()


def test_draw_patient_validates():
    with pytest.raises(ValueError):
        draw_patient(np.random.default_rng(0), "huge", "M")
    with pytest.raises(ValueError):
        render_study(np.random.default_rng(0), PROFILE, "normal", "X")
