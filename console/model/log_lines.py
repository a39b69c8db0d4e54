"""One log line on its own: how it is cleaned for drawing, how bad it reads, and how a
search query matches it. Pure functions; `LogBuffer` applies them as lines arrive."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from console.model.safe_text import safe_line

# Longer lines are cut: one pasted tensor must not cost megabytes per line drawn.
MAX_LINE_CHARS = 8192
REGEX_PREFIX = "re:"


class Severity(IntEnum):
    NORMAL = 0
    WARNING = 1
    ERROR = 2


# Case-sensitive on purpose: "Error"/"ERROR" mark failures, while lower-case "error"
# shows up in ordinary words and config keys (error_rate, ignore_errors). Every branch
# starts with a literal, so the regex engine skips ahead on first characters: these
# run on every appended line.
_ERROR = re.compile(
    r"Traceback \(most recent call last\)"
    r"|Error(?=:|\s*$)"  # RuntimeError: ..., torch.OutOfMemoryError: ..., AssertionError
    r"|ERROR|CRITICAL|FATAL"
    r"|CUDA out of memory"
    r"|NCCL WARN"
    r"|CUDA error\b|NCCL error\b|cuDNN error\b|cuBLAS error\b|CUBLAS error\b|NVML error\b"
    r"|: error: "  # argparse and compilers: "train.py: error: ..."
    r"|Segmentation fault|core dumped"
    r"|Exception(?::| in )"
    r"|\]:\[E\d* "  # c10d behind torchrun's prefix: "[rank0]:[E1023 12:00:00.1 ..."
)
_WARNING = re.compile(
    r"WARN"
    r"|Warning\b"  # UserWarning, FutureWarning, "Warning:"
    r"|warn(?:s|ing|ings)?\b"  # "  warnings.warn(", "warning: ..."
    r"|\]:\[W\d* "
)
# Either of them, in one pass: most lines are neither.
_ANY = re.compile(f"{_ERROR.pattern}|{_WARNING.pattern}")
# Matched at the start of a line: c10d/glog "[E ProcessGroupNCCL.cpp:..]", "E1023 12:00:00",
# "[W socket.cpp:663]", and a compiler's "error: ...".
_LEADING_ERROR = re.compile(r"\[E\d* |E\d{4} \d\d:\d\d|error: ")
_LEADING_WARNING = re.compile(r"\[W\d* |W\d{4} \d\d:\d\d")
TRACEBACK = "Traceback (most recent call last)"
# torchrun's --tee/--local-ranks-filter prefix: "[rank1]: ", "[default0]:".
RANK_PREFIX = re.compile(r"^\[[a-z]+\d+\]: ?")


def clean_line(text: str) -> str:
    """A raw log line as it is stored and drawn (no newline in it): terminal escapes
    dropped, other controls shown as symbols (safe_line), tabs expanded."""
    if text.isprintable():
        return text[:MAX_LINE_CHARS]
    if "\r" in text:
        # A progress bar redraws its line after each \r: keep what was shown last.
        parts = [part for part in text.split("\r") if part]
        text = parts[-1] if parts else ""
    text = safe_line(text)
    if "\t" in text:
        text = text.expandtabs()
    return text[:MAX_LINE_CHARS]


def classify(line: str) -> Severity:
    """The severity of one line on its own (no traceback context)."""
    if not _ANY.search(line):
        if _LEADING_ERROR.match(line):
            return Severity.ERROR
        return Severity.WARNING if _LEADING_WARNING.match(line) else Severity.NORMAL
    if _ERROR.search(line) or _LEADING_ERROR.match(line):
        return Severity.ERROR
    if _WARNING.search(line) or _LEADING_WARNING.match(line):
        return Severity.WARNING
    return Severity.NORMAL


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled search: `test` says whether a line matches, `pattern` finds spans."""

    text: str
    pattern: re.Pattern[str]
    test: Callable[[str], bool]


@functools.lru_cache(maxsize=64)
def compile_query(query: str) -> Query:
    """A search query: a case-insensitive substring, or a regex after "re:".

    A regex is used as written (case-sensitive unless it says `(?i)`). Raises
    ValueError with a one-line message for an empty query or a bad regex.
    """
    if query.startswith(REGEX_PREFIX):
        source = query[len(REGEX_PREFIX) :]
        if not source:
            raise ValueError("empty regex after 're:'")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise ValueError(f"bad regex {source!r}: {exc.msg}{where}") from None
        search = pattern.search
        return Query(query, pattern, lambda line: search(line) is not None)
    if not query:
        raise ValueError("empty search")
    # `in` on a lowered line is several times faster than a case-insensitive regex.
    needle = query.lower()
    return Query(
        query, re.compile(re.escape(query), re.IGNORECASE), lambda line: needle in line.lower()
    )


def spans_of(pattern: re.Pattern[str], line: str) -> list[tuple[int, int]]:
    """Non-empty match spans of `pattern` in `line`, in order."""
    return [m.span() for m in pattern.finditer(line) if m.end() > m.start()]
