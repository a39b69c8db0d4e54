"""DeepSpeed's pipeline-engine timers, config dump and comms-logger summary tables, from real
output: a run of the installed DeepSpeed 0.19.8 on this machine and DeepSpeed's own docs.

The run: torch 2.13 CPU, DS_ACCELERATOR=cpu, `torchrun --nproc_per_node 2`, a 3-layer
PipelineModule (one stage, two data-parallel ranks), train_batch_size 16, micro batch 4,
steps_per_print 2, wall_clock_breakdown on, comms_logger {enabled, prof_all}, six
`engine.train_batch()` calls with `deepspeed.comm.log_summary()` after the 4th and the 6th;
rank 0's stdout as written (DeepSpeed's logger at its default level: no INFO lines). Table rows
are rebuilt with comms_logging.py's own f-string from that run's figures (byte-identical).
"""

from __future__ import annotations

import pytest

from agent.jobs.node.comms_table import CommsPerStep, CommsTables
from agent.jobs.node.deepspeed_lines import DeepSpeedStdoutParser
from agent.jobs.node.script_logs import ScriptLogParser
from tests.script_log_helpers import feed, merged, metrics
from tests.test_script_logs import DS_NEOX

_HEADER = (
    "Comm. Op            Message Size        Count               Total Latency(ms)   "
    "Avg Latency(ms)     tput_avg (Gbps)     busbw_avg (Gbps)    "
)


def _row(size: str, count: int, total_ms: float, avg_ms: float) -> str:
    # deepspeed/utils/comms_logging.py CommsLogger.log_all (0.7-0.19)
    return (
        f"{' ': <20}{size: <20}{count: <20}{total_ms: <20.2f}{avg_ms: <20.2f}{0: <20.2f}{0: <20.2f}"
    )


def _table(
    reduces: tuple[int, float, float],
    grads: tuple[int, float, float],
    own: tuple[int, float, float],
) -> list[str]:
    return [
        _HEADER,
        "broadcast",
        _row("16.0 B", 1, 32.01, 32.01),
        _row("64.0 B", 1, 23.42, 23.42),
        _row("256.0 B", 1, 31.84, 31.84),
        _row("1.0 KB", 1, 23.07, 23.07),
        "all_reduce",
        _row("4.0 B", *reduces),
        _row("16.0 B", 1, 0.35, 0.35),
        _row("1.33 KB", *grads),
        "log_summary_barrier",
        _row("0B", *own),
    ]


_MICRO = "[Rank 0] time (ms) | batch_input: {} | fwd_microstep: {} | bwd_microstep: {} | "
_MICRO_END = "bwd_inner_microstep: {} | bwd_allreduce_microstep: {} | step_microstep: {}"
_GLOBAL = "[Rank 0] time (ms) | fwd: {} | bwd: {} | bwd_inner: {} | bwd_allreduce: {} | step: {}"
PIPE_RUN = [
    "  loss: CrossEntropyLoss",
    (_MICRO + _MICRO_END).format("0.70", "45.06", "1.18", "1.10", "0.02", "23.34"),
    _GLOBAL.format("45.06", "1.17", "1.10", "0.02", "23.33"),
    "steps: 2 loss: 1.4254 iter time (s): 0.629 samples/sec: 25.428",
    "[Rank 0] time (ms)",
    (_MICRO + _MICRO_END).format("0.17", "0.40", "0.43", "0.38", "0.01", "2.82"),
    _GLOBAL.format("0.40", "0.43", "0.38", "0.01", "2.82"),
    "steps: 4 loss: 1.2890 iter time (s): 0.007 samples/sec: 2277.115",
    "[Rank 0] time (ms)",
    *_table((12, 14166.41, 1180.54), (4, 4718.12, 1179.53), (1, 0.85, 0.85)),
    (_MICRO + _MICRO_END).format("0.19", "0.42", "0.46", "0.40", "0.01", "2.79"),
    _GLOBAL.format("0.42", "0.46", "0.40", "0.02", "2.79"),
    "steps: 6 loss: 1.3707 iter time (s): 0.007 samples/sec: 2321.745",
    "[Rank 0] time (ms)",
    *_table((18, 21325.16, 1184.87), (6, 7102.36, 1183.97), (3, 4.06, 1.35)),
]

# DeepSpeed's docs, debug on (op names carry their caller): https://github.com/microsoft/
# DeepSpeed/blob/5349347bb648ce9eb84b1d78d77e50968f299b62/docs/_tutorials/comms-logging.md
DOCS_DEBUG_TABLE = [
    _HEADER.rstrip(),
    "broadcast | [Caller Func: _broadcast_model]",
    "                    2.0 KB              146                 9.39                0.06       "
    "         0.52                0.48",
    "                    98.25 MB            1                   8540.60             8540.60    "
    "         0.19                0.18",
    "reduce_scatter_base | [Caller Func: reduce_scatter_fn]",
    "                    678.86 MB           80                  1527.17             13.94      "
    "         1211.75             1136.01",
]


def test_pipeline_engine_timers_are_divided_over_their_window() -> None:
    records = feed(ScriptLogParser(), "stdout", PIPE_RUN)
    step2, step4, step6 = (merged(records, s) for s in (2, 4, 6))
    # Each timer line sums the steps_per_print (2) steps before its "steps: N" line.
    assert (step2.forward_s, step2.optimizer_step_s) == pytest.approx((0.04506 / 2, 0.02333 / 2))
    assert (step4.forward_s, step4.backward_s) == pytest.approx((0.0002, 0.000215))
    assert step6.allreduce_s == pytest.approx(0.00001)
    # The step time is the engine's own average ("iter time"), not the timers' sum.
    assert (step2.step_time_s, step2.loss, step6.samples_per_s) == (0.629, 1.4254, 2321.745)


def test_comms_tables_become_time_per_step() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", PIPE_RUN) + parser.flush(100.0)  # the last table ends
    step4, step6 = merged(records, 4), merged(records, 6)
    # First table: totals since the start over 4 steps (log_summary's own barrier left out).
    assert dict(step4.collective_time_by_op_s) == pytest.approx(
        {"broadcast": 0.11034 / 4, "all_reduce": (14166.41 + 0.35 + 4718.12) / 1000 / 4}
    )
    assert step4.collective_time_s == pytest.approx(sum(step4.collective_time_by_op_s.values()))
    # Second: the difference over the 2 steps between them; broadcast did not run again.
    assert dict(step6.collective_time_by_op_s) == pytest.approx(
        {"all_reduce": (21325.16 - 14166.41 + 7102.36 - 4718.12) / 1000 / 2}
    )
    assert step6.loss == 1.3707  # the table did not eat the lines around it


def test_table_at_the_end_of_output_waits_then_counts() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", PIPE_RUN[:21], now=1.0)
    assert not any(m.collective_time_by_op_s for m in metrics(records))
    assert not any(m.collective_time_by_op_s for m in metrics(parser.flush(2.0)))
    late = metrics(parser.flush(3.5))
    assert [m.step for m in late] == [4] and late[0].collective_time_s > 4.7


def test_docs_table_with_callers_prefixes_resets_and_stragglers() -> None:
    tables = CommsTables()
    per_step = CommsPerStep()
    lines = [*DOCS_DEBUG_TABLE, "done", "[Rank 0] time (ms)"]  # a lone word is not an op
    ended = [t for line in lines for t in tables.feed("stdout", "[default0]:" + line, 0.0, 10)[1]]
    assert ended == [(10, {"broadcast": (147, 8549.99), "reduce_scatter_base": (80, 1527.17)})]
    m = per_step.metrics(*ended[0])
    assert m is not None and m.collective_time_by_op_s["reduce_scatter_base"] == pytest.approx(
        0.152717
    )
    # After deepspeed.comm.reset_log() the counts go down: the totals are that window's.
    after = per_step.metrics(20, {"broadcast": (1, 10.0), "reduce_scatter_base": (8, 150.0)})
    assert after is not None and after.collective_time_s == pytest.approx(0.016)
    # show_straggler's second table is not read; the first ends at its rule.
    straggler = [
        "_______________________________",
        "Breakdown with straggler effect",
        "-------------------------------",
        "Comm. Op            Message Size        Count               Total comm lat(ms)  "
        "Total straggler(ms) Avg comm lat(ms)    Avg straggler(ms)   ",
        "broadcast",
        _row("2.0 KB", 146, 5.0, 0.03),
    ]
    fresh = CommsTables()
    got = [t for line in DOCS_DEBUG_TABLE + straggler for t in fresh.feed("x", line, 0.0, 3)[1]]
    assert [step for step, _ in got] == [3] and fresh.flush(100.0) == []


def test_first_table_after_an_unknown_resume_only_sets_the_baseline() -> None:
    per_step = CommsPerStep()
    per_step.base_step = None
    assert per_step.metrics(1010, {"all_reduce": (10, 100.0)}) is None
    m = per_step.metrics(1020, {"all_reduce": (20, 300.0)})
    assert m is not None and m.collective_time_s == pytest.approx(0.02)
    assert per_step.metrics(1020, {"all_reduce": (30, 400.0)}) is None  # no steps between


def test_config_dump_gives_the_throughput_step_time() -> None:
    parser = DeepSpeedStdoutParser()
    # The line as deepspeed/runtime/config.py print writes it ("  {} {} {}", 29 - len dots).
    config = "[2023-07-25 21:01:00,000] [INFO] [config.py:964:print]   train_batch_size ....... 8"
    assert parser.parse(config.replace(" ....... ", " " + "." * 13 + " ")) is None
    record = parser.parse(DS_NEOX[0])  # CurrSamplesPerSec=8.00912418308922
    assert record is not None and record.metrics is not None
    assert record.metrics.step_time_s == pytest.approx(8 / 8.00912418308922)
    assert parser.parse("  steps_per_print .............. inf") is None
    assert parser.steps_per_print is None and parser.train_batch_size == 8
