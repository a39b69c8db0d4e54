"""The engine process's outbox: two threads send (the command thread after a burst of
commands, the decode thread after each iteration); the load a message carries is the one
at the time it is sent, so the last message the server reads has the engine's last load.

The stale order this guards against made an idle server report one request still running
after a cancel (the Node contract client waited 10 s for `running == 0` and saw 1)."""

from __future__ import annotations

import threading
from typing import Any

from agent.serve.engine_wire import FigureRecorder
from agent.serve.engine_worker import Outbox


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        self.sent.append(message)


def test_a_wake_that_read_the_load_first_cannot_send_it_last() -> None:
    wire = Wire()
    running = [1]  # the cancelled request, not yet evicted
    command_reading = threading.Event()
    decode_done = threading.Event()

    def load() -> tuple[int, int]:
        value = (0, running[0])
        if threading.current_thread().name == "command":
            command_reading.set()
            # The decode thread evicts the request and wakes meanwhile; with the load read
            # under the outbox's lock it cannot send until this wake has.
            decode_done.wait(0.5)
        return value

    outbox = Outbox(wire, FigureRecorder(), load)  # type: ignore[arg-type]

    def decode_thread() -> None:
        command_reading.wait(5)
        running[0] = 0  # evicted
        outbox.wake()
        decode_done.set()

    command = threading.Thread(target=outbox.wake, name="command")
    decode = threading.Thread(target=decode_thread, name="decode")
    command.start()
    decode.start()
    command.join(10)
    decode.join(10)
    loads = [message[3] for message in wire.sent]
    assert loads[-1] == (0, 0), loads
    assert len(loads) == 2
