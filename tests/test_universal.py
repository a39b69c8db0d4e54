"""Telling checkpoints apart: the world size that wrote a ZeRO-3 checkpoint, and a
universal one (agent side and trainer side), on directory layouts as DeepSpeed writes
them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.jobs.leader.universal import UniversalError, checkpoint_world_size, convert_to_universal
from agent.rank.train import is_universal


def plain(root: Path, tag: str, world: int) -> Path:
    path = root / tag
    path.mkdir(parents=True)
    for rank in range(world):
        (path / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"")
        (path / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    return path


def universal(root: Path, tag: str) -> Path:
    path = plain(root, tag, 2)
    (path / "zero" / "model.embed_tokens.weight").mkdir(parents=True)
    return path


def test_world_size_of_a_checkpoint(tmp_path: Path) -> None:
    assert checkpoint_world_size(plain(tmp_path, "step5", 2)) == 2
    assert checkpoint_world_size(plain(tmp_path, "step9", 1)) == 1
    assert checkpoint_world_size(universal(tmp_path, "step5_universal")) == 0
    assert checkpoint_world_size(tmp_path / "missing") == 0


def test_trainer_tells_a_universal_checkpoint(tmp_path: Path) -> None:
    plain(tmp_path, "step5", 2)
    universal(tmp_path, "step5_universal")
    assert is_universal(tmp_path, "step5_universal")
    assert not is_universal(tmp_path, "step5")
    (tmp_path / "latest").write_text("step5\n")
    assert not is_universal(tmp_path, None)
    (tmp_path / "latest").write_text("step5_universal\n")
    assert is_universal(tmp_path, None)
    assert not is_universal(tmp_path / "empty", None)


def test_convert_reuses_and_refuses(tmp_path: Path) -> None:
    done = universal(tmp_path, "step5_universal")
    assert asyncio.run(convert_to_universal(done)) == str(done)  # already universal
    converted = universal(tmp_path, "step7_universal")
    (converted / ".complete").write_text("")
    assert asyncio.run(convert_to_universal(plain(tmp_path, "step7", 2))) == str(converted)
    with pytest.raises(UniversalError, match="no checkpoint"):
        asyncio.run(convert_to_universal(None))
    with pytest.raises(UniversalError, match="to universal failed"):
        asyncio.run(convert_to_universal(plain(tmp_path, "step8", 2)))  # empty files
