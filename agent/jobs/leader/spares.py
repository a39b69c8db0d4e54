"""Hot spares, pure: which spare runs which node's ranks, by the operator's hand
(``--replace NODE=SPARE``) or the leader's own decision after a node failed.

A replacement is a property of the attempts, as exclusion is: each attempt records the nodes
of the spec whose ranks ran on a spare (``Attempt.replaced_nodes``: node -> spare), and every
later attempt inherits the last one's. The spare runs the same ranks (same RANK numbers,
same local ranks), so the world size, the global batch and the checkpoint stay as they are.
``--replace SPARE=NODE`` gives the ranks back to the node they were the spec's for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gantry.v1 import job_pb2
from gantry.v1.xid_catalog import xid_info_for_line

from agent.jobs.leader.errors import JobError

__all__ = [
    "REPEATED_FAILURES",
    "Replacement",
    "check_replace",
    "fatal_alerts",
    "free_spares",
    "nodes_to_lead",
    "placed",
    "replacement_for",
    "running_nodes",
    "swaps_after",
]

EK = job_pb2.JobEventKind
JS = job_pb2.JobState
REPEATED_FAILURES = 2  # attempts in a row failed on one node's ranks: it is replaced
# How the leader words an attempt's first failure (agent.jobs.leader.peer_events.Tally).
_FAILED_ON = re.compile(r"^rank \d+ on (\S+) (?:failed|was killed)")


@dataclass(frozen=True)
class Replacement:
    """The leader's replacements for the next attempt: ``replace`` (running node -> spare,
    what ``swaps_after`` applies), the ``swaps`` they make in all, and why."""

    replace: dict[str, str]
    swaps: dict[str, str] = field(default_factory=dict)
    why: str = ""


def running_nodes(spec: job_pb2.JobSpec, swaps: Mapping[str, str]) -> list[str]:
    """The nodes that run the spec's ranks, in hostfile order, each spec node or its spare."""
    return [swaps.get(n.node, n.node) for n in spec.nodes]


def free_spares(spec: job_pb2.JobSpec, swaps: Mapping[str, str]) -> list[str]:
    """The spec's spares that run no ranks now, in the spec's order."""
    used = set(swaps.values())
    return [s for s in spec.spares if s not in used]


def nodes_to_lead(spec: job_pb2.JobSpec) -> set[str]:
    """Every agent a job's leader talks to: its nodes and its spares."""
    return {n.node for n in spec.nodes} | set(spec.spares)


def placed(
    layout: Sequence[tuple[str, list[int]]], swaps: Mapping[str, str]
) -> list[tuple[str, list[int]]]:
    """A rank layout of spec nodes with each replaced node's ranks on its spare."""
    return [(swaps.get(node, node), ranks) for node, ranks in layout]


def swaps_after(previous: Mapping[str, str], replace: Mapping[str, str]) -> dict[str, str]:
    """The last attempt's replacements with the operator's ``replace`` (running node ->
    new node) applied: a spec node's ranks to a spare, or a spare's back to their node."""
    swaps = dict(previous)
    standing_in = {spare: node for node, spare in previous.items()}
    for running, new in replace.items():
        node = standing_in.get(running, running)
        if new == node:
            swaps.pop(node, None)
        else:
            swaps[node] = new
    return swaps


def check_replace(
    name: str,
    spec: job_pb2.JobSpec,
    replace: Mapping[str, str],
    previous: Mapping[str, str],
    excluded: Sequence[str],
) -> dict[str, str]:
    """The replacements of the next attempt after the operator's ``replace``; raises
    JobError (one line) naming what is wrong, the job untouched."""
    running = running_nodes(spec, previous)
    standing_in = {spare: node for node, spare in previous.items()}
    spares = ", ".join(spec.spares) or "none"
    taken: dict[str, str] = {}
    for node, new in replace.items():
        if node not in running:
            now = ", ".join(running)
            raise JobError(f"node {node} is not in job {name} (its ranks run on {now})")
        owner = standing_in.get(node, node)
        if owner in excluded:
            raise JobError(
                f"node {owner} is excluded from job {name}; --include it before replacing it"
            )
        if new == node:
            raise JobError(f"--replace {node}={new} names the same node twice")
        if new == owner:
            continue  # the spare gives the ranks back to their own node
        if new not in spec.spares:
            raise JobError(
                f"node {new} is not a spare of job {name} (spares: {spares});"
                " list it under spares: in the job's spec"
            )
        busy = next((n for n, s in previous.items() if s == new and n not in replace), None)
        if busy is None and new in taken:
            busy = taken[new]
        if busy is not None:
            raise JobError(f"spare {new} is busy with job {name}: it runs {busy}'s ranks")
        taken[new] = owner
    return swaps_after(previous, replace)


def fatal_alerts(events: Sequence[job_pb2.JobEvent], attempt: int) -> dict[str, str]:
    """The nodes whose GPU an alert of ``attempt`` says is unusable (a fatal XID, a GPU the
    driver lost), each with the alert's cause."""
    found: dict[str, str] = {}
    for event in events:
        if event.kind != EK.JOB_EVENT_KIND_ALERT or event.attempt != attempt:
            continue
        alert = event.details.get("alert", "")
        code = event.details.get("xid", "")
        # The line decides where it says more than the code (NVLink5's Fatal/Nonfatal, the
        # recovery Xid 154 names), as the node's kernel events read it.
        line = event.details.get("line", "")
        fatal = alert == "gpu_missing" or (
            alert == "xid" and code.isdigit() and xid_info_for_line(int(code), line).fatal
        )
        if fatal and event.node and event.node not in found:
            found[event.node] = event.details.get("cause") or event.message
    return found


def _failed_on(attempt: job_pb2.Attempt) -> str:
    """The node an attempt failed on, as its first failure names it ("" for none)."""
    if attempt.state != JS.JOB_STATE_FAILED:
        return ""
    match = _FAILED_ON.match(attempt.reason)
    return match.group(1) if match else ""


def replacement_for(
    spec: job_pb2.JobSpec,
    attempts: Sequence[job_pb2.Attempt],
    unhealthy: Mapping[str, str],
) -> Replacement | None:
    """The leader's decision after a failed attempt: a free spare for each node of the last
    attempt that is ``unhealthy`` (node -> why: unreachable, a failed health check, a fatal
    XID) or failed the last ``REPEATED_FAILURES`` attempts in a row; None when no node needs
    one or no spare is free (the job restarts as it would without spares)."""
    if not spec.spares or not attempts:
        return None
    last = attempts[-1]
    previous = dict(last.replaced_nodes)
    excluded = set(last.excluded_nodes)
    standing_in = {spare: node for node, spare in previous.items()}
    recent = [_failed_on(a) for a in attempts[-REPEATED_FAILURES:]]
    repeated = recent[0] if len(recent) == REPEATED_FAILURES and len(set(recent)) == 1 else ""
    reasons: dict[str, str] = {}
    for node in running_nodes(spec, previous):
        if standing_in.get(node, node) in excluded:
            continue
        if node in unhealthy:
            reasons[node] = unhealthy[node]
        elif node == repeated:
            reasons[node] = f"failed {REPEATED_FAILURES} attempts in a row ({last.reason})"
    if not reasons:
        return None
    free = [s for s in free_spares(spec, previous) if s not in unhealthy]
    replace: dict[str, str] = {}
    whys = []
    for node, why in reasons.items():
        if not free:
            break
        spare = free.pop(0)
        replace[node] = spare
        whys.append(f"{node} {why}")
    if not replace:
        return None
    return Replacement(replace, swaps_after(previous, replace), "; ".join(whys))
