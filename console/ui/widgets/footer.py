"""A Footer that recomposes only when the keys it shows change.

Textual's Footer recomposes on every change of the screen's bindings, which moving the
focus is: on the job screen each tab switch moves it between tables whose own keys are
hidden, so the footer would unmount and mount its dozen keys (styles, a layout pass)
to show the same line again.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class SteadyFooter(Footer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple[object, ...] | None = None

    def bindings_changed(self, screen: Screen[Any]) -> None:
        palette = screen.app.COMMAND_PALETTE_BINDING
        shown = tuple(
            (binding.key, binding.description, binding.action, enabled, tooltip)
            for key, (_, binding, enabled, tooltip) in screen.active_bindings.items()
            if binding.show or key == palette
        )
        if shown == self._shown and self._bindings_ready:
            return
        if screen.app.app_focus:  # else Footer draws nothing now, nor remembers
            self._shown = shown
        super().bindings_changed(screen)
