# ruff: noqa: E501  (the tables of refusals read best one case a line)
"""Hot spares, pure (agent.jobs.leader.spares): the operator's --replace checked and
applied, and the leader's own decision after a failed attempt."""

from __future__ import annotations

import pytest
from gantry.v1 import job_pb2

from agent.jobs.leader.errors import JobError
from agent.jobs.leader.rank_layout import assign_ranks
from agent.jobs.leader.spares import (
    check_replace,
    fatal_alerts,
    free_spares,
    nodes_to_lead,
    placed,
    replacement_for,
    swaps_after,
)

JS = job_pb2.JobState
EK = job_pb2.JobEventKind


def spec(spares: tuple[str, ...] = ("node-c", "node-d")) -> job_pb2.JobSpec:
    out = job_pb2.JobSpec(name="moe", spares=list(spares))
    out.nodes.add(node="node-a", slots=2)
    out.nodes.add(node="node-b", slots=2)
    return out


def failed(number: int, node: str, swaps: dict[str, str] | None = None) -> job_pb2.Attempt:
    return job_pb2.Attempt(
        number=number,
        state=JS.JOB_STATE_FAILED,
        reason=f"rank 2 on {node} failed: exit code 1",
        replaced_nodes=swaps or {},
    )


def test_a_spare_runs_the_same_ranks_at_the_same_world_size() -> None:
    layout, world = assign_ranks(list(spec().nodes), set())
    assert placed(layout, {"node-b": "node-c"}) == [("node-a", [0, 1]), ("node-c", [2, 3])]
    assert world == 4
    assert nodes_to_lead(spec()) == {"node-a", "node-b", "node-c", "node-d"}


def test_replace_then_give_the_ranks_back() -> None:
    swaps = check_replace("moe", spec(), {"node-b": "node-c"}, {}, [])
    assert swaps == {"node-b": "node-c"}
    assert free_spares(spec(), swaps) == ["node-d"]
    # Later attempts keep it; the spare's name is what runs now, and naming the node
    # it stands in for gives the ranks back.
    assert check_replace("moe", spec(), {"node-c": "node-b"}, swaps, []) == {}
    # ... or moves them on to another spare.
    assert check_replace("moe", spec(), {"node-c": "node-d"}, swaps, []) == {"node-b": "node-d"}
    assert swaps_after(swaps, {}) == swaps


@pytest.mark.parametrize(
    ("replace", "swaps", "excluded", "said"),
    [
        ({"node-b": "node-x"}, {}, [], "node node-x is not a spare of job moe (spares: node-c, node-d)"),
        ({"node-b": "node-a"}, {}, [], "node node-a is not a spare of job moe"),
        ({"node-z": "node-c"}, {}, [], "node node-z is not in job moe (its ranks run on node-a, node-b)"),
        ({"node-b": "node-c"}, {"node-b": "node-c"}, [], "node node-b is not in job moe"),
        ({"node-a": "node-c"}, {"node-b": "node-c"}, [], "spare node-c is busy with job moe: it runs node-b's ranks"),
        ({"node-a": "node-c", "node-b": "node-c"}, {}, [], "spare node-c is busy with job moe"),
        ({"node-b": "node-c"}, {}, ["node-b"], "node node-b is excluded from job moe"),
        ({"node-b": "node-b"}, {}, [], "names the same node twice"),
    ],
)  # fmt: skip
def test_refusals_name_the_problem_in_one_line(
    replace: dict[str, str], swaps: dict[str, str], excluded: list[str], said: str
) -> None:
    with pytest.raises(JobError) as refused:
        check_replace("moe", spec(), replace, swaps, excluded)
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_two_failures_in_a_row_on_one_node_swap_in_a_free_spare() -> None:
    assert replacement_for(spec(), [failed(1, "node-b")], {}) is None
    mixed = [failed(1, "node-a"), failed(2, "node-b")]
    assert replacement_for(spec(), mixed, {}) is None
    decided = replacement_for(spec(), [failed(1, "node-b"), failed(2, "node-b")], {})
    assert decided is not None
    assert decided.replace == {"node-b": "node-c"} and decided.swaps == {"node-b": "node-c"}
    assert decided.why == (
        "node-b failed 2 attempts in a row (rank 2 on node-b failed: exit code 1)"
    )


def test_a_spare_that_fails_in_turn_gives_way_to_the_next() -> None:
    on_c = {"node-b": "node-c"}
    history = [failed(3, "node-c", on_c), failed(4, "node-c", on_c)]
    decided = replacement_for(spec(), history, {})
    assert decided is not None and decided.swaps == {"node-b": "node-d"}


def test_a_lost_node_is_replaced_at_once_by_a_spare_that_answers() -> None:
    history = [failed(1, "node-a")]  # its peers fail first when a node's agent dies
    decided = replacement_for(spec(), history, {"node-b": "failed its health check (lost)"})
    assert decided is not None and decided.replace == {"node-b": "node-c"}
    both_lost = {"node-b": "lost", "node-c": "lost"}
    decided = replacement_for(spec(), history, both_lost)
    assert decided is not None and decided.replace == {"node-b": "node-d"}


def test_no_spare_no_replacement() -> None:
    history = [failed(1, "node-b"), failed(2, "node-b")]
    assert replacement_for(spec(spares=()), history, {"node-b": "lost"}) is None
    busy = [failed(1, "node-a", {"node-b": "node-c"}), failed(2, "node-a", {"node-b": "node-c"})]
    decided = replacement_for(spec(spares=("node-c",)), busy, {})
    assert decided is None  # node-a failed twice, but the only spare is busy


def test_a_fatal_xid_marks_its_node_and_a_benign_one_does_not() -> None:
    def alert(node: str, xid: int, attempt: int = 1) -> job_pb2.JobEvent:
        details = {"alert": "xid", "xid": str(xid), "cause": f"Xid {xid} on GPU 0"}
        return job_pb2.JobEvent(
            kind=EK.JOB_EVENT_KIND_ALERT, node=node, attempt=attempt, details=details
        )

    events = [alert("node-a", 13), alert("node-b", 79), alert("node-a", 79, attempt=0)]
    assert fatal_alerts(events, 1) == {"node-b": "Xid 79 on GPU 0"}
    decided = replacement_for(spec(), [failed(1, "node-a")], fatal_alerts(events, 1))
    assert decided is not None and decided.replace == {"node-b": "node-c"}
    assert "Xid 79" in decided.why

    # NVLink5's Xid 149 says Fatal or Nonfatal in its line; Xid 154 names its recovery
    # (https://github.com/leptonai/gpud/pull/1174, NVIDIA/open-gpu-kernel-modules#1134).
    def said(node: str, xid: int, line: str) -> job_pb2.JobEvent:
        event = alert(node, xid)
        event.details["line"] = line
        return event

    link = "NVRM: Xid (PCI:0000:00:00): 149, NETIR_LINK_EVT {} XC0 i0 Link 00 (0x025001c6)"
    none = (
        "NVRM: Xid (PCI:0000:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x0 (None)"
    )
    lines = [
        said("node-a", 149, link.format("Fatal")),
        said("node-b", 149, link.format("Nonfatal")),
    ]
    assert set(fatal_alerts([*lines, said("node-c", 154, none)], 1)) == {"node-a"}
