"""Faults in a real deployment on loopback (TLS, node authentication, the commands the images run):

- a hospital that crashes mid-round: the round ends with those that answered within the round timeout, the
  hospital restarts and takes part again in the next round;
- a hospital that sends NaN weights, then an update scaled x100: both are rejected with a logged reason, and
  every round's model is exactly the average of the honest hospitals' updates (what a clean run without
  the bad hospital averages);
- a coordinator killed after round 1 and started again on the same output folder: it resumes at round 2,
  and the history is one continuous run with no round lost or counted twice; a DP hospital whose budget is
  spent refuses round 2 (still evaluating) while the other trains on.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from flwr.common.serde import recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedaaa.common.model import load_model
from fedaaa.common.model_file import read_model_file
from tests.deployment import ROOT, Deployment, crash, history, wait_for

pytestmark = pytest.mark.slow  # real SuperLinks and SuperNodes

# A ClientApp for the tests only: FedAAA's own hospital, except that the hospital whose site folder is named
# "mallory" trains honestly, then sends NaN weights in round 1 and its change scaled x100 from round 2 on.
FAULTY_APP = """
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from flwr.clientapp import ClientApp

from fedaaa.client.app import audit_mod, evaluate, train

app = ClientApp(mods=[audit_mod])
app.evaluate()(evaluate)


@app.train()
def poisoned_train(msg, context):
    reply = train(msg, context)
    if Path(str(context.node_config["data-path"])).name != "mallory":
        return reply
    sent = msg.content["arrays"].to_torch_state_dict()
    mine = reply.content["arrays"].to_torch_state_dict()
    if int(msg.content["config"]["server-round"]) == 1:
        bad = {k: torch.full_like(v, float("nan")) for k, v in mine.items()}
    else:
        bad = {k: sent[k] + 100 * (v - sent[k]) for k, v in mine.items()}
    reply.content["arrays"] = ArrayRecord(bad)
    return reply
"""


def _faulty_app(folder: Path) -> Path:
    """An app folder whose ClientApp is FAULTY_APP; the ServerApp and everything else is FedAAA's own."""
    folder.mkdir()
    project = (ROOT / "pyproject.toml").read_text()
    project = project.replace('clientapp = "fedaaa.client.app:app"', 'clientapp = "faulty_hospital:app"')
    project = re.sub(r"(?m)^fab-include = .*$", 'fab-include = ["faulty_hospital.py"]', project)
    (folder / "pyproject.toml").write_text(project)
    (folder / "faulty_hospital.py").write_text(textwrap.dedent(FAULTY_APP))
    return folder


def _sent(state: Path, kind: str, server_round: int) -> list[dict]:
    """The replies of that kind and round a hospital sent (from its audit folder), decoded."""
    found = []
    for path in sorted((state / "audit").glob(f"*-{kind}-round-{server_round}.json")):
        proto = ProtoRecordDict()
        proto.ParseFromString(path.with_suffix(".bin").read_bytes())
        content = recorddict_from_proto(proto)
        found.append(
            {
                "examples": int(content["metrics"]["num-examples"]),
                "state": content["arrays"].to_torch_state_dict() if "arrays" in content else None,
            }
        )
    return found


def _weighted_mean(replies: list[dict]) -> dict[str, torch.Tensor]:
    n = sum(r["examples"] for r in replies)
    return {k: sum(r["state"][k] * (r["examples"] / n) for r in replies) for k in replies[0]["state"]}


def test_a_crashed_hospital_and_a_poisoning_one_do_not_stop_or_spoil_the_federation(tiny_federation, tmp_path):
    dep = Deployment(tmp_path)
    out = tmp_path / "out"
    (tmp_path / "mallory").symlink_to(tiny_federation[0], target_is_directory=True)
    try:
        dep.init()
        dep.superlink()
        a = dep.hospital("hospital-a", tiny_federation[0])
        b = dep.hospital("hospital-b", tiny_federation[1])
        m = dep.hospital("mallory", tmp_path / "mallory")
        for config in (a, b, m):
            dep.start_hospital(config)
        activated = lambda: (tmp_path / "superlink.out").read_text().count("Activated node_id") >= 3  # noqa: E731
        wait_for(activated, 120, "the three hospitals to connect")  # a round waits for one only (min-hospitals 1)
        run = dep.start_run(
            out,
            "--rounds",
            "2",
            "--min-hospitals",
            "1",
            "--round-timeout",
            "45",
            "--set",
            "local-epochs=1",
            app=_faulty_app(tmp_path / "app"),
        )
        # hospital B crashes as soon as it has received round 1's training, then comes back
        received = lambda: "Receiving: train message" in (tmp_path / "hospital-b.out").read_text()  # noqa: E731
        wait_for(lambda: received() or run.poll() is not None, 240, "round 1")
        assert run.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
        crash("hospital-b-state")
        dep.start_hospital(b, log_name="hospital-b-restarted")
        assert run.wait(timeout=600) == 0, (tmp_path / "run.out").read_text()[-3000:]
    finally:
        dep.stop()

    rounds = history(out)["rounds"]
    first, second = rounds[1], rounds[2]
    # round 1: B's reply never came (it ended at the timeout), mallory's NaN was rejected: A alone trained
    assert first["train_sites"] == 1 and first["rejected_updates"] == 1
    # round 2: B is back; mallory's x100 update was rejected
    assert second["train_sites"] == 2 and second["rejected_updates"] == 1
    (rejected,) = [e["rejected"] for e in second["sites"] if "rejected" in e]
    assert "larger than the model itself" in rejected or "times the other updates' median" in rejected
    log = (tmp_path / "run.out").read_text()
    assert "NaN or infinite" in log and rejected in log
    assert (
        "trying again in" in (tmp_path / "hospital-b-restarted.out").read_text()
    )  # refused until B's old session expired

    # each round's model is exactly the average of the honest updates: a clean run's aggregate
    states = {name: tmp_path / f"{name}-state" for name in ("hospital-a", "hospital-b", "mallory")}
    (a1,) = _sent(states["hospital-a"], "train", 1)
    round1, _ = read_model_file(out / "checkpoints" / "round-001.safetensors")
    for k, v in a1["state"].items():
        torch.testing.assert_close(round1[k], v)
    honest2 = _sent(states["hospital-a"], "train", 2) + _sent(states["hospital-b"], "train", 2)
    assert len(honest2) == 2
    final = load_model(out / "global_model.safetensors").model.state_dict()
    for k, v in _weighted_mean(honest2).items():
        torch.testing.assert_close(final[k], v, rtol=1e-5, atol=1e-6)
    (bad1,) = _sent(states["mallory"], "train", 1)
    assert torch.isnan(next(iter(bad1["state"].values()))).all()  # it really did send NaN
    assert json.dumps(history(out)).count("mallory") == 0


def test_a_coordinator_killed_after_round_1_resumes_at_round_2_and_a_site_out_of_budget_stops(
    tiny_federation, tmp_path
):
    """Hospital B trains under DP and spends its whole budget in round 1 (dp-rounds 1). The coordinator's
    machine dies after round 1; restarted on the same folders, it resumes at round 2, where B refuses to train
    (its budget, filed under the run key the resumed run kept, is spent) but still validates, while A trains
    on. The history is one continuous run and shows B's epsilon by index."""
    dep = Deployment(tmp_path)
    out = tmp_path / "out"
    try:
        dep.init()
        link = dep.superlink()
        dep.start_hospital(dep.hospital("hospital-a", tiny_federation[0]))
        dep.start_hospital(dep.hospital("hospital-b", tiny_federation[1], **{"dp-epsilon": 4, "dp-rounds": 1}))
        run = dep.start_run(out, "--rounds", "2", "--set", "local-epochs=1")
        first = out / "checkpoints" / "round-001.safetensors"
        wait_for(lambda: first.is_file() or run.poll() is not None, 400, "round 1's checkpoint")
        assert run.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
        before = history(out)["rounds"]
        # the coordinator's machine goes down: SuperLink (and its ServerApp), its launcher, the run command
        crash(f"federation superlink --dir {dep.fed}", str(dep.fed / "state"), f"federation run --dir {dep.fed}")
        run.wait(timeout=30)
        assert link.wait(timeout=30) is not None
        # same federation folder: the registered hospitals and their keys are still known
        dep.superlink("superlink-restarted")
        resumed = dep.run(out, "--rounds", "2", "--set", "local-epochs=1")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    finally:
        dep.stop()

    rounds = history(out)["rounds"]
    assert [e["round"] for e in rounds] == [0, 1, 2]  # none lost, none twice
    assert rounds[1] == before[1]  # round 1 exactly as written before the crash
    assert rounds[2]["elapsed_s"] >= rounds[1]["elapsed_s"]  # one clock across the restart
    assert "resuming" in resumed.stdout + resumed.stderr
    assert load_model(out / "global_model.safetensors").round == 2

    first, second = rounds[1], rounds[2]
    (dp_first,) = [e for e in first["sites"] if "dp_epsilon" in e]
    assert not dp_first["dp_refused"] and 3.9 <= dp_first["dp_epsilon"] <= 4.0
    assert first["train_sites"] == 2 and first["dp_refused_sites"] == 0
    (dp_second,) = [e for e in second["sites"] if "dp_epsilon" in e]
    (plain_second,) = [e for e in second["sites"] if "dp_epsilon" not in e]
    assert dp_second["site"] == dp_first["site"]  # the same opaque index across the restart
    assert dp_second["dp_refused"] and dp_second["examples"] == 0
    assert dp_second["dp_epsilon"] == dp_first["dp_epsilon"]  # nothing more spent
    assert second["train_sites"] == 1 and second["dp_refused_sites"] == 1 and second["label_free_sites"] == 0
    assert plain_second["examples"] > 0 and second["val_sites"] == 2  # the refusing site still evaluates
    log = (tmp_path / "hospital-b-state" / "logs" / "supernode.log").read_text()
    assert "DP budget: not training" in log and "past this site's budget of 4" in log
    # one run in B's ledger across the restart (the coordinator's run key), never a fresh budget
    (ledger,) = json.loads((tmp_path / "hospital-b-state" / "privacy-ledger.json").read_text())["runs"].values()
    assert ledger["rounds_trained"] == [1]
