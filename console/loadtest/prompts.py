"""Prompts for the Gantry endpoint: a JSONL file ("prompt" or "text"), or a small built-in set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from console.loadtest.config import LoadTestError

BUILT_IN = (
    "Summarise the causes of the French Revolution in three sentences.",
    "Write a haiku about a GPU cluster at night.",
    "Explain gradient accumulation to a new engineer.",
    "List five uses of a mixture-of-experts model.",
    "Translate 'the quick brown fox jumps over the lazy dog' into French.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Describe ZeRO stage 3 in one paragraph.",
    "Give three tips for writing clear commit messages.",
)


def load_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(BUILT_IN)
    prompts: list[str] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise LoadTestError(f"--prompts {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise LoadTestError(f"--prompts {path} line {number}: not JSON") from None
        text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            raise LoadTestError(
                f'--prompts {path} line {number}: needs a non-empty "prompt" or "text"'
            )
        prompts.append(text)
    if not prompts:
        raise LoadTestError(f"--prompts {path}: no prompts in the file")
    return prompts


def describe_requests(prompts: list[str] | None, path: Path | None, data: str = "") -> str:
    """Which requests a run sends, for telling whether two runs are comparable: the
    prompts (where they came from, how many, a digest) or the --data body's digest."""
    if prompts is None:
        return f"--data sha256 {_digest([data or '{}'])}"
    source = "built-in" if path is None else path.name
    count = f"{len(prompts)} prompt{'' if len(prompts) == 1 else 's'}"
    return f"{source}: {count}, sha256 {_digest(prompts)}"


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
