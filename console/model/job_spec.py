"""The job spec: the YAML an operator writes to launch a job, parsed into `job_pb2.JobSpec`.
(Over 400 lines: one field's parsing and its one-line errors stay together, field by field.)

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
    keep_checkpoints: 3               # the newest 3 (never the latest); 0 = all (the default)
    deepspeed_config: examples/ds_config_zero3.json   # relative to working_dir, or a mapping
    cost: {price_per_gpu_hour: 2.5, instance_type: p5.48xlarge, pricing: on-demand}
    eval_targets: {bleu4_min: 0.9, rouge_l_min: 0.9, ttft_ms_max: 200, tokens_per_s_min: 1000}

Every error is a `JobSpecError` with one line: where (file, and line when known), the
field, and what to fix. working_dir and checkpoint_dir are stored as absolute paths, as seen
on the operator's machine (the cluster is expected to share the file system). A checkpoint
to resume from is confined to the job's directories, as the agents require: a tag, a
relative path without '..', or an absolute path inside working_dir or checkpoint_dir. The DeepSpeed
config is embedded as normalised JSON text, so a spec written back by `job_spec_to_yaml`
(config inline as a mapping) parses to an equal spec.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import yaml
from gantry.v1 import job_pb2

JOB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
NODE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")  # as in the cluster file
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SLOTS_RE = re.compile(r"slots=(.*)\Z")

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
    "keep_checkpoints",
    "deepspeed_config",
    "cost",
    "eval_targets",
)
MAX_KEEP_CHECKPOINTS = 100_000
RESTART_KEYS = ("max_restarts", "backoff_s", "resume", "resume_flag")
# restart.resume_flag: "--resume_from_checkpoint", "--load", or "--resume=" (one word).
FLAG_RE = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}=?\Z")
COST_KEYS = ("price_per_gpu_hour", "instance_type", "pricing")
EVAL_KEYS = ("bleu4_min", "rouge_l_min", "ttft_ms_max", "tokens_per_s_min")
PRICING = ("on-demand", "reserved", "preemptible")
# Set by the agent for every rank; a value in the spec would be silently overridden.
RESERVED_ENV = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
)

DEFAULT_SLOTS = 1
DEFAULT_MAX_RESTARTS = 0
DEFAULT_BACKOFF_S = 5.0
DEFAULT_RESUME = "latest"
DEFAULT_HANG_TIMEOUT_S = 0.0
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0

MAX_SLOTS = 1024
MAX_RESTARTS = 100_000
MAX_NUMBER = 1e12
MAX_CONFIG_BYTES = 1024 * 1024  # the agents refuse a larger config (agent/rpc/validation.py)
MAX_CONFIG_ITEMS = 100_000  # an inline config, with YAML aliases expanded as JSON would

_PathPart = str | int
_FieldPath = tuple[_PathPart, ...]


class JobSpecError(ValueError):
    """A job spec that cannot be used; the message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


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
    if spec.keep_checkpoints:
        doc["keep_checkpoints"] = spec.keep_checkpoints
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
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: object, limit: int = 60) -> str:
    return _clip(repr(value), limit)


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({_show(value)})"
    if isinstance(value, str):
        return f"text {_show(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _field(path: _FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _suggest(key: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    if isinstance(key, str):
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        if close:
            return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(choices)


class _SpecParser:
    def __init__(
        self, text: str, base_dir: Path, known_nodes: set[str] | None, source: str
    ) -> None:
        self.text = text
        self.base_dir = base_dir
        self.known_nodes = known_nodes
        self.source = source
        self.root: yaml.Node | None = None

    # -- errors and positions -------------------------------------------------

    def fail(self, path: _FieldPath, message: str, at: _FieldPath | None = None) -> NoReturn:
        # A whole-document complaint (path and at empty) has no line worth naming.
        line = self.line_of(path if at is None else at) if path or at else None
        where = self.source if line is None else f"{self.source} line {line}"
        field = _field(path)
        raise JobSpecError(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def find(self, path: _FieldPath) -> tuple[yaml.Node | None, int | None]:
        """The node at `path` and its line (the key's line for mapping entries)."""
        node = self.root
        line = None if node is None else node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in reversed(node.value):
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        node, line = value, key.start_mark.line + 1
                        break
                else:
                    return None, line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    return None, line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return None, line
        return node, line

    def line_of(self, path: _FieldPath) -> int | None:
        return self.find(path)[1] if self.root is not None else None

    def raw_scalar(self, path: _FieldPath, value: object) -> str:
        """The scalar as written (`010`, `1e3`, `yes`), not as YAML resolved it."""
        node = self.find(path)[0]
        if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
            return node.value
        return str(value)

    # -- YAML -----------------------------------------------------------------

    def load(self) -> object:
        try:
            loader = yaml.SafeLoader(self.text)
        except yaml.YAMLError as exc:
            raise JobSpecError(f"{self.source}: not valid YAML: {_yaml_problem(exc)}") from None
        try:
            self.root = loader.get_single_node()
            if self.root is None:
                return None
            self.check_duplicate_keys(self.root)
            return loader.construct_document(self.root)
        except yaml.YAMLError as exc:
            self.root = None
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = self.source if mark is None else f"{self.source} line {mark.line + 1}"
            raise JobSpecError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
        except RecursionError:
            self.root = None
            raise JobSpecError(f"{self.source}: not valid YAML: nested too deeply") from None
        except (ValueError, TypeError, OverflowError) as exc:
            # PyYAML's constructors raise these for values like `2024-13-45`.
            self.root = None
            raise JobSpecError(f"{self.source}: not valid YAML: {_clip(str(exc), 120)}") from None
        finally:
            loader.dispose()

    def check_duplicate_keys(self, root: yaml.Node) -> None:
        seen_nodes: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen_nodes:
                continue
            seen_nodes.add(id(node))
            if isinstance(node, yaml.MappingNode):
                keys: set[str] = set()
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                        if key.value in keys:
                            raise JobSpecError(
                                f"{self.source} line {key.start_mark.line + 1}: "
                                f"key {_show(key.value)} is given twice; keep one"
                            )
                        keys.add(key.value)
                    stack.extend((key, value))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)

    # -- typed readers ----------------------------------------------------------

    def mapping(
        self, value: object, path: _FieldPath, keys: tuple[str, ...], what: str
    ) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping ({what}), got {_kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in keys:
                hint = _suggest(key, keys)
                if not path and isinstance(key, str):
                    for section, section_keys in (
                        ("restart", RESTART_KEYS),
                        ("cost", COST_KEYS),
                        ("eval_targets", EVAL_KEYS),
                    ):
                        if key in section_keys:
                            hint = f"it belongs under {section}: {{{key}: ...}}"
                self.fail(path, f"unknown key {_show(key)}; {hint}", at=(*path, _key_part(key)))
        return {str(k): v for k, v in value.items()}

    def text_value(self, value: object, path: _FieldPath, what: str = "text") -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected {what}, got {_kind(value)}")
        return self.checked_text(value, path)

    def checked_text(self, value: str, path: _FieldPath) -> str:
        if "\x00" in value:
            self.fail(path, "must not contain a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(path, f"{_show(value)} is not valid Unicode text")
        return value

    def number(self, value: object, path: _FieldPath, unit: str = "") -> float:
        of_unit = f" of {unit}" if unit else ""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"expected a number{of_unit} >= 0, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isnan(number) or number < 0:
            self.fail(path, f"{_show(value)} must be a number{of_unit} >= 0")
        if number > MAX_NUMBER:
            self.fail(path, f"{_show(value)} is too large (at most {MAX_NUMBER:g})")
        return number

    def whole(self, value: object, path: _FieldPath, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected a whole number >= 0, got {_kind(value)}")
        if value < 0:
            self.fail(path, f"{value} must be a whole number >= 0")
        if value > maximum:
            self.fail(path, f"{value} is too large (at most {maximum})")
        return value

    def argument(self, value: object, path: _FieldPath) -> str:
        """One command/args word: text, or a number or true/false taken as written."""
        if isinstance(value, str):
            return self.checked_text(value, path)
        if isinstance(value, int | float):  # bool included: `true` stays "true"
            return self.checked_text(self.raw_scalar(path, value), path)
        self.fail(path, f"expected a word of text, got {_kind(value)}")

    def words(self, value: object, path: _FieldPath) -> list[str]:
        if isinstance(value, str):
            try:
                return [self.checked_text(w, path) for w in shlex.split(value)]
            except ValueError as exc:
                self.fail(path, f"cannot split {_show(value)} into words ({exc})")
        if not isinstance(value, list):
            self.fail(path, f"expected a list of words, got {_kind(value)}")
        return [self.argument(item, (*path, i)) for i, item in enumerate(value)]

    # -- the spec -------------------------------------------------------------

    def parse(self) -> job_pb2.JobSpec:
        data = self.load()
        if data is None:
            self.fail((), "is empty; write a mapping with name, nodes and command")
        if not isinstance(data, dict):
            self.fail((), f"expected a mapping with name, nodes and command, got {_kind(data)}")
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
        working_dir = self.working_dir(doc.get("working_dir"))
        spec.working_dir = str(working_dir)
        spec.checkpoint_dir = self.checkpoint_dir(doc.get("checkpoint_dir"), working_dir)
        if "checkpoint_dir" not in doc:
            spec.checkpoint_dir = checkpoints_of_output_dir(spec, working_dir)
        spec.restart.CopyFrom(self.restart(doc.get("restart"), spec))
        if doc.get("keep_checkpoints") is not None:
            spec.keep_checkpoints = self.whole(
                doc["keep_checkpoints"], ("keep_checkpoints",), MAX_KEEP_CHECKPOINTS
            )
            if spec.keep_checkpoints and not spec.checkpoint_dir:
                self.fail(("keep_checkpoints",), "needs checkpoint_dir: the folder to keep them in")
        if doc.get("deepspeed_config") is not None:
            spec.deepspeed_config_json = self.deepspeed_config(doc["deepspeed_config"], working_dir)
        if doc.get("cost") is not None:
            spec.cost.CopyFrom(self.cost(doc["cost"]))
        if doc.get("eval_targets") is not None:
            spec.eval_targets.CopyFrom(self.eval_targets(doc["eval_targets"]))
        return spec

    def job_name(self, value: object) -> str:
        name = self.text_value(value, ("name",), "a job name")
        if not JOB_NAME_RE.match(name):
            self.fail(
                ("name",),
                f"{_show(name)} must be 1-63 lower-case letters, digits and '-', "
                "starting with a letter or digit",
            )
        return name

    def nodes(self, value: object) -> list[tuple[str, int]]:
        path: _FieldPath = ("nodes",)
        entries: list[tuple[_FieldPath, str, int | None]] = []
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
                        (*path, i), f"expected 'HOST slots=N' (hostfile form), got {_kind(item)}"
                    )
                entries.append(((*path, i), item, None))
        else:
            self.fail(path, f"expected a list of 'HOST slots=N' lines, got {_kind(value)}")
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

    def entry_fail(self, path: _FieldPath, line: int | None, message: str) -> NoReturn:
        if line is None:
            self.fail(path, message)
        raise JobSpecError(f"{self.source} line {line}: {_field(path)}: {message}")

    def hostfile_entry(self, path: _FieldPath, text: str, line: int | None) -> tuple[str, int]:
        words = self.checked_text(text, path).split("#", 1)[0].split()
        if not words:
            self.entry_fail(path, line, "empty; write 'HOST slots=N'")
        node_name, rest = words[0], words[1:]
        if self.known_nodes is not None and node_name not in self.known_nodes:
            known = ", ".join(sorted(self.known_nodes)) or "no nodes"
            self.entry_fail(
                path, line, f"unknown node {_clip(node_name)} (the cluster has {known})"
            )
        if not NODE_NAME_RE.match(node_name):
            self.entry_fail(
                path,
                line,
                f"node name {_show(node_name)} must be lower-case letters, digits and '-'",
            )
        slots: int | None = None
        for word in rest:
            match = SLOTS_RE.match(word)
            if match is None:
                self.entry_fail(
                    path, line, f"unexpected {_show(word)}; write '{node_name} slots=N'"
                )
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
            self.fail(("env",), f"expected a mapping NAME: value, got {_kind(value)}")
        env: dict[str, str] = {}
        for key, item in value.items():
            path: _FieldPath = ("env", _key_part(key))
            if not isinstance(key, str) or not ENV_NAME_RE.match(key):
                self.fail(
                    ("env",),
                    f"{_show(key)} is not a valid variable name (letters, digits and '_', "
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
                self.fail(path, f'write the value in quotes, e.g. "1" or "0", not {_kind(item)}')
            elif item is None:
                self.fail(path, 'give a value (write "" for an empty one)')
            else:
                self.fail(path, f"expected a text value, got {_kind(item)}")
        return env

    def optional_number(self, doc: dict[str, object], key: str, default: float) -> float:
        value = doc.get(key)
        return default if value is None else self.number(value, (key,), "seconds")

    def checkpoint_dir(self, value: object, working_dir: Path) -> str:
        """Made absolute against working_dir; it need not exist yet."""
        if value is None:
            return ""
        path: _FieldPath = ("checkpoint_dir",)
        given = self.text_value(value, path, "a path")
        if not given:
            return ""
        if ".." in Path(given).parts:
            self.fail(
                path,
                f"{_show(given)} must not contain '..'; give a path below working_dir "
                "or an absolute one",
            )
        try:
            resolved = os.path.abspath(working_dir / Path(given).expanduser())
        except (RuntimeError, ValueError):
            self.fail(path, f"{_show(given)} is not a usable path")
        if os.path.dirname(resolved) == resolved:
            self.fail(path, f"{_show(given)} is the file system's root; give a folder of the job")
        return resolved

    def working_dir(self, value: object) -> Path:
        path: _FieldPath = ("working_dir",)
        given = "." if value is None else self.text_value(value, path, "a path")
        if not given:
            self.fail(path, "is empty; leave it out to use the YAML file's folder")
        try:
            resolved = Path(os.path.abspath(self.base_dir / Path(given).expanduser()))
            is_dir = resolved.is_dir()
        except (OSError, RuntimeError, ValueError):
            self.fail(path, f"{_show(given)} is not a usable path")
        if not is_dir:
            self.fail(
                path,
                f"{resolved} is not an existing folder (relative paths start at the YAML "
                "file's folder)",
            )
        if resolved.parent == resolved:
            self.fail(path, f"{resolved} is the file system's root; give the job's own folder")
        return resolved

    def restart(self, value: object, spec: job_pb2.JobSpec) -> job_pb2.RestartPolicy:
        path: _FieldPath = ("restart",)
        doc = {} if value is None else self.mapping(value, path, RESTART_KEYS, "restart policy")
        policy = job_pb2.RestartPolicy(
            max_restarts=DEFAULT_MAX_RESTARTS, backoff_s=DEFAULT_BACKOFF_S, resume=DEFAULT_RESUME
        )
        if doc.get("max_restarts") is not None:
            policy.max_restarts = self.whole(
                doc["max_restarts"], (*path, "max_restarts"), MAX_RESTARTS
            )
        if doc.get("backoff_s") is not None:
            policy.backoff_s = self.number(doc["backoff_s"], (*path, "backoff_s"), "seconds")
        if "resume" in doc:
            policy.resume = self.resume(doc["resume"], (*path, "resume"), spec)
        if doc.get("resume_flag") is not None:
            flag = doc["resume_flag"]
            if not isinstance(flag, str) or not FLAG_RE.match(flag):
                self.fail(
                    (*path, "resume_flag"),
                    f"{_show(flag)} is not a flag; write e.g. --resume_from_checkpoint, --load,"
                    " or --resume= to pass one --resume=PATH word",
                )
            policy.resume_flag = flag
        return policy

    def resume(self, value: object, path: _FieldPath, spec: job_pb2.JobSpec) -> str:
        hint = 'write "latest", "" (start fresh) or a checkpoint tag or path'
        if not isinstance(value, str):
            self.fail(path, f"expected text, got {_kind(value)}; {hint}")
        resume = self.checked_text(value, path)
        if resume != resume.strip() or any(ord(c) < 32 for c in resume):
            self.fail(path, f"{_show(resume)} has stray spaces or control characters; {hint}")
        if resume.lower() == DEFAULT_RESUME and resume != DEFAULT_RESUME:
            self.fail(path, f"{_show(resume)}: write 'latest' in lower case")
        if ".." in resume.split("/"):
            self.fail(path, f"{_show(resume)} must not contain '..'; name a checkpoint of this job")
        if resume.startswith("~"):
            self.fail(path, f"{_show(resume)}: '~' is not expanded here; give the full path")
        if os.path.isabs(resume):
            plain = os.path.normpath(resume)
            roots = [r for r in (spec.working_dir, spec.checkpoint_dir) if r]
            if not any(plain == r or plain.startswith(r.rstrip("/") + "/") for r in roots):
                self.fail(
                    path,
                    f"{_show(resume)} is outside the job's directories ({' or '.join(roots)}); "
                    "the agents refuse it",
                )
        return resume

    def deepspeed_config(self, value: object, working_dir: Path) -> str:
        path: _FieldPath = ("deepspeed_config",)
        if isinstance(value, dict):
            if _expanded_size(value, MAX_CONFIG_ITEMS) > MAX_CONFIG_ITEMS:
                self.fail(path, f"is too big or refers to itself (over {MAX_CONFIG_ITEMS} items)")
            config: object = value
        elif isinstance(value, str) and value:
            config = self.read_json(self.checked_text(value, path), working_dir, path)
        else:
            self.fail(path, f"expected a path to a JSON file or a mapping, got {_kind(value)}")
        if not isinstance(config, dict):
            self.fail(path, f"must hold a JSON object ({{...}}), got {_kind(config)}")
        try:
            text = json.dumps(config, indent=2)
        except (TypeError, ValueError, RecursionError) as exc:
            self.fail(path, f"cannot be written as JSON: {_show(str(exc), 100)}")
        if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
            self.fail(path, f"is larger than {MAX_CONFIG_BYTES // 2**20} MiB as JSON")
        return text

    def read_json(self, given: str, working_dir: Path, path: _FieldPath) -> object:
        try:
            file = Path(os.path.abspath(working_dir / Path(given).expanduser()))
            exists, is_file = file.exists(), file.is_file()
            size = file.stat().st_size if is_file else 0
        except (OSError, RuntimeError, ValueError) as exc:
            self.fail(path, f"cannot use {_show(given)}: {_show(str(exc), 100)}")
        if not exists:
            self.fail(
                path, f"{given} not found (looked for {file}; relative paths start at working_dir)"
            )
        if not is_file:
            self.fail(path, f"{file} is not a regular file")
        if size > MAX_CONFIG_BYTES:
            self.fail(path, f"{file} is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self.fail(path, f"cannot read {file}: {_show(str(exc), 100)}")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(path, f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}")
        except (ValueError, RecursionError) as exc:
            self.fail(path, f"{file} is not valid JSON: {_show(str(exc), 100)}")

    def cost(self, value: object) -> job_pb2.CostPolicy:
        path: _FieldPath = ("cost",)
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
                    f"{_show(pricing)} is not a pricing model; {_suggest(pricing, PRICING)}",
                )
            cost.pricing = pricing
        return cost

    def eval_targets(self, value: object) -> job_pb2.EvalTargets:
        path: _FieldPath = ("eval_targets",)
        doc = self.mapping(value, path, EVAL_KEYS, ", ".join(EVAL_KEYS))
        targets = job_pb2.EvalTargets()
        for key in EVAL_KEYS:
            if doc.get(key) is not None:
                unit = "ms" if key.endswith("_ms_max") else ""
                setattr(targets, key, self.number(doc[key], (*path, key), unit))
        return targets


def _expanded_size(value: object, limit: int) -> int:
    """Items in `value` counting every alias again, as JSON would; stops past `limit`."""
    count = 0
    stack = [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _key_part(key: object) -> _PathPart:
    return key if isinstance(key, str | int) and not isinstance(key, bool) else _show(key)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    text = problem if isinstance(problem, str) and problem else str(exc)
    return _clip(" ".join(text.split()), 120)
