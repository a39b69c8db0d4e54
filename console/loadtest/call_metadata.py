"""What every request carries besides its body: the bearer token and the --metadata k=v
pairs, as gRPC metadata or as HTTP headers."""

from __future__ import annotations

import base64
import re

Pairs = tuple[tuple[str, str], ...]
GrpcMetadata = tuple[tuple[str, str | bytes], ...]

_BASE64_RE = re.compile(r"^(?:[A-Za-z0-9+/]*|[A-Za-z0-9_-]*)={0,2}$")


def binary_value(text: str) -> bytes:
    """A `-bin` key's value: base64 (standard or URL-safe, padding optional) is decoded, as
    grpcurl does; anything else is sent as its UTF-8 bytes."""
    stripped = text.rstrip("=")
    if text and _BASE64_RE.match(text) and len(stripped) % 4 != 1:
        padded = stripped + "=" * (-len(stripped) % 4)
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    return text.encode()


def grpc_metadata(pairs: Pairs, token: str) -> GrpcMetadata:
    """The token first, then the pairs in the order given; `-bin` values as bytes."""
    metadata: list[tuple[str, str | bytes]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    for key, value in pairs:
        metadata.append((key, binary_value(value) if key.endswith("-bin") else value))
    return tuple(metadata)


def http_headers(pairs: Pairs, token: str) -> list[tuple[str, str]]:
    """The same as HTTP headers; a `-bin` value goes as the base64 of its bytes, the way
    gRPC puts binary metadata on the wire."""
    headers = [("authorization", f"Bearer {token}")] if token else []
    for key, value in pairs:
        if key.endswith("-bin"):
            value = base64.b64encode(binary_value(value)).decode().rstrip("=")
        headers.append((key, value))
    return headers
