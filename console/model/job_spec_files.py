"""The job spec's keys that name files and folders (working_dir, checkpoint_dir,
deepspeed_config): made absolute against the YAML file's folder or working_dir, as the
agents require, and the DeepSpeed config read and embedded as JSON text."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gantry.v1.rules import MAX_CONFIG_JSON_BYTES

from console.model.job_spec_yaml import FieldPath, SpecReader, kind, show

MAX_CONFIG_ITEMS = 100_000  # an inline config, with YAML aliases expanded as JSON would


class FileFields(SpecReader):
    """The checks of the keys that name files and folders."""

    def checkpoint_dir(self, value: object, working_dir: Path) -> str:
        """Made absolute against working_dir; it need not exist yet."""
        if value is None:
            return ""
        path: FieldPath = ("checkpoint_dir",)
        given = self.text_value(value, path, "a path")
        if not given:
            return ""
        if ".." in Path(given).parts:
            self.fail(
                path,
                f"{show(given)} must not contain '..'; give a path below working_dir "
                "or an absolute one",
            )
        try:
            resolved = os.path.abspath(working_dir / Path(given).expanduser())
        except (RuntimeError, ValueError):
            self.fail(path, f"{show(given)} is not a usable path")
        if os.path.dirname(resolved) == resolved:
            self.fail(path, f"{show(given)} is the file system's root; give a folder of the job")
        return resolved

    def working_dir(self, value: object) -> Path:
        path: FieldPath = ("working_dir",)
        given = "." if value is None else self.text_value(value, path, "a path")
        if not given:
            self.fail(path, "is empty; leave it out to use the YAML file's folder")
        try:
            resolved = Path(os.path.abspath(self.base_dir / Path(given).expanduser()))
            is_dir = resolved.is_dir()
        except (OSError, RuntimeError, ValueError):
            self.fail(path, f"{show(given)} is not a usable path")
        if not is_dir:
            self.fail(
                path,
                f"{resolved} is not an existing folder (relative paths start at the YAML "
                "file's folder)",
            )
        if resolved.parent == resolved:
            self.fail(path, f"{resolved} is the file system's root; give the job's own folder")
        return resolved

    def deepspeed_config(self, value: object, working_dir: Path) -> str:
        path: FieldPath = ("deepspeed_config",)
        if isinstance(value, dict):
            if _expanded_size(value, MAX_CONFIG_ITEMS) > MAX_CONFIG_ITEMS:
                self.fail(path, f"is too big or refers to itself (over {MAX_CONFIG_ITEMS} items)")
            config: object = value
        elif isinstance(value, str) and value:
            config = self.read_json(self.checked_text(value, path), working_dir, path)
        else:
            self.fail(path, f"expected a path to a JSON file or a mapping, got {kind(value)}")
        if not isinstance(config, dict):
            self.fail(path, f"must hold a JSON object ({{...}}), got {kind(config)}")
        try:
            text = json.dumps(config, indent=2)
        except (TypeError, ValueError, RecursionError) as exc:
            self.fail(path, f"cannot be written as JSON: {show(str(exc), 100)}")
        if len(text.encode("utf-8")) > MAX_CONFIG_JSON_BYTES:
            self.fail(path, f"is larger than {MAX_CONFIG_JSON_BYTES // 2**20} MiB as JSON")
        return text

    def read_json(self, given: str, working_dir: Path, path: FieldPath) -> object:
        try:
            file = Path(os.path.abspath(working_dir / Path(given).expanduser()))
            exists, is_file = file.exists(), file.is_file()
            size = file.stat().st_size if is_file else 0
        except (OSError, RuntimeError, ValueError) as exc:
            self.fail(path, f"cannot use {show(given)}: {show(str(exc), 100)}")
        if not exists:
            self.fail(
                path, f"{given} not found (looked for {file}; relative paths start at working_dir)"
            )
        if not is_file:
            self.fail(path, f"{file} is not a regular file")
        if size > MAX_CONFIG_JSON_BYTES:
            self.fail(path, f"{file} is larger than {MAX_CONFIG_JSON_BYTES // 2**20} MiB")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self.fail(path, f"cannot read {file}: {show(str(exc), 100)}")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(path, f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}")
        except (ValueError, RecursionError) as exc:
            self.fail(path, f"{file} is not valid JSON: {show(str(exc), 100)}")


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
