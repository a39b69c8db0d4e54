"""The inference server's engine process: the model and its decode loop, apart from the
server's gRPC and HTTP event loop (started by agent.serve.engine_process, never by hand).

    python -m agent.serve.engine_worker --fd N --server-pid PID --model DIR [--device auto]
        [--threads 1] [--max-batch-size N] [--max-queue-delay-ms 10] [--cpus 3]
        [--stream-interval 1]

Why a process: in one process the decode loop and the event loop share one GIL. On the
demo model the decode loop alone makes 8,800 tokens/s at batch 32 on one core, but the
server that also ran gRPC in that process delivered about 2,500: the event loop held
the GIL about 40 % of the time (bench/serving.py, profiled with py-spy). vLLM's V1
engine runs its EngineCore in a process of its own for the same reason.

The socket pair on fd N carries agent.serve.engine_wire's messages. The main thread reads
the server's commands; the decode thread sends one message per iteration (the events of
its step, the figures for ServerStats and the load). SIGINT and SIGTERM are ignored: the
server stops this process ("stop") once it has drained; a server that is gone closes the
socket, and a server that is killed takes this process with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from agent.serve.cpu_binding import bind_process, parse_cpus
from agent.serve.engine_wire import FigureRecorder, WireEvent, event_to_wire
from agent.serve.events import Event, Sink, wake_later

if TYPE_CHECKING:
    from agent.serve.engine import Engine

log = logging.getLogger("gantry.serve.engine")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Outbox:
    """Events for the server, sent one message per decode iteration (`held_wakeups`), or
    at once when posted outside one (a failure, the stop)."""

    def __init__(
        self, conn: Connection, figures: FigureRecorder, load: Callable[[], tuple[int, int]]
    ) -> None:
        self._conn = conn
        self._figures = figures
        self._load = load
        self._lock = threading.Lock()
        self._events: list[WireEvent] = []
        self.broken = False

    def sink(self, key: int) -> Sink:
        def post(event: Event) -> None:
            with self._lock:
                self._events.append(event_to_wire(key, event))
            if not wake_later(self):
                self.wake()

        return post

    def wake(self) -> None:
        """Sends what waits, with the figures and the engine's load."""
        with self._lock:  # one sender at a time, in order
            # Read under the lock: the command thread's wake after a cancel read (0, 1)
            # before the decode thread evicted it, and sent that after the decode thread's
            # (0, 0): an idle server then said one request was running until the next one.
            # (No lock of the engine's is held while posting, so this order cannot deadlock.)
            load = self._load()
            events, self._events = self._events, []
            try:
                self._conn.send(("iteration", events, self._figures.take(), load))
            except OSError:  # the server is gone: the command loop ends on its EOF
                self.broken = True

    def send(self, message: tuple[object, ...]) -> None:
        with self._lock:
            self._conn.send(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.serve.engine_worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=0, help="0: sized for the device")
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument("--cpus", help="bind to these CPUs (the server's --engine-cpus)")
    parser.add_argument("--stream-interval", type=int, default=1, help="tokens per message")
    parser.add_argument("--prefix-cache-mb", type=int, default=0, help="0: no prefix cache")
    return parser.parse_args(argv)


def serve_commands(conn: Connection, engine: Engine, outbox: Outbox) -> None:
    """The server's commands until it says stop or goes away."""
    while not outbox.broken:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            log.info("the server is gone: stopping")
            return
        kind = message[0]
        if kind == "submit":
            _, key, request, ignore_eos = message
            engine.submit(request, outbox.sink(key), ignore_eos=ignore_eos, key=key)
        elif kind == "cancel":
            engine.cancel(message[1])
        elif kind == "stop":
            return
        # After a burst of commands, the load the server reports; while a batch runs, its
        # next iteration's message says it (a message per request was as many again).
        if not conn.poll() and engine.load()[1] == 0:
            outbox.wake()


def die_with(server_pid: int) -> None:
    """SIGKILL when the server dies, even killed while this process loads the model (it
    reads no command then, so would not see the socket close). Linux only."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:  # it died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    die_with(args.server_pid)
    if args.cpus:  # before torch starts its threads: they inherit it
        bind_process(parse_cpus(args.cpus))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    conn = Connection(args.fd)
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.loading import (
        context_tokens,
        eos_token_ids,
        load_for_serving,
        max_batch_size_for,
    )

    figures = FigureRecorder()
    try:
        model, tokenizer = load_for_serving(args.model, args.device, args.threads)
        max_batch = max_batch_size_for(model, args.max_batch_size or None)
        scheduler: Scheduler[int] = Scheduler(max_batch, args.max_queue_delay_ms / 1000)
        engine = Engine(
            model,
            tokenizer,
            scheduler,
            figures,
            eos_token_ids(model, tokenizer),
            stream_interval=args.stream_interval,
            prefix_cache_bytes=args.prefix_cache_mb << 20,
        )
        engine.warm_up()
    except Exception as exc:  # the server reports it as the reason it cannot serve
        conn.send(("failed", str(exc) or type(exc).__name__))
        return 1
    outbox = Outbox(conn, figures, engine.load)
    outbox.send(("ready", max_batch, context_tokens(model, tokenizer)))
    engine.start()
    try:
        serve_commands(conn, engine, outbox)
    finally:
        engine.stop()  # requests still there fail (sent at once)
        if not outbox.broken:
            with contextlib.suppress(OSError):
                outbox.send(("stopped",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
