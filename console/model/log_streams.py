"""One rank's two logs as the log screen shows them: stdout, stderr, or both merged.

Each stream has its own buffer, and a third holds both, each line tagged with its
stream. The agent's lines carry no time (its `LogLine.time` is left unset: a rank's
files are plain text, written without stamps), and offsets are per file, so the two
files cannot be ordered exactly. The merged log is in arrival order: each stream's
backlog as one block, stdout's first (the backlogs are held until both came, or for
`hold_s`), then live lines as each of the agent's polls brings them, which orders
lines at the poll's granularity (a fraction of a second).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import Enum

from console.model.log_buffer import DEFAULT_MAX_LINES, LogBuffer

STREAMS = ("stdout", "stderr")
STDOUT, STDERR = 0, 1  # the merged buffer's line tags
# How long the merged log waits for the second stream's backlog.
BACKLOG_HOLD_S = 1.0


class LogMode(Enum):
    """What the log screen shows; `next` is the key's cycle."""

    MERGED = "stdout+stderr"
    STDOUT = "stdout"
    STDERR = "stderr"

    @property
    def next(self) -> LogMode:
        modes = list(LogMode)
        return modes[(modes.index(self) + 1) % len(modes)]


class RankLogs:
    """Lines of one rank's stdout and stderr, fed per stream (`add`, `failed`)."""

    def __init__(
        self,
        max_lines: int = DEFAULT_MAX_LINES,
        *,
        hold_s: float = BACKLOG_HOLD_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.merged = LogBuffer(max_lines)
        self.stdout = LogBuffer(max_lines)
        self.stderr = LogBuffer(max_lines)
        self.monotonic = monotonic
        self._hold_until = monotonic() + hold_s
        # Backlogs held for the merged buffer until both streams answered (None: released).
        self._held: dict[str, list[str]] | None = {"stdout": [], "stderr": []}
        self._answered: set[str] = set()
        self._last_failure = ""

    def buffer(self, mode: LogMode) -> LogBuffer:
        if mode is LogMode.MERGED:
            return self.merged
        return self.stdout if mode is LogMode.STDOUT else self.stderr

    @property
    def settled(self) -> bool:
        """Both backlogs are in the merged buffer (or one stopped waiting for)."""
        return self._held is None

    def add(self, stream: str, lines: Sequence[str]) -> None:
        """Lines read from one stream ("stdout" or "stderr"), in file order."""
        tag = STREAMS.index(stream)  # ValueError for any other stream
        (self.stderr if tag == STDERR else self.stdout).extend(lines)
        if self._held is None:
            self.merged.extend(lines, tag)
            return
        self._held[stream].extend(lines)
        self._answered.add(stream)
        self.poll()

    def failed(self, stream: str, message: str) -> None:
        """The feed of one stream could not read (the node is away, no such rank yet)."""
        line = f"gantry: {message}"
        (self.stderr if stream == "stderr" else self.stdout).append(line)
        if line != self._last_failure:  # both feeds say it when the node is away
            self._last_failure = line
            self.merged.append(line, STREAMS.index(stream))
        if self._held is not None:
            self._answered.add(stream)
            self.poll()

    def poll(self) -> None:
        """Releases the held backlogs once both streams answered or the hold is over."""
        held = self._held
        if held is None:
            return
        if len(self._answered) < len(STREAMS) and self.monotonic() < self._hold_until:
            return
        self._held = None
        for tag, stream in enumerate(STREAMS):
            self.merged.extend(held[stream], tag)

    def empty_note(self, mode: LogMode) -> str:
        """What an empty view says: which stream is empty and what the other holds."""
        if mode is LogMode.MERGED:
            return "no lines yet on stdout or stderr" if self.settled else "reading the logs…"
        other = self.stderr if mode is LogMode.STDOUT else self.stdout
        other_name = "stderr" if mode is LogMode.STDOUT else "stdout"
        note = f"no lines yet on {mode.value}"
        if len(other):
            note += f" ({other_name} has {len(other):,}: press s)"
        return note
