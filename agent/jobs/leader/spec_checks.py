"""The leader's checks of a job's spec: the contract's rules again (code paths that pass no
RPC guard), a restart's replacement spec, and the peers' tokens scoped to one job."""

from __future__ import annotations

from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.job_tokens import scoped_for
from gantry.v1.rules import ValidationError, validate_job_spec

from agent.jobs.leader.errors import JobError

__all__ = ["check_replacement", "scoped", "validate_spec"]


def _node_list(spec: job_pb2.JobSpec) -> list[tuple[str, int]]:
    return [(n.node, n.slots or 1) for n in spec.nodes]


def check_replacement(current: job_pb2.JobSpec, new: job_pb2.JobSpec) -> None:
    """A restart's new spec: valid, and for the same job on the same nodes."""
    if new.name != current.name:
        raise JobError(
            f"the new spec is for job {new.name or '(unnamed)'}, not {current.name};"
            " a restart keeps the job's name"
        )
    validate_spec(new)
    if _node_list(new) != _node_list(current):
        raise JobError(
            f"the new spec of job {current.name} runs on [{_show_nodes(new)}], not"
            f" [{_show_nodes(current)}]; a restart keeps the job's nodes"
            " (use --exclude to go on without one)"
        )


def _show_nodes(spec: job_pb2.JobSpec) -> str:
    return ", ".join(f"{node} slots={slots}" for node, slots in _node_list(spec)) or "none"


def validate_spec(spec: job_pb2.JobSpec) -> None:
    """The contract's check of a spec (`gantry.v1.rules`), again here: a leader is also
    reached by code paths that pass no RPC guard (recover, restart's new spec)."""
    try:
        validate_job_spec(spec)
    except ValidationError as exc:
        raise JobError(str(exc)) from None


def scoped(peer: agent_service_pb2.PeerAgent, job: str) -> agent_service_pb2.PeerAgent:
    scoped = agent_service_pb2.PeerAgent()
    scoped.CopyFrom(peer)
    scoped.token = scoped_for(peer.token, job)
    return scoped
