"""A real deployment on loopback, started with the same commands the container images run:

``fedaaa federation init`` / ``superlink`` / ``add-site --register`` / ``run`` at the coordinator and
``fedaaa hospital start --config hospital.toml`` at each hospital: a SuperLink with TLS and node
authentication, two registered SuperNodes on their own synthetic site folders. An unregistered node and a
plaintext client are refused, and every message the hospitals send is audited for what it may carry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pydicom
import pytest

from fedaaa.client.app import EVALUATE_KEYS, TRAIN_KEYS
from fedaaa.common.model import load_model
from fedaaa.common.site import Site
from tests.deployment import Deployment

pytestmark = pytest.mark.slow  # a real SuperLink and SuperNodes


def _identifiers(site: Path) -> set[str]:
    """What would identify a patient or study at this site: from its own DICOM headers, plus its study ids
    and paths."""
    found = {str(site)}
    for study in Site(site).studies:
        found |= {study.study_id, str(site / study.path)}
        for f in sorted(p for p in (site / study.path).rglob("*") if p.is_file())[:3]:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            except Exception:
                continue
            for tag in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                value = str(ds.get(tag, "") or "")
                if len(value) >= 6:
                    found.add(value)
    return found


def test_tls_node_auth_federation_refuses_strangers_and_sends_only_weights_and_whitelisted_figures(
    tiny_federation, cache_dir, tmp_path
):
    dep = Deployment(tmp_path)
    out = tmp_path / "out"
    try:
        dep.init()
        dep.superlink()
        configs = [
            # node 0 starts with an empty cache (its state folder's) and decodes in 2 worker processes
            dep.hospital("hospital-a", tiny_federation[0], **{"decode-workers": 2}),
            # node 1 opts in to DP in its own settings; its ledger lives in its own state folder
            dep.hospital(
                "hospital-b",
                tiny_federation[1],
                **{"cache-dir": str(cache_dir), "dp-epsilon": 5, "dp-max-grad-norm": 0.5},
            ),
        ]
        for config in configs:
            dep.start_hospital(config)

        # a node whose key was never registered is refused at once
        rogue = dep.start_hospital(
            dep.hospital("stranger", tiny_federation[0], register=False, **{"rejoin-attempts": 0})
        )
        assert rogue.wait(timeout=90) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "stranger.out").read_text()
        # a plaintext client cannot talk to the SuperLink at all
        plain = dep.start_hospital(
            dep.hospital(
                "plain", tiny_federation[0], register=False, insecure=True, **{"max-retries": 1, "rejoin-attempts": 0}
            )
        )
        assert plain.wait(timeout=90) != 0
        assert "could not establish a connection" in (tmp_path / "plain.out").read_text()

        # exactly what docs/coordinator.md tells a coordinator to run
        run = dep.run(out, "--rounds", "2", "--set", "local-epochs=1")
        assert (out / "global_model.safetensors").is_file(), run.stdout[-3000:] + run.stderr[-2000:]
    finally:
        dep.stop()

    history = json.loads((out / "history.json").read_text())
    last = history["rounds"][-1]
    n_train = sum(len(Site(s).split("train")) for s in tiny_federation)
    n_val = sum(len(Site(s).split("val")) for s in tiny_federation)
    assert last["train_sites"] == 2 and last["train_examples"] == n_train and last["rejected_updates"] == 0
    assert last["val_sites"] == 2 and last["val_n"] == n_val
    assert load_model(out / "global_model.safetensors").round == 2
    site = Site(tiny_federation[0])
    cache_a = tmp_path / "hospital-a-state" / "cache"
    cached = [p for p in cache_a.glob("*.npy") if not p.name.endswith(".label.npy")]
    labels = list(cache_a.glob("*.label.npy"))
    assert len(cached) == len(site.split("train")) + len(site.split("val"))
    assert len(labels) == len(site.masked(site.split("train") + site.split("val")))  # each label beside its input
    assert (tmp_path / "hospital-a-state" / "logs" / "supernode.log").stat().st_size > 0  # logs in the state

    # DP at node 1: each message ran in a fresh ClientApp process, yet the epsilon each reply carried is the
    # accountant's figure for all the steps taken so far, read back from the site's own ledger
    from opacus.accountants import RDPAccountant

    (ledger,) = json.loads((tmp_path / "hospital-b-state" / "privacy-ledger.json").read_text())["runs"].values()
    assert ledger["rounds_trained"] == [1, 2] and ledger["max_grad_norm"] == 0.5
    ((sigma, q, steps),) = ledger["history"]  # one entry: same noise and rate, the steps of both rounds
    per_round = steps // 2
    for k in (1, 2):
        (entry,) = [e for e in history["rounds"][k]["sites"] if "dp_epsilon" in e]
        accountant = RDPAccountant()
        accountant.history = [(sigma, q, k * per_round)]
        assert entry["dp_epsilon"] == pytest.approx(accountant.get_epsilon(ledger["delta"]), rel=1e-5)
        assert not entry["dp_refused"] and entry["dp_target_epsilon"] == 5
    assert 4.9 <= entry["dp_epsilon"] <= 5.0
    assert str(tiny_federation[1]) not in json.dumps(history)  # sites by index, never by path

    # Privacy audit: every message each hospital sent (2 rounds x train + evaluate) holds the model's arrays
    # and whitelisted scalar figures only; none of the site's identifiers is in its messages or its logs.
    names = {k: list(v.shape) for k, v in load_model(out / "global_model.safetensors").model.state_dict().items()}
    weight_bytes = sum(4 * math.prod(s) for s in names.values())
    for config, data in zip(configs, tiny_federation):
        state = tmp_path / f"{config.stem}-state"
        sent = sorted((state / "audit").glob("*.json"))
        assert sorted(json.loads(p.read_text())["message_type"] for p in sent) == ["evaluate"] * 2 + ["train"] * 2
        secrets = _identifiers(data)
        assert len(secrets) > 10
        for summary_path in sent:
            summary = json.loads(summary_path.read_text())
            assert "error" not in summary and not any(summary["configs"].values())
            assert set(summary["metrics"]) == {"metrics"}
            if summary["message_type"] == "train":
                assert set(summary["arrays"]) == {"arrays"}
                assert {k: v["shape"] for k, v in summary["arrays"]["arrays"].items()} == names
                assert {v["dtype"] for v in summary["arrays"]["arrays"].values()} == {"float32"}
                assert set(summary["metrics"]["metrics"]) <= TRAIN_KEYS
                assert summary["bytes"] < weight_bytes + 64 * 1024  # nothing rides along beside the weights
            else:
                assert not summary["arrays"] and set(summary["metrics"]["metrics"]) <= EVALUATE_KEYS
                assert summary["bytes"] < 64 * 1024
            for value in summary["metrics"]["metrics"].values():
                assert isinstance(value, int | float) or (isinstance(value, list) and len(value) >= 50)  # histograms
            payload = summary_path.with_suffix(".bin").read_bytes()
            assert len(payload) == summary["bytes"]
            leaked = [s for s in secrets if s.encode() in payload]
            assert not leaked, leaked
        logs = (state / "logs" / "supernode.log").read_text() + (tmp_path / f"{config.stem}.out").read_text()
        assert "round 2: trained on" in logs
        leaked = [s for s in secrets if s in logs and not s.startswith(str(data))]  # its own folder it may name
        assert not leaked, leaked
