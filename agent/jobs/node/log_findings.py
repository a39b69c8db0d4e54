"""What the failure scanner finds: what one signature reads in one log line (``Hit``), the
rule itself (``Signature``), the finding the scanner makes of it (``Diagnosis``, an ALERT
event's details), and the prefixes torch and its launchers put before a line. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MAX_CAUSE_CHARS",
    "Diagnosis",
    "Hit",
    "Severity",
    "Signature",
    "any_in",
    "launcher_prefix",
    "short",
    "strip_prefix",
]

MAX_CAUSE_CHARS = 300

Severity = Literal["critical", "warning", "info"]

# What launchers and collectors put before every line a rank writes, one after another (each
# form as printed in tests/test_launcher_prefixes.py; real ones in tests/fixtures/logs/):
_ONE_PREFIX = (
    # torch's "[rank3]:", torchrun --tee's "[default0]:" ("[<role><local rank>]:", so with
    # --role "$(hostname -s | tr -dc 0-9):" also "[0434:0]:")
    r"\[[\w.:-]{0,64}\d\]:\s?"
    # pdsh / pssh / clush / DeepSpeed's multi-node runner: "10.0.0.5: ", "gpu004: ",
    # "node-17: ", "SH-IDC1-10-140-24-95: ". A host name holds a digit and is lower case or
    # hyphenated, which no exception's name ("RuntimeError: ", "S3UploadFailedError: ") is.
    r"|(?:\d{1,3}(?:\.\d{1,3}){3}|(?!(?:u?int|fp|bf|float)\d)[a-z][a-z0-9.-]{0,62}\d[a-z0-9.-]{0,62}"
    r"|[A-Za-z0-9]{1,63}(?:-[A-Za-z0-9]{1,63})+(?<=\d)): "
    # Ray: "(RayWorkerWrapper pid=335) ", "(pid=1234, ip=10.0.0.1) "
    r"|\((?:[\w.]{1,80} )?pid=\d+(?:, ip=[^)\s]{1,80})?\) "
    # kubectl logs --prefix: "[pod/trainer-worker-0/pytorch] "
    r"|\[pod/[^\]\s]{1,250}\] "
    # ts / kubectl logs --timestamps / a collector: "2024-05-02T10:11:12.123Z "; Python's and
    # DeepSpeed's loggers, a collector: "[2024-05-02 10:11:12,123] [INFO] ",
    # "[2025-05-10 00:18:21] "
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)? +"
    r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d{1,9})?\] (?:\[[A-Z]{3,8}\] )?"
    # journald (journalctl -o short): "May 02 10:11:12 node-17 python[4242]: "
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S{1,64} [\w.@/-]{1,64}(?:\[\d{1,10}\])?: "
)
# Slurm's srun -l / --label: the task number, padded to the widest ("0: ", " 3: ", "12: "). Only
# first on the line, and only where ``numbered``: alone it is also how a script may print
# "12: loss 3.2", so a reader that keeps a stream's state takes it off a line only when the
# line it follows up had it too.
_PREFIX = re.compile(rf"^(?: {{0,5}}\d{{1,6}}: )?(?:{_ONE_PREFIX})*")
_UNNUMBERED = re.compile(rf"^(?:{_ONE_PREFIX})*")
_MAY_BE_PREFIXED = re.compile(r"^(?:[\[(\dA-Za-z]| {1,5}\d)")


def launcher_prefix(line: str, numbered: bool = True) -> str:
    """What launchers and collectors put before ``line`` ("" for none): torch's and torchrun's
    ``[rank1]:`` / ``[default0]:``, srun -l's ``12: `` (unless not ``numbered``), pdsh's and
    DeepSpeed's runner's ``host: ``, Ray's ``(Worker pid=1, ip=...) ``, ``kubectl logs
    --prefix``'s ``[pod/name/container] ``, time stamps; several, in any order."""
    if not _MAY_BE_PREFIXED.match(line):
        return ""
    match = (_PREFIX if numbered else _UNNUMBERED).match(line)
    return match[0] if match is not None else ""


def strip_prefix(line: str, numbered: bool = True) -> str:
    """``line`` without what launchers and collectors put before it (``launcher_prefix``)."""
    prefix = launcher_prefix(line, numbered)
    return line[len(prefix) :] if prefix else line


def any_in(needles: Iterable[str]) -> Callable[[str], bool]:
    """``lambda line: "a" in line or "b" in line ...``, generated as dataclasses generate
    their methods: every line of every rank goes through it, and an unrolled test of
    substrings costs half of one regex alternating them (bench/log_scan.py)."""
    body = " or ".join(f"{needle!r} in line" for needle in sorted(set(needles)))
    test: Callable[[str], bool] = eval(f"lambda line: {body}")
    return test


@dataclass(frozen=True)
class Hit:
    """What one rule read in one line."""

    alert: str
    severity: Severity
    cause: str
    fields: Mapping[str, str] = field(default_factory=dict)
    key: str = ""  # the same alert with the same key is one finding, however often printed


@dataclass(frozen=True)
class Signature:
    alert: str
    needles: tuple[str, ...]
    read: Callable[[str], Hit | None]


def short(text: str) -> str:
    """``text`` on one line, cut to ``MAX_CAUSE_CHARS``."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 3] + "..."


@dataclass(frozen=True)
class Diagnosis:
    """A finding in a rank's log: one event in the job's timeline."""

    alert: str
    severity: Severity
    cause: str
    line: str
    stream: str
    fields: dict[str, str] = field(default_factory=dict)
    time: float = 0.0  # the scanner's clock when the line was read
    key: str = ""  # the same alert with the same key is one finding

    def details(self) -> dict[str, str]:
        """The event's details (the diagnosis contract)."""
        out = {k: v for k, v in self.fields.items() if v}
        out.update(
            alert=self.alert,
            cause=self.cause,
            severity=self.severity,
            line=self.line[:2000],
            stream=self.stream,
        )
        return out
