"""The job spec: the YAML an operator writes to launch a job, parsed into `job_pb2.JobSpec`.

    name: demo-moe                    # 1-63 of [a-z0-9-], starting with a letter or digit
    nodes:                            # DeepSpeed hostfile form; names are agents of the cluster
      - node-a slots=1
      - node-b slots=1                # or one multi-line string: "node-a slots=1\\nnode-b ..."
    command: [python, -m, agent.train]
    args: [--deepspeed_config, examples/ds_config_zero3.json, --seed, 1]
    env: {NCCL_DEBUG: INFO, NCCL_IB_DISABLE: "1"}
    working_dir: .                    # relative to the YAML file's folder (the default)
    restart: {max_restarts: 3, backoff_s: 5, resume: latest}
    hang_timeout_s: 120               # 0 = off
    collective_timeout_s: 300
    checkpoint_dir: out/demo/checkpoints             # relative to working_dir; no '..'
                                      # (default: the args' --output_dir; its checkpoints/
                                      # for Gantry's own trainer)
    checkpoint: {keep_last: 3}        # retention: the newest 3, the latest and the one in
                                      # use kept; 0 = all; default 5 with a checkpoint_dir
                                      # (`keep_checkpoints: 3` is the older spelling)
    deepspeed_config: examples/ds_config_zero3.json   # relative to working_dir, or a mapping
    cost: {price_per_gpu_hour: 2.5, instance_type: p5.48xlarge, pricing: on-demand}
    eval_targets: {bleu4_min: 0.9, rouge_l_min: 0.9, ttft_ms_max: 200, tokens_per_s_min: 1000}
    spares: [node-c]                  # agents that hold no ranks until one replaces a node
    parallelism: {tensor: 1, expert: 2}   # data parallel = world / (tensor x expert)

Every error is a `JobSpecError` with one line: where (file, and line when known), the
field, and what to fix. working_dir and checkpoint_dir are stored as absolute paths, as seen
on the operator's machine (the cluster is expected to share the file system). A checkpoint
to resume from is confined to the job's directories, as the agents require: a tag, a
relative path without '..', or an absolute path inside working_dir or checkpoint_dir. The DeepSpeed
config is embedded as normalised JSON text, so a spec written back by `job_spec_to_yaml`
(config inline as a mapping) parses to an equal spec.

The YAML is read in `job_spec_yaml`, the keys checked in `job_spec_fields` and
`job_spec_files`. Names, flags, paths and limits are the contract's (`gantry.v1.rules`), whose
`validate_job_spec` is the last check: what the console accepts, every agent accepts.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import yaml
from gantry.v1 import job_pb2
from gantry.v1.rules import ValidationError, validate_job_spec

from console.model.job_spec_fields import (
    COST_KEYS,
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    DEFAULT_HANG_TIMEOUT_S,
    EVAL_KEYS,
    TOP_KEYS,
    SpecFields,
)
from console.model.job_spec_files import FileFields
from console.model.job_spec_parallel import ParallelFields, parallelism_yaml
from console.model.job_spec_yaml import JobSpecError, kind

__all__ = [
    "TOP_KEYS",
    "JobSpecError",
    "checkpoints_of_output_dir",
    "hostfile_lines",
    "job_spec_to_yaml",
    "load_job_spec",
    "parse_job_spec",
]


def load_job_spec(path: Path, known_nodes: set[str] | None = None) -> job_pb2.JobSpec:
    """Reads and validates a job spec file; relative paths start at the file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobSpecError(f"cannot read job spec {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: not UTF-8 text") from None
    return parse_job_spec(text, path.parent, known_nodes, source=str(path))


def parse_job_spec(
    text: str,
    base_dir: Path,
    known_nodes: set[str] | None = None,
    *,
    source: str = "job spec",
) -> job_pb2.JobSpec:
    """Validates job spec YAML. `known_nodes`, when given, are the cluster's agents."""
    return _SpecParser(text, base_dir, known_nodes, source).parse()


def checkpoints_of_output_dir(spec: job_pb2.JobSpec, working_dir: Path) -> str:
    """Where a job's script saves checkpoints when the spec does not say: its
    ``--output_dir`` (a Hugging Face ``Trainer`` writes ``checkpoint-N`` there), or that
    folder's ``checkpoints`` for Gantry's own trainer; "" without an ``--output_dir``."""
    argv = [*spec.command, *spec.args]
    given = None
    for i, word in enumerate(argv):
        if word in ("--output_dir", "--output-dir") and i + 1 < len(argv):
            given = argv[i + 1]
        elif word.startswith(("--output_dir=", "--output-dir=")):
            given = word.split("=", 1)[1]
    if not given:
        return ""
    folder = Path(os.path.abspath(working_dir / Path(given).expanduser()))
    if folder.parent == folder:
        return ""
    own_trainer = any(a == "-m" and b == "agent.train" for a, b in itertools.pairwise(argv))
    return str(folder / "checkpoints") if own_trainer else str(folder)


def hostfile_lines(spec: job_pb2.JobSpec) -> list[str]:
    """The spec's nodes in DeepSpeed hostfile form: `node-a slots=1`."""
    return [f"{n.node} slots={n.slots}" for n in spec.nodes]


def job_spec_to_yaml(spec: job_pb2.JobSpec) -> str:
    """YAML that `parse_job_spec` turns back into an equal spec (working_dir absolute)."""
    doc: dict[str, object] = {
        "name": spec.name,
        "nodes": hostfile_lines(spec),
        "command": list(spec.command),
    }
    if spec.spares:
        doc["spares"] = list(spec.spares)
    if spec.args:
        doc["args"] = list(spec.args)
    if spec.env:
        doc["env"] = dict(sorted(spec.env.items()))
    if spec.working_dir:
        doc["working_dir"] = spec.working_dir
    restart: dict[str, object] = {
        "max_restarts": spec.restart.max_restarts,
        "backoff_s": spec.restart.backoff_s,
        "resume": spec.restart.resume,
    }
    if spec.restart.resume_flag:
        restart["resume_flag"] = spec.restart.resume_flag
    doc["restart"] = restart
    doc["hang_timeout_s"] = spec.hang_timeout_s
    doc["collective_timeout_s"] = spec.collective_timeout_s
    if spec.checkpoint_dir:
        doc["checkpoint_dir"] = spec.checkpoint_dir
    if spec.checkpoint_dir or spec.keep_checkpoints:
        # Always written: absent, it would read back as the default, not as 0 (keep all).
        doc["checkpoint"] = {"keep_last": spec.keep_checkpoints}
    if spec.deepspeed_config_json:
        try:
            doc["deepspeed_config"] = json.loads(spec.deepspeed_config_json)
        except ValueError:
            raise JobSpecError(
                f"job {spec.name}: deepspeed_config_json is not valid JSON"
            ) from None
    if spec.HasField("cost"):
        cost = spec.cost
        doc["cost"] = {k: getattr(cost, k) for k in COST_KEYS if getattr(cost, k)}
    if spec.HasField("eval_targets"):
        targets = spec.eval_targets
        doc["eval_targets"] = {k: getattr(targets, k) for k in EVAL_KEYS if targets.HasField(k)}
    if spec.HasField("preemption"):  # written even at 0 (the default): the key was there
        doc["preemption"] = {"grace_s": spec.preemption.grace_s}
    parallelism = parallelism_yaml(spec)
    if parallelism is not None:
        doc["parallelism"] = parallelism
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


class _SpecParser(SpecFields, FileFields, ParallelFields):
    """One job spec document, parsed key by key."""

    def parse(self) -> job_pb2.JobSpec:
        data = self.load()
        if data is None:
            self.fail((), "is empty; write a mapping with name, nodes and command")
        if not isinstance(data, dict):
            self.fail((), f"expected a mapping with name, nodes and command, got {kind(data)}")
        doc = self.mapping(data, (), TOP_KEYS, "the job spec")
        for key, hint in (
            ("name", "a job name such as demo-moe"),
            ("nodes", "the nodes to run on, e.g. [node-a slots=1]"),
            ("command", "the program to run, e.g. [python, -m, agent.train]"),
        ):
            if key not in doc:
                self.fail((), f"missing {key!r} ({hint})")

        spec = job_pb2.JobSpec(
            name=self.job_name(doc["name"]),
            command=self.command(doc["command"]),
            args=self.args(doc.get("args")),
            env=self.env(doc.get("env")),
            hang_timeout_s=self.optional_number(doc, "hang_timeout_s", DEFAULT_HANG_TIMEOUT_S),
            collective_timeout_s=self.optional_number(
                doc, "collective_timeout_s", DEFAULT_COLLECTIVE_TIMEOUT_S
            ),
        )
        for node, slots in self.nodes(doc["nodes"]):
            spec.nodes.add(node=node, slots=slots)
        spec.spares.extend(self.spares(doc.get("spares"), {n.node for n in spec.nodes}))
        working_dir = self.working_dir(doc.get("working_dir"))
        spec.working_dir = str(working_dir)
        spec.checkpoint_dir = self.checkpoint_dir(doc.get("checkpoint_dir"), working_dir)
        if "checkpoint_dir" not in doc:
            spec.checkpoint_dir = checkpoints_of_output_dir(spec, working_dir)
        spec.restart.CopyFrom(self.restart(doc.get("restart"), spec))
        spec.keep_checkpoints = self.keep_checkpoints(doc, spec.checkpoint_dir)
        if doc.get("deepspeed_config") is not None:
            spec.deepspeed_config_json = self.deepspeed_config(doc["deepspeed_config"], working_dir)
        if doc.get("cost") is not None:
            spec.cost.CopyFrom(self.cost(doc["cost"]))
        if doc.get("eval_targets") is not None:
            spec.eval_targets.CopyFrom(self.eval_targets(doc["eval_targets"]))
        if doc.get("parallelism") is not None:
            spec.parallelism.CopyFrom(self.parallelism(doc["parallelism"]))
        if doc.get("preemption") is not None:
            spec.preemption.CopyFrom(self.preemption(doc["preemption"]))
        self.check_contract(spec)
        return spec

    def check_contract(self, spec: job_pb2.JobSpec) -> None:
        """The contract's own check last (limits the keys above leave to it): what the
        console accepts, every agent accepts."""
        try:
            validate_job_spec(spec, field="")
        except ValidationError as exc:
            message = str(exc)
            key = message.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
            key = "deepspeed_config" if key == "deepspeed_config_json" else key
            line = self.line_of((key,)) if key in TOP_KEYS else None
            where = self.source if line is None else f"{self.source} line {line}"
            raise JobSpecError(f"{where}: {message}") from None
