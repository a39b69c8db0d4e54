"""Slow and lossy links on the test bed (issue 19), as scenarios the tests and bench/faults.py
share: a real two-rank DeepSpeed job (Gantry's trainer, tiny-dense, ZeRO-3, gloo on the CPU)
on two namespaced hosts, one host's link slowed (tc tbf: this kernel has no netem, so the
link is slowed by bandwidth, not by delay) or made lossy (nftables random drop), read
through the console's own CLI (`gantry job/advise/events ... --json`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.rank import demo_data
from tests.deepspeed_env import DEEPSPEED_ENV, ROOT
from tests.netbed.bed import Netbed
from tests.netbed.jobs import Report, cli, job_report, last_attempt, state

NODES = ("node-1", "node-2")
SLOW_NODE = "node-2"
SLOW_RATE = "50mbit"
# A dense model's gradients are all used in its compute (an MoE's idle experts are sent and
# not computed): on the unthrottled veth the collectives stay well under the rule's 20 %.
MODEL = "tiny-dense"
BATCH = 8
MAX_LENGTH = 128
START_TIMEOUT_S = 240  # two ranks importing torch and DeepSpeed on busy cores
COLLECTIVE_TIMEOUT_S = 30
NETWORK_RULE = "network-bound"
WINDOW_STEPS = 20  # Thresholds.collective_window_steps: the network rule's recent window
CLEAR_WAIT_S = 30
LOSS_PCT = 5.0
LOSSY_STEPS = 24
# The lossy job must have ended by then: its steps at a few times their clean pace, plus one
# collective timeout should a collective die of the loss.
LOSSY_BOUND_S = 60 + COLLECTIVE_TIMEOUT_S
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_STOPPED")
_SHARE_RE = re.compile(r"collectives took (\d+)% of step time")


def ds_spec(workdir: Path, name: str, max_steps: int, **extra: Any) -> Path:
    """Gantry's trainer on `NODES`, one rank each; no checkpoint before the last step."""
    demo = workdir / "demo"
    if not (demo / "train.jsonl").exists():
        demo_data.write_demo(demo, n_train=300, n_heldout=5, seed=1)
    out = workdir / name
    args = [
        "--deepspeed_config",
        "examples/ds_config_zero3.json",
        "--model_name_or_path",
        MODEL,
        "--data",
        str(demo / "train.jsonl"),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        str(BATCH),
        "--save_steps",
        str(max_steps + 1),
        "--max_steps",
        str(max_steps),
        "--max_length",
        str(MAX_LENGTH),
        "--seed",
        "1",
    ]
    spec: dict[str, Any] = {
        "name": name,
        "nodes": [f"{n} slots=1" for n in NODES],
        "command": ["python", "-m", "agent.train"],
        "args": args,
        "env": {
            **DEEPSPEED_ENV,
            "OMP_NUM_THREADS": "1",
            "GANTRY_CPU_BF16": "0",
            # No GLOO_SOCKET_IFNAME: the namespaces share the machine's hostname, which
            # resolves to loopback, and the agent sets it from the route to rank 0
            # (agent.jobs.node.route_iface).
        },
        "working_dir": str(ROOT),
        "restart": {"max_restarts": 0, "backoff_s": 0.2},
        "collective_timeout_s": COLLECTIVE_TIMEOUT_S,
        "checkpoint_dir": str(out / "checkpoints"),
    }
    spec.update(extra)
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def launch(bed: Netbed, spec: Path) -> None:
    code, out = cli(["--cluster", str(bed.cluster_file), "launch", str(spec)])
    assert code == 0, out


def stop(bed: Netbed, name: str) -> None:
    cli(["--cluster", str(bed.cluster_file), "stop", name])


def advice(bed: Netbed, name: str) -> list[dict[str, Any]]:
    """`gantry advise NAME --json`'s findings."""
    code, out = cli(["--cluster", str(bed.cluster_file), "advise", name, "--json"])
    assert code == 0, out
    findings: list[dict[str, Any]] = json.loads(out)["findings"]
    return findings


def network_finding(findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((f for f in findings if f["rule"] == NETWORK_RULE), None)


def evidence_share(finding: dict[str, Any]) -> float:
    """The share of step time in collectives the network rule's evidence states."""
    match = _SHARE_RE.search(finding["evidence"])
    assert match, finding["evidence"]
    return int(match.group(1)) / 100


def steps(report: Report) -> list[int]:
    """Each rank's latest step in the last attempt."""
    return [int(r.get("metrics", {}).get("step", 0)) for r in last_attempt(report).get("ranks", [])]


def wait_for(
    bed: Netbed, name: str, ok: Callable[[Report], bool], timeout_s: float, what: str
) -> Report:
    """Polls `gantry job NAME --json` until `ok`; fails early (with its reason) when the job
    ends first."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = job_report(bed, name)
        if ok(report):
            return report
        if state(report) in ENDED:
            raise AssertionError(f"job {name} ended before {what}: {report['job'].get('reason')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {name}: {what} not within {timeout_s:g}s: {report}")
        time.sleep(0.5)


def slow_link_scenario(bed: Netbed, workdir: Path) -> dict[str, Any]:
    """The job runs with SLOW_NODE's link throttled until the advisor's network rule fires,
    then with the link restored for a whole rule window of steps, after which the finding
    must be gone (the rule reads each rank's last WINDOW_STEPS steps of the current attempt:
    it clears within the attempt, no restart needed)."""
    name = "slow-link"
    slow = bed.host(SLOW_NODE)
    out: dict[str, Any] = {"slow_link_network_finding": False, "collective_share": 0.0}
    bed.throttle(slow, SLOW_RATE, max_s=START_TIMEOUT_S + 120)
    try:
        launch(bed, ds_spec(workdir, name, max_steps=400))
        wait_for(bed, name, lambda r: min(steps(r), default=0) >= 8, START_TIMEOUT_S, "step 8")
        deadline = time.monotonic() + 60
        finding = network_finding(advice(bed, name))
        while finding is None and time.monotonic() < deadline:
            time.sleep(1)
            finding = network_finding(advice(bed, name))
        out["throttled_finding"] = finding
        if finding is not None:
            out["collective_share"] = evidence_share(finding)
        bed.unthrottle(slow)
        at = max(steps(job_report(bed, name)))
        # Every rank's whole window after the link came back.
        wait_for(
            bed,
            name,
            lambda r: min(steps(r), default=0) > at + WINDOW_STEPS,
            120,
            f"{WINDOW_STEPS} steps past the unthrottle",
        )
        # The window slides on: a noisy step on these shared cores may hold it over the
        # threshold a moment longer.
        deadline = time.monotonic() + CLEAR_WAIT_S
        after = network_finding(advice(bed, name))
        while after is not None and time.monotonic() < deadline:
            time.sleep(1)
            after = network_finding(advice(bed, name))
        out["restored_finding"] = after
        out["cleared_at_step"] = max(steps(job_report(bed, name)))
        out["unthrottled_at_step"] = at
        out["slow_link_network_finding"] = finding is not None and after is None
    finally:
        bed.unthrottle(slow)
        stop(bed, name)
    return out


def rank_step(report: Report, rank: int) -> int:
    """The latest step the leader holds for `rank` (fed by its node's event stream)."""
    for r in last_attempt(report).get("ranks", []):
        if int(r.get("rank", 0)) == rank:
            return int(r.get("metrics", {}).get("step", 0))
    return 0


def lossy_link_scenario(bed: Netbed, workdir: Path) -> dict[str, Any]:
    """The job runs its steps with LOSS_PCT % of SLOW_NODE's packets dropped each way; the
    console keeps asking the leader (`gantry job NAME --json`) throughout. The job must end
    (succeed, or fail with a reason) within its own bound, the leader's figures for the lossy
    node's rank must keep advancing, and once the loss is gone every node answers."""
    name = "lossy-link"
    lossy = bed.host(SLOW_NODE)
    max_steps = LOSSY_STEPS
    out: dict[str, Any] = {"loss5_job_ok": False, "loss_pct": LOSS_PCT}
    launch(bed, ds_spec(workdir, name, max_steps=max_steps))
    try:
        wait_for(bed, name, lambda r: min(steps(r), default=0) >= 2, START_TIMEOUT_S, "step 2")
        bed.drop(lossy, LOSS_PCT, max_s=LOSSY_BOUND_S + 30)
        dropped_at = time.monotonic()
        answers = failures = 0
        seen: list[int] = []  # the lossy rank's step, as the leader holds it, at each answer
        report: Report = {}
        while time.monotonic() - dropped_at < LOSSY_BOUND_S:
            try:
                report = job_report(bed, name)
            except AssertionError:
                failures += 1
            else:
                answers += 1
                seen.append(rank_step(report, 1))
                if state(report) in ENDED:
                    break
            time.sleep(0.5)
        out["ended_s"] = round(time.monotonic() - dropped_at, 1)
        out["dropped_packets"] = bed.dropped_packets(lossy)
        bed.undrop(lossy)
        out.update(job_answers=answers, job_failures=failures, lossy_rank_steps=seen)
        out["state"] = state(report) if report else "unanswered"
        out["reason"] = report.get("job", {}).get("reason", "") if report else ""
        out["final_steps"] = steps(report) if report else []
        code, _ = cli(["--cluster", str(bed.cluster_file), "status", "--json"])
        out["all_nodes_live_after"] = code == 0
        succeeded = out["state"] == "JOB_STATE_SUCCEEDED" and out["final_steps"] == [max_steps] * 2
        diagnosed = out["state"] == "JOB_STATE_FAILED" and bool(out["reason"])
        out["loss5_job_ok"] = succeeded or diagnosed
    finally:
        bed.undrop(lossy)
        stop(bed, name)
    return out
