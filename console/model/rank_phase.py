"""Where a rank is on its way to training, as the console says it. Pure."""

from __future__ import annotations

from gantry.v1 import job_pb2

from console.model.cluster import format_age

_P = job_pb2.RankPhase
LABELS: dict[int, str] = {
    _P.RANK_PHASE_STARTED: "started",
    _P.RANK_PHASE_IMPORTING: "importing",
    _P.RANK_PHASE_BUILDING_OPS: "building ops",
    _P.RANK_PHASE_JOINING: "joining",
    _P.RANK_PHASE_LOADING_CHECKPOINT: "loading ckpt",
    _P.RANK_PHASE_FIRST_STEP: "first step",
    _P.RANK_PHASE_TRAINING: "training",
}
# Short enough for the job screen's state column.
SHORT: dict[int, str] = {
    _P.RANK_PHASE_STARTED: "start",
    _P.RANK_PHASE_IMPORTING: "import",
    _P.RANK_PHASE_BUILDING_OPS: "ops",
    _P.RANK_PHASE_JOINING: "join",
    _P.RANK_PHASE_LOADING_CHECKPOINT: "ckpt",
    _P.RANK_PHASE_FIRST_STEP: "step 1",
    _P.RANK_PHASE_TRAINING: "training",
}
# The rank states in which a start-up phase is worth showing.
_LIVE = (job_pb2.RANK_STATE_STARTING, job_pb2.RANK_STATE_RUNNING)


def phase_label(phase: int) -> str:
    return LABELS.get(phase, "")


def starting_phase(rank: job_pb2.Rank, now: float, short: bool = False) -> str:
    """``building ops 34s`` (``short``: ``ops 34s``) while a live rank is on its way to its
    first step, else ""."""
    if rank.state not in _LIVE or rank.phase in (0, _P.RANK_PHASE_TRAINING):
        return ""
    label = SHORT.get(rank.phase, "") if short else phase_label(rank.phase)
    if not rank.HasField("phase_since"):
        return label
    since = rank.phase_since.ToNanoseconds() / 1e9
    return f"{label} {format_age(max(0.0, now - since))}"
