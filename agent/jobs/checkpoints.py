"""Which folders of a job's ``checkpoint_dir`` are checkpoints, of which convention, at
which step, and which one a restart resumes from.

Conventions recognised (one folder per checkpoint):

- Gantry's trainer: ``stepN`` tags, with DeepSpeed's ``latest`` file beside them;
- DeepSpeed's own ``save_checkpoint``: any tag (``global_stepN`` by default) holding
  ``*model_states.pt`` files, named by the ``latest`` file;
- universal checkpoints (``ds_to_universal``'s output: ``zero/`` inside, ``*_universal``);
- Hugging Face ``Trainer``: ``checkpoint-N`` in the output dir, complete once its
  ``trainer_state.json`` is written (the Trainer writes it after the weights and optimizer);
  the step is that file's ``global_step``;
- Megatron: ``iter_NNNNNNN`` with ``latest_checkpointed_iteration.txt`` beside them.

Anything else in the folder (a tokenizer, logs, ``runs/``) is not a checkpoint, nor is a
``*.saving`` folder: Gantry's trainer saves into ``stepN.saving`` and renames it to ``stepN``
once every rank wrote its part (``agent.rank.checkpoint_save``), so such a folder is a save
under way or one a full disk cut short. Reads the file system only; nothing here writes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gantry.v1 import job_pb2

__all__ = [
    "Found",
    "find",
    "latest_checkpoint",
    "list_checkpoints",
    "resolve_reference",
    "step_of",
]

GANTRY = "gantry"
DEEPSPEED = "deepspeed"
HF = "hf"
UNIVERSAL = "universal"
MEGATRON = "megatron"

_GANTRY_TAG = re.compile(r"^step(\d+)$")
_UNIVERSAL_TAG = re.compile(r"^(?:global_)?step(\d+)_universal$")
_DS_TAG = re.compile(r"^global_step(\d+)$")
_HF_TAG = re.compile(r"^checkpoint-(\d+)$")
_MEGATRON_TAG = re.compile(r"^iter_(\d+)$")
HF_STATE = "trainer_state.json"
DS_LATEST = "latest"
MEGATRON_LATEST = "latest_checkpointed_iteration.txt"
SAVING_SUFFIX = ".saving"  # agent.rank.checkpoint_save.SAVING_SUFFIX


@dataclass(frozen=True)
class Found:
    """One checkpoint folder."""

    path: Path
    format: str  # GANTRY, DEEPSPEED, HF, UNIVERSAL or MEGATRON
    step: int  # -1 when the folder does not say

    @property
    def tag(self) -> str:
        return self.path.name


def _has_model_states(path: Path) -> bool:
    return any(path.glob("*model_states.pt"))


def _hf_step(path: Path, fallback: int) -> int:
    try:
        state = json.loads((path / HF_STATE).read_text())
    except (OSError, ValueError):
        return fallback
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and step >= 0 else fallback


def _has_entries(path: Path) -> bool:
    return any(path.iterdir())


def classify(path: Path) -> Found | None:
    """What ``path`` is as a checkpoint, or None when it is not a complete one: a folder
    with nothing in it (a save cut short), a ``*_universal`` one without its ``zero/``
    (a conversion under way or failed), a tokenizer, logs... are not."""
    name = path.name
    if name.endswith(SAVING_SUFFIX) or name.startswith(".") or not path.is_dir():
        return None
    if (path / "zero").is_dir():
        match = _UNIVERSAL_TAG.match(name) or _GANTRY_TAG.match(name) or _DS_TAG.match(name)
        return Found(path, UNIVERSAL, int(match.group(1)) if match else -1)
    if _UNIVERSAL_TAG.match(name):
        return None
    if match := _HF_TAG.match(name):
        if not (path / HF_STATE).is_file():
            return None  # being written, or cut by a crash: the Trainer could not load it
        return Found(path, HF, _hf_step(path, int(match.group(1))))
    if match := _GANTRY_TAG.match(name) or _MEGATRON_TAG.match(name):
        if not _has_entries(path):
            return None
        kind = GANTRY if name.startswith("step") else MEGATRON
        return Found(path, kind, int(match.group(1)))
    if _has_model_states(path):
        match = _DS_TAG.match(name)
        return Found(path, DEEPSPEED, int(match.group(1)) if match else -1)
    return None


def step_of(path: Path | str) -> int:
    """The step a checkpoint folder holds, -1 when unknown."""
    found = classify(Path(path))
    return found.step if found is not None else -1


def find(checkpoint_dir: str | Path) -> list[Found]:
    """Every checkpoint directly in ``checkpoint_dir``, by step then name."""
    root = Path(checkpoint_dir) if checkpoint_dir else None
    if root is None or not root.is_dir():
        return []
    found = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for path in entries:
        try:
            checkpoint = classify(path)
        except OSError:  # removed or replaced while we looked
            continue
        if checkpoint is not None:
            found.append(checkpoint)
    found.sort(key=lambda f: (f.step, f.tag))
    return found


def _named_latest(root: Path) -> Path | None:
    """The checkpoint a ``latest`` pointer file names (DeepSpeed's, or Megatron's)."""
    try:
        tag = (root / DS_LATEST).read_text().strip()
    except OSError:
        tag = ""
    if tag and "/" not in tag and (root / tag).is_dir():
        return root / tag
    try:
        iteration = (root / MEGATRON_LATEST).read_text().strip()
    except OSError:
        return None
    if iteration.isdigit():
        path = root / f"iter_{int(iteration):07d}"
        return path if path.is_dir() else None
    return None


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint a restart resumes from: the one a ``latest`` file names, else the
    complete non-universal checkpoint with the highest step."""
    if not checkpoint_dir:
        return None
    root = Path(checkpoint_dir)
    named = _named_latest(root)
    if named is not None:
        return named
    candidates = [f for f in find(root) if f.format != UNIVERSAL and f.step >= 0]
    return candidates[-1].path if candidates else None


def resolve_reference(ref: str, checkpoint_dir: str, working_dir: str) -> Path | None:
    """The folder ``ref`` names: "latest"; a tag of ``checkpoint_dir`` (``step200``,
    ``checkpoint-200``); a path relative to ``working_dir``; an absolute path. A folder
    that holds checkpoints (a ``latest`` file or ``checkpoint-N`` folders) stands for its
    latest. None when nothing there is a checkpoint."""
    if not ref:
        return None
    if ref == "latest":
        return latest_checkpoint(checkpoint_dir)
    candidates: list[Path] = []
    if Path(ref).is_absolute():
        candidates.append(Path(ref))
    else:
        if checkpoint_dir and "/" not in ref:
            candidates.append(Path(checkpoint_dir) / ref)
        if working_dir:
            candidates.append(Path(working_dir) / ref)
    for path in candidates:
        if classify(path) is not None:
            return path
        if path.is_dir():
            inner = latest_checkpoint(path)
            if inner is not None:
                return inner
    return None


def list_checkpoints(checkpoint_dir: str) -> list[job_pb2.Checkpoint]:
    """The job's checkpoints as the contract lists them (size, time saved, latest)."""
    latest = latest_checkpoint(checkpoint_dir)
    out = []
    for found in find(checkpoint_dir):
        size, mtime = _size_and_time(found.path)
        checkpoint = job_pb2.Checkpoint(
            tag=found.tag,
            step=found.step,
            path=str(found.path),
            size_bytes=size,
            latest=latest is not None and found.path == latest,
            universal=found.format == UNIVERSAL,
            format=found.format,
        )
        checkpoint.saved.FromNanoseconds(int(mtime * 1e9))
        out.append(checkpoint)
    return out


def _size_and_time(folder: Path) -> tuple[int, float]:
    """Bytes in ``folder`` and the newest file's time. A checkpoint may be written, pruned
    or converted while it is listed: a file that vanishes is left out, not an error."""
    size, newest = 0, 0.0
    # os.walk, not Path.rglob: rglob raises when a folder vanishes between being listed and
    # being opened (a universal conversion deletes its tmp/ as it goes); os.walk skips it.
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                info = os.stat(os.path.join(parent, name))
            except OSError:
                continue
            size += info.st_size
            newest = max(newest, info.st_mtime)
    if not newest:
        try:
            newest = folder.stat().st_mtime
        except OSError:
            newest = 0.0
    return size, newest


def prunable(checkpoint_dir: str | Path, keep: int, protect: set[Path]) -> list[Path]:
    """The checkpoints retention removes: all but the newest ``keep`` by step, never the
    latest, one in ``protect`` (what an attempt resumes from) or a universal one whose
    source is kept. Universal conversions go with their source checkpoint."""
    if keep <= 0:
        return []
    found = [f for f in find(checkpoint_dir) if f.step >= 0]
    plain = [f for f in found if f.format != UNIVERSAL]
    latest = latest_checkpoint(checkpoint_dir)
    kept = {f.path for f in plain[-keep:]} | {p for p in (latest,) if p is not None}
    kept |= {p.resolve() for p in protect} & {f.path.resolve() for f in found}
    kept_steps = {f.step for f in plain if f.path in kept or f.path.resolve() in kept}
    doomed = []
    for f in found:
        if f.path in kept or f.path.resolve() in kept:
            continue
        if f.format == UNIVERSAL and f.step in kept_steps:
            continue
        doomed.append(f.path)
    return doomed
