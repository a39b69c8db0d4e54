"""The ranks table's coordinates column: each rank's (data, tensor, expert) place in a job
with tensor or expert parallelism. Pure."""

from __future__ import annotations

from gantry.v1 import job_pb2

COORDINATES_COLUMN = "d,t,e"
AFTER_COLUMN = "rank"  # the column shown just after this one


def has_parallelism(spec: job_pb2.JobSpec) -> bool:
    """Whether the job splits ranks by tensor or expert (data parallel alone: no column)."""
    p = spec.parallelism
    return spec.HasField("parallelism") and (p.tensor > 1 or p.expert > 1)


def coordinates_cell(rank: job_pb2.Rank) -> str:
    """ "d,t,e" ("0,1,3"), or "-" until the rank has said where it sits."""
    if not rank.HasField("coordinates"):
        return "-"
    c = rank.coordinates
    return f"{c.data},{c.tensor},{c.expert}"


def with_coordinates(columns: tuple[str, ...]) -> tuple[str, ...]:
    """`columns` with the coordinates column after the rank's."""
    at = columns.index(AFTER_COLUMN) + 1 if AFTER_COLUMN in columns else 0
    return (*columns[:at], COORDINATES_COLUMN, *columns[at:])


def cells_with_coordinates(
    columns: tuple[str, ...], cells: tuple[str, ...], rank: job_pb2.Rank
) -> tuple[str, ...]:
    """A row's `cells` (in `columns`' order) with the coordinates cell where
    `with_coordinates` puts its column."""
    at = columns.index(AFTER_COLUMN) + 1 if AFTER_COLUMN in columns else 0
    return (*cells[:at], coordinates_cell(rank), *cells[at:])
