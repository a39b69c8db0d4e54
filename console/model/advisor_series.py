"""What the advisor's rules share: each rank's series of metric points (grouped once per
evaluation) and the wording of numbers, times and log lines in the evidence."""

from __future__ import annotations

import math
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter

from console.model.advisor_types import EventNote, MetricPoint


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


_memo = threading.local()  # within shared_grouping: the rules share one grouping of the input


def by_rank(metrics: Sequence[MetricPoint]) -> dict[int, list[MetricPoint]]:
    """Each rank's points in time order (read-only: within `shared_grouping` the rules share it)."""
    cached = getattr(_memo, "by_rank", None)
    if cached is not None and cached[0] is metrics:
        return cached[1]  # type: ignore[no-any-return]
    ranks: dict[int, list[MetricPoint]] = defaultdict(list)
    for point in metrics:
        ranks[point.rank].append(point)
    by_time = attrgetter("time", "step")
    out = {rank: sorted(pts, key=by_time) for rank, pts in ranks.items()}
    if getattr(_memo, "active", False):
        _memo.by_rank = (metrics, out)
    return out


def ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def clip(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_range(points: Sequence[MetricPoint]) -> str:
    steps = [p.step for p in points]
    return f"steps {min(steps)}-{max(steps)}"


@contextmanager
def shared_grouping() -> Iterator[None]:
    """Within it, `by_rank` groups a given input once and hands every rule the same grouping."""
    _memo.active = True
    try:
        yield
    finally:
        _memo.active, _memo.by_rank = False, None


def ranks_text(ranks: Iterable[int], most: int = 8) -> str:
    """ "ranks 0, 3, 4" (sorted; past `most`, "and N more")."""
    ordered = sorted(set(ranks))
    shown = ", ".join(str(r) for r in ordered[:most])
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return f"rank{'s' if len(ordered) != 1 else ''} {shown}{more}"


def nodes_text(nodes: Iterable[str], most: int = 3) -> str:
    ordered = sorted(set(nodes))
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more


# NCCL's transports as its INFO lines name them ("via NET/IB/0/GDRDMA", "via P2P/IPC/read",
# "via SHM/direct/direct", "NVLS multicast"); "uses the Socket network" from the agent's note.
_TRANSPORT_RE = re.compile(r"\b(NET/[A-Za-z]+|P2P/[A-Za-z]+|SHM|NVLS|COLLNET)")
_NETWORK_RE = re.compile(r"uses the (\w+) network")


def note_transport(note: EventNote) -> str | None:
    """The transport an NCCL `transport` or `network` note names ("NET/IB+GDR"), if any."""
    finding = note.details.get("finding")
    if note.kind != "nccl" or finding not in ("transport", "network"):
        return None
    name = note.details.get("transport")
    if not name:
        text = f"{note.message} {note.details.get('line', '')}"
        match = _TRANSPORT_RE.search(text)
        network = _NETWORK_RE.search(text)
        name = match.group(1) if match else (f"NET/{network.group(1)}" if network else None)
    if name is None:
        return None
    gdr = note.details.get("gdr") == "1" or "GDRDMA" in note.details.get("line", "")
    return f"{name}+GDR" if gdr and name.startswith("NET/") else name


def transports(notes: Sequence[EventNote]) -> str:
    """ "NCCL transport: NET/Socket, P2P/IPC (node-a, node-b)" from the NCCL notes, one group
    per set of transports; "" when none was reported."""
    by_node: dict[str, set[str]] = defaultdict(set)
    for note in notes:
        name = note_transport(note)
        if name is not None:
            by_node[note.node].add(name)
    if not by_node:
        return ""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for node, names in by_node.items():
        # The network path first (NET/...), then the intra-node ones.
        groups[tuple(sorted(names, key=lambda n: (not n.startswith("NET/"), n)))].append(node)
    parts = [f"{', '.join(names)} ({nodes_text(nodes)})" for names, nodes in groups.items()]
    return "NCCL transport: " + "; ".join(sorted(parts))
