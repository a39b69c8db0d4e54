"""Checkpoint conventions (Gantry, DeepSpeed, Hugging Face, universal, Megatron), the one a
restart resumes from, and how it reaches a script's command line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import job_pb2
from gantry.v1.rules import args_resume

from agent.jobs.checkpoints import (
    classify,
    find,
    latest_checkpoint,
    list_checkpoints,
    prunable,
    resolve_reference,
    step_of,
)
from agent.jobs.leader.universal import checkpoint_world_size, nested_deepspeed_tag
from agent.jobs.resume_args import with_resume


def ds_tag(root: Path, tag: str, ranks: int = 2, stage: int = 3) -> Path:
    """What engine.save_checkpoint writes (file names as DeepSpeed 0.19 writes them)."""
    folder = root / tag
    folder.mkdir(parents=True)
    for rank in range(ranks):
        if stage == 3:
            (folder / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"m")
        (folder / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"o")
    if stage != 3:
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"m")
    return folder


def hf_checkpoint(root: Path, step: int, complete: bool = True, deepspeed: int = 0) -> Path:
    """What transformers' Trainer writes in output_dir at each save."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 10)
    if deepspeed:
        ds_tag(folder, f"global_step{step}", ranks=deepspeed, stage=2)
        (folder / "latest").write_text(f"global_step{step}")
    if complete:
        state = {"global_step": step, "log_history": [{"loss": 2.0, "step": step}]}
        (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_gantry_tags_with_latest_and_a_tokenizer_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    for step in (20, 40):
        ds_tag(tmp_path, f"step{step}")
    (tmp_path / "latest").write_text("step20")  # the latest file wins over the highest step
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    ds_tag(tmp_path, "step40_universal").joinpath("zero").mkdir()
    found = find(tmp_path)
    assert [(f.tag, f.format, f.step) for f in found] == [
        ("step20", "gantry", 20),
        ("step40", "gantry", 40),
        ("step40_universal", "universal", 40),
    ]
    assert latest_checkpoint(tmp_path) == tmp_path / "step20"
    listed = list_checkpoints(str(tmp_path))
    assert [c.tag for c in listed if c.latest] == ["step20"]
    assert [c.universal for c in listed] == [False, False, True]
    assert all(c.size_bytes > 0 and c.saved.seconds > 0 for c in listed)


class _Listed:
    """A finished os.scandir listing, usable as scandir's own iterator is."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = iter(entries)

    def __enter__(self) -> _Listed:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> _Listed:
        return self

    def __next__(self) -> os.DirEntry[str]:
        return next(self._entries)

    def close(self) -> None:
        return None


def test_a_folder_deleted_while_listed_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A universal conversion deletes its tmp/ folders as it goes: one vanishes between its
    # parent's listing and its own (under load, seen in a fresh clone's DeepSpeed test).
    ds_tag(tmp_path, "step20")
    universal = ds_tag(tmp_path, "step20_universal")
    (universal / "zero").mkdir()
    (universal / "tmp" / "model.layers.0.self_attn.o_proj.weight").mkdir(parents=True)
    real_scandir = os.scandir

    def list_then_delete(path: Any = ".") -> _Listed:
        with real_scandir(path) as listing:
            entries = list(listing)
        if not isinstance(path, int) and Path(path) == universal:  # rmtree lists by fd
            shutil.rmtree(universal / "tmp")
        return _Listed(entries)

    monkeypatch.setattr(os, "scandir", list_then_delete)
    listed = list_checkpoints(str(tmp_path))
    assert [c.tag for c in listed] == ["step20", "step20_universal"]
    assert listed[1].size_bytes > 0 and not (universal / "tmp").exists()


def test_hf_output_dir_latest_is_the_highest_complete_checkpoint(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path, 10)
    hf_checkpoint(tmp_path, 30)
    hf_checkpoint(tmp_path, 40, complete=False)  # killed while saving
    (tmp_path / "runs").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-30"
    assert [c.tag for c in list_checkpoints(str(tmp_path))] == ["checkpoint-10", "checkpoint-30"]
    assert list_checkpoints(str(tmp_path))[0].format == "hf"
    # the step is the Trainer's own count, from trainer_state.json
    odd = hf_checkpoint(tmp_path / "other", 5)
    (odd / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert step_of(odd) == 7


def test_deepspeed_default_tags_and_megatron_iterations(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds_tag(ds, "global_step100", stage=2)
    ds_tag(ds, "my-tag", stage=2)
    (ds / "latest").write_text("my-tag\n")
    assert [(f.tag, f.step) for f in find(ds)] == [("my-tag", -1), ("global_step100", 100)]
    assert latest_checkpoint(ds) == ds / "my-tag"
    mega = tmp_path / "mega"
    for it in (500, 1000):
        (mega / f"iter_{it:07d}" / "mp_rank_00").mkdir(parents=True)
    (mega / "latest_checkpointed_iteration.txt").write_text("500")
    assert latest_checkpoint(mega) == mega / "iter_0000500"
    assert classify(mega / "iter_0001000") is not None and step_of(mega / "iter_0001000") == 1000
    assert latest_checkpoint(tmp_path / "missing") is None and find("") == []


def test_references_resolve_in_checkpoint_dir_then_working_dir(tmp_path: Path) -> None:
    ckpt = tmp_path / "out" / "checkpoints"
    ds_tag(ckpt, "step200")
    (ckpt / "latest").write_text("step200")
    other = tmp_path / "other-job" / "out"
    hf_checkpoint(other, 50)
    work = str(tmp_path)
    assert resolve_reference("step200", str(ckpt), work) == ckpt / "step200"
    assert resolve_reference("latest", str(ckpt), work) == ckpt / "step200"
    assert resolve_reference("out/checkpoints/step200", str(ckpt), work) == ckpt / "step200"
    assert resolve_reference(str(ckpt), "", work) == ckpt / "step200"  # a folder: its latest
    assert resolve_reference("other-job/out", str(ckpt), work) == other / "checkpoint-50"
    assert resolve_reference("step300", str(ckpt), work) is None
    assert resolve_reference("tokenizer", str(ckpt), work) is None


def test_world_size_of_zero_checkpoints(tmp_path: Path) -> None:
    assert checkpoint_world_size(ds_tag(tmp_path, "step1", ranks=2, stage=3)) == 2
    assert checkpoint_world_size(ds_tag(tmp_path, "step2", ranks=1, stage=2)) == 1
    universal = ds_tag(tmp_path, "step3_universal", ranks=2)
    (universal / "zero").mkdir()
    assert checkpoint_world_size(universal) == 0
    hf = hf_checkpoint(tmp_path, 9, deepspeed=4)
    assert checkpoint_world_size(hf) == 0
    inner = nested_deepspeed_tag(hf)
    assert inner == hf / "global_step9" and checkpoint_world_size(inner) == 4
    assert nested_deepspeed_tag(hf_checkpoint(tmp_path, 10)) is None


def spec(args: list[str], flag: str = "") -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        name="j",
        command=["python", "train.py"],
        args=args,
        restart=job_pb2.RestartPolicy(resume="latest", resume_flag=flag),
    )


def test_the_resume_flag_is_replaced_added_or_dropped() -> None:
    s = spec(["--resume_from_checkpoint", "latest", "--lr", "1"])
    argv = ["train.py", *s.args]
    assert with_resume(argv, s, "/c/checkpoint-30") == [
        "train.py",
        "--lr",
        "1",
        "--resume_from_checkpoint",
        "/c/checkpoint-30",
    ]
    # nothing to resume from: a script would look for a folder called "latest"
    assert with_resume(argv, s, "") == ["train.py", "--lr", "1"]
    assert with_resume(["t", "--resume_from_checkpoint=latest"], s, "") == ["t"]
    # another value the job gave, and nothing resolved: left to the script
    kept = ["t", "--resume_from_checkpoint", "/x/step9"]
    assert with_resume(kept, s, "") == kept
    assert with_resume(["t"], s, "/c/s") == ["t", "--resume_from_checkpoint", "/c/s"]


def test_a_job_names_its_own_flag() -> None:
    megatron = spec(["--load", "old", "--save", "out"], flag="--load")
    assert with_resume(["p", *megatron.args], megatron, "/out") == [
        "p",
        "--save",
        "out",
        "--load",
        "/out",
    ]
    joined = spec([], flag="--resume=")
    assert with_resume(["p", "--resume=a"], joined, "/c/b") == ["p", "--resume=/c/b"]
    assert args_resume(["p", "--load", "a", "--load=b"], "--load") == "b"
    assert args_resume(["p", "--load"], "--load") is None


def test_retention_keeps_the_newest_the_latest_and_what_an_attempt_resumed_from(
    tmp_path: Path,
) -> None:
    for step in (10, 20, 30, 40, 50):
        ds_tag(tmp_path, f"step{step}")
    (tmp_path / "latest").write_text("step20")  # an older latest (a --from restart): kept
    ds_tag(tmp_path, "step10_universal").joinpath("zero").mkdir()  # goes with step10
    ds_tag(tmp_path, "step20_universal").joinpath("zero").mkdir()  # stays with step20
    (tmp_path / "tokenizer").mkdir()
    doomed = prunable(tmp_path, 2, protect={tmp_path / "step30"})
    assert sorted(p.name for p in doomed) == ["step10", "step10_universal"]
    assert prunable(tmp_path, 0, set()) == []
    hf = tmp_path / "hf"
    for step in (5, 10, 15):
        hf_checkpoint(hf, step)
    hf_checkpoint(hf, 20, complete=False)  # being written: neither counted nor removed
    assert [p.name for p in prunable(hf, 1, set())] == ["checkpoint-5", "checkpoint-10"]


def test_only_real_checkpoints_are_listed_never_a_tokenizer_or_a_save_cut_short(
    tmp_path: Path,
) -> None:
    # What agent.train leaves in checkpoint_dir, and what a crash or a conversion leaves.
    ds_tag(tmp_path, "step20")
    ds_tag(tmp_path, "step40")
    (tmp_path / "latest").write_text("step40")
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tokenizer / name).write_text("{}")
    (tmp_path / "logs").mkdir()
    (tmp_path / "runs" / "events").mkdir(parents=True)
    (tmp_path / "step60").mkdir()  # killed as the save began
    (tmp_path / "step40_universal" / "tmp").mkdir(parents=True)  # being converted
    (tmp_path / "ds_config.json").write_text("{}")
    listed = list_checkpoints(str(tmp_path))
    assert [(c.tag, c.step) for c in listed] == [("step20", 20), ("step40", 40)]
    assert resolve_reference("step60", str(tmp_path), "") is None
    assert resolve_reference("tokenizer", str(tmp_path), "") is None
    (tmp_path / "step40_universal" / "zero").mkdir()  # converted
    assert [c.tag for c in list_checkpoints(str(tmp_path))][-1] == "step40_universal"
