"""A list's `/` filter: a one-line input, hidden until opened; typing filters as it goes,
enter goes back to the list keeping the filter, escape clears it."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """Posts `FilterBar.Edited` on every edit and `FilterBar.Done` on enter or escape
    (the owner then focuses its list again)."""

    DEFAULT_CSS = """
    FilterBar {
        display: none;
        height: 1;
        border: none;
        padding: 0 1;
        background: $panel;
        &:focus { border: none; background-tint: $foreground 5%; }
        &.-open { display: block; }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear", "Clear filter"),
    ]

    class Edited(Message):
        def __init__(self, bar: FilterBar, text: str) -> None:
            super().__init__()
            self.bar = bar
            self.text = text

    class Done(Message):
        def __init__(self, bar: FilterBar) -> None:
            super().__init__()
            self.bar = bar

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="filter: type words, enter keeps, esc clears", id=id)

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    def open(self) -> None:
        """Shows the bar and puts the cursor in it."""
        self.add_class("-open")
        self.focus()

    def clear_filter(self) -> None:
        """Empties and hides the bar (the owner is told the text is now "")."""
        self.value = ""
        self.remove_class("-open")
        self.post_message(self.Edited(self, ""))

    def action_clear(self) -> None:
        self.clear_filter()
        self.post_message(self.Done(self))

    def _on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Edited(self, event.value))

    def _on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not event.value.strip():
            self.remove_class("-open")
        self.post_message(self.Done(self))
