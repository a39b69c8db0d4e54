"""The Load Test screen's form, read into a LoadTestConfig (pure: no Textual).

The screen shows a few fields as text; this turns them into the same config that
`gantry loadtest` builds from its flags, with the same one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from console.loadtest.config import LoadTestConfig, LoadTestError, validate
from console.loadtest.schedule import parse_duration, parse_rate

MODES = ("open", "poisson", "closed", "schedule")
MODE_HELP = {
    "open": "requests/s, sent at a constant rate (open loop)",
    "poisson": "requests/s, Poisson arrivals (open loop)",
    "closed": "requests in flight (closed loop)",
    "schedule": "steps and ramps, e.g. 10:10s,ramp:40:20s",
}
YES_NO = ("no", "yes")


@dataclass(frozen=True)
class LoadForm:
    target: str
    mode: str  # one of MODES
    load: str  # a rate, a concurrency or a schedule, by mode
    duration: str  # "30s"; ignored by a schedule
    max_tokens: str = "32"
    warmup: str = "0s"
    ignore_eos: str = "no"  # "yes": decode max_tokens every time, past end-of-sequence


def config_from_form(form: LoadForm, token_file: Path | None = None) -> LoadTestConfig:
    """LoadTestError, one line naming the field, when a field does not read."""
    target = form.target.strip()
    load = form.load.strip()
    if form.mode not in MODES:
        raise LoadTestError(f"mode {form.mode!r}: expected one of {', '.join(MODES)}")
    if form.ignore_eos not in YES_NO:
        raise LoadTestError(f"ignore EOS {form.ignore_eos!r}: expected yes or no")
    if not load:
        raise LoadTestError(f"load: give the {MODE_HELP[form.mode]}")
    rate: float | None = None
    concurrency: int | None = None
    schedule = ""
    try:
        if form.mode in ("open", "poisson"):
            rate = parse_rate(load)
        elif form.mode == "closed":
            concurrency = int(load)
        else:
            schedule = load
    except ValueError as exc:
        reason = exc if form.mode != "closed" else "not a whole number of requests"
        raise LoadTestError(f"load {load!r}: {reason}") from None
    duration_s: float | None = None
    if form.mode != "schedule":
        duration_s = _duration("duration", form.duration)
    try:
        max_tokens = int(form.max_tokens.strip())
    except ValueError:
        raise LoadTestError(f"max tokens {form.max_tokens!r}: not a whole number") from None
    config = LoadTestConfig(
        target=target,
        rate=rate,
        arrival="poisson" if form.mode == "poisson" else "constant",
        concurrency=concurrency,
        schedule=schedule,
        duration_s=duration_s,
        warmup_s=_duration("warm-up", form.warmup, allow_zero=True),
        max_tokens=max_tokens,
        token_file=token_file,
        ignore_eos=form.ignore_eos == "yes",
    )
    validate(config)
    return config


def _duration(field: str, text: str, allow_zero: bool = False) -> float:
    try:
        return parse_duration(text.strip(), allow_zero=allow_zero)
    except ValueError as exc:
        raise LoadTestError(f"{field} {text.strip()!r}: {exc}") from None
