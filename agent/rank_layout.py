"""Which global ranks run where, and which checkpoint an attempt resumes from. Pure."""

from __future__ import annotations

import re
from pathlib import Path

from gantry.v1 import job_pb2

STEP_TAG = re.compile(r"(?:global_)?step(\d+)")


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


def latest_checkpoint(checkpoint_dir: str) -> Path | None:
    """The checkpoint DeepSpeed's `latest` file names, if it exists."""
    if not checkpoint_dir:
        return None
    root = Path(checkpoint_dir)
    try:
        tag = (root / "latest").read_text().strip()
    except OSError:
        return None
    path = root / tag
    return path if tag and path.is_dir() else None


def list_checkpoints(checkpoint_dir: str) -> list[job_pb2.Checkpoint]:
    root = Path(checkpoint_dir) if checkpoint_dir else None
    if root is None or not root.is_dir():
        return []
    latest = latest_checkpoint(checkpoint_dir)
    found = []
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        step = _step_of(path.name)
        files = [p for p in path.rglob("*") if p.is_file()]
        checkpoint = job_pb2.Checkpoint(
            tag=path.name,
            step=step,
            path=str(path),
            size_bytes=sum(p.stat().st_size for p in files),
            latest=latest is not None and path == latest,
            universal=path.name.endswith("_universal"),
        )
        mtime = max((p.stat().st_mtime for p in files), default=path.stat().st_mtime)
        checkpoint.saved.FromNanoseconds(int(mtime * 1e9))
        found.append(checkpoint)
    found.sort(key=lambda c: (c.step, c.tag))
    return found


def _step_of(tag: str) -> int:
    match = STEP_TAG.match(tag)
    return int(match.group(1)) if match else -1
