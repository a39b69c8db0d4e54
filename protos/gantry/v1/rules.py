"""The contract's rules, kept once beside the protos: what a name, a path, a flag and a job spec
may be, and the limits of every field. Pure: no file system, no clock.

The agent applies them to every request (`agent.rpc.validation`), and the console's job spec
parser (`console.model.job_spec`) to what it accepts, with friendlier messages of its own, and
`validate_job_spec` as its last check: what the console accepts, every agent accepts. Each
check fails with one `ValidationError` line naming the field and what to fix.

Paths for checkpoints are confined to the job's directories: its `working_dir` and its
`checkpoint_dir`. A checkpoint is named by a tag (one path component), by a relative path
without `..` (seen from working_dir, as the ranks see it), or by an absolute path without
`..` inside one of those two directories.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterable, Sequence

from gantry.v1 import job_pb2
from gantry.v1.parallelism import spec_layout_problem

# -- syntax --------------------------------------------------------------------------------

# A job, node or task name; it is also a folder name on every node.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
MAX_NAME_CHARS = 63
NAME_RULE = "1-63 lower-case letters, digits and '-', starting with a letter or digit"
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
# Set by the agent for every rank; a value in the spec would be silently overridden.
RESERVED_ENV = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
)
EVAL_TARGET_KEYS = ("bleu4_min", "rouge_l_min", "ttft_ms_max", "tokens_per_s_min")

# -- limits --------------------------------------------------------------------------------

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
MAX_SECONDS = 1e12
MAX_NUMBER = 1e12
MAX_WORLD_SIZE = MAX_NODES * MAX_SLOTS
MAX_TAIL_LINES = 100_000  # the console's log screen keeps (and asks for) this many
MAX_SAMPLES = 10_000_000
MAX_BATCH_SIZE = 4096
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER; also the largest file offset
MAX_KEEP_CHECKPOINTS = 100_000
# Retention when a job spec names a checkpoint_dir and no count (the console's parser sets
# it; in the contract 0 keeps every checkpoint).
DEFAULT_KEEP_LAST = 5

# -- the resume flag -----------------------------------------------------------------------

DEFAULT_FLAG = "--resume_from_checkpoint"
LATEST = "latest"


class ValidationError(ValueError):
    """A value the contract refuses; the message is one line naming the field."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _at(field: str, key: str) -> str:
    """`key` under `field` ("spec.name"), or `key` alone at the top ("name")."""
    return f"{field}.{key}" if field else key


# -- scalar checks -------------------------------------------------------------------------


def is_name(value: str) -> bool:
    """A job, node or task name: 1-63 of ``[a-z0-9-]``, starting with a letter or digit."""
    return NAME_RE.match(value) is not None


def check_name(value: str, field: str) -> str:
    """`value` if it is a job, node or task name (`is_name`)."""
    if not is_name(value):
        raise ValidationError(f"{field}: {_show(value)} must be {NAME_RULE}")
    return value


def check_optional_name(value: str, field: str) -> str:
    """`value` if it is empty or a name."""
    return value if not value else check_name(value, field)


def check_text(value: str, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Text without NUL of at most `limit` characters."""
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
    """A duration: 0 to `limit` seconds."""
    return _check_range(value, field, limit, "a number of seconds")


def check_number(value: float, field: str, limit: float = MAX_NUMBER) -> float:
    """A number from 0 to `limit`."""
    return _check_range(value, field, limit, "a number")


def check_at_most(value: int, field: str, limit: int) -> int:
    """A whole number no larger than `limit`."""
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


def check_config_json(value: str, field: str) -> str:
    """Empty, or a DeepSpeed config: a JSON object of at most 1 MiB."""
    if len(value.encode("utf-8")) > MAX_CONFIG_JSON_BYTES:
        raise ValidationError(f"{field}: larger than {MAX_CONFIG_JSON_BYTES >> 20} MiB")
    if not value:
        return value
    try:
        config = json.loads(value)
    except (ValueError, RecursionError):
        raise ValidationError(f"{field}: is not valid JSON") from None
    if not isinstance(config, dict):
        raise ValidationError(f"{field}: must be a JSON object ({{...}})")
    return value


# -- paths ---------------------------------------------------------------------------------


def check_path(value: str, field: str) -> str:
    """Any path on the node: text without NUL, of bounded length."""
    return check_text(value, field, MAX_PATH_CHARS)


def has_dot_dot(path: str) -> bool:
    """`path` has a `..` component."""
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
    if value in ("", LATEST):
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


def checkpoint_roots(spec: job_pb2.JobSpec) -> list[str]:
    """The folders an absolute checkpoint path may lie in: the job's working_dir and
    checkpoint_dir, and the folder of the checkpoint the job's own args resume from
    (continual training from another job's checkpoint, and its universal conversion)."""
    roots = [r for r in (spec.working_dir, spec.checkpoint_dir) if r]
    given = spec_args_resume(spec)
    if given and given.startswith("/") and not has_dot_dot(given):
        roots.append(posixpath.dirname(posixpath.normpath(given)))
    return roots


def is_checkpoint_within(value: str, spec: job_pb2.JobSpec) -> bool:
    """An absolute checkpoint path lies in one of the job's `checkpoint_roots`."""
    plain = posixpath.normpath(value)
    return any(is_within(plain, posixpath.normpath(r)) for r in checkpoint_roots(spec))


def check_checkpoint_ref(value: str, field: str, spec: job_pb2.JobSpec) -> str:
    """A checkpoint to resume from, confined to the job's `checkpoint_roots`.

    Accepted: "" and "latest"; a tag or a relative path without `..` (the ranks see it
    from working_dir); an absolute path without `..` inside one of those folders.
    """
    check_checkpoint_syntax(value, field)
    if not value.startswith("/") or is_checkpoint_within(value, spec):
        return value
    where = " or ".join(checkpoint_roots(spec)) or "the job's working_dir (unset)"
    raise ValidationError(f"{field}: {_show(value)} is outside the job's directories ({where})")


# -- the resume flag -----------------------------------------------------------------------


def resume_flag(spec: job_pb2.JobSpec) -> tuple[str, bool]:
    """(flag, joined): joined when the value goes in the same word (``FLAG=PATH``)."""
    flag = spec.restart.resume_flag or DEFAULT_FLAG
    if flag.endswith("="):
        return flag[:-1], True
    return flag, False


def args_resume(argv: Sequence[str], flag: str) -> str | None:
    """The value the command line gives ``flag`` (the last one wins, as with argparse)."""
    value: str | None = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def spec_args_resume(spec: job_pb2.JobSpec) -> str | None:
    """What the job's own command and args say to resume from, if anything."""
    flag, _ = resume_flag(spec)
    return args_resume([*spec.command, *spec.args], flag)


# -- the job spec --------------------------------------------------------------------------


def _words(values: Iterable[str], field: str) -> int:
    count = 0
    for i, word in enumerate(values):
        check_text(word, f"{field}[{i}]", MAX_WORD_CHARS)
        count += 1
    return count


def _check_nodes(spec: job_pb2.JobSpec, field: str) -> None:
    if not spec.nodes:
        raise ValidationError(f"{_at(field, 'nodes')}: name at least one node")
    if len(spec.nodes) > MAX_NODES:
        raise ValidationError(f"{_at(field, 'nodes')}: more than {MAX_NODES} nodes")
    seen: set[str] = set()
    for i, entry in enumerate(spec.nodes):
        at = _at(field, f"nodes[{i}]")
        check_name(entry.node, f"{at}.node")
        if entry.node in seen:
            raise ValidationError(f"{at}: node {entry.node} is listed twice")
        seen.add(entry.node)
        if not 1 <= entry.slots <= MAX_SLOTS:
            raise ValidationError(
                f"{at}.slots: {entry.slots} must be 1-{MAX_SLOTS} for {entry.node}"
            )


def _check_env(spec: job_pb2.JobSpec, field: str) -> None:
    if len(spec.env) > MAX_ENV:
        raise ValidationError(f"{_at(field, 'env')}: more than {MAX_ENV} variables")
    for key, value in spec.env.items():
        if not ENV_NAME_RE.match(key):
            raise ValidationError(f"{_at(field, 'env')}: {_show(key)} is not a valid variable name")
        if key in RESERVED_ENV:
            raise ValidationError(f"{_at(field, 'env.' + key)}: is set by the agent for each rank")
        check_text(value, _at(field, f"env.{key}"), MAX_ENV_VALUE_CHARS)


def validate_job_spec(spec: job_pb2.JobSpec, field: str = "spec") -> None:
    """A job spec as an agent receives it (working_dir and checkpoint_dir absolute);
    `field` prefixes each field named in an error ("" for none)."""
    check_name(spec.name, _at(field, "name"))
    _check_nodes(spec, field)
    problem = spec_layout_problem(spec)
    if problem is not None:
        raise ValidationError(f"{_at(field, 'parallelism')}: {problem}")
    if not spec.command or not spec.command[0]:
        raise ValidationError(f"{_at(field, 'command')}: give the program to run")
    words = _words(spec.command, _at(field, "command")) + _words(spec.args, _at(field, "args"))
    if words > MAX_WORDS:
        where = field or "args"  # at the top, the key an operator shortens
        raise ValidationError(f"{where}: command and args hold over {MAX_WORDS} words")
    _check_env(spec, field)
    check_absolute_dir(spec.working_dir, _at(field, "working_dir"))
    check_absolute_dir(spec.checkpoint_dir, _at(field, "checkpoint_dir"))
    check_seconds(spec.hang_timeout_s, _at(field, "hang_timeout_s"))
    check_seconds(spec.collective_timeout_s, _at(field, "collective_timeout_s"))
    check_seconds(spec.restart.backoff_s, _at(field, "restart.backoff_s"))
    check_seconds(spec.preemption.grace_s, _at(field, "preemption.grace_s"))
    check_checkpoint_ref(spec.restart.resume, _at(field, "restart.resume"), spec)
    if spec.restart.resume_flag and not FLAG_RE.match(spec.restart.resume_flag):
        raise ValidationError(
            f"{_at(field, 'restart.resume_flag')}: {_show(spec.restart.resume_flag)} is not a"
            " flag (e.g. --resume_from_checkpoint, or --resume= for one --resume=PATH word)"
        )
    check_config_json(spec.deepspeed_config_json, _at(field, "deepspeed_config_json"))
    check_at_most(spec.keep_checkpoints, _at(field, "keep_checkpoints"), MAX_KEEP_CHECKPOINTS)
    check_number(spec.cost.price_per_gpu_hour, _at(field, "cost.price_per_gpu_hour"))
    check_text(spec.cost.instance_type, _at(field, "cost.instance_type"))
    check_text(spec.cost.pricing, _at(field, "cost.pricing"))
    targets = spec.eval_targets
    for key in EVAL_TARGET_KEYS:
        if targets.HasField(key):
            check_number(getattr(targets, key), _at(field, f"eval_targets.{key}"))
