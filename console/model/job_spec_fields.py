"""The job spec's keys, their defaults and limits, and the checks of the keys that name no
file (name, nodes, command, args, env, restart, cost, eval_targets), each failing with one
line naming the key and what to fix. The contract's rules are `gantry.v1.rules`."""

from __future__ import annotations

import re
from typing import NoReturn

import yaml
from gantry.v1 import job_pb2
from gantry.v1.rules import (
    DEFAULT_KEEP_LAST,
    ENV_NAME_RE,
    EVAL_TARGET_KEYS,
    FLAG_RE,
    LATEST,
    MAX_KEEP_CHECKPOINTS,
    MAX_SECONDS,
    MAX_SLOTS,
    NAME_RULE,
    RESERVED_ENV,
    checkpoint_roots,
    has_dot_dot,
    is_checkpoint_within,
    is_name,
)

from console.model.job_spec_yaml import (
    FieldPath,
    JobSpecError,
    SpecReader,
    clip,
    field_name,
    key_part,
    kind,
    show,
    suggest,
)

TOP_KEYS = (
    "name",
    "nodes",
    "command",
    "args",
    "env",
    "working_dir",
    "restart",
    "hang_timeout_s",
    "collective_timeout_s",
    "checkpoint_dir",
    "checkpoint",
    "keep_checkpoints",
    "deepspeed_config",
    "cost",
    "eval_targets",
    "spares",
    "parallelism",
    "preemption",
)
RESTART_KEYS = ("max_restarts", "backoff_s", "resume", "resume_flag")
CHECKPOINT_KEYS = ("keep_last",)
COST_KEYS = ("price_per_gpu_hour", "instance_type", "pricing")
PREEMPTION_KEYS = ("grace_s",)
MAX_PREEMPTION_GRACE_S = 3600.0
EVAL_KEYS = EVAL_TARGET_KEYS
PRICING = ("on-demand", "reserved", "preemptible")
SLOTS_RE = re.compile(r"slots=(.*)\Z")

DEFAULT_SLOTS = 1
DEFAULT_MAX_RESTARTS = 0
DEFAULT_BACKOFF_S = 5.0
DEFAULT_RESUME = LATEST
DEFAULT_HANG_TIMEOUT_S = 0.0
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0

MAX_RESTARTS = 100_000


class SpecFields(SpecReader):
    """The checks of the keys that name no file."""

    SECTIONS = (
        ("restart", RESTART_KEYS),
        ("checkpoint", CHECKPOINT_KEYS),
        ("cost", COST_KEYS),
        ("eval_targets", EVAL_KEYS),
        ("parallelism", ("tensor", "expert")),
        ("preemption", PREEMPTION_KEYS),
    )

    def job_name(self, value: object) -> str:
        name = self.text_value(value, ("name",), "a job name")
        if not is_name(name):
            self.fail(("name",), f"{show(name)} must be {NAME_RULE}")
        return name

    def nodes(self, value: object) -> list[tuple[str, int]]:
        path: FieldPath = ("nodes",)
        entries: list[tuple[FieldPath, str, int | None]] = []
        if isinstance(value, str):
            node, line = self.find(path)
            first = line
            if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">") and line:
                first = line + 1
            for i, text in enumerate(value.splitlines()):
                entry_line = None if first is None else first + i
                if text.split("#", 1)[0].strip():
                    entries.append(((*path, len(entries)), text, entry_line))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.fail(
                        (*path, i), f"expected 'HOST slots=N' (hostfile form), got {kind(item)}"
                    )
                entries.append(((*path, i), item, None))
        else:
            self.fail(path, f"expected a list of 'HOST slots=N' lines, got {kind(value)}")
        if not entries:
            self.fail(path, "list at least one node, e.g. 'node-a slots=1'")

        result: list[tuple[str, int]] = []
        seen: set[str] = set()
        for entry_path, text, line in entries:
            node_name, slots = self.hostfile_entry(entry_path, text, line)
            if node_name in seen:
                self.entry_fail(
                    entry_path, line, f"{node_name} is listed twice; list each node once"
                )
            seen.add(node_name)
            result.append((node_name, slots))
        return result

    def spares(self, value: object, nodes: set[str]) -> list[str]:
        """``spares: [node-c, ...]``: agents of the cluster that hold no ranks until one runs
        a failed node's ranks (`gantry restart NAME --replace node-b=node-c`)."""
        path: FieldPath = ("spares",)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list of node names, e.g. [node-c], got {kind(value)}")
        result: list[str] = []
        for i, item in enumerate(value):
            at: FieldPath = (*path, i)
            if not isinstance(item, str):
                self.fail(at, f"expected a node name, got {kind(item)}")
            name = self.checked_text(item, at).strip()
            if self.known_nodes is not None and name not in self.known_nodes:
                known = ", ".join(sorted(self.known_nodes)) or "no nodes"
                self.fail(at, f"unknown node {clip(name)} (the cluster has {known})")
            if not is_name(name):
                self.fail(at, f"node name {show(name)} must be lower-case letters, digits and '-'")
            if name in nodes:
                self.fail(at, f"{name} is also in nodes: a spare runs no ranks of its own")
            if name in result:
                self.fail(at, f"{name} is listed twice; list each spare once")
            result.append(name)
        return result

    def entry_fail(self, path: FieldPath, line: int | None, message: str) -> NoReturn:
        if line is None:
            self.fail(path, message)
        raise JobSpecError(f"{self.source} line {line}: {field_name(path)}: {message}")

    def hostfile_entry(self, path: FieldPath, text: str, line: int | None) -> tuple[str, int]:
        words = self.checked_text(text, path).split("#", 1)[0].split()
        if not words:
            self.entry_fail(path, line, "empty; write 'HOST slots=N'")
        node_name, rest = words[0], words[1:]
        if self.known_nodes is not None and node_name not in self.known_nodes:
            known = ", ".join(sorted(self.known_nodes)) or "no nodes"
            self.entry_fail(path, line, f"unknown node {clip(node_name)} (the cluster has {known})")
        if not is_name(node_name):
            self.entry_fail(
                path,
                line,
                f"node name {show(node_name)} must be lower-case letters, digits and '-'",
            )
        slots: int | None = None
        for word in rest:
            match = SLOTS_RE.match(word)
            if match is None:
                self.entry_fail(path, line, f"unexpected {show(word)}; write '{node_name} slots=N'")
            if slots is not None:
                self.entry_fail(path, line, f"slots given twice for {node_name}")
            count = match.group(1)
            if not count.isascii() or not count.isdigit() or not 1 <= int(count) <= MAX_SLOTS:
                self.entry_fail(
                    path,
                    line,
                    f"slots={count} for {node_name} must be a positive whole number "
                    f"(1-{MAX_SLOTS}, the GPUs to use)",
                )
            slots = int(count)
        return node_name, DEFAULT_SLOTS if slots is None else slots

    def command(self, value: object) -> list[str]:
        words = self.words(value, ("command",))
        if not words or not words[0]:
            self.fail(("command",), "give the program to run, e.g. [python, -m, agent.train]")
        return words

    def args(self, value: object) -> list[str]:
        return [] if value is None else self.words(value, ("args",))

    def env(self, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(("env",), f"expected a mapping NAME: value, got {kind(value)}")
        env: dict[str, str] = {}
        for key, item in value.items():
            path: FieldPath = ("env", key_part(key))
            if not isinstance(key, str) or not ENV_NAME_RE.match(key):
                self.fail(
                    ("env",),
                    f"{show(key)} is not a valid variable name (letters, digits and '_', "
                    "not starting with a digit)",
                    at=path,
                )
            if key in RESERVED_ENV:
                self.fail(path, "is set by the agent for each rank; remove it")
            if isinstance(item, str):
                env[key] = self.checked_text(item, path)
            elif isinstance(item, int | float) and not isinstance(item, bool):
                env[key] = self.checked_text(self.raw_scalar(path, item), path)
            elif isinstance(item, bool):
                self.fail(path, f'write the value in quotes, e.g. "1" or "0", not {kind(item)}')
            elif item is None:
                self.fail(path, 'give a value (write "" for an empty one)')
            else:
                self.fail(path, f"expected a text value, got {kind(item)}")
        return env

    def optional_number(self, doc: dict[str, object], key: str, default: float) -> float:
        value = doc.get(key)
        return default if value is None else self.number(value, (key,), "seconds", MAX_SECONDS)

    def restart(self, value: object, spec: job_pb2.JobSpec) -> job_pb2.RestartPolicy:
        path: FieldPath = ("restart",)
        doc = {} if value is None else self.mapping(value, path, RESTART_KEYS, "restart policy")
        policy = job_pb2.RestartPolicy(
            max_restarts=DEFAULT_MAX_RESTARTS, backoff_s=DEFAULT_BACKOFF_S, resume=DEFAULT_RESUME
        )
        if doc.get("max_restarts") is not None:
            policy.max_restarts = self.whole(
                doc["max_restarts"], (*path, "max_restarts"), MAX_RESTARTS
            )
        if doc.get("backoff_s") is not None:
            policy.backoff_s = self.number(
                doc["backoff_s"], (*path, "backoff_s"), "seconds", MAX_SECONDS
            )
        if "resume" in doc:
            policy.resume = self.resume(doc["resume"], (*path, "resume"), spec)
        if doc.get("resume_flag") is not None:
            flag = doc["resume_flag"]
            if not isinstance(flag, str) or not FLAG_RE.match(flag):
                self.fail(
                    (*path, "resume_flag"),
                    f"{show(flag)} is not a flag; write e.g. --resume_from_checkpoint, --load,"
                    " or --resume= to pass one --resume=PATH word",
                )
            policy.resume_flag = flag
        return policy

    def resume(self, value: object, path: FieldPath, spec: job_pb2.JobSpec) -> str:
        hint = 'write "latest", "" (start fresh) or a checkpoint tag or path'
        if not isinstance(value, str):
            self.fail(path, f"expected text, got {kind(value)}; {hint}")
        resume = self.checked_text(value, path)
        if resume != resume.strip() or any(ord(c) < 32 for c in resume):
            self.fail(path, f"{show(resume)} has stray spaces or control characters; {hint}")
        if resume.lower() == DEFAULT_RESUME and resume != DEFAULT_RESUME:
            self.fail(path, f"{show(resume)}: write 'latest' in lower case")
        if has_dot_dot(resume):
            self.fail(path, f"{show(resume)} must not contain '..'; name a checkpoint of this job")
        if resume.startswith("~"):
            self.fail(path, f"{show(resume)}: '~' is not expanded here; give the full path")
        if resume.startswith("/") and not is_checkpoint_within(resume, spec):
            roots = " or ".join(checkpoint_roots(spec))
            self.fail(
                path,
                f"{show(resume)} is outside the job's directories ({roots}); the agents refuse it",
            )
        return resume

    def keep_checkpoints(self, doc: dict[str, object], checkpoint_dir: str) -> int:
        """Retention: ``checkpoint: {keep_last: N}``, or its older spelling
        ``keep_checkpoints: N``; 5 when checkpoint_dir is set and neither is given."""
        keep_last: object = None
        at: FieldPath = ("keep_checkpoints",)
        if doc.get("checkpoint") is not None:
            section = self.mapping(doc["checkpoint"], ("checkpoint",), CHECKPOINT_KEYS, "keep_last")
            keep_last = section.get("keep_last")
            if keep_last is not None and doc.get("keep_checkpoints") is not None:
                self.fail(
                    ("keep_checkpoints",),
                    "is checkpoint.keep_last written the old way; give one of the two",
                )
            at = ("checkpoint", "keep_last")
        if keep_last is None:
            keep_last = doc.get("keep_checkpoints")
            at = ("keep_checkpoints",)
        if keep_last is None:
            return DEFAULT_KEEP_LAST if checkpoint_dir else 0
        keep = self.whole(keep_last, at, MAX_KEEP_CHECKPOINTS)
        if keep and not checkpoint_dir:
            self.fail(at, "needs checkpoint_dir: the folder to keep them in")
        return keep

    def cost(self, value: object) -> job_pb2.CostPolicy:
        path: FieldPath = ("cost",)
        doc = self.mapping(value, path, COST_KEYS, "price_per_gpu_hour, instance_type, pricing")
        cost = job_pb2.CostPolicy()
        if doc.get("price_per_gpu_hour") is not None:
            cost.price_per_gpu_hour = self.number(
                doc["price_per_gpu_hour"], (*path, "price_per_gpu_hour")
            )
        if doc.get("instance_type") is not None:
            cost.instance_type = self.text_value(
                doc["instance_type"], (*path, "instance_type"), "an instance type"
            )
        if doc.get("pricing") is not None:
            pricing = self.text_value(doc["pricing"], (*path, "pricing"), "a pricing model")
            if pricing not in PRICING:
                self.fail(
                    (*path, "pricing"),
                    f"{show(pricing)} is not a pricing model; {suggest(pricing, PRICING)}",
                )
            cost.pricing = pricing
        return cost

    def preemption(self, value: object) -> job_pb2.PreemptionPolicy:
        """``preemption: {grace_s: N}``: from a node's notice to the attempt's stop (0: 30 s)."""
        path: FieldPath = ("preemption",)
        doc = self.mapping(value, path, PREEMPTION_KEYS, "grace_s")
        policy = job_pb2.PreemptionPolicy()
        if doc.get("grace_s") is not None:
            grace = self.number(doc["grace_s"], (*path, "grace_s"), "s")
            if not 0 <= grace <= MAX_PREEMPTION_GRACE_S:
                self.fail((*path, "grace_s"), f"must be 0 to {MAX_PREEMPTION_GRACE_S:g} seconds")
            policy.grace_s = grace
        return policy

    def eval_targets(self, value: object) -> job_pb2.EvalTargets:
        path: FieldPath = ("eval_targets",)
        doc = self.mapping(value, path, EVAL_KEYS, ", ".join(EVAL_KEYS))
        targets = job_pb2.EvalTargets()
        for key in EVAL_KEYS:
            if doc.get(key) is not None:
                unit = "ms" if key.endswith("_ms_max") else ""
                setattr(targets, key, self.number(doc[key], (*path, key), unit))
        return targets
