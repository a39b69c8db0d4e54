"""`?`: a compact list of the keys of the screen underneath, its own keys first (and
its focused list's, like enter), then the app's, then Textual's generic focus and
scrolling keys last; scrollable."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

KEY_WIDTH = 10

HelpRow = tuple[str, str, str]  # (group, key, description)


def _own_actions(node: object) -> set[str]:
    """The actions bound by the console's own classes of `node` (not Textual's)."""
    actions = set()
    for cls in type(node).__mro__:
        if cls.__module__.startswith("textual"):
            continue
        for binding in cls.__dict__.get("BINDINGS", ()):
            actions.add(binding.action if isinstance(binding, Binding) else binding[1])
    return actions


GROUPS = ("screen", "list", "app", "generic")


def help_rows(screen: Screen[object]) -> list[HelpRow]:
    """The keys that act on `screen`: those the console binds on it ("screen"), on its
    focused list ("list"), on the app ("app"), then Textual's generic focus and scrolling
    keys ("generic"); one row per action, its keys joined ("y/enter")."""
    app = screen.app
    groups: dict[str, dict[tuple[str, str], list[str]]] = {g: {} for g in GROUPS}
    own: dict[int, set[str]] = {}
    active: dict[str, ActiveBinding] = screen.active_bindings
    for key, (node, binding, _enabled, _tip) in active.items():
        description = binding.description or binding.tooltip
        if not description:
            continue
        mine = own.setdefault(id(node), _own_actions(node))
        group = "app" if node is app else "screen" if node is screen else "list"
        if binding.action not in mine:
            group = "generic"
        keys = groups[group].setdefault((binding.action, description), [])
        shown = app.get_key_display(Binding(key, binding.action, key_display=binding.key_display))
        if shown not in keys:
            keys.append(shown)
    return [
        (group, "/".join(keys), description)
        for group, actions in groups.items()
        for (_action, description), keys in actions.items()
    ]


def help_text(rows: list[HelpRow]) -> Content:
    """The rows as lines: `key  description`, a heading over each group after the first."""
    lines: list[Content] = []
    last = ""
    for group, key, description in rows:
        if group != last and last:
            heading = {"list": "in the list", "app": "everywhere"}.get(group, "more")
            lines.append(Content.styled(heading, "$text-muted"))
        last = group
        lines.append(Content.assemble((f"{key:<{KEY_WIDTH}}", "bold $accent"), " ", description))
    return Content("\n").join(lines)


class HelpScreen(ModalScreen[None]):
    """The keys of the screen underneath; `?` or escape closes it, arrows scroll."""

    DEFAULT_CSS = """
    HelpScreen { align: right top; }
    HelpScreen > Vertical {
        width: 44; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $panel; padding: 0 1;
    }
    HelpScreen > Vertical { border-title-style: bold; border-subtitle-color: $text-muted; }
    HelpScreen VerticalScroll { height: auto; max-height: 100%; scrollbar-size-vertical: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,escape", "close", "Close", key_display="?"),
        Binding("down,j", "scroll(1)", "Scroll", show=False),
        Binding("up,k", "scroll(-1)", "Scroll", show=False),
    ]

    def __init__(self, rows: list[HelpRow], title: str = "keys") -> None:
        super().__init__()
        self.rows = rows
        self.heading = title

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            # Title and hint in the border: every line inside is a key.
            box.border_title = self.heading
            box.border_subtitle = "? closes · ↑↓ scroll"
            with VerticalScroll(id="help-keys"):
                yield Static(help_text(self.rows), id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, lines: int) -> None:
        self.query_one("#help-keys", VerticalScroll).scroll_relative(y=lines, animate=False)
