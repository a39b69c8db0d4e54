"""A log line made safe for a terminal: what a rank printed can neither move the cursor,
retitle the window, ring the bell nor hide text. Pure."""

from __future__ import annotations

import re

__all__ = ["safe_line"]

# CSI (colours, cursor moves), OSC (titles, hyperlinks, clipboard) and the other string
# sequences (DCS, SOS, PM, APC), in their 7-bit and 8-bit forms: dropped whole, text kept.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"  # the other escapes (ESC c resets the terminal, ESC ( B ...)
)
# What is left of the C0 and C1 controls (tab kept), and the bidirectional overrides that
# make text read other than it is stored.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the control pictures: ␛ ␇ ␈ ...
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<U+{code:04X}>"


def safe_line(text: str) -> str:
    """`text` with terminal escape sequences removed and other control characters shown
    as visible symbols (␛, ␇, <U+202E>...); tabs and printable text unchanged."""
    if text.isprintable():
        return text
    return _CONTROL.sub(_visible, _SEQUENCE.sub("", text))
