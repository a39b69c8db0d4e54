"""Prompts for a load test: a file of them, or a small built-in set.

The file is JSONL or one JSON array, of records in the shapes load tests are fed in the
wild: `{"prompt": ...}` or `{"text": ...}`; OpenAI's chat format `{"messages": [{"role":
"user", "content": ...}, ...]}`; ShareGPT's `{"conversations": [{"from": "human", "value":
...}, ...]}` (vLLM's and SGLang's benches load ShareGPT_V3_unfiltered_cleaned_split.json);
Alpaca's `{"instruction": ..., "input": ...}`. A conversation gives its first user turn,
as vLLM's bench takes it. A ShareGPT dump has conversations with no user turn (vLLM's
bench skips them too): those are skipped and counted; any other unusable record is an
error naming its line or index.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# Each prompt becomes a serialized request held by every worker: a 600 MB dump is cut
# to its first this many usable prompts (vLLM's bench samples 1,000 by default).
MAX_PROMPTS = 10_000
_SHAPES = '"prompt", "text", "messages", "conversations" or "instruction"'
_USER_ROLES = ("user", "human")


@dataclass
class PromptSet:
    prompts: list[str]
    skipped: int = 0  # conversations with no user turn
    more: bool = False  # usable prompts past MAX_PROMPTS were left out


def read_prompts(path: Path | None) -> PromptSet:
    if path is None:
        return PromptSet(list(BUILT_IN))
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise LoadTestError(f"--prompts {path}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except ValueError as exc:
            raise LoadTestError(f"--prompts {path}: not JSON ({exc})") from None
        records = [(f"record {i}", r) for i, r in enumerate(array)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except ValueError:
                raise LoadTestError(f"--prompts {path} line {number}: not JSON") from None
    read = PromptSet([])
    for where, record in records:
        prompt = _prompt(record)
        if prompt is None and isinstance(record, dict) and "conversations" in record:
            read.skipped += 1
            continue
        if not prompt:
            raise LoadTestError(f"--prompts {path} {where}: needs a non-empty {_SHAPES}")
        if len(read.prompts) == MAX_PROMPTS:
            read.more = True
            break
        read.prompts.append(prompt)
    if not read.prompts:
        raise LoadTestError(f"--prompts {path}: no prompts in the file")
    return read


def _prompt(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("prompt", "text"):
        if key in record:
            value = record[key]
            return value if isinstance(value, str) else None
    if "messages" in record:
        return _first_turn(record["messages"], "role", "content")
    if "conversations" in record:
        return _first_turn(record["conversations"], "from", "value")
    instruction = record.get("instruction")
    if isinstance(instruction, str) and instruction:
        extra = record.get("input")
        return f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra else instruction
    return None


def _first_turn(turns: Any, role: str, content: str) -> str | None:
    """The first user turn's text (a string, or OpenAI's list of text parts)."""
    if not isinstance(turns, list):
        return None
    for turn in turns:
        if isinstance(turn, dict) and turn.get(role) in _USER_ROLES:
            value = turn.get(content)
            if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
                value = "".join(
                    p.get("text", "")
                    for p in value
                    if isinstance(p, dict) and p.get("type") == "text"
                )
            return value if isinstance(value, str) and value else None
    return None


def describe_requests(read: PromptSet | None, path: Path | None, data: str = "") -> str:
    """Which requests a run sends, for telling whether two runs are comparable: the
    prompts (where they came from, how many, a digest) or the --data body's digest."""
    if read is None:
        return f"--data sha256 {_digest([data or '{}'])}"
    texts = read.prompts
    source = "built-in" if path is None else path.name
    count = f"{len(texts)} prompt{'' if len(texts) == 1 else 's'}"
    if read.more:
        count = f"the first {count}"
    if read.skipped:
        count += f" ({read.skipped} conversations with no user turn skipped)"
    return f"{source}: {count}, sha256 {_digest(texts)}"


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
