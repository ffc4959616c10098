"""A real deployment on loopback for the tests: the coordinator's federation folder, its SuperLink and the
hospitals, all started with the commands the container images run, and all stopped by
:meth:`Deployment.stop` (also when a test fails)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedaaa.simulations.federation import _live_processes, free_port, stop_process_tree, wait_for_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
FEDAAA = str(BIN / "fedaaa")


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


class Deployment:
    """A coordinator's federation folder, its SuperLink and hospitals, all stopped by :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fed = root / "fed"
        self.port = free_port()
        self.started: list[tuple[subprocess.Popen, list[str]]] = []

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [FEDAAA, *args], capture_output=True, text=True, env=_env(self.root / "home"), timeout=timeout, cwd=ROOT
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def spawn(self, args: list[str], log: Path, markers: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            args,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=_env(self.root / "home"),
            start_new_session=True,
            cwd=ROOT,
        )
        self.started.append((proc, markers))
        return proc

    def init(self) -> None:
        self.cli("federation", "init", "--dir", str(self.fed), "--address", "127.0.0.1", "--port", str(self.port))

    def superlink(self, log_name: str = "superlink") -> subprocess.Popen:
        log = self.root / f"{log_name}.out"
        link = self.spawn(
            [FEDAAA, "federation", "superlink", "--dir", str(self.fed), "--port", str(self.port)],
            log,
            [f"127.0.0.1:{self.port}", str(self.fed)],
        )
        wait_for_port(self.port, link, log)
        return link

    def hospital(self, name: str, data: Path, register: bool = True, **settings: object) -> Path:
        """A hospital.toml for ``name`` (key pair made and, with ``register``, registered)."""
        if register:
            self.cli("federation", "add-site", name, "--dir", str(self.fed), "--register")
            key, ca = self.fed / "sites" / name / "auth.key", self.fed / "sites" / name / "ca.crt"
        else:  # a key the SuperLink never saw
            self.cli("federation", "keygen", "--out", str(self.root / name))
            key, ca = self.root / name / "auth.key", self.fed / "ca" / "ca.crt"
        lines = {
            "superlink": f"127.0.0.1:{self.port}",
            "ca-certificate": str(ca),
            "auth-key": str(key),
            "data-path": str(data),
            "state-dir": str(self.root / f"{name}-state"),
            "clientapp-port": free_port(),
            "audit": True,
            **settings,
        }
        config = self.root / f"{name}.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items()))
        return config

    def start_hospital(self, config: Path, log_name: str | None = None) -> subprocess.Popen:
        name = config.stem
        port = next(line for line in config.read_text().splitlines() if line.startswith("clientapp-port"))
        return self.spawn(
            [FEDAAA, "hospital", "start", "--config", str(config)],
            self.root / f"{log_name or name}.out",
            [f"{name}-state", f"127.0.0.1:{port.split('=')[1].strip()}"],
        )

    def run(
        self, output: Path, *args: str, app: Path | None = None, timeout: float = 400
    ) -> subprocess.CompletedProcess:
        """``fedaaa federation run`` as docs/coordinator.md tells a coordinator to run it."""
        extra = ["--app", str(app)] if app else []
        return subprocess.run(
            [FEDAAA, "federation", "run", "--dir", str(self.fed), "--output-dir", str(output), *extra, *args],
            capture_output=True,
            text=True,
            env=_env(self.root / "home"),
            cwd=ROOT,
            timeout=timeout,
        )

    def start_run(self, output: Path, *args: str, app: Path | None = None) -> subprocess.Popen:
        """The same, in the background (its output in ``run.out``)."""
        extra = ["--app", str(app)] if app else []
        return self.spawn(
            [FEDAAA, "federation", "run", "--dir", str(self.fed), "--output-dir", str(output), *extra, *args],
            self.root / "run.out",
            [],
        )

    def stop(self) -> None:
        for proc, markers in reversed(self.started):
            for marker in markers:
                stop_process_tree(proc, marker=marker)


def crash(*markers: str) -> None:
    """SIGKILL every process whose command line holds one of ``markers``, and its process group: a machine
    that lost power, not a clean stop."""
    groups = {
        pgid for pid, (pgid, cmd) in _live_processes().items() if any(m in cmd for m in markers) and pid != os.getpid()
    }
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def history(output: Path) -> dict:
    return json.loads((output / "history.json").read_text())
