"""An in-process agent server (fake NVML) on its own event loop thread, for tests that
call it with plain synchronous gRPC (hypothesis drives sync tests best): token or mTLS."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from gantry.v1 import agent_service_pb2_grpc

from agent.jobs.journal import AuditEntry
from agent.rpc.server import build_server
from agent.runtime import JobRuntime, build_job_runtime
from agent.security.auth import load_or_create_token
from agent.security.tls import TlsMaterial
from agent.telemetry.sampler import Sampler
from tests.fakes.fake_nvml import FakeNvml


@dataclass
class ThreadedAgent:
    address: str
    port: int
    token: str
    runtime: JobRuntime
    loop: asyncio.AbstractEventLoop

    def metadata(self, operator: str = "") -> tuple[tuple[str, str], ...]:
        extra = (("x-gantry-operator", operator),) if operator else ()
        return (("authorization", f"Bearer {self.token}"), *extra)

    def stub(self, channel: grpc.Channel) -> Any:
        return agent_service_pb2_grpc.AgentServiceStub(channel)

    def audit(self) -> list[AuditEntry]:
        """The journal's audit trail, newest first (read on the agent's thread)."""

        async def read() -> list[AuditEntry]:
            return self.runtime.journal.audit_entries()

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(10)


@contextmanager
def threaded_agent(
    data_dir: Path,
    node: str = "node-a",
    listen: str = "127.0.0.1:0",
    tls: TlsMaterial | None = None,
) -> Iterator[ThreadedAgent]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"agent-{node}", daemon=True)
    thread.start()
    sampler = Sampler(node, nvml_lib=FakeNvml(gpu_count=1), interval_s=0.5)
    token, _ = load_or_create_token(data_dir, None)

    async def start() -> tuple[grpc.aio.Server, int, JobRuntime]:
        # Built on the loop's thread: the journal's SQLite connection stays on it.
        runtime = build_job_runtime(node, data_dir, [])
        server, port, _ = await build_server(sampler, token, listen, runtime.jobs, tls)
        await runtime.start()
        await server.start()
        return server, port, runtime

    started: Future[tuple[grpc.aio.Server, int, JobRuntime]] = asyncio.run_coroutine_threadsafe(
        start(), loop
    )
    server, port, runtime = started.result(10)
    try:
        yield ThreadedAgent(f"127.0.0.1:{port}", port, token, runtime, loop)
    finally:

        async def stop() -> None:
            await server.stop(0)
            await runtime.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
