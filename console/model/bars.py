"""Text for gauges and figures: block glyphs, small bars, byte counts and rates.

Pure functions; `None` stands for a figure the hardware does not report and is
drawn as a dash, never as zero.
"""

from __future__ import annotations

DASH = "\u2013"  # en dash
BLOCKS = "▁▂▃▄▅▆▇█"
# Left-aligned eighths of a cell, from empty to full.
EIGHTHS = " ▏▎▍▌▋▊▉█"

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SHORT_UNITS = ("B", "K", "M", "G", "T", "P")
_RATE_UNITS = ("B/s", "kB/s", "MB/s", "GB/s", "TB/s")


def clamp_percent(percent: float) -> float:
    return 0.0 if percent != percent else min(100.0, max(0.0, percent))  # NaN -> 0


def block(percent: float | None) -> str:
    """One cell whose height shows `percent`; 0 % still draws the lowest block."""
    if percent is None:
        return DASH
    index = int(clamp_percent(percent) * len(BLOCKS) / 100.0)
    return BLOCKS[min(index, len(BLOCKS) - 1)]


def hbar(percent: float | None, width: int) -> str:
    """A left-to-right bar of exactly `width` cells, in eighths of a cell."""
    if width <= 0:
        return ""
    if percent is None:
        return " " * width
    eighths = round(clamp_percent(percent) * width * 8 / 100.0)
    full, part = divmod(eighths, 8)
    if full >= width:
        return EIGHTHS[8] * width
    return EIGHTHS[8] * full + EIGHTHS[part] + " " * (width - full - 1)


def format_percent(percent: float | None) -> str:
    if percent is None:
        return DASH
    return f"{percent:.0f}%"


def percent_of(used: float | None, total: float | None) -> float | None:
    if used is None or not total:
        return None
    return 100.0 * used / total


def _scale(value: float, step: float, units: tuple[str, ...]) -> tuple[float, str]:
    for unit in units[:-1]:
        if abs(value) < step:
            return value, unit
        value /= step
    return value, units[-1]


def format_bytes(n: float | None) -> str:
    """`12.3 GiB`, `512 B`."""
    if n is None:
        return DASH
    value, unit = _scale(float(n), 1024.0, _BINARY_UNITS)
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.1f} {unit}"


def format_bytes_pair(used: float | None, total: float | None) -> str:
    """`64.2/80.0 GiB`: both in the total's unit, unless that rounds `used` away."""
    if used is None:
        return DASH
    if not total:
        return format_bytes(used)
    _, unit = _scale(float(total), 1024.0, _BINARY_UNITS)
    if unit == "B":
        return f"{used:.0f}/{total:.0f} B"
    div = 1024.0 ** _BINARY_UNITS.index(unit)
    if used and used / div < 1.0:
        return f"{format_bytes(used)}/{format_bytes(total)}"
    return f"{used / div:.1f}/{total / div:.1f} {unit}"


def _short(value: float, step: float, units: tuple[str, ...]) -> str:
    """At most four cells: `9.5G`, `412G`, `1.0T`."""
    value = max(0.0, value)
    for i, unit in enumerate(units):
        last = i == len(units) - 1
        if value < 9.95:
            return f"{value:.1f}{unit}" if i else f"{value:.0f}{unit}"
        if value < 999.5 or last:
            return f"{value:.0f}{unit}"
        value /= step
    raise AssertionError("unreachable")


def format_bytes_short(n: float | None) -> str:
    if n is None:
        return DASH
    return _short(float(n), 1024.0, _SHORT_UNITS)


def format_rate(bytes_per_s: float | None) -> str:
    """`1.2 MB/s`, `340 MB/s`: decimal units, at most eight cells."""
    if bytes_per_s is None:
        return DASH
    value = max(0.0, float(bytes_per_s))
    for i, unit in enumerate(_RATE_UNITS):
        last = i == len(_RATE_UNITS) - 1
        if value < 9.95 and i:
            return f"{value:.1f} {unit}"
        if value < 999.5 or last:
            return f"{value:.0f} {unit}"
        value /= 1000.0
    raise AssertionError("unreachable")


def format_rate_short(bytes_per_s: float | None) -> str:
    """`1.2M`: a rate in at most four cells (the column header says per second)."""
    if bytes_per_s is None:
        return DASH
    return _short(float(bytes_per_s), 1000.0, ("B", "k", "M", "G", "T"))


def fit(text: str, width: int) -> str:
    """Pads or cuts `text` to exactly `width` cells, marking a cut with an ellipsis."""
    if len(text) <= width:
        return text.ljust(width)
    if width <= 0:
        return ""
    return text[: width - 1] + "…"
