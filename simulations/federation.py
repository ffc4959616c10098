"""Run a whole federation on one machine with Flower's simulation engine.

We start a private SuperLink in simulation mode (its own FLWR_HOME and a free loopback port), submit
the FedAAA app to it with ``flwr run``, stream its log, and stop the SuperLink and everything it
started when the run ends, so nothing is left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from fedaaa.common.config import RunSettings

ROUND_RE = re.compile(r"\[ROUND (\d+)/(\d+)\]")
STARTUP_TIMEOUT_S = 60


class FederationError(RuntimeError):
    """The simulated federation did not produce a model; the message says why in one line."""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def _toml_table(values: dict) -> str:
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def write_app_dir(folder: Path) -> Path:
    """A minimal Flower app: the components come from the installed FedAAA packages."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "fedaaa-simulation"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "fedaaa"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fedaaa.server.app:app"\nclientapp = "fedaaa.client.app:app"\n\n'
        "[tool.flwr.app.config]\n" + _toml_table(RunSettings().to_run_config())
    )
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"the SuperLink exited at start-up; see {log_file}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise FederationError(f"the SuperLink did not open port {port} within {STARTUP_TIMEOUT_S} s; see {log_file}")


def _live_processes() -> dict[int, tuple[int, str]]:
    """Running (not zombie) processes: pid -> (process group, command line), read from /proc on Linux."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(proc.name)] = (int(fields[2]), cmd)
    return found


def stop_process_tree(proc: subprocess.Popen, marker: str | None = None, grace_s: float = 0.0) -> None:
    """Stop a process we started in its own session, its process group, and the groups of every
    process whose command line holds ``marker``.

    The SuperLink launches the simulation process (which starts Ray and its workers) in a session
    of its own, whose command line names the SuperLink's address: that is how we find it. It is
    given ``grace_s`` to finish on its own (Ray's shutdown) before it is signalled.
    """

    def related() -> set[int]:
        procs = _live_processes()
        return {pgid for pid, (pgid, cmd) in procs.items() if marker and marker in cmd and pid != proc.pid}

    deadline = time.time() + grace_s
    while grace_s and related() and time.time() < deadline:
        time.sleep(0.3)
    groups = {proc.pid} | related()
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + wait
        while time.time() < deadline:
            live = {pgid for pgid, _ in _live_processes().values()}
            if proc.poll() is not None and not groups & live:
                return
            time.sleep(0.2)


def run_local_federation(
    sites: list[Path],
    output_dir: Path,
    settings: RunSettings,
    cpus_per_client: int | None = None,
    on_round: Callable[[int, int], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> dict:
    """Run ``settings.num_server_rounds`` FedAvg rounds over ``sites``; return the parsed history.json.

    ``on_round(k, n)`` is called as round k of n starts; ``on_line`` receives every log line.
    The full log is kept at ``output_dir/federation.log``.
    """
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.with_overrides(
        sites=",".join(str(Path(s).resolve()) for s in sites),
        output_dir=str(output_dir),
        min_nodes=min(settings.min_nodes, len(sites)),
    )
    cpus = cpus_per_client or max(1, os.cpu_count() or 1)
    gpus = 1.0 if settings.device != "cpu" and _cuda_available() else 0.0  # virtual hospitals take turns on one GPU
    log_file = output_dir / "federation.log"
    env = dict(os.environ)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for stale in ("global_model.safetensors", "history.json"):
        (output_dir / stale).unlink(missing_ok=True)

    # SIGTERM must unwind like Ctrl-C, so the finally blocks below stop what we started.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        return _run(sites, output_dir, settings, (cpus, gpus), log_file, env, on_round, on_line)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(
    sites: list[Path],
    output_dir: Path,
    settings: RunSettings,
    resources: tuple[int, float],
    log_file: Path,
    env: dict[str, str],
    on_round: Callable[[int, int], None] | None,
    on_line: Callable[[str], None] | None,
) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedaaa-flwr-") as tmp, log_file.open("w") as log:
        tmp = Path(tmp)
        env["FLWR_HOME"] = str(tmp / "home")
        port = free_port()
        (tmp / "home").mkdir()
        (tmp / "home" / "config.toml").write_text(
            '[superlink]\ndefault = "fedaaa"\n\n[superlink.fedaaa]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
            f"options.num-supernodes = {len(sites)}\n"
            f"options.backend.client-resources.num-cpus = {resources[0]}\n"
            f"options.backend.client-resources.num-gpus = {resources[1]}\n"
        )
        app_dir = write_app_dir(tmp / "app")
        (tmp / "run_config.toml").write_text(_toml_table(settings.to_run_config()))
        superlink = subprocess.Popen(
            [
                "flower-superlink",
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                ":flwr-in-memory:",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=tmp,
        )
        try:
            wait_for_port(port, superlink, log_file)
            tail = deque(maxlen=30)
            with subprocess.Popen(
                ["flwr", "run", str(app_dir), "fedaaa", "--run-config", str(tmp / "run_config.toml"), "--stream"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                cwd=tmp,
                start_new_session=True,
            ) as runner:
                try:
                    for line in runner.stdout:
                        log.write(line)
                        log.flush()
                        tail.append(line.rstrip())
                        if on_line:
                            on_line(line.rstrip())
                        m = ROUND_RE.search(line)
                        if m and on_round:
                            on_round(int(m.group(1)), int(m.group(2)))
                    runner.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                finally:
                    stop_process_tree(runner)
        finally:
            stop_process_tree(superlink, marker=f"127.0.0.1:{port}", grace_s=30.0)

    model = output_dir / "global_model.safetensors"
    if not model.is_file():
        errors = [line for line in tail if "error" in line.lower()]
        hint = (errors or list(tail) or ["no output"])[-1].strip()
        raise FederationError(f"the federation produced no model ({hint[:200]}); full log: {log_file}")
    return json.loads((output_dir / "history.json").read_text())
