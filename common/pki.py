"""The federation's keys, made with the ``cryptography`` package: a CA, the SuperLink's TLS certificate and
each hospital's node-authentication key pair.

Private keys are written with 0600 permissions before any byte of them lands on disk, and never logged.
An existing key is never overwritten: a second ``init`` or ``add-site`` of the same name is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedaaa.common.errors import ConfigError

CA_DAYS = 3650
SERVER_DAYS = 825  # what browsers and most hospital policies accept for a server certificate
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class FederationFiles:
    """Where ``fedaaa federation init`` puts things under the coordinator's federation folder."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink" / "server.crt"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the coordinator's ``flwr`` commands: its ``config.toml`` names the SuperLink."""
        return self.root / "flwr"

    def site_dir(self, name: str) -> Path:
        return self.root / "sites" / name

    def site_key(self, name: str) -> Path:
        return self.site_dir(name) / "auth.key"

    def site_public_key(self, name: str) -> Path:
        return self.site_dir(name) / "auth.key.pub"


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never world- or group-readable, not even for an instant); refuse to
    overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: a key is already there; it is never overwritten (remove it first)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(addresses: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for a in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", a):
                raise ConfigError(f"--address {a!r} is neither an IP address nor a host name") from None
            names.append(x509.DNSName(a))
    return x509.SubjectAlternativeName(names)


def init_federation(root: Path, addresses: list[str], name: str = "FedAAA federation") -> FederationFiles:
    """A new CA and the SuperLink's certificate, valid for ``addresses`` (IPs or host names hospitals use)."""
    if not addresses:
        raise ConfigError("give at least one --address the hospitals reach the SuperLink at")
    files = FederationFiles(root)
    if files.ca_key.exists():
        raise ConfigError(f"{root}: a federation is already initialised there (its CA key exists)")
    san = _san(addresses)
    now = dt.datetime.now(dt.UTC)
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = _new_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    write_private(files.ca_key, _pem_key(ca_key))
    write_private(files.server_key, _pem_key(server_key))
    write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def server_addresses(cert_path: Path) -> list[str]:
    """The IP addresses and host names a SuperLink certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise ConfigError(f"site name {name!r}: use lower-case letters, digits and '-' (at most 63 characters)")
    return name


def new_site_key(private_path: Path, public_path: Path) -> None:
    """A node-authentication key pair (NIST P-384, OpenSSH format, as ``flower-supernode`` reads it)."""
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_private(private_path, private)
    write_public(public_path, public + b"\n")


def check_public_key(path: Path) -> None:
    """A hospital's public key as ``flwr supernode register`` accepts it: OpenSSH, NIST elliptic curve."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path}: not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: node keys must be elliptic-curve (P-384) keys, not {type(key).__name__}")
