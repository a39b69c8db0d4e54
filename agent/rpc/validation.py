"""What the agent accepts in an RPC request, checked before any servicer sees it.

RPCs can come from anything that holds a token or a certificate, not only from the
console, whose own checks (`console/model/job_spec.py`) are friendlier but cannot be relied on.
One validator per AgentService method, built from the contract's rules (`gantry.v1.rules`:
names, paths, limits, the job spec); each is pure and fails with one `ValidationError` line
naming the field and what to fix. `validate_request` is applied to every call by
`agent.rpc.guard.GuardInterceptor`; `restart_checkpoint` is for the servicer, which holds
the job's stored spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import (
    EVAL_TARGET_KEYS,
    HOST_RE,
    MAX_BATCH_SIZE,
    MAX_NODES,
    MAX_SAMPLES,
    MAX_SEQ,
    MAX_TAIL_LINES,
    MAX_TOKEN_CHARS,
    MAX_WORLD_SIZE,
    STREAMS,
    ValidationError,
    check_address,
    check_at_most,
    check_checkpoint_ref,
    check_checkpoint_syntax,
    check_config_json,
    check_name,
    check_number,
    check_optional_name,
    check_path,
    check_peer_token_file,
    check_seconds,
    check_ssh_destination,
    check_text,
    validate_job_spec,
)

from agent.rpc.validation_loadtest import check_loadtest_spec

__all__ = ["VALIDATORS", "check_spares", "restart_checkpoint", "validate_request"]

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a checkpoint request's id


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_spares(spec: job_pb2.JobSpec) -> None:
    """A spec's spares: agent names, each once, none also a node of the job."""
    if len(spec.spares) > MAX_NODES:
        raise ValidationError(f"spares: more than {MAX_NODES} spares")
    nodes = {n.node for n in spec.nodes}
    seen: set[str] = set()
    for i, spare in enumerate(spec.spares):
        check_name(spare, f"spares[{i}]")
        if spare in nodes:
            raise ValidationError(
                f"spares[{i}]: {spare} is also a node of the job; a spare holds no ranks"
            )
        if spare in seen:
            raise ValidationError(f"spares[{i}]: {spare} is listed twice; list each spare once")
        seen.add(spare)


def _submit(request: agent_service_pb2.SubmitJobRequest) -> None:
    validate_job_spec(request.spec)
    check_spares(request.spec)
    if len(request.peers) > MAX_NODES:
        raise ValidationError(f"peers: more than {MAX_NODES} peers")
    for i, peer in enumerate(request.peers):
        check_name(peer.name, f"peers[{i}].name")
        if peer.address:
            check_address(peer.address, f"peers[{i}].address")
        check_text(peer.token, f"peers[{i}].token", MAX_TOKEN_CHARS)
        if peer.ssh:
            check_ssh_destination(peer.ssh, f"peers[{i}].ssh")
        if peer.token_file:
            check_peer_token_file(peer.token_file, f"peers[{i}].token_file")


def _stop_job(request: agent_service_pb2.StopJobRequest) -> None:
    check_name(request.name, "name")
    check_seconds(request.grace_s, "grace_s")


def _restart_job(request: agent_service_pb2.RestartJobRequest) -> None:
    check_name(request.name, "name")
    check_optional_name(request.node, "node")
    for i, node in enumerate(request.exclude_nodes):
        check_name(node, f"exclude_nodes[{i}]")
    for i, node in enumerate(request.include_nodes):
        check_name(node, f"include_nodes[{i}]")
    for node, spare in sorted(request.replace_nodes.items()):
        check_name(node, "replace_nodes")
        check_name(spare, f"replace_nodes[{node}]")
    check_config_json(request.deepspeed_config_json, "deepspeed_config_json")
    if request.HasField("spec"):
        validate_job_spec(request.spec)  # same name and nodes: the leader's check
        check_spares(request.spec)
        check_checkpoint_ref(request.from_checkpoint, "from_checkpoint", request.spec)
    else:
        # Confined to the stored job's directories by `restart_checkpoint`.
        check_checkpoint_syntax(request.from_checkpoint, "from_checkpoint")


def restart_checkpoint(
    request: agent_service_pb2.RestartJobRequest, stored: job_pb2.JobSpec
) -> None:
    """`from_checkpoint` confined to the stored job's directories (or, when the request
    replaces the spec, to the new spec's, already checked by `validate_request`)."""
    if not request.HasField("spec"):
        check_checkpoint_ref(request.from_checkpoint, "from_checkpoint", stored)


def _job_name(request: Any) -> None:
    check_name(request.name, "name")


def _job_name_field(request: Any) -> None:
    check_name(request.job_name, "job_name")


def _watch_job_events(request: agent_service_pb2.WatchJobEventsRequest) -> None:
    check_optional_name(request.job_name, "job_name")
    check_at_most(request.after_seq, "after_seq", MAX_SEQ)


def _tail_rank_log(request: agent_service_pb2.TailRankLogRequest) -> None:
    check_name(request.job_name, "job_name")
    if request.rank < 0:
        raise ValidationError(f"rank: {request.rank} must be >= 0")
    if request.stream not in STREAMS:
        raise ValidationError(f"stream: {_show(request.stream)} must be 'stdout' or 'stderr'")
    check_at_most(request.tail_lines, "tail_lines", MAX_TAIL_LINES)
    check_at_most(request.from_offset, "from_offset", MAX_SEQ)


def _start_ranks(request: agent_service_pb2.StartRanksRequest) -> None:
    validate_job_spec(request.spec)
    check_optional_name(request.leader, "leader")
    if request.master_addr and not HOST_RE.match(request.master_addr):
        raise ValidationError(f"master_addr: {_show(request.master_addr)} is not a host")
    if request.master_port > 65535:
        raise ValidationError(f"master_port: {request.master_port} is not a port")
    if not 1 <= request.world_size <= MAX_WORLD_SIZE:
        raise ValidationError(f"world_size: {request.world_size} must be 1-{MAX_WORLD_SIZE}")
    if not request.ranks:
        raise ValidationError("ranks: name at least one rank to start")
    if len(set(request.ranks)) != len(request.ranks):
        raise ValidationError("ranks: a rank is listed twice")
    for rank in request.ranks:
        if not 0 <= rank < request.world_size:
            raise ValidationError(f"ranks: {rank} is outside 0-{request.world_size - 1}")
    check_checkpoint_ref(request.resume_from, "resume_from", request.spec)


def _stop_ranks(request: agent_service_pb2.StopRanksRequest) -> None:
    check_name(request.job_name, "job_name")
    check_seconds(request.grace_s, "grace_s")


def _request_checkpoint(request: agent_service_pb2.RequestCheckpointRequest) -> None:
    check_name(request.job_name, "job_name")
    if not REQUEST_ID.fullmatch(request.request_id):
        raise ValidationError(
            "request_id: give 1-64 characters of letters, digits, '.', '_' or '-'"
        )


def _start_task(request: agent_service_pb2.StartTaskRequest) -> None:
    which = request.WhichOneof("spec")
    if which == "eval":
        spec: Any = request.eval
        check_optional_name(spec.job_name, "eval.job_name")
        check_path(spec.model_dir, "eval.model_dir")
        check_path(spec.data_path, "eval.data_path")
        check_at_most(spec.max_samples, "eval.max_samples", MAX_SAMPLES)
        for key in EVAL_TARGET_KEYS:
            if spec.targets.HasField(key):
                check_number(getattr(spec.targets, key), f"eval.targets.{key}")
    elif which == "quantize":
        spec = request.quantize
        check_path(spec.model_dir, "quantize.model_dir")
        check_path(spec.output_dir, "quantize.output_dir")
        check_path(spec.eval_data_path, "quantize.eval_data_path")
        check_at_most(spec.eval_max_samples, "quantize.eval_max_samples", MAX_SAMPLES)
    elif which == "serve":
        spec = request.serve
        check_path(spec.model_dir, "serve.model_dir")
        check_at_most(spec.port, "serve.port", 65535)
        check_at_most(spec.max_batch_size, "serve.max_batch_size", MAX_BATCH_SIZE)
        check_number(spec.max_queue_delay_ms, "serve.max_queue_delay_ms", 60_000)
    elif which == "loadtest":
        check_loadtest_spec(request.loadtest)
    else:
        raise ValidationError("spec: give an eval, quantize or serve spec, or a loadtest spec")


def _task_id(request: Any) -> None:
    check_name(request.task_id, "task_id")


def _stop_task(request: agent_service_pb2.StopTaskRequest) -> None:
    check_name(request.task_id, "task_id")
    check_seconds(request.grace_s, "grace_s")


def _watch_node(request: agent_service_pb2.WatchNodeRequest) -> None:
    check_seconds(request.history_s, "history_s")


def _nothing(request: Any) -> None:
    return None


VALIDATORS: dict[str, Callable[[Any], None]] = {
    "GetNodeInfo": _nothing,
    "WatchNode": _watch_node,
    "SubmitJob": _submit,
    "StopJob": _stop_job,
    "RestartJob": _restart_job,
    "ForgetJob": _job_name,
    "ListJobs": _nothing,
    "DescribeJob": _job_name,
    "WatchJobEvents": _watch_job_events,
    "TailRankLog": _tail_rank_log,
    "ListCheckpoints": _job_name_field,
    "StartRanks": _start_ranks,
    "StopRanks": _stop_ranks,
    "RequestCheckpoint": _request_checkpoint,
    "StartTask": _start_task,
    "StopTask": _stop_task,
    "ListTasks": _nothing,
    "WatchTask": _task_id,
}


def validate_request(method: str, request: object) -> None:
    """Checks one AgentService request (`method` is the bare name, e.g. "SubmitJob").

    Raises ValidationError; a method with no validator here is refused too, so a new RPC
    cannot slip past unchecked.
    """
    validator = VALIDATORS.get(method)
    if validator is None:
        raise ValidationError(f"{method}: the agent has no validator for this call")
    validator(request)
