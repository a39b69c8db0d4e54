"""Which global ranks run where. Pure."""

from __future__ import annotations

from gantry.v1 import job_pb2


def assign_ranks(
    nodes: list[job_pb2.NodeSlots], excluded: set[str]
) -> tuple[list[tuple[str, list[int]]], int]:
    """Global ranks in hostfile order, skipping excluded nodes: [(node, ranks)], world size."""
    layout: list[tuple[str, list[int]]] = []
    next_rank = 0
    for entry in nodes:
        if entry.node in excluded:
            continue
        slots = entry.slots or 1
        layout.append((entry.node, list(range(next_rank, next_rank + slots))))
        next_rank += slots
    return layout, next_rank
