"""The node table's columns: which widths fit a content width (pure layout maths)."""

from __future__ import annotations

from dataclasses import dataclass

LEFT_PAD = 1
GAP = 2
MAX_NAME_WIDTH = 24
CPU_W = 4  # "100%"
RAM_W = 9  # "412G/1.0T"


@dataclass(frozen=True, slots=True)
class TableLayout:
    """Column widths for one content width. `*_bar == 0` draws one block glyph per GPU."""

    width: int
    name_w: int
    slots: int
    util_bar: int
    mem_bar: int
    wide: bool

    @property
    def state_w(self) -> int:
        return 16 if self.wide else 11

    @property
    def rate_w(self) -> int:
        return 8 if self.wide else 4

    def group_w(self, bar: int, minimum: int) -> int:
        """Cells of one GPU group: a glyph per GPU, or per GPU a figure and a bar."""
        if bar == 0:
            return max(self.slots, minimum)
        return max(self.slots * (bar + 4) + max(self.slots - 1, 0), minimum)

    @property
    def util_w(self) -> int:
        return self.group_w(self.util_bar, 6)  # room for "no GPU"

    @property
    def mem_w(self) -> int:
        return self.group_w(self.mem_bar, 3)

    @property
    def total(self) -> int:
        widths = (
            self.name_w,
            self.state_w,
            self.util_w,
            self.mem_w,
            CPU_W,
            RAM_W,
            self.rate_w,
            self.rate_w,
        )
        return LEFT_PAD + sum(widths) + GAP * (len(widths) - 1) + 1


def choose_layout(width: int, slots: int, name_w: int) -> TableLayout:
    """The richest layout that fits `width`: bars with percentages, then block glyphs."""
    candidates = [TableLayout(width, name_w, slots, b, b, True) for b in range(8, 2, -1)]
    candidates += [TableLayout(width, name_w, slots, b, 0, True) for b in range(8, 1, -1)]
    candidates.append(TableLayout(width, name_w, slots, 0, 0, True))
    for layout in candidates:
        if layout.total <= width:
            return layout
    return TableLayout(width, name_w, slots, 0, 0, False)
