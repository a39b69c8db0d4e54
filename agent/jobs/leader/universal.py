"""Converting a DeepSpeed checkpoint to a universal one, so training can resume at
another world size (DeepSpeed refuses a plain checkpoint at a different size)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

CONVERT_TIMEOUT_S = 600.0


class UniversalError(Exception):
    pass


# One file per data-parallel rank: ZeRO-3 model and optimizer states, ZeRO-1/2 optimizer
# states (bf16_ in front under bf16 at stage 1/2).
_ZERO_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:model|optim)_states\.pt$")


def checkpoint_world_size(checkpoint: Path) -> int:
    """How many data-parallel ranks wrote a DeepSpeed ZeRO checkpoint tag directory;
    0 when any world size can load it (universal, no ZeRO partitions, or unknown)."""
    if (checkpoint / "zero").is_dir() or not checkpoint.is_dir():
        return 0
    ranks = {int(m.group(1)) for p in checkpoint.iterdir() if (m := _ZERO_FILE.match(p.name))}
    return len(ranks)


def nested_deepspeed_tag(checkpoint: Path) -> Path | None:
    """The DeepSpeed tag folder inside a Hugging Face ``checkpoint-N`` (Trainer with
    ``--deepspeed`` saves the engine there, with its own ``latest`` file)."""
    try:
        tag = (checkpoint / "latest").read_text().strip()
    except OSError:
        return None
    inner = checkpoint / tag
    return inner if tag and "/" not in tag and inner.is_dir() else None


async def convert_to_universal(checkpoint: Path | None) -> str:
    """Returns the universal checkpoint's path (converting once; reused afterwards)."""
    if checkpoint is None:
        raise UniversalError("no checkpoint to convert to a universal one")
    if checkpoint.name.endswith("_universal"):
        return str(checkpoint)
    target = checkpoint.with_name(checkpoint.name + "_universal")
    if (target / ".complete").exists():
        return str(target)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(checkpoint),
        "--output_folder",
        str(target),
        "--inject_missing_state",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), CONVERT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        raise UniversalError(f"converting {checkpoint} to universal timed out") from None
    if process.returncode != 0:
        last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise UniversalError(f"converting {checkpoint} to universal failed: {last[0]}")
    (target / ".complete").write_text("")
    return str(target)
