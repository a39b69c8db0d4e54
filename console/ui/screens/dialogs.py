"""Modal dialogs: a yes/no confirmation for destructive actions, and the restart
dialog of a job (naming its failed node when one is failed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 72; max-width: 100%; height: auto; max-height: 100%;
    border: thick $primary; background: $panel; padding: 0 1;
}}
{name} .dialog-title {{ text-style: bold; }}
{name} .dialog-help {{ color: $text-muted; }}
{name} OptionList {{ height: auto; max-height: 8; }}
"""


class ConfirmScreen(ModalScreen[bool]):
    """`y`/enter confirms, `n`/escape cancels."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmScreen")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, classes="dialog-title", markup=False)
            if self.detail:
                yield Static(self.detail, markup=False)
            yield Static("y confirm · n cancel", classes="dialog-help")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True)
class RestartChoice:
    kind: str  # "in-place" | "exclude" | "agent"
    node: str


class RestartDialog(ModalScreen[RestartChoice | None]):
    """How to restart a job: (a) in place, (b) go on without a node (the failed one, or
    the selected rank's), (c) restart the node's agent (greyed out with its reason when
    the console cannot reach the node over SSH)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="RestartDialog")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "choose('in-place')", "In place", show=False),
        Binding("b", "choose('exclude')", "Without node", show=False),
        Binding("c", "choose('agent')", "Restart agent", show=False),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(
        self,
        job: str,
        node: str,
        *,
        fault: str = "",
        can_exclude: str = "",
        agent_restart: str = "",
    ) -> None:
        """`fault`: what went wrong on `node` ("rank 3 hung"), empty on a healthy job;
        `can_exclude` / `agent_restart`: empty when offered, else why not."""
        super().__init__()
        self.job = job
        self.node = node
        self.fault = fault
        self.can_exclude = can_exclude
        self.agent_restart = agent_restart

    @property
    def heading(self) -> str:
        """What the dialog does, and the failed node only when one is failed."""
        return f"restart {self.job}" + (f" · {self.node}: {self.fault}" if self.fault else "")

    def compose(self) -> ComposeResult:
        options = [
            Option(f"a  restart {self.job} in place from the latest checkpoint", id="in-place"),
            Option(
                f"b  go on without {self.node} (smaller world, universal checkpoint)"
                + (f" — {self.can_exclude}" if self.can_exclude else ""),
                id="exclude",
                disabled=bool(self.can_exclude),
            ),
            Option(
                f"c  restart {self.node}'s agent over SSH"
                + (f" — {self.agent_restart}" if self.agent_restart else ""),
                id="agent",
                disabled=bool(self.agent_restart),
            ),
        ]
        with Vertical():
            yield Static(self.heading, classes="dialog-title", markup=False)
            yield OptionList(*options)
            yield Static("a/b/c or enter · escape cancels", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.action_choose(event.option.id)

    def action_choose(self, kind: str) -> None:
        if kind == "exclude" and self.can_exclude:
            self.notify(self.can_exclude, severity="warning")
            return
        if kind == "agent" and self.agent_restart:
            self.notify(self.agent_restart, severity="warning")
            return
        self.dismiss(RestartChoice(kind, self.node))

    def action_cancel(self) -> None:
        self.dismiss(None)
