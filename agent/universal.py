"""Converting a DeepSpeed checkpoint to a universal one, so training can resume at
another world size (DeepSpeed refuses a plain checkpoint at a different size)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

CONVERT_TIMEOUT_S = 600.0


class UniversalError(Exception):
    pass


def checkpoint_world_size(checkpoint: Path) -> int:
    """How many data-parallel ranks wrote a ZeRO-3 checkpoint tag directory (one
    zero_pp_rank_N model-states file each); 0 for a universal or unknown one."""
    if (checkpoint / "zero").is_dir():
        return 0
    return len(list(checkpoint.glob("zero_pp_rank_*_mp_rank_00_model_states.pt")))


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
