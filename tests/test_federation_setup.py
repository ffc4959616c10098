"""The coordinator's keys and each role's one place of configuration, without starting Flower.

(`tests/test_deployment.py` starts the real SuperLink and SuperNodes with the same commands.)
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from flwr.common.config import parse_config_args

from fedaaa.common.deploy import HospitalConfig, superlink_command
from fedaaa.common.errors import ConfigError
from fedaaa.common.pki import FederationFiles, init_federation, new_site_key, server_addresses

FEDAAA = str(Path(sys.executable).parent / "fedaaa")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_and_a_superlink_certificate_for_its_addresses(tmp_path):
    files = init_federation(tmp_path / "fed", ["127.0.0.1", "coordinator.example.org"])
    assert _mode(files.ca_key) == _mode(files.server_key) == 0o600
    assert _mode(files.ca_cert) == 0o644
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server_addresses(files.server_cert) == ["127.0.0.1", "coordinator.example.org"]
    key = load_pem_private_key(files.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    with pytest.raises(ConfigError, match="already initialised"):
        init_federation(tmp_path / "fed", ["127.0.0.1"])
    with pytest.raises(ConfigError, match="neither an IP address nor a host name"):
        init_federation(tmp_path / "other", ["not a host"])


def test_site_keys_are_p384_openssh_keys_as_the_supernode_reads_them_and_never_overwritten(tmp_path):
    new_site_key(tmp_path / "auth.key", tmp_path / "auth.key.pub")
    assert _mode(tmp_path / "auth.key") == 0o600
    key = load_ssh_private_key((tmp_path / "auth.key").read_bytes(), None)  # as flower-supernode loads it
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert (tmp_path / "auth.key.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    before = (tmp_path / "auth.key").read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        new_site_key(tmp_path / "auth.key", tmp_path / "other.pub")
    assert (tmp_path / "auth.key").read_bytes() == before


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.csv").write_text("study_id,path,aaa,max_diameter_mm\n")
    return site


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    files = init_federation(tmp_path / "fed", ["127.0.0.1"])
    new_site_key(tmp_path / "auth.key", tmp_path / "auth.key.pub")
    return files.ca_cert, tmp_path / "auth.key"


def test_hospital_settings_come_from_one_file_then_the_environment_then_flags(tmp_path):
    ca, key = _keys(tmp_path)
    site = _site(tmp_path)
    config = tmp_path / "hospital.toml"
    config.write_text(
        f'superlink = "coordinator.example.org:9092"\nca-certificate = "{ca}"\nauth-key = "{key}"\n'
        f'data-path = "{site}"\nstate-dir = "/var/lib/fedaaa"\ndp-epsilon = 8\ndevice = "cpu"\naudit = true\n'
    )
    env = {"FEDAAA_DEVICE": "cuda:1", "FEDAAA_DP_MAX_GRAD_NORM": "0.7", "FEDAAA_LOADER_WORKERS": "6", "UNRELATED": "x"}
    hospital = HospitalConfig.load(config, env=env, overrides={"state_dir": "/srv/state"})
    assert hospital.device == "cuda:1" and hospital.dp_epsilon == 8.0 and hospital.dp_max_grad_norm == 0.7
    assert hospital.state_dir == "/srv/state"
    cmd = hospital.supernode_command()
    assert cmd[cmd.index("--superlink") + 1] == "coordinator.example.org:9092"
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)
    assert "--insecure" not in cmd
    # what the ClientApp will read as context.node_config, parsed the way Flower parses it
    node_config = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert node_config == {
        "data-path": str(site),
        "state-dir": "/srv/state",
        "cache-dir": "/srv/state/cache",
        "device": "cuda:1",
        "decode-workers": 1,
        "loader-workers": 6,
        "audit-dir": "/srv/state/audit",
        "dp-epsilon": 8.0,
        "dp-max-grad-norm": 0.7,
    }
    assert "BEGIN" not in hospital.summary() and "TLS + node authentication" in hospital.summary()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('superlink = "x"\n', "host:port"),
        ('colour = "blue"\n', "unknown key 'colour'"),
        ("superlink = [\n", "not valid TOML"),
        ('dp-epsilon = "lots"\n', "dp-epsilon must be float"),
        ("loader-workers = 1000\n", "loader-workers must be -1"),
        ('data-path = "relative/site"\n', "not an absolute site folder"),
        ('auth-key = "/nonexistent/auth.key"\n', "auth-key '/nonexistent/auth.key': no such file"),
    ],
)
def test_bad_hospital_settings_are_one_sentence(tmp_path, text, message):
    ca, key = _keys(tmp_path)
    site = _site(tmp_path)
    base = {
        "superlink": '"127.0.0.1:9092"',
        "ca-certificate": f'"{ca}"',
        "auth-key": f'"{key}"',
        "data-path": f'"{site}"',
        "state-dir": '"/var/lib/fedaaa"',
    }
    key_of_text = text.split("=")[0].strip()
    lines = "".join(f"{k} = {v}\n" for k, v in base.items() if k != key_of_text) + text
    config = tmp_path / "hospital.toml"
    config.write_text(lines)
    with pytest.raises(ConfigError, match=message) as err:
        HospitalConfig.load(config, env={})
    assert "\n" not in str(err.value)


def test_a_key_readable_by_others_is_refused_and_insecure_needs_no_key(tmp_path):
    ca, key = _keys(tmp_path)
    site = _site(tmp_path)
    settings = {"superlink": "127.0.0.1:9092", "data_path": str(site), "state_dir": "/s"}
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others.*chmod 600"):
        HospitalConfig.load(None, env={}, overrides=settings | {"ca_certificate": str(ca), "auth_key": str(key)})
    trial = HospitalConfig.load(None, env={"FEDAAA_INSECURE": "true"}, overrides=settings)
    assert "--insecure" in trial.supernode_command() and "INSECURE" in trial.summary()


def test_the_superlink_serves_tls_with_node_authentication_unless_told_insecure(tmp_path):
    files = init_federation(tmp_path / "fed", ["127.0.0.1"])
    cmd = superlink_command(files, port=9999)
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth", "--database"):
        assert flag in cmd
    assert "--insecure" not in cmd and "--disable-runtime-dependency-installation" in cmd
    with pytest.raises(ConfigError, match="run `fedaaa federation init` first"):
        superlink_command(FederationFiles(tmp_path / "empty"))

    env = dict(os.environ)
    done = subprocess.run(
        [FEDAAA, "federation", "superlink", "--dir", str(tmp_path / "fed"), "--insecure", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0 and "--insecure" in done.stdout
    assert "INSECURE MODE" in done.stderr  # loudly


def test_a_coordinator_run_needs_an_absolute_output_folder_and_known_settings(tmp_path):
    init_federation(tmp_path / "fed", ["127.0.0.1"])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [FEDAAA, "federation", "run", "--dir", str(tmp_path / "fed"), "--dry-run", *args],
            capture_output=True,
            text=True,
        )

    done = run("--output-dir", "relative/out")
    assert done.returncode == 2 and done.stderr.startswith("error: --output-dir") and done.stderr.count("\n") == 1
    done = run("--output-dir", "/srv/out", "--set", "colour=blue")
    assert done.returncode == 2 and "unknown run-config key 'colour'" in done.stderr
    done = run("--output-dir", "/srv/out", "--strategy", "best")
    assert done.returncode == 2 and "strategy must be one of fedavg" in done.stderr
    missing = tmp_path / "pre-trained.safetensors"  # initial-model is read on this machine, before Flower starts
    done = run("--output-dir", "/srv/out", "--set", f"initial-model={missing}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(missing) in done.stderr
    done = run("--output-dir", "/srv/out", "--rounds", "3", "--strategy", "median", "--round-timeout", "600")
    assert done.returncode == 0, done.stderr
    config = done.stdout.split("--run-config ", 1)[1]
    assert parse_config_args([config.strip()]) == {
        "output-dir": "/srv/out",
        "num-server-rounds": 3,
        "strategy": "median",
        "round-timeout": 600.0,
    }
