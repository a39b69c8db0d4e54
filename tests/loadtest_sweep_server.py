"""An endpoint of known capacity for the capacity search's tests: `slots` requests are
served at once, each for `slot_s` (the others wait their turn), so it answers at most
slots / slot_s requests/s. Unary Complete and streamed Generate (the first token after
the slot's time) alike."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVICE = "gantry.v1.InferenceService"


class Slots(inference_service_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, slots: int, slot_s: float) -> None:
        self.slot_s = slot_s
        self.free = asyncio.Semaphore(slots)

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        async with self.free:
            await asyncio.sleep(self.slot_s)
        return pb.CompleteResponse(text=request.prompt)

    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        async with self.free:
            await asyncio.sleep(self.slot_s)
        yield pb.GenerateResponse(text=" t", token_ids=[1])
        usage = pb.Usage(completion_tokens=1, time_to_first_token_ms=self.slot_s * 1000)
        yield pb.GenerateResponse(done=True, usage=usage)


async def start_slots(slots: int, slot_s: float) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(Slots(slots, slot_s), server)
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@contextlib.contextmanager
def slots_server_in_thread(slots: int, slot_s: float) -> Iterator[str]:
    """The server on its own event loop and thread (for the CLI's asyncio.run)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        server, address = loop.run_until_complete(start_slots(slots, slot_s))
        holder["address"] = address
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.stop(0))
        loop.close()

    thread = threading.Thread(target=run, name="slots-server", daemon=True)
    thread.start()
    assert started.wait(30), "the slots server did not start"
    try:
        yield holder["address"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
