"""What the job screen's tables show of a job, as text: pure functions, no Textual."""

from __future__ import annotations

from gantry.v1 import job_pb2

from console.model.bars import DASH
from console.model.cluster import ClusterStore, ConnState, format_age
from console.model.figures_text import format_figure
from console.model.jobs import JobView, RankLatest, ts
from console.model.rank_phase import starting_phase

RANK_COLUMNS = (
    "rank",
    "node",
    "gpu",
    "state",
    "step",
    "loss",
    "gnorm",
    "s/step",
    "tok/s",
    "coll%",
    "beat",
)


def state_name(value: int, prefix: str) -> str:
    enum = job_pb2.RankState if prefix == "RANK_STATE_" else job_pb2.JobState
    return enum.Name(value).removeprefix(prefix).lower()


def job_kind(kind: int) -> str:
    return job_pb2.JobEventKind.Name(kind).removeprefix("JOB_EVENT_KIND_").lower().replace("_", " ")


def _fmt(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def rank_cells(
    rank: job_pb2.Rank, latest: RankLatest | None, lost: bool, now: float
) -> tuple[str, ...]:
    """One rank's row of RANK_COLUMNS."""
    m = latest.metrics if latest is not None else None
    phase = starting_phase(rank, now, short=True)
    if lost:
        state = "lost"  # this console cannot reach the node
    elif rank.HasField("unknown_since"):
        state = "unknown"  # the job's leader cannot: the figures are its last word
    else:
        state = phase or state_name(rank.state, "RANK_STATE_")

    def opt(name: str) -> float | None:
        if m is None or not m.HasField(name):
            return None
        return float(getattr(m, name))

    step_time, coll = opt("step_time_s"), opt("collective_time_s")
    coll_pct = 100 * coll / step_time if coll is not None and step_time else None
    beat = ts(rank.last_heartbeat)
    return (
        str(rank.rank),
        rank.node,
        ",".join(str(g) for g in rank.gpu_indices) or DASH,
        state,
        str(m.step) if m is not None else DASH,
        _fmt(opt("loss"), ".4f"),
        _fmt(opt("grad_norm"), ".3f"),
        _fmt(step_time, ".3f"),
        format_figure(opt("tokens_per_s")),
        _fmt(coll_pct, ".0f"),
        format_age(now - beat) if beat else DASH,
    )


def lost_nodes(view: JobView, cluster: ClusterStore) -> set[str]:
    """The job's nodes this console cannot reach (lost, or refusing its token)."""
    lost = set()
    for node in view.nodes():
        if node in cluster and cluster.node(node).state in (
            ConnState.LOST,
            ConnState.UNAUTHORIZED,
        ):
            lost.add(node)
    return lost
