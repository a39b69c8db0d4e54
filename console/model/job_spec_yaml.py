"""Reading a job spec's YAML: the document with the line of each value, typed readers, and
`JobSpecError`, one line naming the file, the line and the field. Knows YAML, not the keys."""

from __future__ import annotations

import difflib
import math
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import yaml
from gantry.v1.rules import MAX_NUMBER

PathPart = str | int
FieldPath = tuple[PathPart, ...]


class JobSpecError(ValueError):
    """A job spec that cannot be used; the message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def clip(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters with "..."."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: object, limit: int = 60) -> str:
    """`value` as Python writes it, clipped: for quoting what the operator wrote."""
    return clip(repr(value), limit)


def kind(value: object) -> str:
    """What YAML made of a value, in words: "a list", "text 'x'", "a number (3)"."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({show(value)})"
    if isinstance(value, str):
        return f"text {show(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def field_name(path: FieldPath) -> str:
    """`("nodes", 1)` as "nodes[1]", `("restart", "resume")` as "restart.resume"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def suggest(key: object, choices: Iterable[str]) -> str:
    """A did-you-mean for a misspelt key, else the keys allowed."""
    choices = list(choices)
    if isinstance(key, str):
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        if close:
            return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(choices)


def key_part(key: object) -> PathPart:
    """A mapping key as a part of a field path (other than text or a number: as shown)."""
    return key if isinstance(key, str | int) and not isinstance(key, bool) else show(key)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML says is wrong, on one clipped line."""
    problem = getattr(exc, "problem", None)
    text = problem if isinstance(problem, str) and problem else str(exc)
    return clip(" ".join(text.split()), 120)


class SpecReader:
    """One job spec document: its YAML nodes (for lines), typed readers and errors."""

    # Sections whose keys, given at the top level, get "it belongs under ..." as a hint.
    SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __init__(
        self, text: str, base_dir: Path, known_nodes: set[str] | None, source: str
    ) -> None:
        self.text = text
        self.base_dir = base_dir
        self.known_nodes = known_nodes
        self.source = source
        self.root: yaml.Node | None = None

    # -- errors and positions -------------------------------------------------

    def fail(self, path: FieldPath, message: str, at: FieldPath | None = None) -> NoReturn:
        # A whole-document complaint (path and at empty) has no line worth naming.
        line = self.line_of(path if at is None else at) if path or at else None
        where = self.source if line is None else f"{self.source} line {line}"
        field = field_name(path)
        raise JobSpecError(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def find(self, path: FieldPath) -> tuple[yaml.Node | None, int | None]:
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

    def line_of(self, path: FieldPath) -> int | None:
        return self.find(path)[1] if self.root is not None else None

    def raw_scalar(self, path: FieldPath, value: object) -> str:
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
            raise JobSpecError(f"{self.source}: not valid YAML: {yaml_problem(exc)}") from None
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
            raise JobSpecError(f"{where}: not valid YAML: {yaml_problem(exc)}") from None
        except RecursionError:
            self.root = None
            raise JobSpecError(f"{self.source}: not valid YAML: nested too deeply") from None
        except (ValueError, TypeError, OverflowError) as exc:
            # PyYAML's constructors raise these for values like `2024-13-45`.
            self.root = None
            raise JobSpecError(f"{self.source}: not valid YAML: {clip(str(exc), 120)}") from None
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
                                f"key {show(key.value)} is given twice; keep one"
                            )
                        keys.add(key.value)
                    stack.extend((key, value))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)

    # -- typed readers ----------------------------------------------------------

    def mapping(
        self, value: object, path: FieldPath, keys: tuple[str, ...], what: str
    ) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping ({what}), got {kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in keys:
                hint = suggest(key, keys)
                if not path and isinstance(key, str):
                    for section, section_keys in self.SECTIONS:
                        if key in section_keys:
                            hint = f"it belongs under {section}: {{{key}: ...}}"
                self.fail(path, f"unknown key {show(key)}; {hint}", at=(*path, key_part(key)))
        return {str(k): v for k, v in value.items()}

    def text_value(self, value: object, path: FieldPath, what: str = "text") -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected {what}, got {kind(value)}")
        return self.checked_text(value, path)

    def checked_text(self, value: str, path: FieldPath) -> str:
        if "\x00" in value:
            self.fail(path, "must not contain a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(path, f"{show(value)} is not valid Unicode text")
        return value

    def number(
        self, value: object, path: FieldPath, unit: str = "", limit: float = MAX_NUMBER
    ) -> float:
        of_unit = f" of {unit}" if unit else ""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"expected a number{of_unit} >= 0, got {kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isnan(number) or number < 0:
            self.fail(path, f"{show(value)} must be a number{of_unit} >= 0")
        if number > limit:
            self.fail(path, f"{show(value)} is too large (at most {limit:g})")
        return number

    def whole(self, value: object, path: FieldPath, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected a whole number >= 0, got {kind(value)}")
        if value < 0:
            self.fail(path, f"{value} must be a whole number >= 0")
        if value > maximum:
            self.fail(path, f"{value} is too large (at most {maximum})")
        return value

    def argument(self, value: object, path: FieldPath) -> str:
        """One command/args word: text, or a number or true/false taken as written."""
        if isinstance(value, str):
            return self.checked_text(value, path)
        if isinstance(value, int | float):  # bool included: `true` stays "true"
            return self.checked_text(self.raw_scalar(path, value), path)
        self.fail(path, f"expected a word of text, got {kind(value)}")

    def words(self, value: object, path: FieldPath) -> list[str]:
        if isinstance(value, str):
            try:
                return [self.checked_text(w, path) for w in shlex.split(value)]
            except ValueError as exc:
                self.fail(path, f"cannot split {show(value)} into words ({exc})")
        if not isinstance(value, list):
            self.fail(path, f"expected a list of words, got {kind(value)}")
        return [self.argument(item, (*path, i)) for i, item in enumerate(value)]

    # -- the spec -------------------------------------------------------------
