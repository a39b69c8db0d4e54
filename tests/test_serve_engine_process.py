"""The inference server's engine process (agent.serve.engine_process, engine_worker): the
messages between the two (pure), and a real server whose engine process dies or whose
own process is killed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc

from agent.serve.engine_wire import FigureRecorder, event_from_wire, event_to_wire
from agent.serve.events import Chunk, Done, Event, Failed, Usage
from agent.serve.stats import ServerStats
from tests.test_serve import PROMPTS, Served, launch, model_dir, stop_server

__all__ = ["model_dir"]  # the module-scoped fixture, shared with tests/test_serve.py


def test_events_and_figures_cross_as_they_were() -> None:
    usage = Usage(3, 2, 1.5, 9.0, "length")
    events: list[Event] = [
        Chunk(" fox", (7,)),
        Done(" jumps", (8, 9), usage),
        Failed("the model failed"),
    ]
    for key, event in enumerate(events, start=1):
        assert event_from_wire(event_to_wire(key, event)) == (key, event)
    with pytest.raises(ValueError, match="not an engine event"):
        event_from_wire((1, "a", (), (), "extra"))
    figures = FigureRecorder()
    figures.step(32, 33)
    figures.request_completed(0.25, 20, 16)
    assert figures.take() == [("step", 32, 33), ("completed", 0.25, 20, 16)]
    assert figures.take() == []
    stats = ServerStats()
    stats.step(32, 33)
    assert stats.snapshot().tokens_total == 33


def engine_of(served: Served) -> psutil.Process:
    served.wait_ready()
    [engine] = [
        p
        for p in psutil.Process(served.proc.pid).children()
        if "agent.serve.engine_worker" in " ".join(p.cmdline())
    ]
    return engine


def stub_of(served: Served) -> tuple[grpc.Channel, Any]:
    channel = served.channel()
    return channel, inference_service_pb2_grpc.InferenceServiceStub(channel)


def test_the_model_runs_in_its_own_process_and_its_death_stops_the_server(
    model_dir: Path, tmp_path: Path
) -> None:
    """A server whose engine process died fails the requests in flight with one line and
    exits 1, so that its supervisor sees it (never a server that hangs its clients)."""
    served = launch(model_dir, tmp_path / "server", ["--max-batch-size", "4"])
    try:
        engine = engine_of(served)
        assert engine.pid != served.proc.pid
        channel, stub = stub_of(served)
        with channel:
            reply = stub.Complete(
                pb.CompleteRequest(prompt=PROMPTS[0], params=pb.SamplingParams(max_tokens=4)),
                **served.kw(),
            )
            assert reply.usage.completion_tokens >= 1
            stats = stub.GetServerStats(pb.GetServerStatsRequest(), **served.kw())
            # The engine's figures reach the server's one table of them.
            assert stats.max_batch_size == 4 and sum(stats.batch_size_histogram.values()) >= 1
            call = stub.Generate(
                pb.GenerateRequest(prompt=PROMPTS[1], params=pb.SamplingParams(max_tokens=1000)),
                **served.kw(60),
            )
            next(call)
            errors: list[grpc.RpcError] = []

            def drain() -> None:
                try:
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    errors.append(exc)

            reader = threading.Thread(target=drain)
            reader.start()
            os.kill(engine.pid, signal.SIGKILL)
            reader.join(30)
        assert not reader.is_alive()
        [error] = errors
        assert error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
        assert "engine process exited unexpectedly" in (error.details() or "")
        assert served.proc.wait(30) == 1
        assert "engine process exited unexpectedly" in served.logs()
    finally:
        stop_server(served)


def test_a_killed_server_takes_its_engine_process_with_it(model_dir: Path, tmp_path: Path) -> None:
    served = launch(model_dir, tmp_path / "server", [])
    try:
        engine = engine_of(served)
        served.proc.kill()
        served.proc.wait(10)
        deadline = time.monotonic() + 20
        while engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the engine process outlived its server"
            time.sleep(0.05)
    finally:
        stop_server(served)
