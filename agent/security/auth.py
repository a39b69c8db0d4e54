"""Bearer-token authentication for every RPC except the standard health service.

The agent's own token opens every call; a job token minted from it (`gantry.v1.job_tokens`,
what a job's leader holds for its peers) opens only that job's leader calls
(`agent.security.job_scope`). On a mutual-TLS port the client certificate, verified by the
handshake against the cluster's CA, authenticates the caller instead: no token is needed.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from gantry.v1.job_tokens import verify_job_token

from agent.security.job_scope import scoped_handler

# Health checks must work for load balancers and probes that hold no token.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


class TokenError(Exception):
    """A token file that cannot be used; the message says what to fix."""


def load_or_create_token(data_dir: Path, token_file: Path | None) -> tuple[str, Path]:
    """Reads `token_file`, or DIR/token, creating the latter (mode 0600) on first start."""
    path = token_file if token_file is not None else data_dir / "token"
    if token_file is None and not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another agent on the same dir won the race; read theirs below
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TokenError(f"token file {path} does not exist") from None
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        raise TokenError(f"token file {path} is not a regular file")
    if info.st_uid != os.geteuid():
        raise TokenError(
            f"token file {path} belongs to another user (uid {info.st_uid}); "
            "give the agent a token file of its own (mode 600)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"token file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise TokenError(f"token file {path} holds fewer than 16 characters; use a longer token")
    return token, path


def bearer_of(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bytes | None:
    """The `authorization` header's value; None without one."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else value
    return None


def bearer_matches(metadata: tuple[tuple[str, str | bytes], ...] | None, token: str) -> bool:
    given = bearer_of(metadata)
    return given is not None and hmac.compare_digest(given, f"Bearer {token}".encode())


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _deny_handler(handler: Handler, message: str, code: grpc.StatusCode) -> Handler:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    # Requests are never parsed for a caller refused here.
    def ignore(_: bytes) -> None:
        return None

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, request_deserializer=ignore)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, request_deserializer=ignore)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, request_deserializer=ignore)
    return grpc.unary_unary_rpc_method_handler(abort, request_deserializer=ignore)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`certificate_verified`: the server demands a client certificate from the cluster's
    CA (mutual TLS), so every call that reaches it is authenticated already.

    A job token minted from this agent's token (`gantry.v1.job_tokens`) opens only the
    calls a job's leader makes to its peers, for that job (`agent.security.job_scope`);
    anything else it is shown gets PERMISSION_DENIED naming the scope."""

    def __init__(self, token: str, *, certificate_verified: bool = False) -> None:
        self._token = token
        self._certificate_verified = certificate_verified

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        if self._certificate_verified:
            return handler
        given = bearer_of(handler_call_details.invocation_metadata)
        if given is not None and hmac.compare_digest(given, f"Bearer {self._token}".encode()):
            return handler
        if given is not None and given.startswith(b"Bearer "):
            presented = given[len(b"Bearer ") :].decode("ascii", "replace")
            job = verify_job_token(presented, self._token)
            if job is not None:
                return scoped_handler(handler, method, job, _deny_handler)
        reason = "wrong bearer token" if given is not None else "missing bearer token"
        return _deny_handler(handler, f"{reason} for {method}", grpc.StatusCode.UNAUTHENTICATED)
