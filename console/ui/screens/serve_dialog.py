"""The tasks screen's serve dialog: the model directory and what `gantry serve` takes
besides (the HTTP API's port, batch size, queue delay, engine CPUs, stream interval,
prefix cache size),
read by console.model.serve_form with the verb's own checks."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from console.model.serve_form import ServeForm, ServeFormError, ServeSettings, settings_from_form
from console.ui.screens.dialogs import DIALOG_CSS

# (ServeForm field, label, placeholder: what an empty field means)
FIELDS = (
    ("model_dir", "model directory", "/path/to/model on the node"),
    ("http_port", "HTTP port", "0: gRPC only (else the OpenAI API too)"),
    ("max_batch_size", "max batch size", "the server's: 8 on CPU, a GPU's from memory"),
    ("max_queue_delay_ms", "queue delay, ms", "10"),
    ("engine_cpus", "engine CPUs", "none (auto, or CPUs: 3, 2-3)"),
    ("stream_interval", "stream interval", "1: each token as decoded"),
    ("prefix_cache_mb", "prefix cache MB", "the server's: 256 (0: off)"),
)


class ServeScreen(ModalScreen[ServeSettings | None]):
    """Enter in any field starts the server; escape cancels. A field that does not read
    is named on the dialog's last line, and what was typed stays."""

    DEFAULT_CSS = (
        DIALOG_CSS.format(name="ServeScreen")
        + """
    ServeScreen .serve-row { height: 1; }
    ServeScreen .serve-label { width: 18; }
    ServeScreen Input { width: 1fr; height: 1; border: none; padding: 0 1; background: $boost; }
    ServeScreen Input:focus { border: none; background: $accent 30%; }
    ServeScreen #serve-error { color: $error; }
    """
    )
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, model_dir: str = "") -> None:
        super().__init__()
        self.prompt = "Serve a model (gantry serve)"
        self.model_dir = model_dir

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt, classes="dialog-title", markup=False)
            for name, label, placeholder in FIELDS:
                with Horizontal(classes="serve-row"):
                    yield Static(label, classes="serve-label", markup=False)
                    yield Input(
                        value=self.model_dir if name == "model_dir" else "",
                        placeholder=placeholder,
                        id=f"serve-{name}",
                        select_on_focus=False,
                    )
            yield Static("", id="serve-error", markup=False)
            yield Static("enter starts · tab next field · escape cancels", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one("#serve-model_dir", Input).focus()

    def form(self) -> ServeForm:
        values = {name: self.query_one(f"#serve-{name}", Input).value for name, _, _ in FIELDS}
        return ServeForm(**values)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            settings = settings_from_form(self.form())
        except ServeFormError as exc:
            self.query_one("#serve-error", Static).update(str(exc))
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)
