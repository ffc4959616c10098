"""Preprocessing, the network, its loss, the model file, local training and shareable metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.errors import ConfigError
from fedaaa.common.io import read_study
from fedaaa.common.metrics import auroc_from_histograms, evaluation_stats, sum_stats, summarize
from fedaaa.common.model import AAANet, ModelFile, aaa_loss, load_model, save_model
from fedaaa.common.preprocess import PreprocessSettings, volume_to_input
from fedaaa.common.site import Site
from fedaaa.common.training import TrainSettings, evaluate_local, train_local

SETTINGS = PreprocessSettings()


def test_preprocessing_gives_fixed_physical_grid(tiny_federation):
    # Two scanners with different pixel spacing and slice thickness give the same input shape.
    shapes = set()
    for site in tiny_federation:
        x = volume_to_input(read_study(Site(site).studies[0].path), SETTINGS)
        shapes.add(tuple(x.shape))
        assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert shapes == {(1, *SETTINGS.roi_size)}


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
    model = AAANet()
    x = torch.rand(3, 1, *SETTINGS.roi_size)
    logit, diameter = model(x)
    assert logit.shape == (3,) and diameter.shape == (3,)
    assert torch.all(diameter > 0)  # centred on 30 mm at initialisation
    aaa = torch.tensor([1, 0, 1])
    known = aaa_loss(logit, diameter, aaa, torch.tensor([50.0, 18.0, 40.0]))
    unknown = aaa_loss(logit, diameter, aaa, torch.tensor([math.nan] * 3))
    assert torch.isfinite(known) and torch.isfinite(unknown) and known > unknown  # NaN diameters drop out
    known.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_model_file_round_trip(tmp_path):
    model = AAANet()
    path = save_model(
        tmp_path / "m.safetensors", ModelFile(model, SETTINGS, threshold=0.4, round=3, summary={"val_auroc": 0.9})
    )
    mf = load_model(path)
    assert mf.round == 3 and mf.threshold == 0.4 and mf.preprocess == SETTINGS and mf.summary["val_auroc"] == 0.9
    for k, v in model.state_dict().items():
        assert torch.equal(v, mf.model.state_dict()[k])
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


@pytest.mark.slow
def test_local_training_measurably_learns(tiny_federation, cache_dir):
    site = Site(tiny_federation[0])
    data = site.load("train", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    # All studies of both splits: more examples, still seconds.
    val = site.load("val", SETTINGS, InputCache(SETTINGS, cache_dir)).data
    data = torch.utils.data.TensorDataset(*[torch.cat([a, b]) for a, b in zip(data.tensors, val.tensors)])
    torch.manual_seed(0)
    model = AAANet()
    device = torch.device("cpu")
    before = summarize(evaluate_local(model, data, device))
    out = train_local(model, data, TrainSettings(local_epochs=30, batch_size=4, learning_rate=1e-3), device)
    after = summarize(evaluate_local(model, data, device))
    assert out["num-examples"] == len(data)
    assert after["bce"] < 0.8 * before["bce"]
    assert after["diameter_mae_mm"] < 0.7 * before["diameter_mae_mm"]


def test_statistics_add_up_and_give_auroc():
    rng = np.random.default_rng(0)
    aaa = rng.integers(0, 2, 200)
    prob = np.clip(0.5 * aaa + rng.uniform(0, 0.5, 200), 0, 1)
    d_true = np.where(aaa == 1, 45.0, 18.0)
    s = evaluation_stats(prob, d_true + 2.0, aaa, d_true)
    halves = sum_stats(
        [
            evaluation_stats(prob[:90], d_true[:90] + 2.0, aaa[:90], d_true[:90]),
            evaluation_stats(prob[90:], d_true[90:] + 2.0, aaa[90:], d_true[90:]),
        ]
    )
    for k, v in s.items():
        assert halves[k] == (pytest.approx(v) if isinstance(v, float) else v)
    m = summarize(s)
    assert m["diameter_mae_mm"] == pytest.approx(2.0)
    assert m["auroc"] == pytest.approx(1.0, abs=0.02)
    assert auroc_from_histograms([0, 5], [5, 0]) == 1.0 and auroc_from_histograms([5, 0], [0, 5]) == 0.0
    assert auroc_from_histograms([3, 3], [3, 3]) == pytest.approx(0.5)
    assert not any(isinstance(v, list) and len(v) == len(prob) for v in s.values())  # no per-study values
