"""The cluster's certificate authority, for direct mode (agents reached without SSH):
`gantry init --ca DIR` creates it, then a certificate for every agent and console.

    DIR/ca.pem                the CA certificate: copy it to every node and console
    DIR/ca.key                the CA's private key (0600): it stays here
    DIR/agents/NAME.pem|key   an agent's certificate: server (with the node's host names
                              and addresses) and client (for calls to its peers)
    DIR/consoles/NAME.pem|key a console's client certificate
    DIR/cluster.yaml          a cluster file that reaches the agents with mutual TLS

Running it again keeps the CA and (re)issues the certificates it is asked for. Keys are
ECDSA P-256; certificates carry the role in their OU ("gantry agent", "gantry console"),
which the agent records in its audit trail.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gantry.v1.rules import NAME_RE  # a node's name, as the agents require

CONSOLE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
HOST_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\Z"
)
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
DEFAULT_DAYS = 365
DEFAULT_PORT = 50051
CA_NAME = "gantry cluster CA"


class CaError(ValueError):
    """Bad input or an unusable CA directory; the message is one line."""


@dataclass
class InitResult:
    ca_created: bool
    written: list[Path] = field(default_factory=list)
    cluster_file: Path | None = None


# -- input ---------------------------------------------------------------------------------


def parse_host_flag(flag: str) -> tuple[str, list[str]]:
    """`NAME=HOST[,HOST...]`: a node and the names and addresses it is reached by."""
    name, sep, hosts_text = flag.partition("=")
    if not sep or not hosts_text:
        raise CaError(f"--host {flag!r}: expected NAME=HOST[,HOST...], e.g. node-a=gpu-01.lan")
    if not NAME_RE.match(name):
        raise CaError(
            f"--host {flag!r}: node name {name!r} must be lower-case letters, digits, '-'"
        )
    hosts = [h.strip() for h in hosts_text.split(",")]
    for host in hosts:
        if not is_ip(host) and not HOST_RE.match(host):
            raise CaError(f"--host {flag!r}: {host!r} is neither a host name nor an IP address")
    return name, hosts


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def check_console_name(name: str) -> str:
    if not CONSOLE_NAME_RE.match(name):
        raise CaError(
            f"--console {name!r}: use letters, digits and '._@-' (at most 64), e.g. alice"
        )
    return name


# -- files ---------------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Written as 0600 from the start (never briefly readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -- the CA --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(days: int = DEFAULT_DAYS * 10, now: datetime.datetime | None = None) -> Authority:
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def load_ca(directory: Path) -> Authority:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise CaError(f"cannot read {cert_path}: {exc.strerror or exc}") from None
    except ValueError:
        raise CaError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise CaError(f"cannot read {key_path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise CaError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{key_path} is not an EC key (was this CA made by gantry init?)")
    return Authority(cert, key)


def issue(
    ca: Authority,
    common_name: str,
    role: str,
    *,
    hosts: list[str] | None = None,
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A leaf certificate and its key, as PEM. `role` is "agent" (server and client) or
    "console" (client only); `hosts` become the agent's subject alternative names."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"gantry {role}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "agent":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if role == "agent":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_san(common_name, hosts or [])), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def _san(node: str, hosts: list[str]) -> list[x509.GeneralName]:
    """The node's names and addresses, plus its name and loopback (for a console or a
    test on the node itself)."""
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, node, *LOOPBACK_NAMES, *LOOPBACK_IPS]:
        host = host.strip("[]")
        if host.lower() in seen:
            continue
        seen.add(host.lower())
        if is_ip(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    return names


# -- gantry init --ca DIR ------------------------------------------------------------------


def init_ca(
    directory: Path,
    hosts: dict[str, list[str]],
    consoles: list[str],
    *,
    days: int = DEFAULT_DAYS,
    port: int = DEFAULT_PORT,
) -> InitResult:
    """Creates (or reuses) the CA in `directory` and issues the named certificates."""
    if days < 1:
        raise CaError(f"--days {days}: give a positive number of days")
    if not 0 < port < 65536:
        raise CaError(f"--port {port}: not a port")
    if directory.exists() and not directory.is_dir():
        raise CaError(f"{directory} exists and is not a folder")
    have_cert, have_key = (directory / "ca.pem").exists(), (directory / "ca.key").exists()
    if have_cert != have_key:
        present = "ca.pem" if have_cert else "ca.key"
        raise CaError(f"{directory} holds {present} without its pair; remove it or restore both")
    result = InitResult(ca_created=not have_cert)
    if have_cert:
        ca = load_ca(directory)
    else:
        ca = create_ca()
        write_private(directory / "ca.key", _key_pem(ca.key))
        write_public(directory / "ca.pem", _cert_pem(ca.cert))
        result.written += [directory / "ca.pem", directory / "ca.key"]
    for name, names in hosts.items():
        cert, key = issue(ca, name, "agent", hosts=names, days=days)
        result.written += _write_pair(directory / "agents", name, cert, key)
    for name in consoles:
        cert, key = issue(ca, name, "console", days=days)
        result.written += _write_pair(directory / "consoles", name, cert, key)
    if hosts:
        console = consoles[0] if consoles else _existing_console(directory)
        if console is not None:
            result.cluster_file = write_cluster_file(directory, hosts, console, port)
    return result


def _write_pair(folder: Path, name: str, cert: bytes, key: bytes) -> list[Path]:
    write_private(folder / f"{name}.key", key)
    write_public(folder / f"{name}.pem", cert)
    return [folder / f"{name}.pem", folder / f"{name}.key"]


def _existing_console(directory: Path) -> str | None:
    found = sorted((directory / "consoles").glob("*.pem"))
    return found[0].stem if found else None


def write_cluster_file(
    directory: Path, hosts: dict[str, list[str]], console: str, port: int
) -> Path:
    """DIR/cluster.yaml: the nodes named now (added to those already there), reached with
    mutual TLS as `console`."""
    path = directory / "cluster.yaml"
    nodes: list[dict[str, object]] = []
    if path.exists():
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            raise CaError(f"{path} exists and is not readable YAML; move it away") from None
        if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
            nodes = [n for n in doc["nodes"] if isinstance(n, dict) and n.get("name") not in hosts]
    for name, names in hosts.items():
        host = names[0]
        host = f"[{host}]" if ":" in host else host
        nodes.append({"name": name, "address": f"{host}:{port}"})
    nodes.sort(key=lambda n: str(n.get("name")))
    doc = {
        "tls": {
            "ca": "ca.pem",
            "cert": f"consoles/{console}.pem",
            "key": f"consoles/{console}.key",
        },
        "nodes": nodes,
    }
    write_public(path, yaml.safe_dump(doc, sort_keys=False).encode())
    return path
