"""DeepSpeed's own progress lines read as METRICS records, for a script that does not report
through Gantry's metrics file (``agent.jobs.node.script_logs`` runs this parser with the others)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import GIB, MAX_COUNT, Record, RecordKind, as_number, whole_number

__all__ = ["DeepSpeedStdoutParser", "log_time"]

# DeepSpeed prints, on rank 0, with its logger's prefix ("[2026-11-28 09:46:23,018] [INFO]
# [logging.py:123:log_dist] "; before 0.3 "[INFO 2020-06-08 06:02:19] "), and the lines are
# searched anywhere in a line since launchers and terminals put text before them:
#   [Rank 0] step=2, skipped=0, lr=[0.001], mom=[(0.9, 0.999)]     (every steps_per_print;
#       before log_dist existed: "rank:0 step=2, ...")
#   ThroughputTimer, every steps_per_print (deepspeed/utils/timer.py):
#     >= 0.8:  epoch=0/micro_step=8/global_step=4, RunningAvgSamplesPerSec=1299.4,
#              CurrSamplesPerSec=889.3, MemAllocated=0.33GB, MaxMemAllocated=0.33GB
#     0.6-0.7: 0/40, RunningAvgSamplesPerSec=.., CurrSamplesPerSec=.., MemAllocated=..GB, ..
#     <= 0.5:  0/40, SamplesPerSec=83.48, MemAllocated=0.26GB, MaxMemAllocated=9.02GB
#              (0/40 is epoch/micro-step, not the optimizer step)
#   wall_clock_breakdown, every optimizer step (Timers.log):
#     >= 0.10.3: [Rank 0] time (ms) | fwd: 0.56 | bwd: 1.16 | bwd_inner: 0.44 |
#                bwd_allreduce: 0.68 | step: 6.07
#     <  0.10.3: [Rank 0] rank=0 time (ms) | forward: .. | backward: .. | backward_inner: .. |
#                backward_allreduce: .. | step: ..
#     plus per-micro-step lines (fwd_microstep, ...) and optimizer lines, which are skipped:
#     the engine prints the step's line after its micro-steps' in every version since 0.3
#     (both are on with wall_clock_breakdown), and that line is their sum.
#   PipelineEngine (0.3-0.19) prints both forms only every steps_per_print steps, summed over
#     those steps, then "steps: N loss: ..."; its micro-step line has "batch_input": the line
#     after it is that N's, divided by the steps since the last one (or since ``start_step``,
#     else steps_per_print).
#   The config dump at start-up (config.py print, every version): "  steps_per_print
#       .............. 10", "  train_batch_size ............. 32" (the throughput timer's
#       batch: its step time is train_batch_size / CurrSamplesPerSec).
#   PipelineEngine.train_batch (print): steps: 10 loss: 2.3456 iter time (s): 0.512
#       samples/sec: 62.500 (other losses may come before "iter time"; GPT-NeoX's copy prints
#       "step:    10 /   100 loss: ...")
_LOG_TIME = re.compile(
    r"\[(?:[A-Z]+ )?(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:[,.](?P<frac>\d{1,6}))?\]"
)
_STEP = re.compile(
    r"(?:\[Rank -?\d+\] |\brank:\d+ )step=(?P<step>\d+), skipped=\d+, lr=\[(?P<lr>[^\]]*)\]"
)
_THROUGHPUT = re.compile(
    r"(?:\bepoch=(?P<epoch>\d+)/micro_step=\d+/global_step=(?P<gstep>\d+)"
    r"|(?<![\w/.])(?P<oepoch>\d+)/(?P<ostep>\d+)), "
    r"(?:RunningAvgSamplesPerSec=[^,]*, CurrSamplesPerSec=(?P<curr>[^,\s]*)"
    r"|SamplesPerSec=(?P<avg>[^,\s]*))"
    r"(?:, MemAllocated=(?P<mem>[\d.]+)GB)?(?:, MaxMemAllocated=(?P<maxmem>[\d.]+)GB)?"
)
_TIMERS = re.compile(r"\btime \(ms\)(?P<parts> \|.*)")
_TIMER_PART = re.compile(r"\s*(?P<name>[\w.-]+): (?P<value>-?[\d.]+)")
_TIMER_FIELDS: Mapping[str, str] = {
    "fwd": "forward_s",
    "forward": "forward_s",
    "bwd": "backward_s",
    "backward": "backward_s",
    "bwd_allreduce": "allreduce_s",
    "backward_allreduce": "allreduce_s",
    "step": "optimizer_step_s",
}
_CONFIG = re.compile(r"\b(?P<key>steps_per_print|train_batch_size) \.{3,} (?P<value>\d{1,12})\s*$")
_PIPE = re.compile(
    r"\bsteps?: *(?P<step>\d+)(?: */ *(?P<total>\d+))? loss: (?P<loss>\S+) .*?"
    r"iter time \(s\): (?P<iter>[\d.]+) samples/sec: (?P<tput>[\d.]+)"
)
_MAX_LINE = 16384  # longer lines are cut: no DeepSpeed line is this long


class DeepSpeedStdoutParser:
    """Turns DeepSpeed's progress lines into METRICS records, one parser per rank's stdout.

    The timer line carries no step number: it belongs to the step of a ``step=N`` line just
    before it, else to the step after the last one seen (it is printed every step).
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.steps_per_print: int | None = None
        # The step this process started after (0, or the one it resumed from; None: unknown).
        self.start_step: int | None = 0
        self.train_batch_size: int | None = None
        self._pending = False
        self._pipe = False  # the pipeline engine's micro-step line came just before
        self._pipe_timers: dict[str, float] | None = None  # waiting for their "steps: N"
        self._timer_step: int | None = None  # the pipeline engine's last timer lines' step

    def parse(self, line: str) -> Record | None:
        line = line[:_MAX_LINE]
        if " ..." in line and "_" in line:
            self._config_line(line)
        if "step=" in line:
            match = _STEP.search(line)
            if match is not None:
                return self._step_line(match, log_time(line))
        if "SamplesPerSec=" in line:
            match = _THROUGHPUT.search(line)
            if match is not None:
                return self._throughput_line(match, log_time(line))
        if "time (ms)" in line:
            match = _TIMERS.search(line)
            if match is not None:
                return self._timer_line(match["parts"], log_time(line))
        if "iter time (s)" in line:
            match = _PIPE.search(line)
            if match is not None:
                return self._pipe_line(match, log_time(line))
        return None

    def _record(self, m: job_pb2.RankMetrics, when: float | None) -> Record:
        if when is not None:
            m.time.FromNanoseconds(int(when * 1e9))
        return Record(RecordKind.METRICS, when, m.step, metrics=m, source="stdout")

    def _step_line(self, match: re.Match[str], when: float | None) -> Record | None:
        step = whole_number(match["step"])
        if step is None:
            return None
        # step=0 is printed by deepspeed.initialize, before any training step.
        self.step, self._pending = step, step > 0
        m = job_pb2.RankMetrics(step=step)
        lrs = [as_number(x.strip(" ()")) for x in match["lr"].split(",")]
        if lrs and lrs[0] is not None:
            m.learning_rate = lrs[0]
        return self._record(m, when)

    def _throughput_line(self, match: re.Match[str], when: float | None) -> Record | None:
        # global_step here is the timer's own count, which restarts at 0 on resume; the old
        # forms count micro-steps.
        step = (
            self.step if self.step is not None else whole_number(match["gstep"] or match["ostep"])
        )
        epoch = whole_number(match["epoch"] or match["oepoch"])
        if step is None or epoch is None:
            return None
        if self.step is None and match["gstep"] is not None:
            # No step line yet: the wall-clock timer line just after this one is this step's.
            self.step, self._pending = step, True
        m = job_pb2.RankMetrics(step=step, epoch=float(epoch))
        rate = as_number(match["curr"] if match["curr"] is not None else match["avg"])
        if rate is not None and math.isfinite(rate):
            m.samples_per_s = rate
            if match["curr"] is not None and self.train_batch_size and rate > 0:
                m.step_time_s = self.train_batch_size / rate
        for attr, group in (("memory_bytes", "mem"), ("peak_memory_bytes", "maxmem")):
            memory = as_number(match[group])
            if memory is not None and 0 <= memory * GIB <= MAX_COUNT:
                setattr(m, attr, int(memory * GIB))
        return self._record(m, when)

    def _timer_line(self, parts: str, when: float | None) -> Record | None:
        timers: dict[str, float] = {}
        for part in parts.split("|")[1:]:
            found = _TIMER_PART.match(part)
            number = as_number(found["value"]) if found is not None else None
            if found is not None and number is not None:
                timers[found["name"]] = number / 1000.0
        if "step" not in timers or not ("fwd" in timers or "forward" in timers):
            # per-micro-step, optimizer or MoE lines, or another library's timers
            self._pipe = self._pipe or "batch_input" in timers
            return None
        if self._pipe and not self._pending:
            # The pipeline engine's step comes after, in its "steps: N" line (step=N lines
            # come before only when DeepSpeed's logger prints INFO).
            self._pipe, self._pipe_timers = False, timers
            return None
        step = self.step if self._pending and self.step is not None else (self.step or 0) + 1
        self.step, self._pending = step, False
        m = job_pb2.RankMetrics(step=step)
        if self._pipe:
            self._pipe = False
            if not self._split(m, timers, self._pipe_span(step)):
                return None
        else:
            self._split(m, timers, 1)
        return self._record(m, when)

    def _pipe_span(self, step: int) -> int | None:
        """How many steps the pipeline engine's timer sums cover, ending with ``step``."""
        last, self._timer_step = self._timer_step, step
        if last is None:
            last = self.start_step
        return step - last if last is not None and step > last else self.steps_per_print

    def _split(self, m: job_pb2.RankMetrics, timers: dict[str, float], span: int | None) -> bool:
        if not span:
            return False  # how many steps these sums cover is unknown
        for name, attr in _TIMER_FIELDS.items():
            if name in timers:
                setattr(m, attr, timers[name] / span)
        if not m.HasField("step_time_s"):
            fwd_bwd_step = ("fwd", "forward", "bwd", "backward", "step")
            m.step_time_s = sum(timers.get(name, 0.0) for name in fwd_bwd_step) / span
        return True

    def _config_line(self, line: str) -> None:
        found = _CONFIG.search(line)
        value = whole_number(found["value"]) if found is not None else None
        if found is not None and value:
            setattr(self, found["key"], value)

    def _pipe_line(self, match: re.Match[str], when: float | None) -> Record | None:
        step = whole_number(match["step"])
        if step is None:
            return None
        self.step = step
        m = job_pb2.RankMetrics(step=step)
        total = whole_number(match["total"] or "")
        if total is not None:
            m.total_steps = total
        for attr, value in (
            ("loss", match["loss"]),
            ("step_time_s", match["iter"]),
            ("samples_per_s", match["tput"]),
        ):
            number = as_number(value)
            if number is not None:
                setattr(m, attr, number)
        timers, self._pipe_timers = self._pipe_timers, None
        if timers is not None:
            self._split(m, timers, self._pipe_span(step))
        return self._record(m, when)


def log_time(line: str) -> float | None:
    """The time in a logger prefix such as ``[2026-11-28 09:46:23,018]``, local time."""
    match = _LOG_TIME.search(line)
    if match is None:
        return None
    try:
        when = datetime.strptime(match["when"], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    frac = match["frac"]
    return when.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)
