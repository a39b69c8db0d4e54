"""The Load Test screen's sweep mode, read into a LoadTestConfig (pure: no Textual).

The form's endpoint, run-for (each step's), tokens and ignore-EOS fields read as in the
other modes (console.model.loadtest_form); the SLO fields, either or both, in ms.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from console.loadtest.config import LoadTestConfig, LoadTestError, validate
from console.model.loadtest_form import LoadForm, config_from_form

SWEEP_MODE = "sweep"
SWEEP_HELP = "the highest rate within the SLOs above; run for: each step"


def _slo_ms(field: str, text: str) -> float | None:
    text = text.strip().removesuffix("ms").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise LoadTestError(f"{field} {text!r}: not a number of milliseconds") from None
    if not math.isfinite(value) or value <= 0:
        raise LoadTestError(f"{field} {text!r}: must be a positive number of milliseconds")
    return value


def sweep_config_from_form(
    form: LoadForm, slo_ttft: str, slo_latency: str, token_file: Path | None = None
) -> LoadTestConfig:
    """LoadTestError, one line naming the field, when a field does not read."""
    ttft_ms = _slo_ms("SLO TTFT", slo_ttft)
    latency_ms = _slo_ms("SLO latency", slo_latency)
    # The other fields read as a closed-loop run's do (its load is the sweep's to choose).
    base = config_from_form(dataclasses.replace(form, mode="closed", load="1"), token_file)
    config = dataclasses.replace(
        base, concurrency=None, sweep=True, slo_ttft_ms=ttft_ms, slo_latency_ms=latency_ms
    )
    validate(config)
    return config
