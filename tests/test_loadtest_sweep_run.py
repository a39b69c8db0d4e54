"""run_sweep against an endpoint of known capacity on 127.0.0.1: the events it reports, a
stop in the middle of the search, and an unreachable target."""

from __future__ import annotations

import asyncio
import json

import pytest

from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.sweep import Step
from console.loadtest.sweep_run import run_sweep
from tests.loadtest_sweep_server import start_slots
from tests.test_loadtest_live import closed_port

COMPLETE = "gantry.v1.InferenceService/Complete"


def sweep_config(target: str) -> LoadTestConfig:
    return LoadTestConfig(
        target, method=COMPLETE, data="{}", sweep=True, slo_latency_ms=150.0, duration_s=1.0
    )


async def test_a_stop_ends_the_search_with_the_steps_finished() -> None:
    server, address = await start_slots(4, 0.04)
    stop = asyncio.Event()
    events: list[tuple[str, float]] = []
    steps: list[Step] = []

    def on_step(step: Step) -> None:
        steps.append(step)

    def on_event(kind: str, value: float) -> None:
        events.append((kind, value))
        if kind == "step" and steps:
            stop.set()  # as the second step begins: it is cut short, and not judged

    try:
        sweep = await run_sweep(
            sweep_config(address), on_step, None, stop, on_event=on_event, in_process=True
        )
    finally:
        await server.stop(None)
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["probe", "probe"] and kinds[2] == "ceiling"
    assert events[0][1] == 32.0 and events[2][1] == sweep.ceiling_rps > 0
    assert kinds[3:] == ["step", "step"]
    assert len(sweep.steps) == len(sweep.reports) == len(steps) == 1
    assert sweep.steps[0].figures.rate_rps == sweep.ceiling_rps  # the first step
    assert not sweep.reports[0].partial
    assert sweep.notes[0].startswith("stopped before the search ended")
    assert json.loads(json.dumps(sweep.to_json()))["ceiling_rps"] == round(sweep.ceiling_rps, 4)


async def test_an_unreachable_target_fails_before_any_step() -> None:
    with pytest.raises(LoadTestError, match=r"cannot reach 127\.0\.0\.1:\d+"):
        await run_sweep(sweep_config(f"127.0.0.1:{closed_port()}"))
