"""Preparing a JSONL file of conversations for training, once per input and settings: clean
it, train (or adopt) the tokenizer, write shards, a report and, last, the manifest.

Concurrent callers (every rank of a node) serialize on a file lock, so all of them see one
finished result; preparing the same input again with the same settings is a no-op.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.ml.conversations import (
    MalformedConversation,
    Turn,
    encode_turns,
    ensure_chat_tokens,
    load_tokenizer,
    parse_conversation,
    train_tokenizer,
)

SHARD_SIZE = 1000
MANIFEST = "manifest.json"
REPORT = "prepare_report.json"
TOKENIZER_DIR = "tokenizer"
LOCK = ".prepare.lock"
FORMAT_VERSION = 1
DROP_REASONS = ("malformed", "empty_response", "duplicate", "over_length")


def _tokenizer_texts(conversations: Iterable[list[Turn]]) -> Iterator[str]:
    for turns in conversations:
        for t in turns:
            yield f" {t.system}"
            yield f" {t.prompt}"
            yield f" {t.response}"


def _log(message: str) -> None:
    print(f"gantry: {message}", flush=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_prepared_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _manifest_key(
    input_sha: str, max_length: int, shard_size: int, tokenizer: Path | None
) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "input_sha256": input_sha,
        "max_length": max_length,
        "shard_size": shard_size,
        "tokenizer_source": str(tokenizer.resolve()) if tokenizer else "trained",
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def prepare(
    data: Path,
    out: Path,
    max_length: int,
    *,
    tokenizer: Path | None = None,
    shard_size: int = SHARD_SIZE,
    vocab_size: int = 4096,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Clean `data` into shards under `out` once; returns the report (`"skipped": True`
    when `out` already holds this input prepared with these settings)."""
    if max_length < 1 or shard_size < 1:
        raise ValueError("max_length and shard_size must be positive")
    log = log or _log
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / LOCK):
        key = _manifest_key(file_sha256(data), max_length, shard_size, tokenizer)
        manifest_path = out / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if {k: manifest.get(k) for k in key} == key and all(
                (out / s).is_file() for s in manifest["shards"]
            ):
                report: dict[str, Any] = json.loads((out / REPORT).read_text())
                report["skipped"] = True
                log(f"{out} already holds {data} prepared; nothing to do")
                return report
        return _prepare_locked(data, out, max_length, key, tokenizer, shard_size, vocab_size, log)


def _prepare_locked(
    data: Path,
    out: Path,
    max_length: int,
    key: dict[str, Any],
    tokenizer_path: Path | None,
    shard_size: int,
    vocab_size: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    (out / MANIFEST).unlink(missing_ok=True)
    for old in out.glob("shard-*.jsonl"):
        old.unlink()
    dropped = dict.fromkeys(DROP_REASONS, 0)
    seen: set[str] = set()
    kept: list[tuple[str, list[Turn]]] = []
    read = 0
    with data.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            read += 1
            try:
                record = json.loads(line)
                turns = parse_conversation(record)
            except (ValueError, MalformedConversation):
                dropped["malformed"] += 1
                continue
            if any(not t.response for t in turns):
                dropped["empty_response"] += 1
                continue
            canonical = json.dumps(record["text"], ensure_ascii=False)
            if canonical in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(canonical)
            kept.append((canonical, turns))

    tok_dir = out / TOKENIZER_DIR
    if tokenizer_path is not None:
        tok = load_tokenizer(tokenizer_path)
        ensure_chat_tokens(tok)
    else:
        tok = train_tokenizer(_tokenizer_texts(t for _, t in kept), vocab_size)
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok.save_pretrained(str(tok_dir))

    final: list[str] = []
    for canonical, turns in kept:
        if len(encode_turns(turns, tok)["input_ids"]) > max_length:
            dropped["over_length"] += 1
        else:
            final.append(canonical)

    shards = []
    for i in range(max(1, math.ceil(len(final) / shard_size))):
        name = f"shard-{i:05d}.jsonl"
        chunk = final[i * shard_size : (i + 1) * shard_size]
        _write_atomic(out / name, "".join(f'{{"text": {c}}}\n' for c in chunk))
        shards.append(name)

    report = {
        "input": str(data),
        "input_sha256": key["input_sha256"],
        "max_length": max_length,
        "read": read,
        "kept": len(final),
        "dropped": dropped,
        "shards": shards,
        "tokenizer": str(tok_dir),
        "vocab_size": len(tok),
        "skipped": False,
    }
    _write_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")
    _write_atomic(
        out / MANIFEST,
        json.dumps({**key, "shards": shards, "conversations": len(final)}, indent=2) + "\n",
    )
    log(
        f"prepared {data}: read {read}, kept {len(final)} in {len(shards)} shard(s); "
        + "dropped "
        + ", ".join(f"{reason} {n}" for reason, n in dropped.items())
    )
    return report
