"""`fedaaa train` (pooled and local-only) and `fedaaa simulate --compare`'s arms, on tiny hospitals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS, RunSettings
from fedaaa.common.model import initial_state, load_model
from fedaaa.common.model_file import ModelMeta, read_model_file, write_model_file
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


def test_train_stops_after_the_block_that_spends_its_time_budget(tiny_federation, cache_dir, tmp_path):
    sites = [str(s) for s in tiny_federation]
    budget = ["--rounds", "5", "--local-epochs", "1", "--max-minutes", "0.0001", "--cache-dir", str(cache_dir)]
    done = _fedaaa("train", "--mode", "pooled", "--output", str(tmp_path / "pooled"), *sites, *budget)
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((tmp_path / "pooled" / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1]  # one block, then the budget is spent
    model = load_model(tmp_path / "pooled" / "global_model.safetensors")
    assert model.round == 1 and 0 < model.threshold < 1
    done = _fedaaa("train", "--mode", "pooled", "--output", str(tmp_path / "y"), *sites, "--max-minutes", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--max-minutes" in done.stderr


def test_compare_tests_every_arm_on_the_same_studies_and_reports(tiny_federation, cache_dir, tmp_path):
    # every arm starts from the same pre-trained model (run-config initial-model), the federated ones too
    pre = {k: v + 0.05 for k, v in initial_state().items()}
    start = write_model_file(tmp_path / "pre.safetensors", pre, ModelMeta())
    settings = RunSettings(num_server_rounds=1, local_epochs=1, cache_dir=str(cache_dir), initial_model=str(start))
    options = CompareSettings(epsilons=(4.0,), arms=("pooled", "dp"))
    arms = run_arms(tiny_federation, InputCache(PREPROCESS, cache_dir), settings, options, tmp_path / "compare")
    assert [a.name for a in arms] == ["pooled", "FedAvg + DP eps=4"]
    for arm in ("pooled", "fedavg-dp-eps-4"):
        first, _ = read_model_file(tmp_path / "compare" / arm / "checkpoints" / "round-000.safetensors")
        assert all(torch.equal(first[k], pre[k]) for k in pre), arm
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


def test_pretraining_on_public_studies_gives_every_arm_its_start(tiny_federation, cache_dir, tmp_path):
    """--pretrain-studies: a model trained on public synthetic studies only (their own sites, one per scanner
    style, another seed), tested on the hospitals' test splits; the arms then start from its weights."""
    from rich.console import Console

    from fedaaa.simulations.compare import pretrain
    from fedaaa.simulations.simulate import SimulationPlan

    plan = SimulationPlan(output_dir=tmp_path, data_dir=tmp_path / "data", n_sites=2, matrix=48)
    settings = RunSettings(num_server_rounds=1, local_epochs=1, cache_dir=str(cache_dir))
    options = CompareSettings(pretrain_studies=16, pretrain_rounds=1)
    cache = InputCache(PREPROCESS, cache_dir)
    started, arm = pretrain(plan, settings, options, tiny_federation, cache, tmp_path / "compare", Console(quiet=True))
    public = sorted((tmp_path / "data" / "public").iterdir())
    assert [p.name for p in public] == ["public-hospital-a", "public-hospital-b"]
    assert arm.kind == "pretrained" and arm.metrics["n"] == sum(len(Site(s).split("test")) for s in tiny_federation)
    model = Path(started.initial_model)
    assert model == tmp_path / "compare" / "pretrained" / "global_model.safetensors" and model.is_file()
    history = json.loads((model.parent / "history.json").read_text())
    n_train = sum(len(Site(s).masked(Site(s).split("train"))) for s in public)
    assert history["rounds"][-1]["train_examples"] == n_train  # trained on the public studies only


def test_pooled_training_follows_the_federations_learning_rate_schedule(
    tiny_federation, cache_dir, tmp_path, monkeypatch
):
    """Each block of pooled (or local-only) training gets the rate a federation's round of the same number
    gets, so the baselines compare like with like."""
    from fedaaa.simulations import baselines

    rates = []

    def record(model, data, settings, device, workers=None):
        rates.append(settings.learning_rate)
        return {"train-loss": 1.0, "num-examples": len(data.masked)}

    monkeypatch.setattr(baselines, "train_local", record)
    settings = RunSettings(num_server_rounds=3, learning_rate=1e-3, final_lr_factor=0.2, device="cpu")
    baselines.train_centralised(tiny_federation, tmp_path / "pooled", settings, InputCache(PREPROCESS, cache_dir))
    assert rates == pytest.approx([1e-3, 0.6e-3, 0.2e-3])
