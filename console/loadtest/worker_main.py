"""A worker process: `python -m console.loadtest.worker_main`, driven over stdin/stdout by
console.loadtest.workers.ProcessWorkers."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, BinaryIO

from console.loadtest.engine import Engine, tune_gc
from console.loadtest.targets import make_client
from console.loadtest.workers import frame, make_recorder, read_frame


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve(out: BinaryIO) -> int:
    def send(message: tuple[Any, ...]) -> None:
        out.write(frame(message))
        out.flush()

    reader = await _stdin_reader()
    setup = await read_frame(reader)
    if setup is None or setup[0] != "setup":
        return 2
    _, spec, plan, index, config = setup
    client = make_client(spec)
    try:
        await client.open()
    except Exception as exc:
        send(("error", f"worker {index} cannot connect to {spec.address}: {exc}"))
        await client.close()
        return 1
    recorder = make_recorder(spec, plan, config, index)
    engine = Engine(client, plan, index, recorder, lambda s: send(("snap", s)), spec.timeout_s)
    tune_gc()
    send(("ready",))
    start = await read_frame(reader)
    if start is None or start[0] != "start":
        await client.close()
        return 0

    async def watch() -> None:
        # A stop from the parent, or the parent gone (end of stdin).
        while (message := await read_frame(reader)) is not None and message[0] != "stop":
            pass
        engine.stop()

    watcher = asyncio.create_task(watch())
    try:
        await engine.run(start[1])
    finally:
        watcher.cancel()
        await client.close()
    return 0


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the frames
    sys.exit(asyncio.run(serve(out)))


if __name__ == "__main__":
    main()
