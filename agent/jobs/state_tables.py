"""What every state table of the jobs room is made of: named edges, each leaving from
some states for one, and the error an edge applied from elsewhere raises. The tables are
the node's (agent.jobs.node.rank_states) and the leader's (agent.jobs.leader.states)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Edge", "IllegalTransition"]


@dataclass(frozen=True)
class Edge:
    sources: frozenset[int]
    target: int

    @classmethod
    def of(cls, sources: Iterable[int], target: int) -> Edge:
        """An edge leaving from any of ``sources`` for ``target``."""
        return cls(frozenset(sources), target)


class IllegalTransition(ValueError):
    """An edge was applied to a state it does not leave from."""

    def __init__(self, machine: str, state: str, edge: str, allowed: Iterable[str]) -> None:
        self.state = state
        self.edge = edge
        allowed_s = ", ".join(sorted(allowed)) or "nowhere"
        super().__init__(
            f"{machine} edge {edge!r} is not allowed from {state} (it leaves from {allowed_s})"
        )
