"""The mutual-TLS files' checks, kept once for the agent (`--tls-*`) and the console (the
cluster file's `tls:`): each problem one line naming the file. Pure: the caller reads the
files and gives the time.

`cryptography` is imported only here, and only when a check runs.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


class TlsFileError(ValueError):
    """A TLS file that cannot be used; the message names it and what to fix."""


@dataclass(frozen=True)
class PemFile:
    path: str  # as the message shows it
    data: bytes


def _certificate(pem: PemFile, what: str) -> x509.Certificate:
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in pem.data:
        raise TlsFileError(f"{what} {pem.path} is not a PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.data)
    except ValueError:
        raise TlsFileError(f"{what} {pem.path} is not a PEM certificate") from None


def common_name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_tls_pems(ca: PemFile, cert: PemFile, key: PemFile, now: datetime.datetime) -> str:
    """Checks the CA, the certificate and its key belong together and are valid `now`;
    returns the certificate's common name."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    ca_cert = _certificate(ca, "CA certificate")
    own = _certificate(cert, "certificate")
    if b"PRIVATE KEY-----" not in key.data:
        raise TlsFileError(f"private key {key.path} is not an unencrypted PEM private key")
    try:
        private = serialization.load_pem_private_key(key.data, password=None)
    except (ValueError, TypeError):
        raise TlsFileError(
            f"private key {key.path} is not an unencrypted PEM private key"
        ) from None
    for pem, c in ((ca, ca_cert), (cert, own)):
        if c.not_valid_after_utc < now:
            raise TlsFileError(
                f"{pem.path} expired on {c.not_valid_after_utc:%Y-%m-%d}; "
                "issue a new one with gantry init --ca DIR"
            )
        if c.not_valid_before_utc > now:
            raise TlsFileError(
                f"{pem.path} is not valid before {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
                "check this machine's clock"
            )
    try:
        own.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise TlsFileError(f"certificate {cert.path} was not issued by the CA {ca.path}") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != own.public_key().public_bytes(*spki):
        raise TlsFileError(f"private key {key.path} does not belong to certificate {cert.path}")
    return common_name(own)
