"""Faults (issue 19): how Gantry behaves when the network or the disk fails under a job.

Brings up a fresh namespaced test bed (tests/netbed: three hosts, their own sshd and mutual
TLS agents, a private bridge) and runs the scenarios the tests run, from the same code:

- partition (tests/netbed/scenarios.py, the fast barrier rank: its steps cross the bed's
  links as a collective would; Gantry's DeepSpeed demo job takes minutes to start on two
  cores): node-3's link cut mid-step; seconds until every rank stopped, steps lost by the
  restart beyond the latest checkpoint;
- console cut (barrier rank): the console's link to node-2 cut; `gantry job --json` timed;
- agent host reboot (barrier rank): every process of node-3 killed and started again;
- slow and lossy links (tests/netbed/link_scenarios.py, Gantry's DeepSpeed trainer);
- disk full (tests/test_fault_disk_full.py, the DeepSpeed trainer on 127.0.0.1 agents) and
  clock skew (tests/test_fault_clock_skew.py, 127.0.0.1 agents): run as those tests, their
  printed figure read back.

    sudo .venv/bin/python bench/faults.py [--skip-slow]

--skip-slow leaves out the DeepSpeed scenarios (slow link, lossy link, disk full): null.
Needs root (namespaces, tc, mount). Prints a table, then as its last line:
{"partition_to_all_stopped_s": ..., "partition_steps_lost": ..., "slow_link_network_finding":
true|false|null, "loss5_job_ok": true|false|null, "disk_full_checkpoint_intact": true|false,
"skew_events_ordered": true|false} (null: the scenario did not run; the table says why).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests/netbed, which is not an installed package

from tests.netbed.bed import Netbed, NetbedError, start_bed, teardown  # noqa: E402
from tests.netbed.scenarios import (  # noqa: E402
    PARTITION_COLLECTIVE_TIMEOUT_S,
    STOP_EXTRA_S,
    console_cut_scenario,
    partition_scenario,
    reboot_scenario,
)

PYTEST_TIMEOUT_S = 900  # a DeepSpeed test on two busy cores
Row = tuple[str, str, str]  # scenario, figure, note


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def attempt(rows: list[Row], what: str, run: Callable[[], Any]) -> Any:
    """`run()`, or None with the reason in the table when it raises."""
    try:
        return run()
    except Exception as exc:  # a scenario's failure is a figure, not the bench's end
        traceback.print_exc(file=sys.stderr)
        rows.append((what, "-", f"did not complete: {one_line(exc)}"))
        return None


def bed_scenarios(bed: Netbed, work: Path, rows: list[Row], figures: dict[str, Any]) -> None:
    bound_s = PARTITION_COLLECTIVE_TIMEOUT_S + STOP_EXTRA_S
    for folder in ("partition", "console-cut", "reboot"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    seen = attempt(rows, "partition", lambda: partition_scenario(bed, work / "partition"))
    if seen is not None:
        figures["partition_to_all_stopped_s"] = round(seen.stopped_s, 2)
        figures["partition_steps_lost"] = seen.steps_lost
        rows.append(
            (
                "partition: cut -> all ranks stopped",
                f"{seen.stopped_s:.2f} s",
                f"goal <= {bound_s:g} s; ranks left: {', '.join(seen.ranks_left) or 'none'}",
            )
        )
        rows.append(
            (
                "partition: steps lost beyond checkpoint",
                str(seen.steps_lost),
                f"resumed from step{seen.saved_step}; reason: {seen.failed.get('reason', '')}",
            )
        )
    cut = attempt(rows, "console cut", lambda: console_cut_scenario(bed, work / "console-cut"))
    if cut is not None:
        lost = "; ".join(e for e in cut.jobs_errors if e.startswith("node-2:")) or "not reported"
        rows.append(("console cut: gantry job --json", f"{cut.job_s:.2f} s", lost))
    reboot = attempt(rows, "reboot", lambda: reboot_scenario(bed, work / "reboot", 1))
    if reboot is not None:
        attempts = reboot.report["job"].get("attempts", [])
        went_on = len(attempts) >= 2 and reboot.resumed_at == [reboot.saved_step] * len(
            reboot.resumed_at
        )
        rows.append(
            (
                "reboot: node rejoined, job restarted",
                str(reboot.node_states.get("node-3") == "live" and went_on).lower(),
                f"restart from step{reboot.saved_step}; ranks at {reboot.steps}",
            )
        )


def link_scenarios(bed: Netbed, work: Path, rows: list[Row], figures: dict[str, Any]) -> None:
    """The slow and lossy links, when tests/netbed/link_scenarios.py has them (else null)."""
    for key, function, what in (
        ("slow_link_network_finding", "slow_link_scenario", "slow link: network finding"),
        ("loss5_job_ok", "lossy_link_scenario", "lossy link (5 %): job ok"),
    ):
        try:
            module = importlib.import_module("tests.netbed.link_scenarios")
            scenario = getattr(module, function)
        except (ImportError, AttributeError) as exc:
            rows.append((what, "null", f"not run: {one_line(exc)}"))
            continue
        folder = work / function
        folder.mkdir(parents=True, exist_ok=True)
        result = attempt(rows, what, functools.partial(scenario, bed, folder))
        value = result.get(key) if isinstance(result, dict) else None
        figures[key] = value if isinstance(value, bool) else None
        if result is not None:
            extra = {k: v for k, v in result.items() if k != key}
            rows.append((what, json.dumps(figures[key]), json.dumps(extra)[:200]))


def pytest_figure(test: str, key: str, rows: list[Row], what: str) -> bool:
    """Runs `test` (it prints {"KEY": ...}); its figure, False when it printed none."""
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test]
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S, check=False
        )
        output = done.stdout
        summary = (output.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        output, summary = "", f"timed out after {PYTEST_TIMEOUT_S} s"
    value: bool | None = None
    for line in output.splitlines():
        if line.startswith("{") and f'"{key}"' in line:
            try:
                found = json.loads(line).get(key)
            except json.JSONDecodeError:
                continue
            value = found if isinstance(found, bool) else None
    took_s = time.monotonic() - began
    rows.append((what, json.dumps(value), f"{test}: {summary} ({took_s:.0f} s)"))
    return bool(value)


def table(rows: list[Row]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(
        f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}"
        for a, b, c in [("scenario", "figure", "note"), *rows]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-slow", action="store_true", help="no DeepSpeed scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "bench/faults.py needs root (network namespaces, tc, mount): run it with sudo",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("GANTRY_WARM_OPS", "0")
    work = Path(tempfile.mkdtemp(prefix="gantry-faults-"))
    rows: list[Row] = []
    figures: dict[str, Any] = {
        "partition_to_all_stopped_s": None,
        "partition_steps_lost": None,
        "slow_link_network_finding": None,
        "loss5_job_ok": None,
        "disk_full_checkpoint_intact": False,
        "skew_events_ordered": False,
    }
    try:
        try:
            bed = start_bed(work / "bed")
        except NetbedError as exc:
            print(f"bench/faults.py: the test bed did not come up: {exc}", file=sys.stderr)
            return 1
        try:
            bed_scenarios(bed, work, rows, figures)
            if args.skip_slow:
                rows.append(("slow and lossy links", "null", "--skip-slow"))
            else:
                link_scenarios(bed, work, rows, figures)
        finally:
            teardown(bed)
        if args.skip_slow:
            rows.append(("disk full: checkpoint intact", "false", "--skip-slow: not run"))
        else:
            figures["disk_full_checkpoint_intact"] = pytest_figure(
                "tests/test_fault_disk_full.py",
                "disk_full_checkpoint_intact",
                rows,
                "disk full: checkpoint intact",
            )
        figures["skew_events_ordered"] = pytest_figure(
            "tests/test_fault_clock_skew.py",
            "skew_events_ordered",
            rows,
            "clock skew: events ordered",
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
