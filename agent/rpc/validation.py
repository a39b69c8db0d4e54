"""What the agent accepts in an RPC request, checked before any servicer sees it.
(Over 400 lines: one check per request field of the whole contract, in one place.)

RPCs can come from anything that holds a token or a certificate, not only from the
console, whose own checks (`console/model/job_spec.py`) are friendlier but cannot be relied on.
Every check here is pure (no file system, no clock) and fails with one `ValidationError`
line naming the field and what to fix. `validate_request` is applied to every call by
`agent.rpc.guard.GuardInterceptor`; the other functions are for callers that hold more
context (the job's stored spec, for a checkpoint to restart from).

Paths for checkpoints are confined to the job's directories: its `working_dir` and its
`checkpoint_dir`. A checkpoint is named by a tag (one path component), by a relative path
without `..` (seen from working_dir, as the ranks see it), or by an absolute path without
`..` inside one of those two directories.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

from gantry.v1 import agent_service_pb2, job_pb2

from agent.jobs.resume_args import spec_args_resume

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
HOST_RE = re.compile(r"[A-Za-z0-9._:\[\]%-]{1,253}\Z")
# [user@]host[:port] as a hostfile names a node; never starting with "-" (an option).
SSH_DESTINATION_RE = re.compile(
    r"([A-Za-z0-9._][A-Za-z0-9._-]{0,63}@)?[A-Za-z0-9._:\[\]%][A-Za-z0-9._:\[\]%-]{0,252}\Z"
)
# A command-line flag as a job's restart.resume_flag names it: "--resume_from_checkpoint",
# "--load", or "--resume=" for one "--resume=PATH" word.
FLAG_RE = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}=?\Z")
STREAMS = ("", "stdout", "stderr")

MAX_NODES = 4096
MAX_SLOTS = 1024
MAX_WORDS = 4096  # command + args
MAX_WORD_CHARS = 64 * 1024
MAX_ENV = 1024
MAX_ENV_VALUE_CHARS = 64 * 1024
MAX_PATH_CHARS = 4096
MAX_TEXT_CHARS = 256
MAX_TOKEN_CHARS = 512
MAX_CONFIG_JSON_BYTES = 1 << 20
MAX_SECONDS = 1e12  # as the console's job spec parser allows
MAX_NUMBER = 1e12
MAX_WORLD_SIZE = MAX_NODES * MAX_SLOTS
MAX_TAIL_LINES = 100_000  # the console's log screen keeps (and asks for) this many
MAX_SAMPLES = 10_000_000
MAX_BATCH_SIZE = 4096
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER; also the largest file offset
RESERVED_ENV = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
)


class ValidationError(ValueError):
    """A request the agent refuses; the message is one line naming the field."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- scalar checks -------------------------------------------------------------------------


def check_name(value: str, field: str) -> str:
    """A job, node or task name: 1-63 of ``[a-z0-9-]``, starting with a letter or digit."""
    if not NAME_RE.match(value):
        raise ValidationError(
            f"{field}: {_show(value)} must be 1-63 lower-case letters, digits and '-', "
            "starting with a letter or digit"
        )
    return value


def check_optional_name(value: str, field: str) -> str:
    return value if not value else check_name(value, field)


def check_text(value: str, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    if "\x00" in value:
        raise ValidationError(f"{field}: must not contain a NUL character")
    if len(value) > limit:
        raise ValidationError(f"{field}: longer than {limit} characters ({len(value)})")
    return value


def _check_range(value: float, field: str, limit: float, what: str) -> float:
    if math.isnan(value) or value < 0:
        raise ValidationError(f"{field}: {_show(value)} must be {what} >= 0")
    if value > limit:
        raise ValidationError(f"{field}: {_show(value)} is too large (at most {limit:g})")
    return value


def check_seconds(value: float, field: str, limit: float = MAX_SECONDS) -> float:
    return _check_range(value, field, limit, "a number of seconds")


def check_number(value: float, field: str, limit: float = MAX_NUMBER) -> float:
    return _check_range(value, field, limit, "a number")


def check_at_most(value: int, field: str, limit: int) -> int:
    if value > limit:
        raise ValidationError(f"{field}: {value} is too large (at most {limit})")
    return value


def check_address(value: str, field: str) -> str:
    """HOST:PORT as the cluster file holds it."""
    check_text(value, field)
    host, sep, port = value.rpartition(":")
    if not sep or not HOST_RE.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"{field}: {_show(value)} is not HOST:PORT")
    return value


def check_ssh_destination(value: str, field: str) -> str:
    """[user@]host[:port], as `gantry up` names a node for SSH."""
    check_text(value, field)
    if not SSH_DESTINATION_RE.match(value):
        raise ValidationError(f"{field}: {_show(value)} is not an SSH destination [user@]host")
    return value


def check_peer_token_file(value: str, field: str) -> str:
    """An agent's token file on its node (DATA_DIR/token): the leader reads it over SSH,
    so nothing but a plain path from / or ~/ to a file named `token`."""
    check_path(value, field)
    rooted = value.startswith(("/", "~/"))
    if not rooted or has_dot_dot(value) or posixpath.basename(value) != "token":
        raise ValidationError(f"{field}: {_show(value)} is not a path to a token file")
    return value


# -- paths ---------------------------------------------------------------------------------


def check_path(value: str, field: str) -> str:
    """Any path on the node: text without NUL, of bounded length."""
    return check_text(value, field, MAX_PATH_CHARS)


def has_dot_dot(path: str) -> bool:
    return ".." in path.split("/")


def check_absolute_dir(value: str, field: str) -> str:
    """Empty, or an absolute path written plainly: no `..`, `.` or empty components."""
    check_path(value, field)
    if not value:
        return value
    if not value.startswith("/"):
        raise ValidationError(f"{field}: {_show(value)} must be an absolute path")
    if has_dot_dot(value):
        raise ValidationError(f"{field}: {_show(value)} must not contain '..'")
    if posixpath.normpath(value) != value.rstrip("/") or value == "/":
        hint = "not the root" if value == "/" else f"write {posixpath.normpath(value)!r}"
        raise ValidationError(f"{field}: {_show(value)} is not a plain path; {hint}")
    return value


def is_within(path: str, root: str) -> bool:
    """`path` is `root` or below it (both absolute and plain, compared as written)."""
    if not root:
        return False
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def check_checkpoint_syntax(value: str, field: str) -> str:
    """A checkpoint reference as written: no `..`, `~`, control characters or stray spaces."""
    check_path(value, field)
    if value in ("", "latest"):
        return value
    if any(ord(c) < 32 for c in value) or value != value.strip():
        raise ValidationError(f"{field}: {_show(value)} has stray spaces or control characters")
    if has_dot_dot(value):
        raise ValidationError(
            f"{field}: {_show(value)} must not contain '..'; name a checkpoint of this job"
        )
    if value.startswith("~"):
        raise ValidationError(f"{field}: {_show(value)}: '~' is not expanded; give the path")
    return value


def check_checkpoint_ref(value: str, field: str, spec: job_pb2.JobSpec) -> str:
    """A checkpoint to resume from, confined to the job's working_dir or checkpoint_dir,
    or to the folder of the checkpoint the job's own args resume from (continual training
    from another job's checkpoint, and its universal conversion beside it).

    Accepted: "" and "latest"; a tag or a relative path without `..` (the ranks see it
    from working_dir); an absolute path without `..` inside one of those folders.
    """
    check_checkpoint_syntax(value, field)
    if not value.startswith("/"):
        return value
    plain = posixpath.normpath(value)
    roots = [r for r in (spec.working_dir, spec.checkpoint_dir) if r]
    given = spec_args_resume(spec)
    if given and given.startswith("/") and ".." not in given.split("/"):
        roots.append(posixpath.dirname(posixpath.normpath(given)))
    if not any(is_within(plain, posixpath.normpath(r)) for r in roots):
        where = " or ".join(roots) or "the job's working_dir (unset)"
        raise ValidationError(f"{field}: {_show(value)} is outside the job's directories ({where})")
    return value


# -- messages ------------------------------------------------------------------------------


def _words(values: Iterable[str], field: str) -> int:
    count = 0
    for i, word in enumerate(values):
        check_text(word, f"{field}[{i}]", MAX_WORD_CHARS)
        count += 1
    return count


def validate_job_spec(spec: job_pb2.JobSpec, field: str = "spec") -> None:
    """A job spec as an agent receives it (working_dir and checkpoint_dir absolute)."""
    check_name(spec.name, f"{field}.name")
    if not spec.nodes:
        raise ValidationError(f"{field}.nodes: name at least one node")
    if len(spec.nodes) > MAX_NODES:
        raise ValidationError(f"{field}.nodes: more than {MAX_NODES} nodes")
    seen: set[str] = set()
    for i, entry in enumerate(spec.nodes):
        check_name(entry.node, f"{field}.nodes[{i}].node")
        if entry.node in seen:
            raise ValidationError(f"{field}.nodes[{i}]: node {entry.node} is listed twice")
        seen.add(entry.node)
        if not 1 <= entry.slots <= MAX_SLOTS:
            raise ValidationError(
                f"{field}.nodes[{i}].slots: {entry.slots} must be 1-{MAX_SLOTS} for {entry.node}"
            )
    if not spec.command or not spec.command[0]:
        raise ValidationError(f"{field}.command: give the program to run")
    words = _words(spec.command, f"{field}.command") + _words(spec.args, f"{field}.args")
    if words > MAX_WORDS:
        raise ValidationError(f"{field}: command and args hold over {MAX_WORDS} words")
    if len(spec.env) > MAX_ENV:
        raise ValidationError(f"{field}.env: more than {MAX_ENV} variables")
    for key, value in spec.env.items():
        if not ENV_NAME_RE.match(key):
            raise ValidationError(f"{field}.env: {_show(key)} is not a valid variable name")
        if key in RESERVED_ENV:
            raise ValidationError(f"{field}.env.{key}: is set by the agent for each rank")
        check_text(value, f"{field}.env.{key}", MAX_ENV_VALUE_CHARS)
    check_absolute_dir(spec.working_dir, f"{field}.working_dir")
    check_absolute_dir(spec.checkpoint_dir, f"{field}.checkpoint_dir")
    check_seconds(spec.hang_timeout_s, f"{field}.hang_timeout_s")
    check_seconds(spec.collective_timeout_s, f"{field}.collective_timeout_s")
    check_seconds(spec.restart.backoff_s, f"{field}.restart.backoff_s")
    check_checkpoint_ref(spec.restart.resume, f"{field}.restart.resume", spec)
    if spec.restart.resume_flag and not FLAG_RE.match(spec.restart.resume_flag):
        raise ValidationError(
            f"{field}.restart.resume_flag: {_show(spec.restart.resume_flag)} is not a flag"
            " (e.g. --resume_from_checkpoint, or --resume= for one --resume=PATH word)"
        )
    if len(spec.deepspeed_config_json.encode("utf-8")) > MAX_CONFIG_JSON_BYTES:
        raise ValidationError(
            f"{field}.deepspeed_config_json: larger than {MAX_CONFIG_JSON_BYTES >> 20} MiB"
        )
    check_number(spec.cost.price_per_gpu_hour, f"{field}.cost.price_per_gpu_hour")
    check_text(spec.cost.instance_type, f"{field}.cost.instance_type")
    check_text(spec.cost.pricing, f"{field}.cost.pricing")
    targets = spec.eval_targets
    for key in ("bleu4_min", "rouge_l_min", "ttft_ms_max", "tokens_per_s_min"):
        if targets.HasField(key):
            check_number(getattr(targets, key), f"{field}.eval_targets.{key}")


def _submit(request: agent_service_pb2.SubmitJobRequest) -> None:
    validate_job_spec(request.spec)
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
    if len(request.deepspeed_config_json.encode("utf-8")) > MAX_CONFIG_JSON_BYTES:
        raise ValidationError(
            f"deepspeed_config_json: larger than {MAX_CONFIG_JSON_BYTES >> 20} MiB"
        )
    if request.HasField("spec"):
        validate_job_spec(request.spec)  # same name and nodes: the leader's check
    if request.HasField("spec"):
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


def _start_task(request: agent_service_pb2.StartTaskRequest) -> None:
    which = request.WhichOneof("spec")
    if which == "eval":
        spec: Any = request.eval
        check_optional_name(spec.job_name, "eval.job_name")
        check_path(spec.model_dir, "eval.model_dir")
        check_path(spec.data_path, "eval.data_path")
        check_at_most(spec.max_samples, "eval.max_samples", MAX_SAMPLES)
        for key in ("bleu4_min", "rouge_l_min", "ttft_ms_max", "tokens_per_s_min"):
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
    else:
        raise ValidationError("spec: give an eval, quantize or serve spec")


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
    "ListJobs": _nothing,
    "DescribeJob": _job_name,
    "WatchJobEvents": _watch_job_events,
    "TailRankLog": _tail_rank_log,
    "ListCheckpoints": _job_name_field,
    "StartRanks": _start_ranks,
    "StopRanks": _stop_ranks,
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
