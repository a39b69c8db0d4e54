"""Before the run: reach the target, find the method, prepare the requests, make one probe
call. Every failure here is a LoadTestError with a one-line message."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from gantry.v1 import inference_service_pb2 as pb
from google.protobuf import json_format

from console.loadtest.call_metadata import GrpcMetadata, grpc_metadata, http_headers
from console.loadtest.config import LoadTestConfig, LoadTestError, split_host_port, validate
from console.loadtest.grpc_probe import auth_hint, probe_grpc
from console.loadtest.probe_retry import RETRY_STATUSES, ProbeRetries
from console.loadtest.prompts import describe_requests, read_prompts
from console.loadtest.proto_files import method_from_protos
from console.loadtest.reflection import MethodInfo, find_method
from console.loadtest.targets import (
    CHANNEL_OPTIONS,
    GANTRY_GENERATE,
    TargetSpec,
)
from console.loadtest.tls import TlsSettings, check_server, client_context, grpc_channel, read_tls

CONNECT_TIMEOUT_S = 5.0


def read_token(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise LoadTestError(f"--token-file {path}: {exc.strerror or exc}") from None
    if not token:
        raise LoadTestError(f"--token-file {path} is empty")
    return token


async def resolve(config: LoadTestConfig, retries: ProbeRetries | None = None) -> TargetSpec:
    """The target, checked by one probe request; a probe answered 429/503 (gRPC:
    UNAVAILABLE) is tried again as `retries` allows (console.loadtest.probe_retry)."""
    validate(config)
    token = read_token(config.token_file)
    retries = retries or ProbeRetries()
    if config.is_http:
        return await _resolve_http(config, token, retries)
    return await _resolve_grpc(config, token, retries)


async def wait_reachable(
    channel: grpc.aio.Channel, address: str, timeout: float, *, tls: bool = False
) -> None:
    """Returns once connected; fails at the first failed attempt rather than retrying."""
    deadline = time.monotonic() + timeout
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            why = (
                "the connection or its TLS handshake failed"
                if tls
                else "connection refused or failed"
            )
            raise LoadTestError(f"cannot reach {address}: {why} (is the server running?)")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LoadTestError(f"cannot reach {address}: no connection in {timeout:g} s")
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError:
            continue
        state = channel.get_state(try_to_connect=True)


async def _target_tls(config: LoadTestConfig, host: str, port: int) -> TlsSettings | None:
    tls = read_tls(config)
    if tls is None:
        return None
    return await check_server(
        config.target, host, port, tls, grpc_target=not config.is_http, timeout_s=CONNECT_TIMEOUT_S
    )


async def _method(
    config: LoadTestConfig, channel: grpc.aio.Channel, metadata: GrpcMetadata | None
) -> MethodInfo:
    if config.proto_files:
        return await method_from_protos(config.proto_files, config.import_paths, config.method)
    timeout = min(config.timeout_s, 10.0)
    return await find_method(channel, config.target, config.method, metadata, timeout)


async def _resolve_grpc(config: LoadTestConfig, token: str, retries: ProbeRetries) -> TargetSpec:
    address = config.target
    tls = await _target_tls(config, *split_host_port(address))
    metadata = grpc_metadata(config.metadata, token) or None
    async with grpc_channel(address, tls, CHANNEL_OPTIONS) as channel:
        await wait_reachable(channel, address, CONNECT_TIMEOUT_S, tls=tls is not None)
        if not config.method:
            prompt_set = read_prompts(config.prompts)
            prompts = prompt_set.prompts
            bodies = tuple(
                pb.GenerateRequest(
                    prompt=p,
                    params=pb.SamplingParams(
                        max_tokens=config.max_tokens, ignore_eos=config.ignore_eos
                    ),
                ).SerializeToString()
                for p in prompts
            )
            spec = TargetSpec(
                "gantry",
                address,
                GANTRY_GENERATE,
                True,
                bodies,
                token,
                config.timeout_s,
                describe_requests(prompt_set, config.prompts),
                config.metadata,
                tls,
            )
            probe = pb.GenerateRequest(
                prompt=prompts[0], params=pb.SamplingParams(max_tokens=1)
            ).SerializeToString()
        else:
            info = await _method(config, channel, metadata)
            request = info.request_class()
            pool: Any = request.DESCRIPTOR.file.pool  # stub: upb's pool is not the Python one
            try:  # the method's own pool: an Any's "@type" is looked up there
                json_format.Parse(config.data or "{}", request, descriptor_pool=pool)
            except json_format.ParseError as exc:
                detail = " ".join(str(exc).split())  # protobuf's message spans lines
                raise LoadTestError(f"--data does not fit {config.method}: {detail}") from None
            if not request.IsInitialized():  # proto2's required fields
                missing = ", ".join(request.FindInitializationErrors())  # type: ignore[attr-defined]
                raise LoadTestError(f"--data lacks what {config.method} requires: {missing}")
            body = request.SerializeToString()
            spec = TargetSpec(
                "grpc",
                address,
                config.method,
                info.server_streaming,
                (body,),
                token,
                config.timeout_s,
                describe_requests(None, None, config.data),
                config.metadata,
                tls,
                client_streaming=info.client_streaming,
            )
            probe = body
        await probe_grpc(channel, spec, probe, metadata, retries)
    return spec


def _models_url(url: str) -> str | None:
    path = url.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if path.endswith(tail):
            return path.removesuffix(tail) + "/models"
    return None


def _is_chat(url: str) -> bool:
    """An OpenAI chat endpoint (…/chat/completions): each prompt is one user message."""
    return httpx.URL(url).path.rstrip("/").endswith("/chat/completions")


def _target_url(target: str) -> str:
    """The URL to load: a server's base URL (`http://host:8000`, `…/v1`, as OpenAI's
    clients take it) means its /v1/completions; any other path is used as given."""
    parsed = httpx.URL(target)
    path = parsed.path.rstrip("/")
    if path in ("", "/v1"):
        return str(parsed.copy_with(path="/v1/completions"))
    return target


async def _resolve_http(config: LoadTestConfig, token: str, retries: ProbeRetries) -> TargetSpec:
    url = _target_url(config.target)
    extra: dict[str, Any] = json.loads(config.data) if config.data else {}
    streaming = extra.get("stream", True) is not False
    headers = http_headers(config.metadata, token)
    parsed = httpx.URL(url)
    tls = await _target_tls(config, parsed.host, parsed.port or 443)
    verify = True if tls is None else client_context(tls, "http/1.1")
    async with httpx.AsyncClient(
        headers=headers, timeout=CONNECT_TIMEOUT_S, verify=verify
    ) as client:
        try:
            model = config.model or await _first_model(client, url, retries)
            bodies = []
            prompt_set = read_prompts(config.prompts)
            prompts = prompt_set.prompts
            chat = _is_chat(url)
            for prompt in prompts:
                body: dict[str, Any] = (
                    {"messages": [{"role": "user", "content": prompt}]}
                    if chat
                    else {"prompt": prompt}
                )
                # max_tokens, not chat's newer max_completion_tokens: every server takes it.
                body["max_tokens"] = config.max_tokens
                if model:
                    body["model"] = model
                if config.ignore_eos:
                    body["ignore_eos"] = True  # vLLM's name for it; others may refuse it
                body["stream"] = streaming
                if streaming:
                    body["stream_options"] = {"include_usage": True}  # the server's count
                body.update(extra)
                if body.get("stream_options") is None:
                    body.pop("stream_options", None)  # --data '{"stream_options": null}'
                bodies.append(body)
            response, bodies = await _probe_http(
                client, url, bodies, "stream_options" not in extra, config.timeout_s, retries
            )
        except httpx.ConnectError as exc:
            raise LoadTestError(f"cannot reach {url}: {exc or 'connection failed'}") from None
        except httpx.TimeoutException:
            raise LoadTestError(f"{url} did not answer the probe request in time") from None
        except httpx.HTTPError as exc:
            raise LoadTestError(f"{url}: {type(exc).__name__}: {exc}") from None
    status = response.status_code
    if status in (401, 403):
        need = auth_hint(bool(token), bool(config.metadata))
        raise LoadTestError(f"{url} refused the request (HTTP {status}); {need}")
    said = _error_message(response)
    if status in RETRY_STATUSES and (status == 429 or retries.too_long is not None):
        # Still rate limited, or it asks for a longer wait than the probe's; a 503 after
        # the retries goes on: the server may recover, and the run counts them.
        detail = " ".join(response.text.split())[:200]
        raise LoadTestError(retries.refusal(url, status, detail))
    if status == 404 and "model" in said.lower():  # vLLM, Ollama: the model, not the route
        raise LoadTestError(
            f"{url} does not serve that model (HTTP 404: {said[:200]}); give --model, one "
            f"of those {_models_url(url) or 'the server lists'} lists"
        )
    if status in (404, 405):
        raise LoadTestError(
            f"{url} answered HTTP {status}: no OpenAI-compatible completions endpoint there "
            "(expected http(s)://HOST/v1/completions or /v1/chat/completions)"
            + (f"; it said: {said[:200]}" if said else "")
        )
    if 400 <= status < 500:
        detail = " ".join(response.text.split())[:200]
        raise LoadTestError(f"{url} refused the probe request: HTTP {status}: {detail}")
    if streaming and status == 200 and not _openai_events(response.text):
        raise LoadTestError(
            f"{url} streams events that are not OpenAI completions (no choices in them; TGI's "
            "/generate_stream?): give its /v1/completions or /v1/chat/completions URL"
        )
    return TargetSpec(
        "http",
        url,
        "POST " + (httpx.URL(url).path or "/"),
        streaming,
        tuple(json.dumps(body).encode() for body in bodies),
        token,
        config.timeout_s,
        describe_requests(prompt_set, config.prompts),
        config.metadata,
        tls,
    )


def _openai_events(stream: str) -> bool:
    """Whether a streamed answer's JSON events are OpenAI's (choices, usage or an error);
    True when it has none to judge by."""
    judged = False
    for line in stream.splitlines():
        payload = line[5:].strip() if line.startswith("data:") else "[DONE]"
        if payload == "[DONE]":
            continue
        try:
            event: Any = json.loads(payload)
        except ValueError:
            continue
        if isinstance(event, dict):
            if {"choices", "usage", "error"} & event.keys() or event.get("object") == "error":
                return True
            judged = True
    return not judged


def _error_message(response: httpx.Response) -> str:
    """What an error answer says: OpenAI's error.message, a message, an error string or
    FastAPI's detail; else the body's text ("" for an empty body)."""
    try:
        body: Any = response.json()
    except ValueError:
        return " ".join(response.text.split())
    error = body.get("error") if isinstance(body, dict) else None
    for said in (
        error.get("message") if isinstance(error, dict) else error,
        body.get("message") if isinstance(body, dict) else None,
        body.get("detail") if isinstance(body, dict) else None,
    ):
        if isinstance(said, str) and said:
            return " ".join(said.split())
    return " ".join(response.text.split())


async def _probe_http(
    client: httpx.AsyncClient,
    url: str,
    bodies: list[dict[str, Any]],
    ours: bool,
    timeout_s: float,
    retries: ProbeRetries,
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """One request of a token, as the run will send them: the answer, and the bodies to
    send. A server that refuses the `stream_options` we add (not every OpenAI-compatible
    server knows it) is asked again without, and the run goes without it. A 429 or 503 is
    asked again as `retries` allows."""
    probe = {**bodies[0], "max_tokens": 1}
    response = await retries.send(lambda: client.post(url, json=probe, timeout=timeout_s))
    if ours and response.status_code in (400, 422) and "stream_options" in probe:
        del probe["stream_options"]
        retry = await retries.send(lambda: client.post(url, json=probe, timeout=timeout_s))
        if retry.status_code < 400:
            bodies = [{k: v for k, v in b.items() if k != "stream_options"} for b in bodies]
            response = retry
    return response, bodies


async def _first_model(client: httpx.AsyncClient, url: str, retries: ProbeRetries) -> str:
    """The first model the server lists, or "" (then the body carries no "model"); a 429
    or 503 (llama.cpp's "Loading model") is asked again as `retries` allows."""
    models_url = _models_url(url)
    if models_url is None:
        return ""
    response = await retries.send(lambda: client.get(models_url))
    try:
        data = response.json()["data"]
        return str(data[0]["id"]) if response.status_code == 200 and data else ""
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
