"""Panes side by side, each as wide as the strip, one of them in view: switching panes
scrolls the strip instead of hiding and showing widgets.

Textual's ContentSwitcher toggles `display`, which costs a layout pass and throws away
every rendered line of the pane shown (its size went from nothing to the screen's): on
the job screen of a thousand-rank job a tab key then waited for the whole screen to
be rebuilt. Scrolled into view, a pane keeps its size and its rendered lines, and only
what changed since it was last shown is drawn again.
"""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.containers import Container
from textual.reactive import reactive
from textual.widget import Widget


class PaneStrip(Container):
    """`current` is the id of the pane in view (a child's id), as ContentSwitcher's."""

    DEFAULT_CSS: ClassVar[str] = """
    PaneStrip {
        layout: horizontal;
        overflow: hidden hidden;
        height: 1fr;
    }
    PaneStrip > * {
        width: 100%;
        height: 1fr;
    }
    """

    current: reactive[str | None] = reactive[str | None](None, init=False)

    def __init__(self, *children: Widget, initial: str, id: str | None = None) -> None:
        super().__init__(*children, id=id)
        self._initial = initial

    def on_mount(self) -> None:
        self.current = self._initial

    def watch_current(self) -> None:
        self._scroll_to_current()

    def on_resize(self, event: events.Resize) -> None:
        self._scroll_to_current()

    def pane_of(self, widget: Widget) -> str | None:
        """The id of the pane holding `widget` (None: not in this strip)."""
        node: Widget | None = widget
        while node is not None and node.parent is not self:
            parent = node.parent
            node = parent if isinstance(parent, Widget) else None
        return node.id if node is not None else None

    def _scroll_to_current(self) -> None:
        ids = [child.id for child in self.children]
        if self.current not in ids:
            return
        x = ids.index(self.current) * self.size.width
        self.scroll_to(x=x, animate=False, force=True, immediate=True)
