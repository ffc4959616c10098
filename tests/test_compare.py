"""`fedaaa train` (pooled and local-only) and `fedaaa simulate --compare`'s arms, on tiny hospitals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS, RunSettings
from fedaaa.common.model import load_model
from fedaaa.common.site import Site
from fedaaa.simulations.compare import CompareSettings, run_arms

pytestmark = pytest.mark.slow  # real training, and one real federation


def _fedaaa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedaaa.cli", *args], capture_output=True, text=True, timeout=600)


def test_train_local_only_writes_one_model_per_hospital_trained_on_its_own_studies(
    tiny_federation, cache_dir, tmp_path
):
    sites = [str(s) for s in tiny_federation]
    common = ["--rounds", "2", "--local-epochs", "1", "--cache-dir", str(cache_dir)]
    done = _fedaaa("train", "--mode", "local", "--output", str(tmp_path / "local"), *sites, *common)
    assert done.returncode == 0, done.stderr[-2000:]
    for site in tiny_federation:  # one model per hospital, trained on its studies only
        history = json.loads((tmp_path / "local" / site.name / "history.json").read_text())
        assert history["rounds"][-1]["train_examples"] == len(Site(site).masked(Site(site).split("train")))
        assert [r["round"] for r in history["rounds"]] == [0, 1, 2] and history["rounds"][-1]["val_n"] > 0
        model = load_model(tmp_path / "local" / site.name / "global_model.safetensors")
        first = load_model(tmp_path / "local" / site.name / "checkpoints" / "round-000.safetensors").model.state_dict()
        assert model.round == 2 and 0 < model.threshold < 1  # calibrated like a federation's model
        assert any(not torch.equal(v, first[k]) for k, v in model.model.state_dict().items())
        assert str(site) not in json.dumps(history)

    done = _fedaaa("train", "--mode", "pooled", "--output", str(tmp_path / "x"), str(tmp_path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a site folder" in done.stderr


def test_compare_tests_every_arm_on_the_same_studies_and_reports(tiny_federation, cache_dir, tmp_path):
    settings = RunSettings(num_server_rounds=1, local_epochs=1, cache_dir=str(cache_dir))
    options = CompareSettings(epsilons=(4.0,), arms=("pooled", "dp"))
    arms = run_arms(tiny_federation, InputCache(PREPROCESS, cache_dir), settings, options, tmp_path / "compare")
    assert [a.name for a in arms] == ["pooled", "FedAvg + DP eps=4"]
    pooled = json.loads((tmp_path / "compare" / "pooled" / "history.json").read_text())
    n_train = sum(len(Site(s).masked(Site(s).split("train"))) for s in tiny_federation)
    assert pooled["rounds"][-1]["train_examples"] == n_train  # every hospital's training studies in one place
    n_test = sum(len(Site(s).split("test")) for s in tiny_federation)
    for arm in arms:  # the same held-out studies for every arm, per hospital too
        assert len(arm.arrays["measured"]) == n_test and arm.metrics["n"] == n_test
        assert sorted(arm.per_site) == sorted(s.name for s in tiny_federation)
    dp = arms[-1]
    assert dp.kind == "dp" and dp.epsilon == 4.0
    assert set(dp.spent_epsilon) == {s.name for s in tiny_federation}
    assert all(3.9 <= e <= 4.0 for e in dp.spent_epsilon.values())
    root = tmp_path / "compare"
    rows = (root / "comparison.csv").read_text().splitlines()
    assert len(rows) == 1 + len(arms)
    for png in ("metric_vs_epsilon", "per_hospital", "roc", "bland_altman", "learning_curves"):
        assert (root / f"{png}.png").stat().st_size > 10_000
    assert (root / "pooled" / "test_metrics.json").is_file()
