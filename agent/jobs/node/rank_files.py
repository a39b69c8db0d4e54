"""A rank's three files (its metrics file, stdout, stderr), how far each was read, and
what the new lines hold: records, NCCL findings and diagnoses. Both streams are scanned
for failure signatures on every read, whoever reports the rank's metrics. Reads files; no
journal, no events (the supervisor applies what it returns)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.jobs.metrics_records import Record, RecordKind, RecordParser
from agent.jobs.node.log_findings import Diagnosis
from agent.jobs.node.log_scan import LogScanner
from agent.jobs.node.nccl import NcclFinding, NcclParser
from agent.jobs.node.script_logs import ScriptLogParser
from agent.jobs.node.tailer import MAX_READ_BYTES, Chunk, read_lines

__all__ = ["MAX_DIAGNOSES_PER_READ", "RankFiles", "Reading"]

# Per rank and read: enough for any sane reporter, bounded for a runaway one.
MAX_READ_BYTES_PER_FILE = 8 * MAX_READ_BYTES
MAX_DIAGNOSES_PER_READ = 20  # on top of the scanner's own limits: one read, one batch


@dataclass
class Reading:
    """What one read found, and the offsets to journal with it."""

    records: list[Record] = field(default_factory=list)
    findings: list[NcclFinding] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    drained: bool = True  # everything written so far was read


@dataclass
class RankFiles:
    metrics_path: str
    stdout_path: str
    stderr_path: str
    metrics_offset: int = 0
    stdout_offset: int = 0
    stderr_offset: int = 0
    records: RecordParser = field(default_factory=RecordParser)
    script: ScriptLogParser = field(default_factory=ScriptLogParser)
    nccl: NcclParser | None = None
    scan: LogScanner = field(default_factory=LogScanner)

    def read(self, now: float, script_lines: bool = True, final: bool = False) -> Reading:
        """The new lines of all three files. ``script_lines``: read what the script prints
        for progress too (tqdm on stderr, log lines on stdout); not needed once a rank
        reports through its own file and trains. Both streams are scanned either way.
        ``final``: the rank has exited. Each file's unterminated last line is read too (a
        tqdm bar's last draw has no line end), and what the script parser holds back (a log
        dict waiting for the bar redraw that tells its step) is given now: no later read
        would."""
        out = Reading()

        def parse_file(text: str) -> list[Record]:
            record = self.records.parse(text)
            if record is not None and record.kind == RecordKind.TRAINER:
                # Before the printed lines it explains: the metrics file is read first.
                self.script.trainer(
                    record.logging_steps,
                    record.logging_first_step,
                    record.eval_steps,
                    record.max_steps,
                )
                return []
            return [record] if record is not None else []

        def parse_stream(stream: str) -> Callable[[str], list[Record]]:
            def parse(text: str) -> list[Record]:
                out.diagnoses.extend(self.scan.feed(stream, text, now))
                # NCCL_DEBUG=INFO lines go to stdout beside the script's own progress lines
                # (NCCL_DEBUG_FILE aside); WARN lines often to stderr.
                if self.nccl is not None and "NCCL" in text:
                    out.findings.extend(self.nccl.feed(text))
                    return []
                return self.script.feed(stream, text, now) if script_lines else []

            return parse

        metrics, stderr, stdout = self.metrics_path, self.stderr_path, self.stdout_path
        self.metrics_offset = self._read(metrics, self.metrics_offset, parse_file, out, final)
        # tqdm's bars (the step and its rate) are drawn on stderr.
        self.stderr_offset = self._read(
            stderr, self.stderr_offset, parse_stream("stderr"), out, final, split_cr=True
        )
        self.stdout_offset = self._read(
            stdout, self.stdout_offset, parse_stream("stdout"), out, final, split_cr=True
        )
        out.diagnoses.extend(self.scan.flush())
        del out.diagnoses[MAX_DIAGNOSES_PER_READ:]
        if script_lines:
            out.records += self.script.flush(math.inf if final else now)
        return out

    @staticmethod
    def _read(
        path: str,
        offset: int,
        parse: Callable[[str], list[Record]],
        out: Reading,
        final: bool,
        split_cr: bool = False,
    ) -> int:
        budget = MAX_READ_BYTES_PER_FILE
        chunk = Chunk(offset=offset, more=True)
        while chunk.more and budget > 0:
            size = min(budget, MAX_READ_BYTES)
            chunk = read_lines(path, chunk.offset, size, split_cr=split_cr, final=final)
            budget -= MAX_READ_BYTES
            for line in chunk.lines:
                out.records += parse(line.text)
        if chunk.offset != offset:
            out.offsets[path] = chunk.offset
        out.drained = out.drained and not chunk.more
        return chunk.offset
