"""The tasks screen's dialogs: one line of input (a model directory, a job), and a task's
whole detail, wrapped and scrollable at any terminal size."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from console.ui.screens.dialogs import DIALOG_CSS

REFRESH_S = 1.0


class ModelDirScreen(ModalScreen[str | None]):
    """Asks for one value; enter answers it, escape (or an empty field) cancels."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ModelDirScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, default: str = "", placeholder: str = "/path/to/model") -> None:
        super().__init__()
        self.prompt = prompt
        self.default = default
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt, classes="dialog-title", markup=False)
            yield Input(value=self.default, placeholder=self.placeholder)
            yield Static("enter starts · escape cancels", classes="dialog-help")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TaskDetailScreen(ModalScreen[None]):
    """A task's whole detail over the full screen: wrapped, scrolled with the arrows and
    page keys, redrawn every second from `text()` (a task that runs moves on)."""

    DEFAULT_CSS = """
    TaskDetailScreen { background: $surface; }
    TaskDetailScreen #task-detail-full-scroll { height: 1fr; padding: 0 1; }
    TaskDetailScreen #task-detail-full { width: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter", "close", "Back"),
    ]

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="task-detail-full-scroll"):
            yield Static(self.text(), id="task-detail-full", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#task-detail-full-scroll", VerticalScroll).focus()
        self.set_interval(REFRESH_S, self.redraw)

    def redraw(self) -> None:
        self.query_one("#task-detail-full", Static).update(self.text())

    def action_close(self) -> None:
        self.dismiss(None)
