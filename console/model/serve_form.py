"""What `gantry serve` and the tasks screen's serve dialog ask the agent for (pure: no
Textual, no I/O): the dialog's fields read into the same settings the verb's flags give,
both checked here, each error one line naming the field to fix."""

from __future__ import annotations

import re
from dataclasses import dataclass

# What the server's --engine-cpus takes (it says which CPUs exist; this checks the form).
ENGINE_CPUS = re.compile(r"^(auto|none|\d+(-\d+)?(,\d+(-\d+)?)*)$")


# How the dialog names each field; `gantry serve` names its flag instead.
LABELS = {
    "model_dir": "model directory",
    "port": "port",
    "http_port": "HTTP port",
    "max_batch_size": "max batch size",
    "max_queue_delay_ms": "queue delay",
    "engine_cpus": "engine CPUs",
    "stream_interval": "stream interval",
    "prefix_cache_mb": "prefix cache MB",
}


def flag(field: str) -> str:
    return "MODEL_DIR" if field == "model_dir" else "--" + field.replace("_", "-")


class ServeFormError(ValueError):
    """One line naming the field to fix: `str()` as the dialog labels it, `as_flag()` as
    `gantry serve` spells it. `template` holds {name} where the field's name goes."""

    def __init__(self, field: str, template: str) -> None:
        self.field, self.template = field, template
        super().__init__(template.format(name=LABELS[field]))

    def as_flag(self) -> str:
        return self.template.format(name=flag(self.field))


@dataclass(frozen=True)
class ServeSettings:
    model_dir: str
    port: int = 0  # gRPC; 0: any free port
    http_port: int = 0  # the OpenAI-compatible HTTP API too; 0: gRPC only
    max_batch_size: int = 0  # 0: the server's (8 on CPU, from free memory on a GPU)
    max_queue_delay_ms: float | None = None  # None: the server's (10)
    engine_cpus: str = ""  # "": not bound
    stream_interval: int = 1
    prefix_cache_mb: int | None = None  # None: the server's (256); 0: off


@dataclass(frozen=True)
class ServeForm:
    """The dialog's fields as typed; empty: the default."""

    model_dir: str
    http_port: str = ""
    max_batch_size: str = ""
    max_queue_delay_ms: str = ""
    engine_cpus: str = ""
    stream_interval: str = ""
    prefix_cache_mb: str = ""


def checked(settings: ServeSettings) -> ServeSettings:
    """The settings, or ServeFormError naming what to fix."""
    if not settings.model_dir.strip():
        raise ServeFormError("model_dir", "{name}: give the model's path on the node")
    for field, port in (("port", settings.port), ("http_port", settings.http_port)):
        if not 0 <= port <= 65535:
            raise ServeFormError(field, f"{{name}} {port}: not a port (1 to 65535, or 0)")
    if settings.port and settings.port == settings.http_port:
        raise ServeFormError("http_port", f"{{name}} {settings.port}: the gRPC port already")
    if settings.max_batch_size < 0:
        raise ServeFormError(
            "max_batch_size", f"{{name}} {settings.max_batch_size}: give 1 or more"
        )
    delay = settings.max_queue_delay_ms
    if delay is not None and not 0 <= delay <= 60_000:
        raise ServeFormError("max_queue_delay_ms", f"{{name}} {delay:g}: give 0 to 60000 ms")
    if settings.engine_cpus and not ENGINE_CPUS.match(_cpus(settings.engine_cpus)):
        raise ServeFormError(
            "engine_cpus",
            f"{{name}} {settings.engine_cpus!r}: auto, none, or CPUs such as 3, 2-3 or 0,2",
        )
    if settings.stream_interval < 1:
        raise ServeFormError(
            "stream_interval", f"{{name}} {settings.stream_interval}: give 1 or more"
        )
    if settings.prefix_cache_mb is not None and settings.prefix_cache_mb < 0:
        raise ServeFormError(
            "prefix_cache_mb", f"{{name}} {settings.prefix_cache_mb}: give 0 (off) or more"
        )
    return settings


def settings_from_form(form: ServeForm) -> ServeSettings:
    """ServeFormError, one line naming the field, when a field does not read."""
    return checked(
        ServeSettings(
            model_dir=form.model_dir.strip(),
            http_port=_whole("http_port", form.http_port, 0),
            max_batch_size=_whole("max_batch_size", form.max_batch_size, 0),
            max_queue_delay_ms=_delay(form.max_queue_delay_ms),
            engine_cpus=_cpus(form.engine_cpus),
            stream_interval=_whole("stream_interval", form.stream_interval, 1),
            prefix_cache_mb=(
                _whole("prefix_cache_mb", form.prefix_cache_mb, 0)
                if form.prefix_cache_mb.strip()
                else None
            ),
        )
    )


def _cpus(text: str) -> str:
    cpus = text.strip().lower().replace(" ", "")
    return "" if cpus == "none" else cpus


def _whole(field: str, text: str, default: int) -> int:
    text = text.strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ServeFormError(field, f"{{name}} {text!r}: not a whole number") from None


def _delay(text: str) -> float | None:
    text = text.strip().removesuffix("ms").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ServeFormError(
            "max_queue_delay_ms", f"{{name}} {text!r}: not a number of ms"
        ) from None
