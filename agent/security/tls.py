"""Mutual TLS for agents reached directly (no SSH tunnel): server credentials that demand
a client certificate from the cluster's CA, and the client credentials an agent uses to
call its peers. The CA and the certificates come from `gantry init --ca DIR`.

Files are checked before gRPC sees them, each problem one line naming the file: missing,
a private key readable by others, not PEM, expired, not issued by the given CA, or a key
that does not belong to the certificate.

`cryptography` is imported only where certificates are read: an agent without TLS (the
usual one, behind an SSH tunnel) never loads it, which keeps its start-up cheap.
"""

from __future__ import annotations

import datetime
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class TlsError(Exception):
    """TLS files that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes, checked."""

    ca: bytes
    cert: bytes
    key: bytes
    name: str  # the certificate's common name


def tls_files_from_flags(ca: Path | None, cert: Path | None, key: Path | None) -> TlsFiles | None:
    """`--tls-ca/--tls-cert/--tls-key`: all three or none."""
    given = {"--tls-ca": ca, "--tls-cert": cert, "--tls-key": key}
    if all(v is None for v in given.values()):
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise TlsError(f"mutual TLS needs --tls-ca, --tls-cert and --tls-key; add {missing[0]}")
    assert ca is not None and cert is not None and key is not None
    return TlsFiles(ca, cert, key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_tls(files: TlsFiles, now: datetime.datetime | None = None) -> TlsMaterial:
    """Reads and checks the CA, certificate and key (`gantry.v1.tls_files`)."""
    from gantry.v1.tls_files import PemFile, TlsFileError, check_tls_pems

    now = now or datetime.datetime.now(datetime.UTC)
    try:
        mode = files.key.stat().st_mode
    except FileNotFoundError:
        raise TlsError(f"private key {files.key} does not exist") from None
    except OSError as exc:
        raise TlsError(f"cannot read private key {files.key}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsError(
            f"private key {files.key} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {files.key}"
        )
    ca_pem = _read(files.ca, "CA certificate")
    cert_pem = _read(files.cert, "certificate")
    key_pem = _read(files.key, "private key")
    try:
        name = check_tls_pems(
            PemFile(str(files.ca), ca_pem),
            PemFile(str(files.cert), cert_pem),
            PemFile(str(files.key), key_pem),
            now,
        )
    except TlsFileError as exc:
        raise TlsError(str(exc)) from None
    return TlsMaterial(ca_pem, cert_pem, key_pem, name)


def server_credentials(material: TlsMaterial) -> grpc.ServerCredentials:
    """Only clients with a certificate from the cluster's CA get past the handshake."""
    return grpc.ssl_server_credentials(
        [(material.key, material.cert)],
        root_certificates=material.ca,
        require_client_auth=True,
    )


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """For calls to peer agents: their certificate checked against the CA, ours presented."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )


def verified_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The caller's certificate, as "console alice" or "agent node-a"; None without mTLS.

    Only what the TLS handshake verified is used, never what the caller says of itself.
    """
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert") or [])
    if not pems:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from gantry.v1.tls_files import common_name

    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    unit = units[0].value if units else ""
    role = unit.removeprefix("gantry ") if isinstance(unit, str) else ""
    name = common_name(cert)
    return f"{role} {name}" if role else name
