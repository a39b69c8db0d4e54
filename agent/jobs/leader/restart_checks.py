"""What an operator's restart asks for, checked against the job before anything changes:
the nodes it names, the nodes the next attempts go without, and the checkpoint it resumes
from. Reads the file system (checkpoints) but changes nothing.

Exclusion is a property of the attempts: each attempt records the nodes it ran without
(``Attempt.excluded_nodes``, shown by ``gantry job``), and every later attempt, the restart
policy's as the operator's, inherits the last attempt's set; ``--exclude`` adds to it and
``--include`` takes nodes out of it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.checkpoints import latest_checkpoint, resolve_reference
from agent.jobs.leader.batch_keep import batch_for_world
from agent.jobs.leader.errors import JobError

__all__ = ["check_restart_nodes", "resolve_from"]


def check_restart_nodes(
    name: str,
    spec: job_pb2.JobSpec,
    node: str,
    exclude: Sequence[str],
    include: Sequence[str],
    already: Sequence[str],
) -> set[str]:
    """The nodes the next attempt goes without; raises JobError naming what is wrong."""
    nodes = {n.node for n in spec.nodes}
    for bad in [node, *exclude, *include]:
        if bad and bad not in nodes:
            raise JobError(f"node {bad} is not part of job {name} ({', '.join(sorted(nodes))})")
    both = sorted(set(exclude) & set(include))
    if both:
        raise JobError(f"node {both[0]} is both excluded and included; name it once")
    for back in include:
        if back not in already:
            left_out = ", ".join(sorted(already)) or "none"
            raise JobError(
                f"node {back} is not excluded from job {name} (excluded: {left_out});"
                " --include brings back a node an earlier --exclude left out"
            )
    excluded = (set(already) | set(exclude)) - set(include)
    if exclude and excluded >= nodes:
        raise JobError("cannot exclude every node of the job")
    if exclude and latest_checkpoint(spec.checkpoint_dir) is None:
        where = spec.checkpoint_dir or "the job's checkpoint_dir (unset)"
        raise JobError(f"--exclude needs a checkpoint to convert, and {where} has none")
    return excluded


def resolve_from(reference: str, spec: job_pb2.JobSpec) -> Path:
    """The checkpoint ``--from`` names: a tag of checkpoint_dir (``step200``,
    ``checkpoint-200``, a DeepSpeed tag), a path from working_dir, or an absolute path."""
    found = resolve_reference(reference, spec.checkpoint_dir, spec.working_dir)
    if found is None:
        if reference.startswith("/"):
            raise JobError(f"no checkpoint at {reference}", code="not_found")
        searched = [spec.checkpoint_dir] if "/" not in reference else []
        searched += [spec.working_dir]
        where = " or ".join(d for d in searched if d) or "the job's folders (none set)"
        raise JobError(f"no checkpoint {reference} in {where}", code="not_found")
    return found


def restart_told(
    operator: str,
    node: str,
    exclude: Sequence[str],
    include: Sequence[str],
    replace: Mapping[str, str],
    swaps: Mapping[str, str],
    excluded: set[str],
    target: job_pb2.JobSpec,
    spec: job_pb2.JobSpec | None,
    changes: Sequence[str],
) -> tuple[str, dict[str, str]]:
    """The operator restart's event: what it says and its details (who, which nodes it
    goes without or brings back, the spares, the batch on a changed world, the spec)."""
    why = f"operator restart by {operator}{f' (fault on {node})' if node else ''}"
    if exclude:
        why += f" excluding {', '.join(exclude)}"
    if include:
        why += f" including {', '.join(include)} again"
    if replace:
        why += " replacing " + ", ".join(f"{n} with {s}" for n, s in replace.items())
    details = {"operator": operator, "action": "restart"}
    if replace:
        details["replaced"] = ",".join(f"{n}={s}" for n, s in sorted(swaps.items()))
    if exclude or include:
        details["excluded"] = ",".join(sorted(excluded))
        plan = batch_for_world(target, excluded)
        if plan.message:
            why += f"; {plan.message}"
            details.update(plan.details)
    if spec is not None:
        details["changes"] = "; ".join(changes) or "none"
        why += f"; {details['changes']}" if changes else "; spec unchanged"
    return why, details
