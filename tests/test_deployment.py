"""A real deployment on loopback: a SuperLink, two SuperNodes whose site folders arrive through node config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedaaa.common.model import load_model
from fedaaa.common.site import Site
from fedaaa.simulations.federation import free_port, stop_process_tree, wait_for_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a real SuperLink and two SuperNodes


def _start(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_superlink_and_two_supernodes_train_a_round(tiny_federation, cache_dir, tmp_path):
    port = free_port()
    started: list[tuple[subprocess.Popen, str]] = []
    try:
        link = _start(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            tmp_path / "link",
            tmp_path / "superlink.log",
        )
        started.append((link, f"127.0.0.1:{port}"))
        wait_for_port(port, link, tmp_path / "superlink.log")
        # node 0 starts with an empty cache and decodes in 2 spawned worker processes inside its ClientApp
        node_config = [
            f'data-path="{tiny_federation[0]}" cache-dir="{tmp_path / "node0-cache"}" decode-workers=2',
            # node 1 opts in to DP in its own node config; its ledger lives in its own state folder
            f'data-path="{tiny_federation[1]}" cache-dir="{cache_dir}" state-dir="{tmp_path / "node1-state"}" '
            "dp-epsilon=5 dp-max-grad-norm=0.5",
        ]
        for i in range(len(tiny_federation)):
            node_port = free_port()
            node = _start(
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(node_port),
                    "--node-config",
                    node_config[i],
                ],
                tmp_path / f"node{i}",
                tmp_path / f"node{i}.log",
            )
            started.append((node, f"127.0.0.1:{node_port}"))
        (tmp_path / "link" / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        out = tmp_path / "out"
        env = dict(os.environ, FLWR_HOME=str(tmp_path / "link"), FLWR_TELEMETRY_ENABLED="0")
        # exactly what the README tells a coordinator: `flwr run .` from the repository root
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "test",
                "--stream",
                "--run-config",
                f'num-server-rounds=2 local-epochs=1 output-dir="{out}"',
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=400,
        )
        assert (out / "global_model.safetensors").is_file(), run.stdout[-3000:]
    finally:
        for proc, marker in reversed(started):
            stop_process_tree(proc, marker=marker)

    history = json.loads((out / "history.json").read_text())
    last = history["rounds"][-1]
    n_train = sum(len(Site(s).split("train")) for s in tiny_federation)
    n_val = sum(len(Site(s).split("val")) for s in tiny_federation)
    assert last["train_sites"] == 2 and last["train_examples"] == n_train
    assert last["val_sites"] == 2 and last["val_n"] == n_val
    assert load_model(out / "global_model.safetensors").round == 2
    site = Site(tiny_federation[0])
    cached = [p for p in (tmp_path / "node0-cache").glob("*.npy") if not p.name.endswith(".label.npy")]
    labels = list((tmp_path / "node0-cache").glob("*.label.npy"))
    assert len(cached) == len(site.split("train")) + len(site.split("val"))
    assert len(labels) == len(site.masked(site.split("train") + site.split("val")))  # each label beside its input

    # DP at node 1: each message ran in a fresh ClientApp process, yet the epsilon each reply carried is the
    # accountant's figure for all the steps taken so far, read back from the site's own ledger
    from opacus.accountants import RDPAccountant

    (ledger,) = json.loads((tmp_path / "node1-state" / "privacy-ledger.json").read_text())["runs"].values()
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
