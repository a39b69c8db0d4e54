"""Modal dialogs: a yes/no confirmation for destructive actions, and the restart
dialog of a job (naming its failed node when one is failed; offering a spare when the
job has spares)."""

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
    kind: str  # "in-place" | "exclude" | "agent" | "replace"
    node: str
    spare: str = ""  # "replace": the spare that runs the node's ranks


class RestartDialog(ModalScreen[RestartChoice | None]):
    """How to restart a job: (a) in place, (b) go on without a node (the failed one, or
    the selected rank's), (c) restart the node's agent (greyed out with its reason when
    the console cannot reach the node over SSH), and, when the job has spares, (d) run the
    node's ranks on a spare (greyed out with its reason when none is free)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="RestartDialog")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "choose('in-place')", "In place", show=False),
        Binding("b", "choose('exclude')", "Without node", show=False),
        Binding("c", "choose('agent')", "Restart agent", show=False),
        Binding("d", "choose('replace')", "Replace with a spare", show=False),
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
        spare: str = "",
        can_replace: str | None = None,
    ) -> None:
        """`fault`: what went wrong on `node` ("rank 3 hung"), empty on a healthy job;
        `can_exclude` / `agent_restart` / `can_replace`: empty when offered, else why not;
        `can_replace` None: the job has no spares (no fourth option); `spare`: the free
        spare (d) uses."""
        super().__init__()
        self.spare = spare
        self.can_replace = can_replace
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
        if self.can_replace is not None:
            options.append(
                Option(
                    f"d  replace {self.node} with a spare"
                    + (f" ({self.spare}: same ranks, same world)" if self.spare else "")
                    + (f" — {self.can_replace}" if self.can_replace else ""),
                    id="replace",
                    disabled=bool(self.can_replace),
                )
            )
        keys = "a/b/c/d" if self.can_replace is not None else "a/b/c"
        with Vertical():
            yield Static(self.heading, classes="dialog-title", markup=False)
            yield OptionList(*options)
            yield Static(f"{keys} or enter · escape cancels", classes="dialog-help")

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
        if kind == "replace":
            if self.can_replace is None:
                return
            if self.can_replace:
                self.notify(self.can_replace, severity="warning")
                return
        self.dismiss(RestartChoice(kind, self.node, self.spare if kind == "replace" else ""))

    def action_cancel(self) -> None:
        self.dismiss(None)
