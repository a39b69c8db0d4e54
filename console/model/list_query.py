"""Filtering and sorting a list's rows as k9s does: `/` text narrows the rows, a sort
key cycles the column sorted on. Pure: rows are tuples of the cells' text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

# A cell that starts with a number sorts by it ("12/300", "4.5 GiB", "-"): steps,
# attempts and sizes sort as numbers, not as text.
_LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)")

Row = Sequence[str]


def _sort_key(cell: str) -> tuple[int, float, str]:
    match = _LEADING_NUMBER.match(cell)
    if match:
        return (0, float(match[1]), cell.lower())
    return (1, 0.0, cell.lower())


@dataclass(frozen=True)
class ListQuery:
    """What a list shows of its rows: those holding every word of `text` (any case,
    in any cell), sorted on `sort_column` (None: the list's own order)."""

    text: str = ""
    sort_column: int | None = None
    descending: bool = False

    @property
    def active(self) -> bool:
        return bool(self.text.strip()) or self.sort_column is not None

    def matches(self, row: Row) -> bool:
        words = self.text.lower().split()
        if not words:
            return True
        joined = "\t".join(row).lower()
        return all(word in joined for word in words)

    def apply(self, rows: Sequence[Row]) -> list[int]:
        """The indices of the rows shown, in the order shown."""
        kept = [i for i, row in enumerate(rows) if self.matches(row)]
        column = self.sort_column
        if column is not None:
            kept.sort(
                key=lambda i: _sort_key(rows[i][column] if column < len(rows[i]) else ""),
                reverse=self.descending,
            )
        return kept

    def with_text(self, text: str) -> ListQuery:
        return replace(self, text=text)

    def next_sort(self, columns: int) -> ListQuery:
        """The next column to sort on: none, then each column in turn, then none again."""
        if self.sort_column is None:
            return replace(self, sort_column=0 if columns else None)
        following = self.sort_column + 1
        return replace(self, sort_column=following if following < columns else None)

    def reversed(self) -> ListQuery:
        return replace(self, descending=not self.descending)

    def describe(self, columns: Sequence[str]) -> str:
        """One line for the list's status: `filter "oom" · sorted by step ↓`; "" when
        neither."""
        parts = []
        if self.text.strip():
            parts.append(f'filter "{self.text.strip()}"')
        if self.sort_column is not None and self.sort_column < len(columns):
            parts.append(f"sorted by {columns[self.sort_column]} {'↓' if self.descending else '↑'}")
        return " · ".join(parts)
