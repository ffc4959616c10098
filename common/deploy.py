"""How each role starts its Flower process: one place that turns a role's settings into a command line.

The same functions serve ``fedaaa federation superlink``, ``fedaaa hospital start``, the loopback tests and
the container images' entrypoints, so what is tested is what runs at a hospital.

- The coordinator's SuperLink serves TLS with the federation's certificate and admits only registered
  hospitals (node authentication). Plaintext exists only behind ``--insecure``, which says so loudly.
- A hospital's settings come from one small TOML file, overridden by ``FEDAAA_*`` environment variables
  (``data-path`` -> ``FEDAAA_DATA_PATH``), overridden by flags; nothing else is edited.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from fedaaa.common.errors import ConfigError
from fedaaa.common.pki import FederationFiles, server_addresses

log = logging.getLogger("fedaaa.deploy")

DEFAULT_PORT = 9092
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
INSECURE_WARNING = (
    "WARNING: INSECURE MODE: no TLS and no node authentication. Anyone who can reach this port can read the "
    "model and join the federation. Use it only for a local trial on synthetic data."
)
CONNECTION = "fedaaa"  # the coordinator's connection name in FLWR_HOME/config.toml


def flower_env(home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process: telemetry and update checks off; its own FLWR_HOME."""
    env = dict(os.environ) | FLOWER_ENV
    if home is not None:
        env["FLWR_HOME"] = str(home)
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def _flower_bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


# --------------------------------------------------------------------------------------------- coordinator
def write_connection(files: FederationFiles, address: str, insecure: bool = False) -> Path:
    """``FLWR_HOME/config.toml`` naming the SuperLink for the coordinator's ``flwr`` commands."""
    files.flwr_home.mkdir(parents=True, exist_ok=True)
    trust = "insecure = true" if insecure else f'root-certificates = "{files.ca_cert.resolve()}"'
    path = files.flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{trust}\n'
    )
    return path


def superlink_command(
    files: FederationFiles, host: str = "127.0.0.1", port: int = DEFAULT_PORT, insecure: bool = False
) -> list[str]:
    """``flower-superlink``: TLS with the federation's certificate, node authentication, a database in the
    federation folder (registered hospitals and runs survive a restart), no runtime installs."""
    cmd = [
        _flower_bin("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
        "--database",
        str((files.root / "state" / "superlink.db").resolve()),
    ]
    if insecure:
        return cmd + ["--insecure"]
    for path in (files.ca_cert, files.server_cert, files.server_key):
        if not path.is_file():
            raise ConfigError(f"{path}: missing; run `fedaaa federation init` first")
    return cmd + [
        "--ssl-ca-certfile",
        str(files.ca_cert.resolve()),
        "--ssl-certfile",
        str(files.server_cert.resolve()),
        "--ssl-keyfile",
        str(files.server_key.resolve()),
        "--enable-supernode-auth",
    ]


def coordinator_address(files: FederationFiles, port: int = DEFAULT_PORT) -> str:
    """The first address in the SuperLink's certificate, with the port."""
    return f"{server_addresses(files.server_cert)[0]}:{port}"


def register_command(files: FederationFiles, public_key: Path) -> list[str]:
    return [_flower_bin("flwr"), "supernode", "register", str(public_key.resolve()), CONNECTION]


def run_command(app_dir: Path, run_config: Mapping[str, Any]) -> list[str]:
    """``flwr run APP fedaaa --stream --run-config ...`` with the coordinator's settings."""
    return [
        _flower_bin("flwr"),
        "run",
        str(app_dir),
        CONNECTION,
        "--stream",
        "--run-config",
        " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items()),
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------------------------ hospital
@dataclass
class HospitalConfig:
    """Everything a hospital sets. Keys in the TOML file are these names in kebab-case."""

    superlink: str = ""  # the coordinator's address, host:port
    ca_certificate: str = ""  # the federation's CA certificate (from the coordinator)
    auth_key: str = ""  # this hospital's private node key (from `fedaaa federation add-site`)
    data_path: str = ""  # the site folder (manifest.csv and studies), read-only
    state_dir: str = ""  # writable: input cache, privacy ledger, logs
    cache_dir: str = ""  # default STATE_DIR/cache
    device: str = "auto"  # auto, cpu, cuda, cuda:1
    decode_workers: int = 1
    loader_workers: int = -1  # processes augmenting training patches; -1: none on a CPU, up to 8 beside a GPU
    clientapp_port: int = 9094  # the SuperNode's local port for its ClientApp processes (loopback only)
    dp_epsilon: float = 0.0  # 0: no differential privacy; otherwise the target epsilon for the run
    dp_delta: float = 0.0  # 0: 0.1 / training studies
    dp_max_grad_norm: float = 0.0  # 0: the default clipping norm
    dp_rounds: int = 0  # 0: spread the budget over all the run's rounds
    rejoin_attempts: int = 8  # a refused activation (its previous session not yet expired) is retried this often
    max_retries: int = 0  # connection attempts before giving up (0: keep trying, e.g. while the coordinator restarts)
    audit: bool = False  # write every message this site sends to STATE_DIR/audit (for the privacy officer)
    insecure: bool = False  # local trials only: plaintext, no node authentication
    sources: list[str] = field(default_factory=list)  # where the values came from (for the start-up line)

    @classmethod
    def load(
        cls, path: Path | None, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> HospitalConfig:
        """The file, then ``FEDAAA_<KEY>`` environment variables, then ``overrides`` (flags), validated."""
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls) if f.name != "sources"}
        values: dict[str, Any] = {}
        sources = []
        if path is not None:
            try:
                doc = tomllib.loads(Path(path).read_text())
            except OSError as err:
                raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: not valid TOML ({err})") from None
            for key, value in doc.items():
                name = key.replace("-", "_")
                if name not in known:
                    raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(_kebab(known))})")
                values[name] = value
            sources.append(str(path))
        for name in known:
            var = "FEDAAA_" + name.upper()
            if env.get(var, "") != "":
                values[name] = env[var]
                sources.append(var)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        config = cls(sources=sources)
        for name, value in values.items():
            typ = type(getattr(config, name))
            try:
                if typ is bool:
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                setattr(config, name, typ(value))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"hospital setting {name.replace('_', '-')} must be {typ.__name__}, not {value!r}"
                ) from None
        config.validate()
        return config

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", self.superlink):
            raise ConfigError(f"superlink must be the coordinator's host:port, not {self.superlink!r}")
        data = Path(self.data_path)
        if not data.is_absolute() or not (data / "manifest.csv").is_file():
            raise ConfigError(f"data-path {self.data_path!r}: not an absolute site folder with a manifest.csv")
        if not Path(self.state_dir).is_absolute():
            raise ConfigError(f"state-dir {self.state_dir!r}: give the absolute path of a writable folder")
        if self.cache_dir and not Path(self.cache_dir).is_absolute():
            raise ConfigError(f"cache-dir {self.cache_dir!r}: give an absolute path")
        numbers = (self.dp_epsilon, self.dp_delta, self.dp_max_grad_norm, self.dp_rounds, self.max_retries)
        if not -1 <= self.loader_workers <= 64:
            raise ConfigError(f"loader-workers must be -1 (automatic) to 64, not {self.loader_workers}")
        if min(*numbers, self.rejoin_attempts) < 0:
            raise ConfigError(
                "dp-epsilon, dp-delta, dp-max-grad-norm, dp-rounds, max-retries and rejoin-attempts cannot be negative"
            )
        if self.insecure:
            return
        for key, value in (("ca-certificate", self.ca_certificate), ("auth-key", self.auth_key)):
            if not value or not Path(value).is_file():
                raise ConfigError(f"{key} {value!r}: no such file (or set insecure = true for a local trial)")
        mode = stat.S_IMODE(Path(self.auth_key).stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"auth-key {self.auth_key}: readable by others (mode {mode:o}); chmod 600 it")

    def node_config(self) -> str:
        """The SuperNode's ``--node-config``: what the ClientApp reads as ``context.node_config``."""
        state = Path(self.state_dir)
        items: dict[str, Any] = {
            "data-path": self.data_path,
            "state-dir": str(state),
            "cache-dir": self.cache_dir or str(state / "cache"),
            "device": self.device,
            "decode-workers": self.decode_workers,
        }
        if self.loader_workers >= 0:
            items["loader-workers"] = self.loader_workers
        if self.audit:
            items["audit-dir"] = str(state / "audit")
        if self.dp_epsilon > 0:
            items["dp-epsilon"] = self.dp_epsilon
            for key in ("dp_delta", "dp_max_grad_norm", "dp_rounds"):
                if getattr(self, key) > 0:
                    items[key.replace("_", "-")] = getattr(self, key)
        return " ".join(f"{k}={_toml_value(v)}" for k, v in items.items())

    def supernode_command(self) -> list[str]:
        cmd = [
            _flower_bin("flower-supernode"),
            "--superlink",
            self.superlink,
            "--port",
            str(self.clientapp_port),
            "--node-config",
            self.node_config(),
        ]
        if self.max_retries > 0:
            cmd += ["--max-retries", str(self.max_retries)]
        if self.insecure:
            return cmd + ["--insecure"]
        return cmd + ["--root-certificates", self.ca_certificate, "--auth-supernode-private-key", self.auth_key]

    def summary(self) -> str:
        """One start-up line: no key material, no patient data (the site folder's path is the hospital's own)."""
        dp = f"DP target epsilon {self.dp_epsilon:g}" if self.dp_epsilon > 0 else "no DP"
        security = "INSECURE (no TLS, no node authentication)" if self.insecure else "TLS + node authentication"
        return f"hospital node -> {self.superlink} ({security}); device {self.device}; {dp}; settings from {', '.join(self.sources) or 'flags'}"


def _kebab(names: Mapping[str, Any]) -> list[str]:
    return [n.replace("_", "-") for n in names]


# What a SuperNode prints when the SuperLink refuses to start its session: its key is not registered, or the
# SuperLink still holds the session of this hospital's previous process (it expires after two missed
# heartbeats, about a minute). Its exit status does not tell this apart from other failures.
NOT_ACTIVATED = "Failed to activate SuperNode"
REJOIN_WAIT_S = 15.0


def run_hospital(
    config: HospitalConfig, env: Mapping[str, str], log_file: Path | None, out: TextIO = sys.stdout
) -> int:
    """The hospital's SuperNode in the foreground. A hospital restarted after a crash is refused until the
    SuperLink lets its previous session go: it tries again ``rejoin-attempts`` times, ``REJOIN_WAIT_S`` apart."""
    attempt = 0
    refused: list[str] = []
    while True:
        refused.clear()
        code = run_logged(
            config.supernode_command(),
            env,
            log_file,
            out,
            on_line=lambda line: refused.append(line) if NOT_ACTIVATED in line else None,
        )
        if code == 0 or not refused or attempt >= config.rejoin_attempts:
            return code
        attempt += 1
        line = (
            "the SuperLink did not let this hospital in (its previous session has not expired yet, or its key is "
            f"not registered): trying again in {REJOIN_WAIT_S:.0f} s ({attempt} of {config.rejoin_attempts})\n"
        )
        out.write(line)
        out.flush()
        if log_file is not None:
            with log_file.open("a") as f:
                f.write(line)
        time.sleep(REJOIN_WAIT_S)


# ------------------------------------------------------------------------------------------------- running
def run_logged(
    cmd: list[str],
    env: Mapping[str, str],
    log_file: Path | None,
    out: TextIO = sys.stdout,
    on_line: Callable[[str], object] | None = None,
) -> int:
    """Run a Flower process in the foreground, copying its output to ``out`` and (appended) to ``log_file``
    (and each line to ``on_line``); SIGTERM and SIGINT are passed on to it, so ``podman stop`` or Ctrl-C stop it
    cleanly. Returns its exit code."""
    handle = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handle = log_file.open("a", buffering=1)
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        errors="replace",
        start_new_session=True,  # its own process group: a signal reaches the helpers it starts too
    )

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    def copy() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if handle is not None:
                handle.write(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        # what it left behind (Flower's SuperExec, a ClientApp) goes with it, and then the output ends
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            reader.join(10 if sig == signal.SIGTERM else 5)
            if not reader.is_alive():
                break
        reader.join(5)
        if handle is not None:
            handle.close()
