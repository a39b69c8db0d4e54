"""Megatron-style training output read as ``RankMetrics``: the ``iteration N/ M | key: value |``
line (Megatron-LM, Megatron-DeepSpeed, GPT-NeoX, nanotron, ALCF's ``key=value`` form) and the
timers Megatron prints after it (one ``time (ms) | name: value | ...`` line before 2022, a
``(min, max) time across ranks (ms):`` block since). Pure: no I/O, no clock of its own.

Sources of the formats (tests/test_megatron_lines.py has the real lines):
- Megatron-LM ``megatron/training/training.py`` ``training_log`` and ``megatron/core/timers.py``
  ``Timers.log``; Megatron-DeepSpeed ``megatron/training.py`` and ``megatron/timers.py``.
- Timers are logged with ``normalizer=log_interval``: each figure is already per iteration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import MAX_COUNT, whole_number

__all__ = ["BLOCK_HEAD", "MegatronParser", "megatron_metrics"]

_ITERATION = re.compile(r"\biteration[:=]?\s*(?P<step>\d+)\s*/\s*(?P<total>\d+)\s*\|")
_NUMBER = re.compile(r"\s*(?P<n>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)(?P<rest>.*)")
_SCALE = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}  # nanotron's human_format
_KEY_JUNK = re.compile(r"[\s_-]+")
# Keys with spaces, "_" and "-" removed, lower case -> RankMetrics field (first match wins).
_FIELDS: tuple[tuple[str, str], ...] = (
    ("learningrate", "learning_rate"),
    ("lr", "learning_rate"),
    ("lossscale", "loss_scale"),
    ("gradnorm", "grad_norm"),
    ("samplespersecond", "samples_per_s"),
    ("samples/sec", "samples_per_s"),
    ("tokenspergpupersecond(tgs)", "tokens_per_s"),
    ("tokenspergpupersecondtgs", "tokens_per_s"),
    ("tokenspersecpergpu", "tokens_per_s"),
    ("tflops", "tflops"),
    ("[lm]tflops", "tflops"),
    ("throughputpergpu(tflop/s/gpu)", "tflops"),
    ("modeltflopspergpu", "tflops"),
    ("approxflopspergpu", "tflops"),
    ("[ds]tflops", "tflops"),
)
_MS_KEYS = ("elapsedtimeperiteration(ms)", "elapsedtimeperiterationms")
_LOSS_KEYS = ("lmloss", "loss")

# Timer names (Megatron-LM 2020-today, Megatron-DeepSpeed, GPT-NeoX) -> RankMetrics field.
_TIMER_FIELDS: Mapping[str, str] = {
    "forward-compute": "forward_s",
    "forward": "forward_s",
    "backward-compute": "backward_s",
    "backward": "backward_s",
    "optimizer": "optimizer_step_s",
}
# Gradient reductions, disjoint from each other; "backward-reduce-model-grads" (2021) is the
# timer around the first three of the 2021 names, so it is taken alone when printed.
_REDUCE_ALL = "backward-reduce-model-grads"
_REDUCE_PARTS = frozenset(
    {
        "all-grads-sync",
        "grads-all-reduce",
        "grads-reduce-scatter",
        "layernorm-grads-all-reduce",
        "embedding-grads-all-reduce",
        "conditional-embedder-grads-all-reduce",
        "backward-params-all-reduce",
        "backward-layernorm-all-reduce",
        "backward-embedding-all-reduce",
        "backward-allreduce",
        "allreduce",
    }
)
_SPLIT = ("forward_s", "backward_s", "allreduce_s", "optimizer_step_s")
_KNOWN_TIMERS = frozenset(_TIMER_FIELDS) | _REDUCE_PARTS | {_REDUCE_ALL, "forward-backward"}
_ONE_LINE = re.compile(r"(?:^|[\s\]:])time \(ms\)(?P<parts> \|.*)")
_ONE_PART = re.compile(r"\s*(?P<name>[\w /.-]+?): (?P<value>[\d.]+)\s*$")
BLOCK_HEAD = _BLOCK_HEAD = "across ranks (ms):"  # "(min, max) time ", "max time " or "times "
_BLOCK_VALUE = re.compile(r"\((?P<min>[\d.]{1,20}), (?P<max>[\d.]{1,20})\)|(?P<value>[\d.]{1,20})")
_ALL_NAME = re.compile(r"^\s*(?P<name>[\w/.-]+):\s*$")  # --timing-log-option all
_ALL_RANK = re.compile(r"\brank\s+\d+: (?P<value>[\d.]+)\s*$")
_MAX_TIMERS = 64  # a block longer than this is not Megatron's


def _ms(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:  # "1.2.3"
        return None


def _number(text: str) -> float | None:
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    return float(match["n"]) * _SCALE.get(match["rest"].strip(), 1.0)


def megatron_metrics(text: str) -> job_pb2.RankMetrics | None:
    """The figures of a Megatron-style ``iteration N/ M | key: value | ...`` line, else None."""
    if "iteration" not in text or "|" not in text:
        return None
    found = _ITERATION.search(text)
    step = whole_number(found["step"]) if found is not None else None
    total = whole_number(found["total"]) if found is not None else None
    if found is None or step is None or total is None:
        return None
    m = job_pb2.RankMetrics(step=step, total_steps=total)
    values: dict[str, float] = {}
    for part in text[found.end() :].split("|") + text[: found.start()].split("|"):
        sep = ":" if ":" in part else "="  # ALCF's fork prints "key=value"
        key, found_sep, value = part.partition(sep)
        number = _number(value) if found_sep else None
        if number is not None:
            values.setdefault(_KEY_JUNK.sub("", key.lower()), number)
    for key, attr in _FIELDS:
        if key in values and not m.HasField(attr):
            setattr(m, attr, values[key])
    for key in _MS_KEYS:
        if key in values:
            m.step_time_s = values[key] / 1000.0
    losses = [k for k in _LOSS_KEYS if k in values]
    losses += [k for k in values if k.endswith("loss") and k not in _LOSS_KEYS]
    if losses:
        m.loss = values[losses[0]]
    return m


# Megatron's report_memory (also GPT-NeoX's): "[Rank 0] (after 10 iterations) memory (MB) |
# allocated: 19278.6 | max allocated: 27906.4 | reserved: ... | max reserved: ...", NeoX
# without the parentheses. MB here is 2**20 bytes (torch.cuda.memory_allocated() / 1024 / 1024).
_MEMORY = re.compile(
    r"after (?P<step>\d{1,12}) iterations\)? memory \(MB\) \| allocated: (?P<now>[\d.]+)"
    r" \| max allocated: (?P<peak>[\d.]+)"
)


def memory_metrics(found: re.Match[str]) -> job_pb2.RankMetrics:
    m = job_pb2.RankMetrics(step=int(found["step"]))
    for attr, group in (("memory_bytes", "now"), ("peak_memory_bytes", "peak")):
        mib = _ms(found[group])  # a plain finite number
        if mib is not None and 0 <= mib * 2**20 <= MAX_COUNT:
            setattr(m, attr, int(mib * 2**20))
    return m


def timer_metrics(step: int, timers_ms: Mapping[str, float]) -> job_pb2.RankMetrics | None:
    """Step ``step``'s split from Megatron's per-iteration timers (ms), else None."""
    m = job_pb2.RankMetrics(step=step)
    for name, attr in _TIMER_FIELDS.items():
        if name in timers_ms and not m.HasField(attr):
            setattr(m, attr, timers_ms[name] / 1000.0)
    if _REDUCE_ALL in timers_ms:
        m.allreduce_s = timers_ms[_REDUCE_ALL] / 1000.0
    elif (reduced := sum(v for k, v in timers_ms.items() if k in _REDUCE_PARTS)) > 0:
        # 0: not measured here. GPT-NeoX under DeepSpeed prints "backward-allreduce: 0.00"
        # beside DeepSpeed's own "backward_allreduce: 162.60" for the same step: the engine
        # reduces inside its backward, which NeoX's timer does not see.
        m.allreduce_s = reduced / 1000.0
    return m if any(m.HasField(attr) for attr in _SPLIT) else None


@dataclass
class _Block:
    """A multi-line timer block being read on one stream."""

    last_s: float
    timers_ms: dict[str, float] = field(default_factory=dict)
    name: str | None = None  # the timer whose per-rank lines follow (option "all")


class MegatronParser:
    """Reads one rank's Megatron iteration lines and the timers after each (per stream).

    The timers belong to the iteration line printed just before them; a block ends at the
    first line that is not one of its rows, or once ``wait_s`` passed without one (``flush``).
    """

    def __init__(self, wait_s: float = 2.0) -> None:
        self.step: int | None = None  # the last iteration line's
        self._wait_s = wait_s
        self._blocks: dict[str, _Block] = {}

    @property
    def busy(self) -> bool:
        """A timer block is open on some stream: its next line may be a row."""
        return bool(self._blocks)

    def feed(self, stream: str, text: str, now: float) -> list[job_pb2.RankMetrics]:
        """What ``text`` (one line of ``stream``) completes: iteration figures, timers."""
        out: list[job_pb2.RankMetrics] = []
        block = self._blocks.get(stream)
        if block is not None:
            if self._block_row(block, text):
                block.last_s = now
                return out
            self._end_block(stream, out)
        if _BLOCK_HEAD in text:
            if len(self._blocks) < 8 or stream in self._blocks:
                self._blocks[stream] = _Block(now)
            return out
        if "time (ms) |" in text:
            self._one_line(text, out)
            return out
        if "memory (MB) |" in text:
            memory = _MEMORY.search(text)
            if memory is not None:
                out.append(memory_metrics(memory))
            return out
        m = megatron_metrics(text)
        if m is not None:
            self.step = m.step
            out.append(m)
        return out

    def flush(self, now: float) -> list[tuple[str, job_pb2.RankMetrics]]:
        """(stream, timers) of blocks no line has followed for ``wait_s``."""
        out: list[tuple[str, job_pb2.RankMetrics]] = []
        for stream, block in list(self._blocks.items()):
            if now - block.last_s >= self._wait_s:
                ended: list[job_pb2.RankMetrics] = []
                self._end_block(stream, ended)
                out += [(stream, m) for m in ended]
        return out

    def _block_row(self, block: _Block, text: str) -> bool:
        if len(block.timers_ms) >= _MAX_TIMERS:
            return False
        at = text.find(".: ")
        if at >= 0:  # "    forward-backward .........: (106622.81, 106624.28)"
            head = text[: at + 1]
            label = head.rstrip(".")
            row = _BLOCK_VALUE.match(text, at + 3)
            if row is None or len(head) - len(label) < 2 or not label.endswith(" "):
                return False
            names = label.split()
            # "(min, max)" across ranks: the slowest rank's time is what the step took.
            value = _ms(row["max"] or row["value"])
            if value is not None and names:
                block.timers_ms[names[-1]] = value
            return True
        if "rank" in text:
            per_rank = _ALL_RANK.search(text)
            if per_rank is None or block.name is None:
                return False
            value = _ms(per_rank["value"]) or 0.0
            block.timers_ms[block.name] = max(value, block.timers_ms.get(block.name, 0.0))
            return True
        timer = _ALL_NAME.match(text)
        if timer is None:
            return False
        block.name = timer["name"]
        return True

    def _end_block(self, stream: str, out: list[job_pb2.RankMetrics]) -> None:
        block = self._blocks.pop(stream)
        if self.step is None or not any(n in _KNOWN_TIMERS for n in block.timers_ms):
            return  # set-up timers ("model-and-optimizer-setup"), or no iteration yet
        m = timer_metrics(self.step, block.timers_ms)
        if m is not None:
            out.append(m)

    def _one_line(self, text: str, out: list[job_pb2.RankMetrics]) -> None:
        found = _ONE_LINE.search(text)
        if found is None or self.step is None:
            return
        timers: dict[str, float] = {}
        for part in found["parts"].split("|")[1:]:
            pair = _ONE_PART.match(part)
            value = _ms(pair["value"]) if pair is not None else None
            if pair is not None and value is not None:
                timers[" ".join(pair["name"].split())] = value
        # DeepSpeed's own timer lines ("fwd", "step", "optimizer_step") are not Megatron's.
        if "step" in timers or not any(n in _KNOWN_TIMERS for n in timers):
            return
        m = timer_metrics(self.step, timers)
        if m is not None:
            out.append(m)
