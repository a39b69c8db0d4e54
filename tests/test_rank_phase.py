"""How the console says where a rank is on its way to training (console/model/rank_phase.py), in
the job screen's rank rows and in `gantry job`."""

from __future__ import annotations

from gantry.v1 import job_pb2

from console.model.job_rows import rank_cells
from console.model.rank_phase import LABELS, SHORT, starting_phase
from console.ui.widgets.rank_table import COLUMN_WIDTHS

P = job_pb2.RankPhase


def rank(phase: int, since: float | None, state: int = job_pb2.RANK_STATE_RUNNING) -> job_pb2.Rank:
    r = job_pb2.Rank(rank=1, node="node-b", state=state, phase=phase)  # type: ignore[arg-type]
    if since is not None:
        r.phase_since.FromNanoseconds(int(since * 1e9))
    return r


def test_a_starting_rank_shows_its_phase_and_time() -> None:
    assert starting_phase(rank(P.RANK_PHASE_BUILDING_OPS, 1000.0), 1034.2) == "building ops 34s"
    assert starting_phase(rank(P.RANK_PHASE_JOINING, 1000.0), 1075.0) == "joining 1m15s"
    assert starting_phase(rank(P.RANK_PHASE_IMPORTING, None), 5.0) == "importing"


def test_training_ended_or_unknown_shows_nothing() -> None:
    assert starting_phase(rank(P.RANK_PHASE_TRAINING, 1000.0), 1010.0) == ""
    assert starting_phase(rank(0, None), 1.0) == ""
    failed = rank(P.RANK_PHASE_JOINING, 1000.0, state=job_pb2.RANK_STATE_FAILED)
    assert starting_phase(failed, 1010.0) == ""


def test_every_phase_of_the_contract_has_a_label() -> None:
    named = {v for v in P.values() if v != P.RANK_PHASE_UNSPECIFIED}
    assert set(LABELS) == set(SHORT) == named
    # a phase of under 100 s fits the state column whole
    shown = [label for phase, label in SHORT.items() if phase != P.RANK_PHASE_TRAINING]
    assert max(len(f"{label} 99s") for label in shown) <= COLUMN_WIDTHS["state"]


def test_the_rank_row_shows_the_phase_in_its_state_column() -> None:
    cells = rank_cells(rank(P.RANK_PHASE_LOADING_CHECKPOINT, 100.0), None, False, 103.0)
    assert cells[3] == "ckpt 3s"
    cells = rank_cells(rank(P.RANK_PHASE_BUILDING_OPS, 100.0), None, False, 175.0)
    assert cells[3] == "ops 1m15s"
    trained = rank_cells(rank(P.RANK_PHASE_TRAINING, 100.0), None, False, 103.0)
    assert trained[3] == "running"
    assert rank_cells(rank(P.RANK_PHASE_JOINING, 100.0), None, True, 103.0)[3] == "lost"


def test_a_rank_the_leader_cannot_reach_shows_unknown() -> None:
    silent = rank(P.RANK_PHASE_TRAINING, 100.0)
    silent.unknown_since.FromNanoseconds(int(150 * 1e9))
    assert rank_cells(silent, None, False, 160.0)[3] == "unknown"
    assert rank_cells(silent, None, True, 160.0)[3] == "lost"
