"""Hugging Face Trainer's log dicts and tqdm progress bars, read from a rank's output.

The Trainer prints each log as a dict (``ProgressCallback.on_log`` through ``tqdm.write``, or
``PrinterCallback.on_log`` through ``print`` when tqdm is disabled):

    4.x:  {'loss': 2.3456, 'grad_norm': 1.23, 'learning_rate': 4.9e-05, 'epoch': 0.01}
    5.x:  {'loss': '4.112', 'grad_norm': '6.665', 'learning_rate': '4.75e-05', 'epoch': '0.04'}

with ``nan``/``inf``, ``tensor(..)`` or ``np.float64(..)`` values at times, and no step number.
The step is on the Trainer's tqdm bar (stderr, no description, total = max steps):
``tqdm.write`` clears the bar (``\\r`` + spaces + ``\\r``), prints the dict on stdout, then
redraws the bar at the step being logged. So the k-th dict goes with the k-th redraw that
follows a clear; ``StepMatcher`` pairs them in that order, whichever file is read first.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import MAX_COUNT, whole_number
from agent.jobs.node.log_findings import strip_prefix

__all__ = [
    "MAX_STEPS",
    "Bar",
    "LogDict",
    "StepMatcher",
    "hf_metrics",
    "parse_bar",
    "parse_log_dict",
]

MAX_QUEUE = 1024  # redraws waiting for their dict
MAX_PENDING = 256  # dicts waiting for their redraw
MAX_KEYS = 64  # of one dict

_BAR = re.compile(
    r"(?P<pct>\d{1,3})%\|(?P<bar>[^|\n]{0,1000})\|\s*(?P<n>\d+(?:\.\d+)?[kMGTPEZY]?)"
    r"/(?P<total>\d+(?:\.\d+)?[kMGTPEZY]?)\s*\[(?P<times>[^\],]{0,60}),"
    r"\s*(?P<rate>[^\],]{0,60})(?P<postfix>[^\]]{0,400})\]"
)
_RATE = re.compile(r"(?P<value>\d+(?:\.\d+)?|\?)\s*(?P<a>[A-Za-z]*)/(?P<b>[A-Za-z]+)")
_DICT_START = re.compile(r"\{\s*['\"]")
# ms-swift's Trainer prints where it is inside its log dict.
_AT = "global_step/max_steps"
_POSITION = re.compile(r"['\"](?P<n>\d{1,12})/(?P<of>\d{1,12})['\"]")
MAX_STEPS = "max_steps"  # the key parse_log_dict gives the total under
_PAIR = re.compile(
    r"(?P<q>['\"])(?P<key>[^'\"\n]{1,120})(?P=q)\s*:\s*"
    r"(?P<value>'[^'\n]{0,120}'|\"[^\"\n]{0,120}\"|[\w.]+\([^()\n]{0,200}\)|[^,{}\n]{1,80})"
)
_WRAPPED = re.compile(r"[\w.]+\(\s*(?P<inner>[^,()]+)")  # tensor(1.5, device=..), np.float64(..)
_FIGURES = frozenset({"loss", "grad_norm", "learning_rate", "train_runtime", "train_loss"})


@dataclass(frozen=True)
class Bar:
    """One draw of a tqdm bar."""

    desc: str
    n: int | None  # None when not a whole count (unit_scale: "1.2k")
    total: int | None
    unit: str  # "it" for the Trainer's bar
    step_time_s: float | None  # seconds per unit: 1/rate for "2.81it/s", 1.23 for "1.23s/it"


def parse_bar(text: str) -> tuple[Bar, int, int] | None:
    """The first bar drawn in ``text``, with where it starts and ends, else None."""
    if "%|" not in text:
        return None
    match = _BAR.search(text)
    if match is None:
        return None
    # A launcher's prefix ("[default0]:", srun -l's "0: ", "gpu004: ") is not a description.
    before = strip_prefix(text[: match.start()]).rstrip()
    desc = before[:-1].strip()[-200:] if before.endswith(":") else ""
    unit, step_time = "", None
    rate = _RATE.match(match["rate"].strip())
    if rate is not None:
        value = None if rate["value"] == "?" else float(rate["value"])
        if rate["b"] == "s":
            unit = rate["a"]
            step_time = 1.0 / value if value else None
        elif rate["a"] == "s":
            unit, step_time = rate["b"], value
    bar = Bar(desc, whole_number(match["n"]), whole_number(match["total"]), unit, step_time)
    return bar, match.start(), match.end()


def _value(text: str) -> float | None:
    text = text.strip()
    wrapped = _WRAPPED.match(text)
    if wrapped is not None:
        text = wrapped["inner"]
    try:
        return float(text.strip().strip("'\""))
    except ValueError:
        return None


def parse_log_dict(text: str) -> dict[str, float | None] | None:
    """The Trainer log dict printed in ``text`` (values as numbers, None if not one), else None."""
    start = _DICT_START.search(text)
    if start is None:
        return None
    end = text.rfind("}")
    if end < start.start():
        return None
    fields: dict[str, float | None] = {}
    for pair in _PAIR.finditer(text, start.start() + 1, end):
        if len(fields) >= MAX_KEYS:
            break
        position = _POSITION.fullmatch(pair["value"].strip()) if pair["key"] == _AT else None
        if position is not None:  # ms-swift: "global_step/max_steps": "1/547"
            fields["step"], fields[MAX_STEPS] = float(position["n"]), float(position["of"])
            continue
        fields[pair["key"]] = _value(pair["value"])
    # The Trainer always adds "epoch" (3.x: "step"); a script's own config dict seldom does.
    if "epoch" not in fields and "step" not in fields:
        return None
    if not any(key in _FIGURES or key.startswith("eval_") for key in fields):
        return None
    return fields


def _kind(fields: dict[str, float | None]) -> str:
    if "train_runtime" in fields:
        return "end"
    if any(key in fields for key in ("loss", "grad_norm", "learning_rate")):
        return "train"
    return "eval"


def hf_metrics(fields: dict[str, float | None], step: int) -> job_pb2.RankMetrics | None:
    """A log dict's figures at ``step``; of an evaluation's dict only its ``eval_loss``
    (None without one)."""
    kind = _kind(fields)
    if kind == "eval":
        loss = fields.get("eval_loss")
        if loss is None or not math.isfinite(loss):
            return None
        return job_pb2.RankMetrics(step=step, eval_loss=loss, eval_step=step)
    m = job_pb2.RankMetrics(step=step)
    for key in ("loss", "grad_norm", "learning_rate"):
        value = fields.get(key)
        if value is not None:
            setattr(m, key, value)
    epoch = fields.get("epoch")
    if epoch is not None and math.isfinite(epoch):
        m.epoch = epoch
    rate = fields.get("train_samples_per_second")
    if kind == "end" and rate is not None and math.isfinite(rate):
        m.samples_per_s = rate
    return m


@dataclass(frozen=True)
class LogDict:
    """A log dict waiting for its step."""

    fields: dict[str, float | None]
    stream: str
    since: float  # the ``now`` it was read at
    kind: str  # "train", "eval" or "end"

    @staticmethod
    def of(fields: dict[str, float | None], stream: str, now: float) -> LogDict:
        """A dict read from ``stream`` at ``now``."""
        return LogDict(fields, stream, now, _kind(fields))


class StepMatcher:
    """Gives each log dict the step of the bar redraw that follows it; bounded in memory.

    A dict and a redraw on the same stream (stdout and stderr in one file) pair directly: the
    redraw is drawn just after its dict. Across streams, redraws that follow a clear queue up
    and dicts take them in order. A dict that waits ``wait_s`` takes the bar's latest step,
    or with no bar at all the step after the last one by ``logging_steps``; its redraw, if it
    comes later, is then skipped (``owed``) so the pairs stay aligned.
    """

    def __init__(
        self,
        logging_steps: float | None = None,
        total: int | None = None,
        first_step: bool = False,
        wait_s: float = 2.0,
    ) -> None:
        self.logging_steps = logging_steps
        self.total = total
        self.first_step = first_step  # --logging_first_step: the first log is at step 1
        self.eval_steps: float | None = None  # the Trainer's, where its hook said them
        self.wait_s = wait_s
        self.last_step = 0  # of the last dict placed, or the step resumed from
        self.bar_step: int | None = None  # the Trainer bar's latest step
        self._queue: deque[tuple[str, int]] = deque(maxlen=MAX_QUEUE)
        self._pending: deque[LogDict] = deque()
        self._owed = 0
        self._placed = 0

    def bar(self, stream: str, n: int, after_clear: bool) -> list[tuple[LogDict, int]]:
        """The main bar was drawn at ``n`` on ``stream``; the dicts this places."""
        self.bar_step = n
        if self._pending and self._pending[0].stream == stream:
            return [self._place(self._pending.popleft(), n)]
        if not after_clear:
            return []
        if self._owed > 0:
            self._owed -= 1
            return []
        self._queue.append((stream, n))
        return self._match()

    def add(self, item: LogDict) -> list[tuple[LogDict, int]]:
        """A dict was read; the dicts this places (perhaps itself)."""
        placed = []
        if len(self._pending) >= MAX_PENDING:
            placed.append(self._fallback(self._pending.popleft()))
        self._pending.append(item)
        return placed + self._match()

    def expire(self, now: float) -> list[tuple[LogDict, int]]:
        """The dicts that waited ``wait_s`` by ``now``, placed by the fallback."""
        placed = []
        while self._pending and now - self._pending[0].since >= self.wait_s:
            placed.append(self._fallback(self._pending.popleft()))
        return placed

    def _match(self) -> list[tuple[LogDict, int]]:
        placed = []
        while self._queue and self._pending:
            stream, n = self._queue.popleft()
            # A redraw queued on the dict's own stream came before that dict: not its own.
            if stream != self._pending[0].stream:
                placed.append(self._place(self._pending.popleft(), n))
        return placed

    def _place(self, item: LogDict, step: int) -> tuple[LogDict, int]:
        self.last_step, self._placed = step, self._placed + 1
        return item, step

    def _fallback(self, item: LogDict) -> tuple[LogDict, int]:
        self._owed = min(self._owed + 1, MAX_QUEUE)
        if self.bar_step is not None:
            return self._place(item, self.bar_step)
        if item.kind == "end" and self.total:
            return self._place(item, self.total)
        if item.kind == "eval" and self.eval_steps and self.eval_steps >= 1:
            # An evaluation runs at a multiple of eval_steps, at or after the last log.
            every = int(min(self.eval_steps, MAX_COUNT))
            return self._place(item, max(1, math.ceil(self.last_step / every)) * every)
        if item.kind != "train":
            return self._place(item, self.last_step)
        if self.first_step and self._placed == 0 and self.last_step == 0:
            return self._place(item, 1)
        every = self._every()
        return self._place(item, min((self.last_step // every + 1) * every, MAX_COUNT))

    def _every(self) -> int:
        steps = self.logging_steps
        if steps is None or not math.isfinite(steps) or steps <= 0:
            return 1
        if steps < 1:  # a ratio of the run's steps
            return max(1, math.ceil(steps * self.total)) if self.total else 1
        return int(min(steps, MAX_COUNT))
