"""The log screen's lines around the log: the `/` prompt, the header's error and
warning counts, and the status line's items joined."""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.widgets import Input


class SearchInput(Input):
    """The `/` prompt; hidden until asked for."""

    DEFAULT_CSS = """
    SearchInput {
        display: none;
        height: 1;
        border: none;
        padding: 0 1;
        background: $panel;
        &:focus { border: none; background-tint: $foreground 5%; }
    }
    """


def counts_line(errors: int, warnings: int) -> Content:
    """`3 errors  12 warnings`, each in its colour; empty when there are none."""
    parts: list[str | tuple[str, str]] = []
    if errors:
        parts.append((f"{errors:,} error{'s' if errors != 1 else ''}", "bold $text-error"))
    if warnings:
        if parts:
            parts.append("  ")
        parts.append((f"{warnings:,} warning{'s' if warnings != 1 else ''}", "$text-warning"))
    return Content.assemble(*parts)


def join_status(items: Sequence[Content]) -> Content:
    """The status line: its items joined by ` · `."""
    # A styled item ends with its own space: SVG viewers (librsvg) drop the leading
    # spaces of a run, which a separator of its own would start with.
    status = items[0]
    for item in items[1:]:
        status += ("· " if status.plain.endswith(" ") else " · ") + item
    return status.rstrip()
