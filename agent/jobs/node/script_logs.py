"""What users' own training scripts print, read back as records: one rank's stdout and stderr.

How the supervisor calls it (one parser per rank process; pure: no I/O, no clock of its own)::

    parser = ScriptLogParser(argv=rank_argv)  # the rank's command line (for --logging_steps,
                                              # --max_steps); a new parser for each attempt
    # every poll, `now` = the supervisor's monotonic clock, in seconds; stderr first:
    for line in read_lines(stderr_path, stderr_offset, split_cr=True).lines:
        records += parser.feed("stderr", line.text, now)
    for line in read_lines(stdout_path, stdout_offset, split_cr=True).lines:
        records += parser.feed("stdout", line.text, now)
    records += parser.flush(now)  # after both files, on every poll, even with no new lines

Both files are needed: tqdm bars (steps, it/s) are on stderr, the Trainer's log dicts
(loss, lr, ...) on stdout; a dict waits up to ``wait_s`` (2 s of ``now``) for the bar redraw
that tells its step, so ``flush`` must keep being called (either order of the files works;
stderr first lets a dict read late still meet its redraw). ``split_cr=True`` delivers each bar
as it is drawn; without it bars arrive only when they close, and dicts fall back to counting.
``feed`` also accepts lines that still hold ``\\r``-separated draws.

It yields, in order:
- METRICS records with ``source`` = the stream ("stdout"/"stderr"): what each line knows of a
  step (steps >= 1 only); records of one step complete each other through ``merge_metrics``.
  Like DeepSpeed's lines before, they are ignored for a rank that reports through its own
  metrics file (``record.source != "file"`` while the rank's source is "file"). It runs
  ``DeepSpeedStdoutParser`` itself: do not run that one beside it.
- PHASE records (``record.phase``, a ``job_pb2.RankPhase``), only ever moving forward, from
  start-up lines (importing, building ops, joining, loading a checkpoint, first step) and
  TRAINING at the first step > 0. ``record.time`` is the line's own time stamp when it has one,
  else None (stamp it on arrival).

Read: Hugging Face Trainer dicts and tqdm bars (``agent.jobs.node.script_logs_hf``),
DeepSpeed 0.3-0.19
progress, throughput, timer and pipeline lines (``agent.jobs.node.deepspeed_lines``) and its
comms-logger summary tables (``agent.jobs.node.comms_table``), Megatron-LM / Megatron-DeepSpeed /
GPT-NeoX / nanotron ``iteration N/ M | key: value |`` lines and the timers after them
(``agent.jobs.node.megatron_lines``), and, for a line none of those took, plain loops' progress
lines (nanoGPT, llm.c, nanochat, modded-nanogpt, litgpt, torchtitan, timm, the CIFAR and DDP
tutorials: ``agent.jobs.node.loop_lines``). Multi-line output (timer blocks, tables) is followed
per stream, so the other stream's lines may interleave; a block ends at its stream's next other
line or ``wait_s`` after its last row (``flush``). Garbage never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import MAX_COUNT, Record, RecordKind, whole_number
from agent.jobs.node.comms_table import TABLE_HEADER, CommsPerStep, CommsTables, Totals
from agent.jobs.node.deepspeed_lines import DeepSpeedStdoutParser, log_time
from agent.jobs.node.loop_lines import TOTAL_ARGS, loop_metrics, may_hold
from agent.jobs.node.megatron_lines import BLOCK_HEAD, MegatronParser, megatron_metrics
from agent.jobs.node.script_logs_hf import (
    MAX_STEPS,
    Bar,
    LogDict,
    StepMatcher,
    hf_metrics,
    parse_bar,
    parse_log_dict,
)

__all__ = ["ScriptLogParser", "megatron_metrics"]

MAX_SEGMENT = 16384  # a draw or line longer than this is read from its start only
_P = job_pb2.RankPhase
_SEGMENTS = re.compile(r"\r\n|\r|\n")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CURSOR_UP = "\x1b[A"  # tqdm moves a bar below another with "\n" ... "\x1b[A"

# Start-up texts, as the libraries print them (see tests/test_script_logs.py for sources).
_PHASES: tuple[tuple[str, int], ...] = (
    ("Setting ds_accelerator to", _P.RANK_PHASE_IMPORTING),
    ("[real_accelerator.py:", _P.RANK_PHASE_IMPORTING),  # 0.19: "Setting accelerator to CPU."
    ("as PyTorch extensions root", _P.RANK_PHASE_BUILDING_OPS),
    ("Emitting ninja build file", _P.RANK_PHASE_BUILDING_OPS),
    ("Building extension module", _P.RANK_PHASE_BUILDING_OPS),
    ("Loading extension module", _P.RANK_PHASE_BUILDING_OPS),
    ("Time to load ", _P.RANK_PHASE_BUILDING_OPS),  # DeepSpeed: "Time to load utils op: 0.1 s.."
    ("_op built successfully", _P.RANK_PHASE_BUILDING_OPS),  # DeepSpeed's shm/ccl comm ops
    ("> compiling dataset index builder", _P.RANK_PHASE_BUILDING_OPS),
    ("> compiling and loading fused kernels", _P.RANK_PHASE_BUILDING_OPS),
    ("Initializing TorchBackend in DeepSpeed", _P.RANK_PHASE_JOINING),
    (":init_distributed]", _P.RANK_PHASE_JOINING),
    ("Initializing torch distributed with backend", _P.RANK_PHASE_JOINING),
    ("> initializing torch distributed", _P.RANK_PHASE_JOINING),
    ("store_based_barrier_key", _P.RANK_PHASE_JOINING),
    ("[Torch] Loading checkpoint from", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("[Torch] Begin Load checkpoint from", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("zero partition checkpoints for rank", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("ZeRO state_dicts for rank", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("Continuing training from ", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("Resuming training from checkpoint", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("Loading model from ", _P.RANK_PHASE_LOADING_CHECKPOINT),
    (" loading checkpoint from ", _P.RANK_PHASE_LOADING_CHECKPOINT),
    (" loading release checkpoint from ", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("[before load checkpoint]", _P.RANK_PHASE_LOADING_CHECKPOINT),
    ("***** Running training *****", _P.RANK_PHASE_FIRST_STEP),
    ("[before the start of training step]", _P.RANK_PHASE_FIRST_STEP),
)
_LAST_PHASE = max(phase for _, phase in _PHASES)  # past it, start-up lines say nothing
# A line ``_may_wake`` says no to, read while no table or timer block is open and past the
# start-up phases, changes nothing: it is skipped with one test instead of a call into each
# reader (most of a chatty rank's output; tests/test_script_logs_prefilter.py checks that
# skipping changes no record).
_STARTUP = re.compile("|".join(re.escape(needle) for needle, _ in _PHASES))


def _may_wake(line: str) -> bool:
    """Whether ``line`` holds a text some reader below starts from (an unrolled test of
    substrings: twice as fast as one regex of them)."""
    return (
        "step=" in line  # DeepSpeed's progress
        or "{" in line  # log dicts
        or "iter" in line  # Megatron's iterations, DeepSpeed's pipeline "iter time (s)"
        or "%|" in line  # tqdm bars
        or "time (" in line  # DeepSpeed's and Megatron's timers
        or "PerSec=" in line  # DeepSpeed's throughput
        or " ..." in line  # DeepSpeed's config print-out
        or "from" in line  # resumed at step N
        or "\r" in line  # draws
        or "\x1b" in line
        or TABLE_HEADER in line
        or BLOCK_HEAD in line
        or "Total optimization" in line  # the Trainer's total steps
        or may_hold(line)  # plain loops' progress lines
    )


_RESUMED_AT = re.compile(
    r"(?:Continuing training from global step |Resuming training from checkpoint with epoch \d+"
    r" and global step |checkpoint from \S+ (?:\[[^\]]{0,40}\] )?at iteration )(?P<step>\d+)"
)
_TOTAL = re.compile(r"Total optimization steps = (?P<total>[\d,]{1,20})")


def _arg(argv: Sequence[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[i + 1] if i + 1 < len(argv) else ""
            if arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


class ScriptLogParser:
    """Reads one rank's stdout and stderr lines into METRICS and PHASE records."""

    def __init__(self, argv: Sequence[str] = (), wait_s: float = 2.0) -> None:
        argv = [str(a) for a in list(argv)[:4096]]
        max_steps = _float(_arg(argv, "--max_steps", "--max-steps"))
        iters = _float(_arg(argv, "--train-iters", "--train_iters", *TOTAL_ARGS))
        total = next((int(v) for v in (max_steps, iters) if v and 1 <= v <= MAX_COUNT), None)
        first = _arg(argv, "--logging_first_step", "--logging-first-step")
        self.phase = 0  # the latest job_pb2.RankPhase reached
        self.total = total  # the run's last step, when known
        self._steps = StepMatcher(
            _float(_arg(argv, "--logging_steps", "--logging-steps")),
            total,
            first is not None and first.lower() not in ("false", "0", "no"),
            wait_s,
        )
        self._deepspeed = DeepSpeedStdoutParser()
        self._megatron = MegatronParser(wait_s)
        self._comms = CommsTables(wait_s)
        self._comms_per_step = CommsPerStep()
        self.last_step: int | None = None  # the highest step reported so far
        self._bar_total = total if max_steps else None  # the Trainer bar's total
        self._bar_done = False  # that bar reached its total
        self._ended = False  # the Trainer printed its end-of-training dict
        self._bar_step: int | None = None  # the step of the last bar record
        self._cleared: dict[str, bool] = {}  # per stream: a bar was just cleared

    def feed(self, stream: str, line: str, now: float) -> list[Record]:
        """The records one line (or \\r-separated draws) of ``stream`` gives, at ``now``."""
        if (
            not _may_wake(line)
            and (self.phase >= _LAST_PHASE or _STARTUP.search(line) is None)
            and (not line or line.strip(" "))  # spaces alone: tqdm clearing its bar
            and not self._comms.busy
            and not self._megatron.busy
        ):
            return []
        out: list[Record] = []
        for segment in _SEGMENTS.split(line):
            self._segment(stream, segment, now, out)
        self._placed(self._steps.expire(now), out)  # after the line: it may be the redraw
        return out

    def flush(self, now: float) -> list[Record]:
        """Records of log dicts, timer blocks and comms tables whose wait ran out by ``now``."""
        out: list[Record] = []
        self._placed(self._steps.expire(now), out)
        for stream, m in self._megatron.flush(now):
            self._metrics(m, None, stream, out)
        for stream, step, totals in self._comms.flush(now):
            self._comms_table(step, totals, stream, out)
        return out

    def _segment(self, stream: str, raw: str, now: float, out: list[Record]) -> None:
        if not raw:
            return
        if not raw.strip(" "):
            if stream in self._cleared or len(self._cleared) < 8:
                self._cleared[stream] = True  # tqdm's clear: "\r" + spaces + "\r"
            return
        raw = raw[:MAX_SEGMENT]
        nested = _CURSOR_UP in raw
        text = _ANSI.sub("", raw) if "\x1b" in raw else raw
        while "%|" in text:
            found = parse_bar(text)
            if found is None:
                break
            bar, start, end = found
            self._text(stream, text[:start], now, out)
            self._bar(stream, bar, nested, out)
            text = text[end:]
        self._text(stream, text, now, out)

    def _is_main(self, bar: Bar, nested: bool, after_clear: bool) -> bool:
        if bar.desc or nested or bar.n is None or not bar.total or bar.unit != "it":
            return False
        if self._bar_total is None or bar.total == self._bar_total:
            self._bar_total = bar.total
        elif not self._ended and (after_clear or (self._bar_done and bar.n == 0)):
            # The first bar without a description was another loop's; this one logs.
            self._bar_total, self._bar_done = bar.total, False
        else:
            return False
        self._set_total(bar.total)
        return True

    def _bar(self, stream: str, bar: Bar, nested: bool, out: list[Record]) -> None:
        after_clear = self._cleared.get(stream, False)
        if bar.n is None or not self._is_main(bar, nested, after_clear):
            return
        if after_clear:
            self._cleared[stream] = False
        self._placed(self._steps.bar(stream, bar.n, after_clear), out)
        self._bar_done = self._bar_done or bar.n >= (bar.total or 0)
        if bar.n == self._bar_step:
            return
        self._bar_step = bar.n
        if bar.n == 0:
            self._advance(_P.RANK_PHASE_FIRST_STEP, None, stream, out)
            return
        m = job_pb2.RankMetrics(step=bar.n)
        if bar.step_time_s is not None and math.isfinite(bar.step_time_s):
            m.step_time_s = bar.step_time_s
        self._metrics(m, None, stream, out)

    def _text(self, stream: str, text: str, now: float, out: list[Record]) -> None:
        in_table, tables = self._comms.feed(stream, text, now, self.last_step)
        for step, totals in tables:
            self._comms_table(step, totals, stream, out)
        if in_table or not text.strip():
            return
        fields = parse_log_dict(text) if "{" in text else None
        if fields is not None:
            self._log_dict(stream, fields, now, out)
        record = self._deepspeed.parse(text)
        if record is not None and record.metrics is not None:
            self._metrics(record.metrics, record.time, stream, out)
        taken = fields is not None or (record is not None and record.metrics is not None)
        for m in self._megatron.feed(stream, text, now):
            taken = True
            iteration = m.HasField("total_steps")  # else the timers of the last iteration
            if iteration:
                self._set_total(m.total_steps)
            self._metrics(m, log_time(text) if iteration else None, stream, out)
        loop = None if taken else loop_metrics(text)  # plain loops: a line no reader above took
        if loop is not None:
            self._set_total(loop.total_steps if loop.HasField("total_steps") else None)
            self._metrics(loop, log_time(text), stream, out)
        self._startup(stream, text, out)

    def _comms_table(
        self, step: int | None, totals: Totals, stream: str, out: list[Record]
    ) -> None:
        m = self._comms_per_step.metrics(step, totals)
        if m is not None:
            self._metrics(m, None, stream, out)

    def _log_dict(
        self, stream: str, fields: dict[str, float | None], now: float, out: list[Record]
    ) -> None:
        item = LogDict.of(fields, stream, now)
        total = fields.get(MAX_STEPS)
        if total is not None and 0 < total <= MAX_COUNT:
            self._set_total(int(total))
        step = fields.get("step")  # transformers 3.x printed it (ms-swift: its position)
        if step is not None and 0 <= step <= MAX_COUNT and step.is_integer():
            self._placed([(item, int(step))], out)
            return
        self._ended = self._ended or item.kind == "end"
        self._placed(self._steps.add(item), out)

    def _placed(self, placed: list[tuple[LogDict, int]], out: list[Record]) -> None:
        for item, step in placed:
            m = hf_metrics(item.fields, step)
            if m is not None:
                self._metrics(m, None, item.stream, out)

    def _startup(self, stream: str, text: str, out: list[Record]) -> None:
        for needle, phase in _PHASES if self.phase < _LAST_PHASE else ():
            if phase > self.phase and needle in text:
                self._advance(phase, log_time(text), stream, out)
                if phase == _P.RANK_PHASE_LOADING_CHECKPOINT:
                    self._start_step(None)  # resumed: from which step?
                break
        if "from" in text:
            resumed = _RESUMED_AT.search(text)
            step = whole_number(resumed["step"]) if resumed is not None else None
            if step is not None:
                self._steps.last_step = step
                self._start_step(step)
        if "Total optimization steps" in text:
            found = _TOTAL.search(text)
            total = whole_number(found["total"].replace(",", "")) if found is not None else None
            if total:
                self._bar_total = total
                self._set_total(total)

    def _start_step(self, step: int | None) -> None:
        """Where this process's running totals (comms tables, pipeline timers) start."""
        self._comms_per_step.base_step = self._deepspeed.start_step = step

    def trainer(
        self,
        logging_steps: float | None,
        first_step: bool,
        eval_steps: float | None = None,
        max_steps: int | None = None,
    ) -> None:
        """The Trainer's own settings (its start-up hook's record): where its log and
        evaluation dicts fall when no bar says (disable_tqdm), and its last step, unless
        the command line said."""
        if self._steps.logging_steps is None and logging_steps is not None and logging_steps > 0:
            self._steps.logging_steps = logging_steps
        self._steps.first_step = self._steps.first_step or first_step
        if eval_steps is not None and eval_steps > 0:
            self._steps.eval_steps = eval_steps
        if self.total is None and max_steps is not None and 0 < max_steps <= MAX_COUNT:
            self._set_total(max_steps)

    def _set_total(self, total: int | None) -> None:
        if total:
            self.total = self._steps.total = total

    def _advance(self, phase: int, when: float | None, stream: str, out: list[Record]) -> None:
        if phase > self.phase:
            self.phase = phase
            out.append(Record(RecordKind.PHASE, when, phase=phase, source=stream))

    def _metrics(
        self, m: job_pb2.RankMetrics, when: float | None, stream: str, out: list[Record]
    ) -> None:
        if m.step <= 0:
            return  # DeepSpeed's "step=0" at initialize: nothing trained yet
        self._advance(_P.RANK_PHASE_TRAINING, when, stream, out)
        if self.total and not m.HasField("total_steps"):
            m.total_steps = self.total
        self.last_step = max(self.last_step or 0, m.step)
        out.append(Record(RecordKind.METRICS, when, m.step, metrics=m, source=stream))
