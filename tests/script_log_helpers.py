"""What the script-log tests read out of the parser's records."""

from __future__ import annotations

from collections.abc import Iterable

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import Record, RecordKind, merge_metrics
from agent.jobs.node.script_logs import ScriptLogParser

P = job_pb2.RankPhase


def feed(
    parser: ScriptLogParser, stream: str, lines: Iterable[str], now: float = 0.0
) -> list[Record]:
    out: list[Record] = []
    for line in lines:
        out += parser.feed(stream, line, now)
    return out


def metrics(records: Iterable[Record]) -> list[job_pb2.RankMetrics]:
    return [r.metrics for r in records if r.kind is RecordKind.METRICS and r.metrics]


def losses(records: Iterable[Record]) -> list[tuple[int, float]]:
    return [(m.step, m.loss) for m in metrics(records) if m.HasField("loss")]


def phases(records: Iterable[Record]) -> list[int]:
    return [r.phase for r in records if r.kind is RecordKind.PHASE]


def merged(records: Iterable[Record], step: int) -> job_pb2.RankMetrics:
    result = None
    for m in metrics(records):
        if m.step == step:
            result = merge_metrics(result, m)
    assert result is not None, step
    return result
