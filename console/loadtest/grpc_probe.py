"""The probe call of a gRPC target before a run: one call as the run will make them;
UNAVAILABLE is tried again as `ProbeRetries` allows, and a refusal that says the run
cannot work is a LoadTestError with a one-line message."""

from __future__ import annotations

from typing import Any

import grpc

from console.loadtest.config import LoadTestError
from console.loadtest.probe_retry import ProbeRetries, grpc_pushback
from console.loadtest.targets import TargetSpec, grpc_callables, request_of

# Codes that say the run cannot work at all; any other error of the probe is left for the
# run to count.
_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
)


async def probe_grpc(
    channel: grpc.aio.Channel,
    spec: TargetSpec,
    body: bytes,
    metadata: Any,
    retries: ProbeRetries | None = None,
) -> None:
    """One call; UNAVAILABLE (overloaded, a full queue, a model loading) is tried again as
    an HTTP 503 would be, the server's grpc-retry-pushback-ms (gRFC A6) its Retry-After."""
    retries = retries or ProbeRetries()
    while True:
        try:
            await _call_once(channel, spec, body, metadata)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE and await retries.again(
                503, grpc_pushback(exc.trailing_metadata())
            ):
                continue
            _refusal(spec, exc, retries)
            return


async def _call_once(
    channel: grpc.aio.Channel, spec: TargetSpec, body: bytes, metadata: Any
) -> None:
    unary, stream = grpc_callables(channel, spec)
    request = request_of(spec, body)
    if spec.streaming:
        call = stream(request, timeout=spec.timeout_s, metadata=metadata)
        await call.read()  # the first message (or the status) is enough
        call.cancel()
    else:
        await unary(request, timeout=spec.timeout_s, metadata=metadata)


def _refusal(spec: TargetSpec, exc: grpc.aio.AioRpcError, retries: ProbeRetries) -> None:
    """Raises the one line for a probe that says the run cannot work; other codes are
    left for the run to count."""
    code = exc.code()
    if code not in _REFUSALS:
        return
    if code is grpc.StatusCode.UNIMPLEMENTED:
        hint = "; give --method pkg.Service/Method" if spec.kind == "gantry" else ""
        raise LoadTestError(f"{spec.address} does not serve {spec.method}{hint}") from None
    if code is grpc.StatusCode.UNAVAILABLE:
        pushback = "grpc-retry-pushback-ms"
        tried = retries.gave_up(pushback) if retries.retries or retries.too_long is not None else ""
        then = f"; {tried}: wait for the server, then run again" if tried else ""
        raise LoadTestError(f"cannot reach {spec.address}: {exc.details()}{then}") from None
    need = auth_hint(bool(spec.token), bool(spec.metadata))
    raise LoadTestError(
        f"{spec.address} refused the call ({code.name}: {exc.details()}); {need}"
    ) from None


def auth_hint(token: bool, metadata: bool) -> str:
    """What to fix when the target refuses the caller: a bearer token, or the header a
    third-party server wants instead (x-api-key, a tenant)."""
    fix = "check --token-file" if token else "give --token-file"
    if metadata:
        return fix + (" and --metadata" if token else " or check --metadata")
    return fix + " (or the header the server wants: --metadata K=V)"
