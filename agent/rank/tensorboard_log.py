"""TensorBoard event files from Gantry's trainer, as Hugging Face's Trainer writes them.

Rank 0 writes LOGGING_DIR/<run>/events.out.tfevents.* through torch's SummaryWriter, one
run folder per attempt (`2026-12-06_06-30-00_attempt2`, or the host's name outside a
Gantry job) so a restart's steps never interleave with the last attempt's. Scalars, at
the optimizer step:

    train/loss  train/learning_rate  train/grad_norm  train/epoch  train/loss_scale (fp16)
    train/tokens_per_s  train/samples_per_s  (the job's: rank 0's rate x the world size)
    time/step_s  time/forward_s  time/backward_s  time/optimizer_s
    time/comm_s  time/comm/<op>_s   (rank 0's collectives, by op, as measured)

A step only queues its scalars: a thread of the log's own hands them to SummaryWriter,
whose writer thread flushes the file every FLUSH_S seconds; closing writes the rest.
Without the tensorboard package one line says that logging is off, and training goes on.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

ATTEMPT_ENV = "GANTRY_ATTEMPT"
FLUSH_S = 5
# Events SummaryWriter's own thread may fall behind by before add_scalar blocks.
MAX_QUEUE = 1000

# metrics record key -> TensorBoard tag (the names HF Trainer uses where it has one)
RECORD_TAGS = {
    "loss": "train/loss",
    "lr": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "loss_scale": "train/loss_scale",
    "step_time_s": "time/step_s",
    "forward_s": "time/forward_s",
    "backward_s": "time/backward_s",
    "optimizer_step_s": "time/optimizer_s",
    "collective_total_s": "time/comm_s",
}
# Rates rank 0 measures for itself; every rank steps in lockstep on as many samples.
JOB_RATE_TAGS = {"tokens_per_s": "train/tokens_per_s", "samples_per_s": "train/samples_per_s"}


def run_name(attempt: str | None, now: datetime, host: str) -> str:
    """The run folder of one attempt: sorts by start time, says which attempt it was."""
    stamp = now.strftime("%Y-%m-%d_%H-%M-%S")
    return f"{stamp}_attempt{attempt}" if attempt else f"{stamp}_{host}"


def free_run_dir(logging_dir: Path, name: str) -> Path:
    """LOGGING_DIR/name, or name-2, name-3 ... if a run of that name is already there."""
    path, n = logging_dir / name, 1
    while path.exists():
        n += 1
        path = logging_dir / f"{name}-{n}"
    return path


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def board_scalars(record: Mapping[str, Any], world_size: int) -> dict[str, float]:
    """The TensorBoard scalars of one metrics record; what was not measured is left out."""
    out: dict[str, float] = {}
    for key, tag in RECORD_TAGS.items():
        value = _number(record.get(key))
        if value is not None:
            out[tag] = value
    for key, tag in JOB_RATE_TAGS.items():
        value = _number(record.get(key))
        if value is not None:
            out[tag] = value * world_size
    comms = record.get("collective_s")
    if isinstance(comms, Mapping):
        for op, seconds in sorted(comms.items()):
            value = _number(seconds)
            if value is not None:
                out[f"time/comm/{op}_s"] = value
    return out


class BoardLog:
    """One run's event file, written by a thread of its own so a step only queues."""

    def __init__(
        self, writer: Any, run_dir: Path, world_size: int, log: Callable[[str], None]
    ) -> None:
        self.writer = writer
        self.run_dir = run_dir
        self.world_size = world_size
        self.log = log
        self._queue: queue.SimpleQueue[tuple[int, dict[str, float]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="gantry-tensorboard", daemon=True)
        self._thread.start()

    def step(self, step: int, record: Mapping[str, Any]) -> None:
        """Queue the scalars of `record` at optimizer step `step`."""
        self._queue.put((step, board_scalars(record, self.world_size)))

    def _write(self) -> None:
        failed = False
        while (item := self._queue.get()) is not None:
            step, values = item
            if failed:
                continue  # keep draining: the queue must not grow
            try:
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, global_step=step)
            except Exception as exc:  # a full disk must not end the training
                failed = True
                self.log(f"TensorBoard logging stopped at step {step}: {exc}")

    def close(self) -> None:
        """Write what is queued, flush and close the event file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.writer.close()


def open_board(
    logging_dir: Path,
    world_size: int,
    log: Callable[[str], None],
    now: datetime | None = None,
) -> BoardLog | None:
    """Rank 0's TensorBoard log under `logging_dir`, or None (and one line) without one."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # also torch's own check: a tensorboard older than 1.15
        missing = (exc.name or "").split(".")[0] == "tensorboard"
        why = "the tensorboard package is not installed (pip install tensorboard)"
        log(f"TensorBoard logging is off: {why if missing else exc}")
        return None
    name = run_name(os.environ.get(ATTEMPT_ENV), now or datetime.now(), socket.gethostname())
    run_dir = free_run_dir(logging_dir, name)
    try:
        writer = SummaryWriter(str(run_dir), max_queue=MAX_QUEUE, flush_secs=FLUSH_S)
    except OSError as exc:
        log(f"TensorBoard logging is off: cannot write {run_dir}: {exc.strerror or exc}")
        return None
    log(f"TensorBoard events in {run_dir}")
    return BoardLog(writer, run_dir, world_size, log)
