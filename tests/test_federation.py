"""The federation: what a hospital sends, a real 2-site Flower simulation, and predict on its model."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedaaa.client import app as client_app
from fedaaa.common.config import RunSettings
from fedaaa.common.model import AortaNet, load_model
from fedaaa.simulations.federation import run_local_federation

ROOT = Path(__file__).resolve().parents[1]


def _running_with(marker: str) -> list[str]:
    """Running (not zombie) processes whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and marker in cmd:
            found.append(f"{proc.name} {cmd[:100]}")
    return found


def test_pyproject_run_config_matches_typed_defaults():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        declared = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    assert RunSettings.from_run_config(declared) == RunSettings()
    assert set(declared) == set(RunSettings().to_run_config())


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages are built outside a Flower runtime here; give them the identity a runtime would."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _context(site: Path, cache: Path) -> Context:
    run_config = RunSettings(local_epochs=1, cache_dir=str(cache)).to_run_config()
    return Context(run_id=1, node_id=7, node_config={"data-path": str(site)}, state=RecordDict(), run_config=run_config)


def test_client_sends_only_weights_and_whitelisted_scalars(tiny_federation, cache_dir):
    model = AortaNet()
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1, "learning-rate": 1e-3})}
    )
    msg = Message(content=content, dst_node_id=7, message_type="train")
    reply = client_app.train(msg, _context(tiny_federation[0], cache_dir))
    metrics = dict(reply.content["metrics"])
    assert set(metrics) <= client_app.TRAIN_KEYS
    with (tiny_federation[0] / "manifest.csv").open(newline="") as fh:
        n_train = sum(1 for row in csv.DictReader(fh) if row["split"] == "train")
    assert metrics["num-examples"] == n_train  # examples, not batches
    new = reply.content["arrays"].to_torch_state_dict()
    assert set(new) == set(model.state_dict())
    assert any(not torch.equal(new[k], v) for k, v in model.state_dict().items())  # it trained

    eval_msg = Message(
        content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=7,
        message_type="evaluate",
    )
    stats = dict(client_app.evaluate(eval_msg, _context(tiny_federation[0], cache_dir)).content["metrics"])
    assert set(stats) <= client_app.EVALUATE_KEYS
    assert stats["tp"] + stats["fp"] + stats["tn"] + stats["fn"] == stats["num-examples"]
    leaked = json.dumps(stats) + json.dumps(metrics)
    assert "hospital-a" not in leaked and "a-00" not in leaked


def test_client_skips_a_broken_study_and_trains_on(tiny_federation, tmp_path):

    site = tmp_path / "site"
    shutil.copytree(tiny_federation[0], site)
    train_row = next(row for row in (site / "manifest.csv").read_text().splitlines() if ",train," in row)
    study = site / train_row.split(",")[1]
    for f in study.iterdir():
        f.write_bytes(b"garbage")
    client_app._LOADED.clear()
    msg = Message(
        content=RecordDict(
            {"arrays": ArrayRecord(AortaNet().state_dict()), "config": ConfigRecord({"server-round": 1})}
        ),
        dst_node_id=7,
        message_type="train",
    )
    from flwr.common.logger import FLOWER_LOGGER

    seen: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = seen.append  # what the node's log (Flower's handlers) receives
    FLOWER_LOGGER.addHandler(catcher)
    try:
        metrics = dict(client_app.train(msg, _context(site, tmp_path / "cache")).content["metrics"])
    finally:
        FLOWER_LOGGER.removeHandler(catcher)
    assert metrics["skipped-studies"] == 1 and metrics["num-examples"] >= 1
    skip_id = train_row.split(",")[0]
    assert [r.getMessage() for r in seen if r.name == "fedaaa.site" and f"skipped study {skip_id}" in r.getMessage()]
    client_app._LOADED.clear()


def _without_masks(site: Path, dest: Path) -> Path:
    """A copy of ``site`` whose manifest has no ``mask`` column: a hospital with report diameters only."""
    shutil.copytree(site, dest, ignore=shutil.ignore_patterns("masks"))
    with open(site / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c != "mask"]
    with open(dest / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return dest


@pytest.fixture(scope="module")
def federation_run(tiny_federation, cache_dir, tmp_path_factory):
    """Two hospitals: one with aorta labels, one with report diameters only."""
    out = tmp_path_factory.mktemp("run")
    unlabelled = _without_masks(tiny_federation[1], tmp_path_factory.mktemp("nomask") / "hospital-b")
    settings = RunSettings(num_server_rounds=2, local_epochs=1, cache_dir=str(cache_dir))
    history = run_local_federation([tiny_federation[0], unlabelled], out, settings)
    return out, history


@pytest.mark.slow
def test_simulation_writes_checkpoints_history_and_model(federation_run):
    out, history = federation_run
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    for r in history["rounds"][1:]:
        # the hospital without masks takes part (it validates) but trains nothing and is not averaged
        assert r["train_sites"] == 1 and r["label_free_sites"] == 1 and r["val_sites"] == 2
        assert r["train_examples"] > 0 and r["val_n"] >= 2 and 0 <= r["val_dice"] <= 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"round-00{i}.safetensors" for i in range(3)]
    resume = json.loads((out / "resume-state.json").read_text())  # what a restarted coordinator picks up
    assert set(resume) == {"run_key", "node_index", "histograms"} and "2" in resume["histograms"]
    mf = load_model(out / "global_model.safetensors")
    assert mf.round == 2
    final = load_model(out / "checkpoints" / "round-002.safetensors").model.state_dict()
    initial = load_model(out / "checkpoints" / "round-000.safetensors").model.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in mf.model.state_dict().items())
    assert any(not torch.equal(v, initial[k]) for k, v in final.items())
    assert "sites" not in history["settings"]  # no local paths in the shared record
    port = re.search(r"Runtime HTTP API on 127\.0\.0\.1:(\d+)", (out / "federation.log").read_text()).group(1)
    assert _running_with(f"127.0.0.1:{port}") == []  # the SuperLink, simulation and Ray are gone


def _fedaaa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedaaa.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_answers_in_order_and_refuses_bad_inputs(federation_run, tiny_federation, tmp_path):
    out, _ = federation_run
    good = sorted((tiny_federation[0] / "studies").iterdir())[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "image.dcm").write_bytes(np.random.default_rng(1).bytes(2048))
    mr = tmp_path / "mr"
    import shutil

    import pydicom

    shutil.copytree(good, mr)
    for f in mr.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)

    res = _fedaaa(
        "predict", str(good), str(empty), str(junk), str(mr), "--model", str(out / "global_model.safetensors"), "--json"
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    answers = [json.loads(line) for line in res.stdout.splitlines()]
    assert [a["input"] for a in answers] == [str(good), str(empty), str(junk), str(mr)]
    ok = answers[0]  # a 2-round model: the aorta is measured, or the answer says why not, never a guess
    assert isinstance(ok["aorta_found"], bool) and isinstance(ok["measurable"], bool)
    assert isinstance(ok["warnings"], list)
    if ok["measurable"]:
        assert isinstance(ok["aaa_present"], bool) and 0 <= ok["aaa_probability"] <= 1
        assert 5 < ok["max_diameter_mm"] < 150 and ok["category"] and len(ok["location"]["ras_mm"]) == 3
    else:
        assert ok["reason"] and ok["max_diameter_mm"] is None and ok["aaa_present"] is None
    assert "empty folder" in answers[1]["error"]
    assert "no readable DICOM" in answers[2]["error"]
    assert "modality MR" in answers[3]["error"]

    only_good = _fedaaa("predict", str(good), "--model", str(out / "global_model.safetensors"))
    assert (
        only_good.returncode == 0
        and any(text in only_good.stdout for text in ("maximum diameter", "not measurable", "aorta not found"))
        and "not a medical device" in only_good.stdout
    )


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    res = _fedaaa("predict", str(tmp_path), "--model", str(tmp_path / "missing.safetensors"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "missing.safetensors" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
