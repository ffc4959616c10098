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

# (seed, kind, sex, tortuosity) -> (age, max diameter, its z, slices, mean HU, next rng draw): the same seed must
# keep giving the same study. Age, diameters and their z are those of the single-function generator this module
# replaced. GENERATOR_VERSION 3 (randomised tissue HU, thrombus and calcification, IVC, renal vein, scan range of
# 200-320 mm) drew its new fields after every earlier draw, so those keep their values; what had to change: the
# slice count (the scanned range is drawn anew), the mean HU (new structures and HU), the next draw (more draws
# per patient) and, for the normal aorta only, its maximum, which lies on the head-most slice and so moved with
# the top of the scan (18.6 mm at z 18.5 before). GENERATOR_VERSION 4 (unlabelled distractors: pelvis, bladder,
# liver, spleen, lung bases) drew them after all of those, so age, diameters, their z and the slices stay; what had
# to change: the mean HU (new organs and bones; -652.16, -557.94, -535.98, -611.46 in version 3) and the next draw
# (the distractors' draws; 891418829, 765232715, 2560485, 365918633 in version 3). GENERATOR_VERSION 5
# (diaphragmatic crura around the upper aorta) drew them last again: only the mean HU (-649.92, -545.04, -529.0,
# -600.23 in version 4) and the next draw (145248957, 30391801, 339845462, 1047755195) changed.
# GENERATOR_VERSION 6 drew the aneurysms' peak diameter from a wider beta (the same single draw): only the two
# aneurysms' maximum (47.5 and 36.1 mm in version 5) and so their mean HU (-528.91, -600.17) changed.
# GENERATOR_VERSION 7 (sacs sinking beside the vertebra, intervertebral discs) drew them last: only the mean HU
# (-649.86, -544.96, -528.82, -600.18 in version 6) and the next draw (385507764, 276992238, 572132336, 41250605)
# changed. GENERATOR_VERSION 8 (older patients' vertebral bodies: a thinner cortical shell, 70-280 HU trabecular bone)
# drew the same single values from other ranges: only the mean HU (-650.41, -545.26, -529.32, -600.51 in version 7)
# changed.
PINNED = [
    ((0, "normal", "F", 0.0), (59, 18.4, -0.5, 43, -650.87, 105203381)),
    ((1, "ectatic", "M", 0.0), (71, 26.4, -162.0, 57, -545.78, 516491248)),
    ((2, "aneurysm", "M", 0.5), (73, 52.0, -182.0, 51, -530.13, 98114158)),
    ((3, "aneurysm", "F", 0.0), (86, 35.5, -199.0, 61, -600.91, 886243712)),
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


# fields drawn before GENERATOR_VERSION 3 added its draws, as that generator drew them for (seed, kind, sex):
# length, z_lo, bifurcation h, diameter there, x, right kidney h, bowel loops, last loop radius, a bend phase,
# calcifications before the added ones, the first one's h, thrombus direction (None: no thrombus then)
EARLIER = [
    ((3, "aneurysm", "F"), (224.547, -281.0, 50.335, 15.631, 10.015, 173.46, 9, 18.574, 3.111, 3, 88.438, 1.873)),
    ((1, "ectatic", "M"), (221.102, -244.5, 50.763, 19.007, 14.031, 160.504, 9, 14.004, 1.457, 0, None, None)),
]


@pytest.mark.parametrize(("case", "expected"), EARLIER)
def test_earlier_draws_keep_their_values(case, expected):
    a = draw_patient(np.random.default_rng(case[0]), case[1], case[2]).anatomy
    d, calc, n_calc = a.aorta.diameter, a.aorta.calcifications, expected[9]
    got = (
        a.length_mm,
        a.z_lo_mm,
        d.bifurcation_h,
        d.at_bifurcation_mm,
        a.aorta.x_mm,
        a.kidneys[1].h_centre,
        len(a.bowel),
        a.bowel[-1].radius,
        a.aorta.bend_y.phases[1],
    )
    assert got == pytest.approx(expected[:9], abs=1e-3)
    assert all(c.span is None for c in calc[:n_calc]) and all(c.span is not None for c in calc[n_calc:])
    assert (calc[0].h if n_calc else None) == pytest.approx(expected[10], abs=1e-3)
    if expected[11] is not None:  # the thrombus kept its direction (its HU, fill and crescent ranges are new)
        assert a.aorta.thrombus.direction == pytest.approx(expected[11], abs=1e-3)


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
