"""What the advisor's rules share: each rank's series of metric points (grouped once per
evaluation) and the wording of numbers, times and log lines in the evidence."""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter

from console.model.advisor_types import MetricPoint


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
