"""An event opened from the job's timeline: the diagnosed cause on top, the signature's
facts, the last error lines below, and `l` to open the rank's log at the error."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.model.event_detail import EventDetail
from console.model.log_buffer import LogBuffer
from console.model.log_lines import Severity

MAX_SHOWN_LINES = 12
CAUSE_STYLES = {"critical": "bold red", "warning": "bold yellow"}
SEVERITY_STYLES = {Severity.ERROR: "red", Severity.WARNING: "yellow"}


class ErrorLines(VerticalScroll, can_focus=True):
    """The last error lines, wrapped (at 80 columns a traceback's line is longer than
    the dialog), errors in red; scrolls when there are more than it has room for."""

    DEFAULT_CSS = f"""
    ErrorLines {{ height: auto; max-height: {MAX_SHOWN_LINES}; scrollbar-size-vertical: 1; }}
    """

    def __init__(self, buffer: LogBuffer, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.buffer = buffer

    def compose(self) -> ComposeResult:
        yield Static(self.text())

    def text(self) -> Text:
        buffer = self.buffer
        out = Text(overflow="fold")  # a path longer than the width still shows whole
        for index in range(buffer.first_index, buffer.end_index):
            if index > buffer.first_index:
                out.append("\n")
            out.append(buffer.line(index), style=SEVERITY_STYLES.get(buffer.severity(index), ""))
        return out

    def on_mount(self) -> None:
        self.scroll_end(animate=False)  # the last lines are the error


class EventDetailScreen(ModalScreen[bool]):
    """Dismissed with True when the operator asked for the rank's log (`l`)."""

    DEFAULT_CSS = """
    EventDetailScreen { align: center middle; }
    EventDetailScreen > Vertical {
        width: 100; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $panel; padding: 0 1;
    }
    EventDetailScreen .dialog-title { text-style: bold; }
    EventDetailScreen .dialog-help { color: $text-muted; }
    EventDetailScreen #event-facts { color: $text-muted; }
    EventDetailScreen #event-lines { margin: 1 0 0 0; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "Close"),
        Binding("l", "open_log", "Log at the error"),
    ]

    def __init__(self, detail: EventDetail, *, can_open_log: bool = True) -> None:
        super().__init__()
        self.detail = detail
        self.can_open_log = can_open_log and detail.rank is not None

    def compose(self) -> ComposeResult:
        detail = self.detail
        with Vertical():
            yield Static(detail.title, classes="dialog-title", markup=False)
            cause = Text(detail.cause, style=CAUSE_STYLES.get(detail.severity, "bold"))
            yield Static(cause, id="event-cause")
            facts = [name for name in (detail.signature, detail.severity) if name]
            facts += [f"{key} {value}" for key, value in detail.facts]
            if facts:
                yield Static(" · ".join(facts), id="event-facts", markup=False)
            if detail.lines:
                buffer = LogBuffer()
                buffer.extend(detail.lines)
                yield ErrorLines(buffer, id="event-lines")
            help_text = "l the rank's log at the error · escape close"
            if not self.can_open_log:
                help_text = "escape close"
            yield Static(help_text, classes="dialog-help")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.can_open_log or action != "open_log"

    def action_close(self) -> None:
        self.dismiss(False)

    def action_open_log(self) -> None:
        if self.can_open_log:
            self.dismiss(True)
