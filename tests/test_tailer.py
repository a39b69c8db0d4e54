"""Tailing growing files, and parsing what is tailed: metrics records and DeepSpeed's lines."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.metrics_records import (
    GIB,
    RecordKind,
    RecordParser,
    merge_metrics,
    metrics_from_fields,
    phase_from_name,
    phase_name,
)
from agent.jobs.node.deepspeed_lines import DeepSpeedStdoutParser
from agent.jobs.node.tailer import Tailer, last_lines, read_lines

# --- tailer ---------------------------------------------------------------------------------


def test_missing_file_reads_empty(tmp_path: Path) -> None:
    chunk = read_lines(tmp_path / "nope", 0)
    assert chunk.lines == [] and chunk.offset == 0 and not chunk.more
    assert read_lines(tmp_path / "nope" / "deeper", 7).offset == 7
    assert last_lines(tmp_path / "nope", 10).lines == []


def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    tailer = Tailer(path)
    assert tailer.read().lines == []
    path.write_bytes(b"one\ntw")
    chunk = tailer.read()
    assert [(ln.offset, ln.text) for ln in chunk.lines] == [(0, "one")]
    assert tailer.offset == 4
    assert tailer.read().lines == []  # still partial
    with path.open("ab") as f:
        f.write(b"o\r\nthree\n")
    assert [(ln.offset, ln.text) for ln in tailer.read().lines] == [(4, "two"), (9, "three")]
    assert tailer.offset == path.stat().st_size


def test_resuming_from_a_saved_offset(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("a\nb\nc\n")
    first = read_lines(path, 0, max_bytes=4)
    assert [ln.text for ln in first.lines] == ["a", "b"] and first.more
    rest = read_lines(path, first.offset)
    assert [ln.text for ln in rest.lines] == ["c"] and not rest.more


def test_bounded_read_and_an_overlong_line(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_bytes(b"x" * 10 + b"\nshort\n")
    chunk = read_lines(path, 0, max_bytes=4)
    assert [ln.text for ln in chunk.lines] == ["xxxx"]  # cut, or the reader would be stuck
    assert chunk.offset == 4 and chunk.more
    chunk = read_lines(path, 4, max_bytes=100)
    assert [ln.text for ln in chunk.lines] == ["xxxxxx", "short"]


def test_file_replaced_by_a_shorter_one_restarts(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_text("new\n")
    chunk = read_lines(path, 100)
    assert chunk.restarted and [ln.text for ln in chunk.lines] == ["new"]


def test_undecodable_bytes_do_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_bytes(b"ok \xff\xfe\n")
    assert read_lines(path, 0).lines[0].text == "ok \ufffd\ufffd"


def test_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)) + "partial")
    chunk = last_lines(path, 3)
    assert [ln.text for ln in chunk.lines] == ["line 97", "line 98", "line 99"]
    assert chunk.lines[0].offset == path.read_bytes().index(b"line 97")
    assert chunk.offset == path.read_bytes().index(b"partial")
    # Bounded: the cut first line is skipped.
    small = last_lines(path, 0, max_bytes=30)
    assert all(ln.text.startswith("line 9") for ln in small.lines)
    assert len(small.lines) < 5


def test_split_cr_delivers_each_draw_with_exact_offsets(tmp_path: Path) -> None:
    path = tmp_path / "r0.err"
    # tqdm's draws ("\r" before each) and a clear, from a real Trainer run (test_script_logs.py)
    data = b"warn\r\n\r  5%| 1/20\r" + b" " * 8 + b"\r\r 10%| 2/20\n\rnext"
    path.write_bytes(data)
    tailer = Tailer(path, split_cr=True)
    chunk = tailer.read()
    got = [(ln.offset, ln.text) for ln in chunk.lines]
    assert got == [
        (0, "warn"),  # \r\n stays one line end
        (6, ""),
        (7, "  5%| 1/20"),
        (18, " " * 8),
        (27, ""),
        (28, " 10%| 2/20"),
        (39, ""),
    ]
    assert all(data[off:].startswith(text.encode()) for off, text in got)
    assert tailer.offset == data.index(b"next")  # not ended yet
    with path.open("ab") as f:
        f.write(b" 15%\r")
    assert tailer.read().lines == []  # a last \r may be half of \r\n: it waits
    with path.open("ab") as f:
        f.write(b"\n")
    assert [ln.text for ln in tailer.read().lines] == ["next 15%"]
    assert tailer.offset == path.stat().st_size
    # The default is unchanged: only \n ends a line, \r stays in the text.
    assert [ln.text for ln in read_lines(path, 0).lines][:2] == [
        "warn",
        "\r  5%| 1/20\r" + " " * 8 + "\r\r 10%| 2/20",
    ]


def test_split_cr_bounded_reads(tmp_path: Path) -> None:
    path = tmp_path / "r0.err"
    path.write_bytes(b"x" * 10 + b"\ry\r")
    chunk = read_lines(path, 0, max_bytes=4, split_cr=True)
    assert [ln.text for ln in chunk.lines] == ["xxxx"] and chunk.offset == 4 and chunk.more
    chunk = read_lines(path, 4, max_bytes=100, split_cr=True)
    assert [ln.text for ln in chunk.lines] == ["xxxxxx"]  # "y\r" waits for the next byte
    chunk = read_lines(path, 0, max_bytes=11, split_cr=True)
    assert [ln.text for ln in chunk.lines] == ["x" * 10] and chunk.offset == 11


# --- metrics records ------------------------------------------------------------------------


def test_full_metrics_record() -> None:
    line = json.dumps(
        {
            "kind": "metrics",
            "time": 1_750_000_000.5,
            "rank": 1,
            "step": 12,
            "epoch": 0.5,
            "loss": 2.25,
            "grad_norm": 0.75,
            "lr": 1e-4,
            "loss_scale": 65536,
            "step_time_s": 0.125,
            "samples_per_s": 128.0,
            "tokens_per_s": 65536.0,
            "collective_s": {"all_reduce": 0.01, "all_gather": 0.02},
            "collective_total_s": 0.03,
            "forward_s": 0.04,
            "backward_s": 0.06,
            "optimizer_step_s": 0.02,
            "memory_bytes": 123456789,
            "something_new": [1, 2],
        }
    )
    record = RecordParser().parse(line)
    assert record is not None and record.kind is RecordKind.METRICS
    assert record.step == 12 and record.time == 1_750_000_000.5 and record.source == "file"
    m = record.metrics
    assert m is not None
    assert (m.step, m.epoch, m.loss, m.grad_norm, m.learning_rate) == (12, 0.5, 2.25, 0.75, 1e-4)
    assert (m.loss_scale, m.step_time_s, m.samples_per_s, m.tokens_per_s) == (
        65536,
        0.125,
        128,
        65536,
    )
    assert dict(m.collective_time_by_op_s) == {"all_reduce": 0.01, "all_gather": 0.02}
    assert m.collective_time_s == 0.03
    assert (m.forward_s, m.backward_s, m.optimizer_step_s) == (0.04, 0.06, 0.02)
    assert m.memory_bytes == 123456789
    assert m.time.ToNanoseconds() == 1_750_000_000_500_000_000


def test_missing_and_wrong_fields_are_tolerated() -> None:
    m = metrics_from_fields({"step": 3.0, "loss": "1.5", "grad_norm": None, "lr": True})
    assert m.step == 3 and m.loss == 1.5
    assert not m.HasField("grad_norm") and not m.HasField("learning_rate")
    assert metrics_from_fields({"step": 2.5}).step == 0  # not an integer: left out
    m = metrics_from_fields({"collective_s": {"all_reduce": 0.5, "bad": "x", "b": 0.25}})
    assert m.collective_time_s == 0.75  # the sum when no total is given
    assert math.isnan(metrics_from_fields({"loss": float("nan")}).loss)  # divergence is data
    assert not metrics_from_fields({"memory_bytes": -1}).HasField("memory_bytes")


def test_other_kinds_garbage_and_unknown() -> None:
    parser = RecordParser()
    hb = parser.parse('{"kind": "heartbeat", "time": 5.0, "rank": 0, "step": 9}')
    assert hb is not None and (hb.kind, hb.step, hb.time, hb.metrics) == (
        RecordKind.HEARTBEAT,
        9,
        5.0,
        None,
    )
    ckpt = parser.parse(
        '{"kind": "checkpoint", "step": 100, "tag": "global_step100", "path": "/c/global_step100"}'
    )
    assert ckpt is not None and (ckpt.kind, ckpt.tag, ckpt.path, ckpt.step) == (
        RecordKind.CHECKPOINT,
        "global_step100",
        "/c/global_step100",
        100,
    )
    start = parser.parse('{"kind": "start"}')
    assert start is not None and start.kind is RecordKind.START
    assert parser.parse('{"kind": "end", "step": 4}') is not None
    for garbage in ("not json", "[1, 2]", '{"kind": "metrics", "step": 1', "42"):
        assert parser.parse(garbage) is None
    assert parser.parse("   ") is None
    assert parser.parse('{"kind": "weather"}') is None
    assert (parser.garbage, parser.unknown) == (4, 1)
    no_kind = parser.parse('{"step": 4, "loss": 1.0}')
    assert no_kind is not None and no_kind.kind is RecordKind.METRICS


def test_phase_records_and_names() -> None:
    parser = RecordParser()
    record = parser.parse('{"kind": "phase", "time": 5.0, "rank": 0, "phase": "joining"}')
    assert record is not None and record.kind is RecordKind.PHASE
    assert (record.phase, record.time, record.source) == (
        job_pb2.RANK_PHASE_JOINING,
        5.0,
        "file",
    )
    for bad in ('"warming"', '"unspecified"', "3", "null"):
        assert parser.parse('{"kind": "phase", "phase": ' + bad + "}") is None
    assert parser.unknown == 4
    names = ["started", "importing", "building_ops", "joining", "loading_checkpoint"]
    names += ["first_step", "training"]
    for value, name in enumerate(names, start=1):
        assert phase_from_name(name) == value and phase_name(value) == name
    assert phase_from_name("RANK_PHASE_TRAINING") == job_pb2.RANK_PHASE_TRAINING
    assert phase_from_name("") is None and phase_name(99) == "unspecified"


def test_merge_metrics() -> None:
    a = job_pb2.RankMetrics(step=5, loss=1.0, learning_rate=0.1)
    b = job_pb2.RankMetrics(step=5, forward_s=0.2)
    merged = merge_metrics(a, b)
    assert (merged.loss, merged.forward_s, merged.learning_rate) == (1.0, 0.2, 0.1)
    assert a == job_pb2.RankMetrics(step=5, loss=1.0, learning_rate=0.1)  # not mutated
    later = job_pb2.RankMetrics(step=6, loss=0.9)
    assert merge_metrics(merged, later) == later
    assert merge_metrics(None, later) == later


# --- DeepSpeed stdout -----------------------------------------------------------------------

# Captured from DeepSpeed 0.19.8 (torch 2.13 CPU, DS_ACCELERATOR=cpu, one rank, logger at
# INFO, steps_per_print 2, gradient accumulation 2, wall_clock_breakdown on).
_LOG = "[2026-11-28 09:46:{}] [INFO] [logging.py:123:log_dist] [Rank 0] "
_TIMER = "[2026-11-28 09:46:{}] [INFO] [timer.py:264:stop] "
_LR = ", skipped=0, lr=[0.001], mom=[(0.9, 0.999)]"
_MICRO = "[Rank 0] time (ms) | fwd_microstep: {} | bwd_microstep: {} | bwd_inner_microstep: {} "
_MICRO_END = "| bwd_allreduce_microstep: {} | step_microstep: {}"
_GLOBAL = "[Rank 0] time (ms) | fwd: {} | bwd: {} | bwd_inner: {} | bwd_allreduce: {} | step: {}"
DEEPSPEED_STDOUT = [
    _LOG.format("22,901") + "step=0" + _LR,
    (_MICRO + _MICRO_END).format("26.19", "0.96", "0.83", "0.07", "0.04"),
    (_MICRO + _MICRO_END).format("12.70", "3.64", "1.10", "2.50", "22.92"),
    _GLOBAL.format("38.90", "4.59", "1.92", "2.57", "22.96"),
    _LOG.format("23,018") + "step=2" + _LR,
    _GLOBAL.format("0.56", "1.16", "0.44", "0.68", "6.07"),
    _GLOBAL.format("0.34", "0.88", "0.30", "0.55", "1.24"),
    _LOG.format("23,031") + "step=4" + _LR,
    _TIMER.format("23,032")
    + "epoch=0/micro_step=8/global_step=4, RunningAvgSamplesPerSec=1299.4009991093212, "
    + "CurrSamplesPerSec=889.3021442589957, MemAllocated=0.33GB, MaxMemAllocated=0.33GB",
    _GLOBAL.format("0.25", "5.18", "0.27", "4.88", "3.36"),
    "loss 0.523 (the script's own print)",
    _GLOBAL.format("0.45", "1.14", "0.51", "0.59", "2.33"),
]


def test_deepspeed_progress_lines_become_metrics() -> None:
    parser = DeepSpeedStdoutParser()
    records = [r for r in map(parser.parse, DEEPSPEED_STDOUT) if r is not None]
    assert all(r.kind is RecordKind.METRICS and r.source == "stdout" for r in records)
    # step=0 is deepspeed.initialize's; the timer line after it is step 1's.
    assert [r.step for r in records] == [0, 1, 2, 2, 3, 4, 4, 4, 5]
    init = records[0].metrics
    assert init is not None and init.learning_rate == 0.001
    expected = datetime(2026, 11, 28, 9, 46, 22, 901000).timestamp()
    assert records[0].time == expected
    assert init.time.ToNanoseconds() == int(expected * 1e9)
    first = records[1].metrics
    assert first is not None
    assert (first.forward_s, first.backward_s) == pytest.approx((0.0389, 0.00459))
    assert (first.allreduce_s, first.optimizer_step_s) == pytest.approx((0.00257, 0.02296))
    assert math.isclose(first.step_time_s, (38.90 + 4.59 + 22.96) / 1000)
    tput = records[6].metrics
    assert tput is not None and tput.step == 4 and tput.epoch == 0
    assert math.isclose(tput.samples_per_s, 889.3021442589957)
    assert tput.memory_bytes == int(0.33 * GIB)
    merged = None
    for r in records:
        if r.step == 4 and r.metrics is not None:
            merged = merge_metrics(merged, r.metrics)
    assert merged is not None
    assert merged.learning_rate == 0.001 and merged.samples_per_s > 0
    assert merged.forward_s == pytest.approx(0.00025)


def test_deepspeed_parser_ignores_everything_else() -> None:
    parser = DeepSpeedStdoutParser()
    for line in (
        "",
        "loss 0.5",
        "[2026-11-28 09:46:22,100] [INFO] [engine.py:1:x] [Rank 0] DeepSpeed Flops Profiler",
        "[Rank 0] step=banana",
        "[foo] step=3, skipped=0, lr=[0.1], mom=[]",
        "[Rank 0] time (ms) | fwd_microstep: 1.00 | bwd_microstep: 2.00",
        "[Rank 0] epoch=0/micro_step=8/global_step=4, garbage",
    ):
        assert parser.parse(line) is None, line
    assert parser.step is None


def test_deepspeed_step_after_resume_follows_the_step_lines() -> None:
    """After a resume the engine's step goes on (step=1002) while the throughput timer's
    own count restarts at 0: the parser keeps the engine's number."""
    parser = DeepSpeedStdoutParser()
    lines = [
        "[2026-11-28 09:46:23,031] [INFO] [logging.py:123:log_dist] [Rank 0] step=1002, "
        "skipped=1, lr=[0.0005, 0.0001], mom=[(0.9, 0.999), (0.9, 0.999)]",
        "[2026-11-28 09:46:23,032] [INFO] [timer.py:264:stop] epoch=3/micro_step=8/global_step=2, "
        "RunningAvgSamplesPerSec=10.0, CurrSamplesPerSec=12.5, MemAllocated=1.5GB, "
        "MaxMemAllocated=2.0GB",
        _GLOBAL.format("1.00", "2.00", "1.00", "1.00", "3.00"),
        _GLOBAL.format("1.00", "2.00", "1.00", "1.00", "3.00"),
    ]
    records = [parser.parse(line) for line in lines]
    assert [r.step if r else None for r in records] == [1002, 1002, 1002, 1003]
    assert records[0] is not None and records[0].metrics is not None
    assert records[0].metrics.learning_rate == 0.0005
    assert records[1] is not None and records[1].metrics is not None
    assert records[1].metrics.epoch == 3 and records[1].metrics.memory_bytes == int(1.5 * GIB)


def test_deepspeed_older_forms() -> None:
    """Real lines of DeepSpeed 0.2-0.10 (sources in tests/test_script_logs.py)."""
    parser = DeepSpeedStdoutParser()
    lines = [
        # https://github.com/deepspeedai/DeepSpeed/issues/849 (0.3.x)
        "[2021-03-10 18:22:31,608] [INFO] [logging.py:60:log_dist] [Rank 0] step=25, skipped=5, "
        "lr=[1.446140557591026e-05], mom=[[0.8, 0.999]]",
        "[2021-03-10 18:22:31,608] [INFO] [timer.py:154:stop] 0/25, "
        "SamplesPerSec=6.302019280317165",
        # https://github.com/huggingface/accelerate/issues/1589 (0.9.x)
        "[2023-06-21 07:39:09,626] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
        "forward: 27.46 | backward: 73.60 | backward_inner: 51.05 | backward_allreduce: 22.50 | "
        "step: 72.60",
    ]
    records = [parser.parse(line) for line in lines]
    assert [r.step if r else None for r in records] == [25, 25, 25]  # the step line's step
    second = records[1]
    assert second is not None and second.metrics is not None
    assert second.metrics.samples_per_s == 6.302019280317165
    assert not second.metrics.HasField("memory_bytes")
    third = records[2]
    assert third is not None and third.metrics is not None
    assert third.metrics.forward_s == pytest.approx(0.02746)
    assert third.metrics.allreduce_s == pytest.approx(0.0225)


def test_lines_and_byte_offsets_are_the_same_whatever_the_bytes(tmp_path: Path) -> None:
    """Valid UTF-8 is decoded at once, anything else line by line: both give each line's
    own text and its byte offset."""
    samples = [
        "plain ascii line",
        "  3%|███   | 12/345 [00:07<06:50,  1.23s/it]",
        "café ☕ 你好",
        "with a CR\r",
        "",
        "\ufffd a real replacement character",
    ]
    for extra in (b"", b"bad \xff\xfe bytes\n"):
        data = ("\n".join(samples) + "\n").encode() + extra + b"partial"
        path = tmp_path / "log"
        path.write_bytes(data)
        chunk = read_lines(path, 0)
        starts = [0]
        for raw in data.split(b"\n")[:-1]:
            starts.append(starts[-1] + len(raw) + 1)
        expected = [
            raw.decode("utf-8", "replace").removesuffix("\r") for raw in data.split(b"\n")[:-1]
        ]
        assert [line.text for line in chunk.lines] == expected
        assert [line.offset for line in chunk.lines] == starts[:-1]
        assert chunk.offset == data.rindex(b"\n") + 1
