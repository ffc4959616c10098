"""Preprocessing, the network, its loss, the model file, local training and shareable metrics."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.calibration import (
    HIST_BINS,
    Calibration,
    diameter_bins,
    expected_calibration_error,
    fit_platt,
    threshold_for_sensitivity,
)
from fedaaa.common.errors import ConfigError, StudyError
from fedaaa.common.io import read_study
from fedaaa.common.metrics import auroc_from_histograms, evaluation_stats, sum_stats, summarize
from fedaaa.common.model import AortaNet, ModelFile, load_model, save_model, segmentation_loss
from fedaaa.common.preprocess import PreprocessSettings, load_study_input, preprocess_volume
from fedaaa.common.segment import NO_ABDOMEN, abdominal_levels, aorta_probability, measure_input
from fedaaa.common.settings import ArchSettings
from fedaaa.common.site import Site, StudySet
from fedaaa.common.training import (
    TrainSettings,
    _batches,
    evaluate_local,
    loader_workers,
    measure_maps,
    predict_set,
    train_local,
)

SETTINGS = PreprocessSettings()


def test_preprocessing_gives_fixed_physical_grid(tiny_federation):
    # Two scanners with different pixel spacing and slice thickness give the same in-plane box at the same
    # spacing, and along z the scanned range at 3 mm.
    for site in tiny_federation:
        volume = read_study(Site(site).studies[0].path)
        loaded = preprocess_volume(volume, SETTINGS)
        x = loaded.image
        assert x.shape[1:3] == SETTINGS.roi_size[:2]
        extent = volume.spacing[2] * (volume.hu.shape[2] - 1)
        assert abs((x.shape[3] - 1) * SETTINGS.spacing_mm[2] - extent) <= SETTINGS.spacing_mm[2]
        assert np.allclose(np.abs(np.diag(loaded.affine)[:3]), SETTINGS.spacing_mm)
        assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_label_follows_the_image(tiny_federation, tmp_path):
    # The label goes through the same resampling and crop as the image; a label on another grid is
    # refused for that study's label only, in one sentence naming the label file.
    site = Site(tiny_federation[0])
    study = site.masked()[0]
    loaded = load_study_input(study.path, SETTINGS, study.mask)
    assert loaded.label is not None and loaded.label.shape == loaded.image.shape
    inside = loaded.image[loaded.label > 0]
    assert 0.2 < float(inside.mean()) < 1.0  # the aorta is soft tissue or contrast, not air or fat
    assert 0 < float(loaded.label.mean()) < 0.05
    img = nib.load(study.mask)
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), bad)
    with pytest.raises(StudyError, match="does not match") as err:
        load_study_input(study.path, SETTINGS, bad)
    assert Path(err.value.source).name == "bad.nii.gz"
    cache = InputCache(SETTINGS, tmp_path / "cache")
    key, outcome = cache.prepare(study.path, mask=bad)
    assert outcome.error is None and not outcome.label and "does not match" in outcome.label_error
    key2, outcome2 = cache.prepare(study.path, mask=study.mask)
    assert key2 != key and outcome2.label and torch.equal(cache.label(key2), loaded.label)


def test_cache_hit_skips_decoding_and_settings_change_the_key(tiny_federation, tmp_path):
    study = Site(tiny_federation[0]).studies[1].path
    cache = InputCache(SETTINGS, tmp_path)
    first = cache.load(study)
    again = cache.load(study)
    assert cache.decoded == 1 and torch.equal(first, again)
    other = InputCache(PreprocessSettings(spacing_mm=(3.0, 3.0, 5.0)), tmp_path)
    assert other.key(study) != cache.key(study)
    other.load(study)
    assert other.decoded == 1  # a changed setting never serves the old tensor


def test_network_outputs_and_loss():
    torch.manual_seed(0)
    model = AortaNet()
    x = torch.rand(2, 1, *model.arch.patch_size)
    logits = model(x)
    assert logits.shape == x.shape
    y = (torch.rand_like(x) > 0.9).float()
    loss = segmentation_loss()(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_model_file_round_trip(tmp_path):
    model = AortaNet()
    cal = Calibration(0.9, 29.0, 40)
    path = save_model(
        tmp_path / "m.safetensors",
        ModelFile(model, SETTINGS, threshold=0.4, round=3, summary={"val_auroc": 0.9}, calibration=cal),
    )
    mf = load_model(path)
    assert mf.round == 3 and mf.threshold == 0.4 and mf.preprocess == SETTINGS and mf.summary["val_auroc"] == 0.9
    assert mf.calibration == cal
    for k, v in model.state_dict().items():
        assert torch.equal(v, mf.model.state_dict()[k])
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


@pytest.mark.slow
def test_local_training_measurably_learns(tiny_federation, cache_dir):
    site = Site(tiny_federation[0])
    data = site.load("train", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    assert data.masked
    torch.manual_seed(0)
    model = AortaNet(ArchSettings())  # the network on main, on its whole-box patches: about a minute on 2 cores
    device = torch.device("cpu")
    before = summarize(evaluate_local(model, data, device))
    out = train_local(
        model, data, TrainSettings(local_epochs=30, batch_size=4, learning_rate=3e-3, patches_per_study=2), device
    )
    after = summarize(evaluate_local(model, data, device))
    assert out["num-examples"] == len(data.masked)
    # 7 studies of 4 mm pixels and 5 mm slices, about 100 steps: the overlap with the labels grows
    # several-fold (0.02 to 0.79 when written; the demo's and the benchmark's figures are in docs/results.md)
    assert after["dice"] > max(0.12, 4 * before["dice"]), (before["dice"], after["dice"])


def test_loader_workers_make_the_same_patches_as_the_training_process(tiny_federation, cache_dir, monkeypatch):
    """Beside a GPU, loader processes augment the patches; the epoch must be the one a CPU run draws."""
    data = Site(tiny_federation[0]).load("train", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    settings = TrainSettings(batch_size=3, patches_per_study=2)

    def epoch(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(_batches(data, settings, (48, 48, 32), np.random.default_rng(5), workers))

    alone, helped = epoch(0), epoch(2)
    assert len(alone) == len(helped) == -(-2 * len(data.masked) // 3)
    for (x0, y0), (x1, y1) in zip(alone, helped):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(alone[0][0], epoch(0)[1][0])  # the patches are random, not one patch repeated
    assert loader_workers(torch.device("cpu")) == 0
    monkeypatch.setenv("FEDAAA_LOADER_WORKERS", "3")
    assert loader_workers(torch.device("cpu")) == 3
    monkeypatch.setenv("FEDAAA_LOADER_WORKERS", "many")
    with pytest.raises(ConfigError, match="FEDAAA_LOADER_WORKERS"):
        loader_workers(torch.device("cpu"))


def test_loader_workers_measure_as_the_evaluating_process(tiny_federation, cache_dir):
    """Beside a GPU, loader processes measure the validation maps; every figure must be the one a CPU run gives."""
    site = Site(tiny_federation[0])
    data = site.load("train", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    affine = np.diag([*data.spacing_mm, 1.0])
    labels = [(label[0].numpy(), abdominal_levels(image[0].numpy())) for image, label in zip(data.images, data.labels)]
    alone, helped = measure_maps(labels, affine), measure_maps(labels, affine, workers=2)
    assert len(alone) == len(data.images) >= 5 and all(found for _, found in alone)
    assert np.all(np.isfinite([d for d, _ in alone])) and len({round(d, 3) for d, _ in alone}) > 1  # real diameters
    assert alone == helped
    data = site.load("val", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    torch.manual_seed(0)
    model = AortaNet()
    rows = predict_set(model, data, torch.device("cpu"), workers=0)
    assert repr(predict_set(model, data, torch.device("cpu"), workers=1)) == repr(rows)  # as text: NaN != NaN
    assert all(r["pred"] > 0 and r["true"] > 0 for r in rows)


def test_site_without_labels_trains_nothing(tiny_federation, cache_dir):
    site = Site(tiny_federation[0])
    data = site.load("train", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    unlabelled = StudySet(data.spacing_mm, data.images, [None] * len(data), data.aaa, data.diameters)
    model = AortaNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_local(model, unlabelled, TrainSettings(local_epochs=1), torch.device("cpu"))
    assert out["num-examples"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_calibration_and_threshold_from_histograms():
    rng = np.random.default_rng(0)
    d_neg, d_pos = rng.normal(20, 3, 300), rng.normal(45, 10, 200).clip(29, None)
    hist_pos = np.bincount(diameter_bins(d_pos), minlength=HIST_BINS)
    hist_neg = np.bincount(diameter_bins(d_neg), minlength=HIST_BINS)
    cal = fit_platt(hist_pos, hist_neg)
    assert 20 < cal.center_mm < 32 and cal.slope_per_mm > 0.3 and cal.fitted_on == 500
    t = threshold_for_sensitivity(hist_pos, hist_neg, cal, 0.97)
    cut = cal.diameter_at(t)
    assert (d_pos >= cut).mean() >= 0.97 and (d_neg < cut).mean() > 0.9
    # Separable classes give a finite slope, and no class at all the default.
    sep = fit_platt(
        np.bincount(diameter_bins([40.0] * 5), minlength=HIST_BINS),
        np.bincount(diameter_bins([20.0] * 5), minlength=HIST_BINS),
    )
    assert np.isfinite(sep.slope_per_mm) and 20 < sep.center_mm < 40
    assert fit_platt([0] * HIST_BINS, hist_neg) == Calibration(fitted_on=300)
    prob = cal.probability(np.concatenate([d_pos, d_neg]))
    truth = np.concatenate([np.ones(200), np.zeros(300)])
    assert expected_calibration_error(prob, truth) < 0.1
    assert expected_calibration_error(np.full(500, 0.9), truth) > 0.4
    with pytest.raises(ValueError):
        Calibration.from_json('{"slope_per_mm": -1, "center_mm": 30, "fitted_on": 0}')


def test_statistics_add_up_and_give_auroc():
    rng = np.random.default_rng(0)
    aaa = rng.integers(0, 2, 200)
    d_true = np.where(aaa == 1, 45.0, 18.0)
    measured = d_true + 2.0
    measured[:5] = np.nan  # not measurable: no diameter, not called AAA
    dice = [(80, 100, 100)] * 10
    s = evaluation_stats(measured, aaa, d_true, dice)
    halves = sum_stats(
        [
            evaluation_stats(measured[:90], aaa[:90], d_true[:90], dice[:4]),
            evaluation_stats(measured[90:], aaa[90:], d_true[90:], dice[4:]),
        ]
    )
    for k, v in s.items():
        assert halves[k] == (pytest.approx(v) if isinstance(v, float) else v)
    m = summarize(s)
    assert m["diameter_mae_mm"] == pytest.approx(2.0) and m["diameter_bias_mm"] == pytest.approx(2.0)
    assert m["unmeasured"] == 5 and m["dice"] == pytest.approx(0.8)
    assert m["auroc"] == pytest.approx(1.0, abs=0.03)  # over the measured studies
    assert s["fn"] == int(aaa[:5].sum()) and s["tn"] == int((aaa[5:] == 0).sum()) + int((aaa[:5] == 0).sum())
    assert auroc_from_histograms([0, 5], [5, 0]) == 1.0 and auroc_from_histograms([5, 0], [0, 5]) == 0.0
    assert auroc_from_histograms([3, 3], [3, 3]) == pytest.approx(0.5)
    assert not any(isinstance(v, list) and len(v) == len(measured) for v in s.values())  # no per-study values


def test_a_scan_without_abdominal_levels_is_not_measured():
    # Lungs (air) fill much of every slice's central box: a chest-only scan has no abdominal aorta to measure,
    # whatever the network outputs.
    image = torch.full((1, 64, 64, 40), 0.3)
    image[:, 4:28, 8:56, :] = 0.0  # one lung
    image[:, 36:60, 8:56, :] = 0.0  # the other
    assert not abdominal_levels(image[0].numpy()).any()
    image[:, :, :, :20] = 0.3  # the lower half is abdomen
    levels = abdominal_levels(image[0].numpy())
    assert levels[:20].all() and not levels[20:].any()
    chest = torch.full((1, 64, 64, 40), 0.3)
    chest[:, 4:28, 8:56, :] = chest[:, 36:60, 8:56, :] = 0.0
    _, m = measure_input(
        AortaNet(ArchSettings(patch_size=(32, 32, 16))), chest, np.diag([1.5, 1.5, 3.0, 1.0]), torch.device("cpu")
    )
    assert not m.measurable and m.reason == NO_ABDOMEN and m.max_diameter_mm is None


def test_training_patches_and_prediction_windows_span_the_whole_in_plane_box():
    # A window narrower than the box cuts a 60-80 mm sac in two and leaves its far half unsegmented, and a network
    # answering on larger windows than it trained on sees other InstanceNorm statistics (a halo round normal
    # aortas): by default the training patch is the whole in-plane box, and prediction slides it along z only.
    assert tuple(ArchSettings().patch_size[:2]) == tuple(PreprocessSettings().roi_size[:2])
    data = StudySet((1.5, 1.5, 3.0))
    label = torch.zeros(1, 64, 64, 40)
    label[0, 28:36, 30:38, :] = 1
    data.add(torch.rand(1, 64, 64, 40), label, 0, 20.0)
    arch = ArchSettings(channels=(4, 8, 16), patch_size=(64, 64, 16))
    batches = list(_batches(data, TrainSettings(batch_size=2), arch.patch_size, np.random.default_rng(0)))
    assert batches and all(tuple(x.shape[2:]) == (64, 64, 16) for x, _ in batches)
    model = AortaNet(arch)
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[2:])))
    prob = aorta_probability(model, torch.rand(1, 64, 64, 40), torch.device("cpu"))
    assert prob.shape == (64, 64, 40) and seen and set(seen) == {(64, 64, 16)}
