"""Reading complete lines from a growing file, from a saved byte offset.

A partial last line (the writer is mid-line) is left for the next read, so a record is never
seen twice or half. Each read is bounded; a file that does not exist yet reads as empty.

With ``split_cr`` a lone ``\r`` also ends a line, so a progress bar redrawn in place (tqdm
writes ``\r`` before each draw and no newline until it closes) arrives draw by draw; ``\r\n``
stays one line end, and a ``\r`` that is the last byte read waits for the next byte.

With ``final`` the writer is gone (the rank has exited): no more bytes will come, so what
follows the last line end is a line too (a print without a newline, tqdm's last draw).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

__all__ = ["MAX_READ_BYTES", "Chunk", "Line", "Tailer", "last_lines", "read_lines"]

MAX_READ_BYTES = 1 << 20
_LINE_END_CR = re.compile(rb"\r\n|\r|\n")


class Line(NamedTuple):  # a tuple: an agent following a chatty rank makes thousands a second
    offset: int  # byte offset of the line's first byte
    text: str  # without the newline; undecodable bytes replaced


@dataclass(frozen=True)
class Chunk:
    lines: list[Line] = field(default_factory=list)
    offset: int = 0  # where the next read starts
    restarted: bool = False  # the file was shorter than the offset (replaced): read from 0
    more: bool = False  # the bound was hit: more complete lines may be waiting


def _split_ascii(data: bytes, base: int) -> tuple[list[Line], int]:
    """Complete lines of ``data`` ending in ``\n`` only, all ASCII: decoded at once, each
    line's byte offset its character offset."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], base
    parts = data[:end].decode("ascii").split("\n")
    lines = []
    offset = base
    for text in parts:
        lines.append(Line(offset, text[:-1] if text.endswith("\r") else text))
        offset += len(text) + 1
    return lines, base + end + 1


def _split_lf(data: bytes, base: int) -> tuple[list[Line], int]:
    """Complete lines of ``data`` ending in ``\n`` (a ``\r`` before it dropped), valid UTF-8
    decoded at once (each line's bytes counted again only when it is not ASCII), else each
    line decoded on its own, invalid bytes replaced."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], base
    body = data[:end]
    whole = body.decode("utf-8", "replace")
    lines = []
    offset = base
    if "\ufffd" not in whole:  # valid: no byte was replaced, so the lengths add up
        for text in whole.split("\n"):
            lines.append(Line(offset, text[:-1] if text.endswith("\r") else text))
            offset += (len(text) if text.isascii() else len(text.encode())) + 1
        return lines, base + end + 1
    for raw in body.split(b"\n"):
        text = raw.decode("utf-8", "replace")
        lines.append(Line(offset, text[:-1] if text.endswith("\r") else text))
        offset += len(raw) + 1
    return lines, base + end + 1


def _split_cr(data: bytes, base: int, full: bool) -> tuple[list[Line], int]:
    if b"\r" not in data and (not full or b"\n" in data):
        return _split_ascii(data, base) if data.isascii() else _split_lf(data, base)
    lines: list[Line] = []
    start = 0
    for end in _LINE_END_CR.finditer(data):
        if end.end() == len(data) and end.group() == b"\r" and not full:
            break  # perhaps the first half of a \r\n still being written
        lines.append(Line(base + start, data[start : end.start()].decode("utf-8", "replace")))
        start = end.end()
    if full and not lines and start < len(data):
        lines.append(Line(base + start, data[start:].decode("utf-8", errors="replace")))
        start = len(data)
    return lines, base + start


def _split(data: bytes, base: int, force_partial: bool) -> tuple[list[Line], int]:
    if not force_partial:
        return _split_ascii(data, base) if data.isascii() else _split_lf(data, base)
    lines: list[Line] = []
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            break
        text = data[start:end].rstrip(b"\r").decode("utf-8", errors="replace")
        lines.append(Line(base + start, text))
        start = end + 1
    if force_partial and start < len(data):
        # One line longer than the bound: cut it, or the reader would be stuck forever.
        lines.append(Line(base + start, data[start:].decode("utf-8", errors="replace")))
        start = len(data)
    return lines, base + start


def read_lines(
    path: Path | str,
    offset: int,
    max_bytes: int = MAX_READ_BYTES,
    split_cr: bool = False,
    final: bool = False,
) -> Chunk:
    """Complete lines from ``offset``, at most about ``max_bytes`` of them; with ``final``
    (nothing more will be written), also the partial line the file ends with."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after fstat
    except (FileNotFoundError, NotADirectoryError):
        return Chunk(offset=offset)
    with f:
        size = os.fstat(f.fileno()).st_size
        restarted = size < offset
        if restarted:
            offset = 0
        if size == offset:
            return Chunk(offset=offset, restarted=restarted)
        f.seek(offset)
        data = f.read(max_bytes)
    full = len(data) >= max_bytes
    if split_cr:
        lines, new_offset = _split_cr(data, offset, full)
    else:
        lines, new_offset = _split(data, offset, force_partial=full and b"\n" not in data)
    end = offset + len(data)
    if final and not full and new_offset < end:
        rest = data[new_offset - offset :]
        text = (rest[:-1] if rest.endswith(b"\r") else rest).decode("utf-8", errors="replace")
        if text:
            lines.append(Line(new_offset, text))
        new_offset = end
    return Chunk(lines, new_offset, restarted, more=full)


def last_lines(path: Path | str, count: int, max_bytes: int = MAX_READ_BYTES) -> Chunk:
    """The last ``count`` (0: all) complete lines, reading at most ``max_bytes`` from the end."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except (FileNotFoundError, NotADirectoryError):
        return Chunk()
    with f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(size - start)
    if start > 0:
        # The first line is probably cut: skip to the next line start.
        cut = data.find(b"\n")
        if cut < 0:
            return Chunk(offset=start + len(data))
        start, data = start + cut + 1, data[cut + 1 :]
    lines, end = _split(data, start, force_partial=False)
    return Chunk(lines[-count:] if count > 0 else lines, end)


class Tailer:
    """A file and the offset reached in it."""

    def __init__(
        self,
        path: Path | str,
        offset: int = 0,
        max_bytes: int = MAX_READ_BYTES,
        split_cr: bool = False,
    ) -> None:
        self.path = Path(path)
        self.offset = offset
        self.max_bytes = max_bytes
        self.split_cr = split_cr

    def read(self) -> Chunk:
        chunk = read_lines(self.path, self.offset, self.max_bytes, self.split_cr)
        self.offset = chunk.offset
        return chunk
