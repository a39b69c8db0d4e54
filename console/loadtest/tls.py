"""TLS to the target: --tls-ca, --tls-cert/--tls-key (mutual TLS) and --insecure.

The PEM files are read once, before the run, into a picklable TlsSettings that the
clients of every worker use. `check_server` shakes hands with the target before the run
(Python's ssl, which says why a certificate fails where gRPC only says UNAVAILABLE).

--insecure: gRPC Python has no switch to skip verifying the server. Instead the handshake
before the run fetches the certificate the server presents, without checking it, and the
gRPC channels trust exactly that certificate (gRPC accepts a leaf as its root); where the
name dialled is not in it, grpc.ssl_target_name_override names one that is. HTTP clients
simply do not verify.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import certifi
import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from console.loadtest.config import LoadTestConfig, LoadTestError

# After the handshake a gRPC server sends its HTTP/2 settings at once (an HTTP server
# answers a HEAD request); a server that refuses our certificate (TLS 1.3) sends its
# alert, or closes, instead. Waited for this long at most.
REFUSAL_WAIT_S = 2.0


@dataclass(frozen=True)
class TlsSettings:
    ca_pem: bytes | None = None  # the roots the server is checked against; None: the system's
    cert_pem: bytes | None = None  # the client's certificate (mutual TLS)...
    key_pem: bytes | None = None  # ...and its key
    insecure: bool = False  # the server's certificate is not checked
    server_name: str = ""  # gRPC, --insecure: a name the certificate holds, if not the host's


def read_tls(config: LoadTestConfig) -> TlsSettings | None:
    """The files, read and checked; None where the target is not reached over TLS."""
    if not config.uses_tls:
        return None
    ca = _read_certificates("--tls-ca", config.tls_ca)
    cert = _read_certificates("--tls-cert", config.tls_cert)
    key = _read("--tls-key", config.tls_key)
    if key is not None and b"PRIVATE KEY-----" not in key:
        raise LoadTestError(f"--tls-key {config.tls_key}: not a PEM private key")
    return TlsSettings(ca, cert, key, config.insecure)


def _read(flag: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LoadTestError(f"{flag} {path}: {exc.strerror or exc}") from None


def _read_certificates(flag: str, path: Path | None) -> bytes | None:
    pem = _read(flag, path)
    if pem is not None:
        try:
            x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise LoadTestError(f"{flag} {path}: not a PEM certificate") from None
    return pem


def client_context(tls: TlsSettings, alpn: str) -> ssl.SSLContext:
    """Python's ssl context for these settings (the check before the run; HTTP clients)."""
    if tls.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca_pem is not None:
        context = ssl.create_default_context(cadata=tls.ca_pem.decode())
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    if tls.cert_pem is not None and tls.key_pem is not None:
        _load_client_certificate(context, tls.cert_pem, tls.key_pem)
    context.set_alpn_protocols([alpn])
    return context


def _load_client_certificate(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # Python's ssl loads a certificate only from a file: a private one, removed at once.
    with tempfile.TemporaryDirectory(prefix="gantry-loadtest-") as folder:
        path = Path(folder) / "client.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert.rstrip() + b"\n" + key)
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise LoadTestError(
                f"--tls-cert/--tls-key: not a certificate and its key ({exc.reason or exc})"
            ) from None


def grpc_channel(
    address: str, tls: TlsSettings | None, options: list[tuple[str, int | str]]
) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )
    if tls.server_name:
        options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    return grpc.aio.secure_channel(address, credentials, options=options)


async def check_server(
    where: str, host: str, port: int, tls: TlsSettings, *, grpc_target: bool, timeout_s: float
) -> TlsSettings:
    """Shakes hands with the server as the run will; LoadTestError with one line if that
    fails. With --insecure, returns the settings that trust the certificate it presented."""
    host = host.strip("[]")
    context = client_context(tls, "h2" if grpc_target else "http/1.1")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout_s
        )
    except ssl.SSLCertVerificationError as exc:
        raise LoadTestError(
            f"{where}: the server's certificate failed verification "
            f"({exc.verify_message or exc.reason}); give --tls-ca with the CA that signed it, "
            "or --insecure to skip the check"
        ) from None
    except ssl.SSLError as exc:
        raise LoadTestError(_handshake_failure(where, exc)) from None
    except TimeoutError:
        raise LoadTestError(f"cannot reach {where}: no TLS handshake in {timeout_s:g} s") from None
    except ConnectionRefusedError:
        raise LoadTestError(
            f"cannot reach {where}: connection refused (is the server running?)"
        ) from None
    except OSError as exc:
        raise LoadTestError(f"cannot reach {where}: {exc.strerror or exc}") from None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if not grpc_target:
            # An HTTP server says nothing until asked; the answer itself does not matter.
            name = f"[{host}]" if ":" in host else host
            writer.write(f"HEAD / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        await _refused_after_handshake(where, reader, tls.cert_pem is not None)
    finally:
        writer.close()
    if not tls.insecure or der is None:
        return tls
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    return replace(tls, ca_pem=pem, server_name=name_override(der, host))


async def _refused_after_handshake(
    where: str, reader: asyncio.StreamReader, with_certificate: bool
) -> None:
    try:
        first = await asyncio.wait_for(reader.read(1), REFUSAL_WAIT_S)
    except ssl.SSLError as exc:
        raise LoadTestError(_handshake_failure(where, exc)) from None
    except (TimeoutError, OSError):
        return
    if not first:
        hint = (
            "it may not accept this client's certificate (check --tls-cert)"
            if with_certificate
            else "it may want a client certificate (give --tls-cert and --tls-key)"
        )
        raise LoadTestError(f"{where} refused the connection after the TLS handshake; {hint}")


def _handshake_failure(where: str, exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc).lower().replace("_", " ")
    if "certificate required" in reason or "handshake failure" in reason:
        return (
            f"{where} refused the TLS handshake ({reason}): it wants a client certificate "
            "(give --tls-cert and --tls-key)"
        )
    if "unknown ca" in reason or "bad certificate" in reason or "certificate unknown" in reason:
        return f"{where} refused this client's certificate ({reason}): check --tls-cert"
    return f"{where}: TLS handshake failed ({reason})"


def name_override(der: bytes, host: str) -> str:
    """ "" when `host` is a name the certificate holds; else one it holds (a DNS name, an
    IP address, then its common name), for gRPC's check of the name."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    common = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if _is_ip(host):
        if any(ipaddress.ip_address(host) == ipaddress.ip_address(ip) for ip in ips):
            return ""
    elif any(_name_matches(pattern, host) for pattern in dns or common):
        return ""
    names = dns + ips + common
    return names[0] if names else ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host
