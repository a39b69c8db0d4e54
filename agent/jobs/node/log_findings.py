"""What the failure scanner finds: what one signature reads in one log line (``Hit``), the
rule itself (``Signature``), the finding the scanner makes of it (``Diagnosis``, an ALERT
event's details), and the prefixes torch and its launchers put before a line. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MAX_CAUSE_CHARS", "Diagnosis", "Hit", "Severity", "Signature", "short", "strip_prefix"]

MAX_CAUSE_CHARS = 300

Severity = Literal["critical", "warning", "info"]

_PREFIX = re.compile(r"^(?:\[(?:rank|default)\d+\]:\s?)+")


def strip_prefix(line: str) -> str:
    """``line`` without the ``[rank1]:`` / ``[default0]:`` prefixes torch and its launchers add."""
    return _PREFIX.sub("", line) if line.startswith("[") else line


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
