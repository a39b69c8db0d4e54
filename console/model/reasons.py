"""Failure reasons as a narrow column shows them: the most important words first
(`OOM gpu1: tried 3.4 GiB · r3` for `rank 3 failed: CUDA out of memory. Tried to
allocate 3.40 GiB (GPU 1; ...)`), the full text kept for the detail line. Pure."""

from __future__ import annotations

import re

ELLIPSIS = "…"

_RANK_FAILED = re.compile(r"^rank (\d+) (failed|hung)(?:: ?|$)")
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory")
_TRIED = re.compile(r"[Tt]ried to allocate (\d+(?:\.\d+)?) ?([KMGT]i?B)")
_GPU = re.compile(r"\bGPU ?(\d+)\b")
_EXIT = re.compile(r"\s*\((exit code -?\d+|killed by \w+)\)\s*$")
_NO_PROGRESS = re.compile(r"^no progress for (\d+) s\b.*")


def _number(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def short_reason(reason: str) -> str:
    """`reason`'s first line with its cause first and the rank and exit status last."""
    text = reason.strip().splitlines()[0].strip() if reason.strip() else ""
    tail: list[str] = []
    match = _RANK_FAILED.match(text)
    if match:
        text = text[match.end() :] or match[2]
        tail.append(f"r{match[1]}")
    exit_match = _EXIT.search(text)
    if exit_match:
        text = text[: exit_match.start()]
        tail.append(exit_match[1].replace("exit code ", "exit "))
    if _OOM.search(text):
        gpu = _GPU.search(text)
        tried = _TRIED.search(text)
        text = "OOM" + (f" gpu{gpu[1]}" if gpu else "")
        if tried:
            text += f": tried {_number(tried[1])} {tried[2]}"
    elif hang := _NO_PROGRESS.match(text):
        text = f"hung: no progress {hang[1]} s"
    return " · ".join(filter(None, [text.rstrip(" .:"), *tail]))


def fit(text: str, width: int) -> str:
    """`text` cut to `width` cells with an ellipsis when it is longer."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1].rstrip() + ELLIPSIS
