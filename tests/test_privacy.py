"""Differential privacy at a hospital: the network under Opacus, the budget, the ledger across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fedaaa.client import app as client_app
from fedaaa.common.config import RunSettings
from fedaaa.common.errors import ConfigError
from fedaaa.common.model import AortaNet
from fedaaa.common.privacy import (
    LEDGER_FILE,
    LedgerStore,
    PrivacySettings,
    check_network,
    steps_per_round,
    train_private,
)
from fedaaa.common.settings import ArchSettings, TrainSettings
from fedaaa.common.site import StudySet

ARCH = ArchSettings(patch_size=(32, 32, 16))  # small patches: these tests are about accounting, not accuracy
TRAIN = TrainSettings(local_epochs=1, batch_size=3)


def _studies(n: int = 7, seed: int = 0) -> StudySet:
    """``n`` labelled volumes: a bright tube (the 'aorta') in noise."""
    g = torch.Generator().manual_seed(seed)
    data = StudySet(spacing_mm=(1.5, 1.5, 3.0))
    for _ in range(n):
        image = 0.2 * torch.rand(1, 40, 40, 24, generator=g)
        label = torch.zeros(1, 40, 40, 24)
        label[0, 16:24, 16:24, :] = 1
        data.add(image + 0.6 * label, label, 0, 20.0)
    return data


def _opacus_epsilon(history: list[list], delta: float) -> float:
    """Opacus' own accountant, fed the steps taken (independently of fedaaa's ledger code)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta)


def test_network_has_no_batchnorm_and_opacus_accepts_it_as_it_is():
    for arch in (ArchSettings(), ArchSettings(res_units=1)):
        model = AortaNet(arch)
        assert not [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert not [m for m in model.modules() if getattr(m, "inplace", False)]
        check_network(model)  # Opacus' ModuleValidator: no errors, nothing swapped
    with pytest.raises(ConfigError, match="cannot train under Opacus"):
        check_network(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2)))


def test_a_private_round_returns_the_global_models_names_shapes_and_dtypes(tmp_path):
    model = AortaNet(ARCH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics, outcome = train_private(
        model, _studies(), TRAIN, torch.device("cpu"), PrivacySettings(8.0), LedgerStore(tmp_path), "run", 1, 3
    )
    after = model.state_dict()
    assert outcome.trained and metrics["num-examples"] == 7
    assert list(after) == list(before)  # exactly the global model's names: no "_module." prefix
    assert all(after[k].shape == v.shape and after[k].dtype == v.dtype for k, v in before.items())
    assert any(not torch.equal(after[k], v) for k, v in before.items())  # it stepped
    # Opacus is gone from the network: no hooks, no per-sample gradients left behind
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
    assert AortaNet(ARCH).load_state_dict(after)  # loads strictly into a fresh network


def test_the_ledger_is_cumulative_across_fresh_processes_and_matches_opacus(tmp_path):
    """Each round in a new Python process (as a deployed ClientApp runs every message): the epsilon reported
    after round k is Opacus' figure for all k rounds' steps, not one round's."""
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_privacy import ARCH, TRAIN, _studies
        from fedaaa.common.model import AortaNet
        from fedaaa.common.privacy import LedgerStore, PrivacySettings, train_private
        r = int(sys.argv[1])
        metrics, out = train_private(AortaNet(ARCH), _studies(), TRAIN, torch.device("cpu"),
                                     PrivacySettings(3.0), LedgerStore(sys.argv[2]), "run-7", r, 3)
        print(json.dumps({{"trained": out.trained, "epsilon": out.epsilon}}))
        """
    )
    reported = []
    for r in (1, 2, 3):
        done = subprocess.run(
            [sys.executable, "-c", script, str(r), str(tmp_path)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        reported.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())["runs"]["run-7"]
    q, steps = steps_per_round(7, TRAIN)
    assert [r["trained"] for r in reported] == [True, True, True]
    assert ledger["rounds_trained"] == [1, 2, 3]
    assert sum(n for _, _, n in ledger["history"]) == 3 * steps and ledger["history"][0][1] == pytest.approx(q)
    sigma, delta = ledger["noise_multiplier"], ledger["delta"]
    for k, r in enumerate(reported, start=1):
        assert r["epsilon"] == pytest.approx(_opacus_epsilon([[sigma, q, k * steps]], delta), rel=1e-9)
    assert reported[2]["epsilon"] > 1.5 * _opacus_epsilon([[sigma, q, steps]], delta)  # not one round's figure
    assert 3.0 - 0.05 <= reported[2]["epsilon"] <= 3.0  # the planned run spends its budget, and no more
    assert delta < 1 / 7
    assert oct((tmp_path / LEDGER_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_round_past_the_budget_is_refused_and_a_repeated_round_costs_nothing(tmp_path):
    model, data, store = AortaNet(ARCH), _studies(), LedgerStore(tmp_path)
    privacy = PrivacySettings(2.0, rounds=1)  # the site spends its budget in one round of a longer run

    def round_(r: int) -> tuple[dict, object]:
        return train_private(model, data, TRAIN, torch.device("cpu"), privacy, store, "run", r, planned_rounds=5)

    metrics, first = round_(1)
    assert first.trained and 1.9 <= first.epsilon <= 2.0
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again, repeated = round_(1)  # the same round's message delivered twice
    assert not repeated.trained and repeated.epsilon == first.epsilon and "already trained" in repeated.reason
    metrics, second = round_(2)
    assert not second.trained and metrics == {"train-loss": 0.0, "num-examples": 0}
    assert second.epsilon == first.epsilon and "past this site's budget of 2" in second.reason
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # nothing trained
    ledger = store.load("run")
    assert ledger.rounds_trained == [1] and ledger.rounds_refused == [2] and ledger.epsilon() == first.epsilon


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"dp-epsilon": "-1"}, "dp-epsilon must be a number in (0, 100]"),
        ({"dp-epsilon": "nan"}, "dp-epsilon must be a number in"),
        ({"dp-epsilon": "eight"}, "dp-epsilon must be a number, not 'eight'"),
        ({"dp-epsilon": "8", "dp-delta": "1.5"}, "dp-delta must be a number in (0, 1]"),
        ({"dp-epsilon": "8", "dp-max-grad-norm": "0"}, "dp-max-grad-norm must be a number in"),
        ({"dp-epsilon": "8", "dp-rounds": "2.5"}, "dp-rounds must be a whole number"),
        ({"dp-delta": "1e-5"}, "sets dp-delta but not dp-epsilon"),
    ],
)
def test_bad_privacy_settings_are_one_sentence(config, problem):
    with pytest.raises(ConfigError) as err:
        PrivacySettings.from_node_config(config)
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_privacy_settings_and_delta():
    assert PrivacySettings.from_node_config({}) is None
    assert PrivacySettings.from_node_config({"dp-epsilon": "0"}) is None
    chosen = PrivacySettings.from_node_config({"dp-epsilon": "8", "dp-delta": "1e-4", "dp-max-grad-norm": 2})
    assert chosen == PrivacySettings(8.0, 1e-4, 2.0)
    assert PrivacySettings(8.0).delta_for(200) == pytest.approx(0.1 / 200)  # below 1 / N by default
    with pytest.raises(ConfigError, match=r"must be below 1/\(training studies\)"):
        PrivacySettings(8.0, delta=0.01).delta_for(200)


def _context(node_config: dict, **run: object) -> Context:
    return Context(
        run_id=1, node_id=3, node_config=node_config, state=RecordDict(), run_config=RunSettings(**run).to_run_config()
    )


def test_only_the_hospital_sets_its_privacy():
    settings = RunSettings(sim_dp_epsilon="8")
    deployed = _context({"data-path": "/data/site"}, sim_dp_epsilon="8")
    assert client_app.site_privacy(deployed, settings) is None  # the coordinator's run config cannot turn DP on
    own = _context({"data-path": "/data/site", "dp-epsilon": "3", "dp-delta": "1e-6"})
    assert client_app.site_privacy(own, RunSettings()) == PrivacySettings(3.0, 1e-6)
    simulated = RunSettings(sim_dp_epsilon="8,0", sim_dp_rounds=2)
    assert client_app.site_privacy(_context({"partition-id": 0}), simulated) == PrivacySettings(8.0, rounds=2)
    assert client_app.site_privacy(_context({"partition-id": 1}), simulated) is None
    with pytest.raises(ConfigError, match="sim-dp-epsilon"):
        RunSettings(sim_dp_epsilon="8,x").validate()


def test_a_damaged_ledger_stops_training_with_one_sentence(tmp_path):
    (tmp_path / LEDGER_FILE).write_text('{"runs": {"run": {"run": "run", "delta": "x"}}}')
    with pytest.raises(ConfigError, match="privacy ledger is damaged; refusing to train"):
        LedgerStore(tmp_path).load("run")
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON; refusing to train"):
        LedgerStore(tmp_path).load("run")
