"""Multi-turn conversation data: parsing, cleaning, sharding, tokenizing, batching.

A conversation is a JSON line `{"text": [system, user, system, user, ...]}`, read in
(system, user) pairs. The user entry holds the reply after an `<end>` marker: the
prompt is the text before it, the response the text after it (empty when there is
no marker). A conversation trains as one sequence of its rendered turns,

    <|system|> SYSTEM<|user|> PROMPT<|assistant|> RESPONSE<|endoftext|> ...

with the loss on the response tokens (and their end-of-text) only.

    python -m agent.ml.data prepare --data IN.jsonl --out DIR --max-length N

cleans the data (drops malformed conversations, those with an empty response, exact
duplicates and those longer than N tokens), trains a byte-level BPE tokenizer on it
(DIR/tokenizer, unless --tokenizer names one), and writes shards of 1,000
conversations (DIR/shard-00000.jsonl, ...), DIR/prepare_report.json and, last,
DIR/manifest.json holding the input's hash: preparing the same input again is a no-op.
Concurrent callers (every rank of a node) serialize on a file lock, so all of them
see one finished result.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

END_MARKER = "<end>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]
IGNORE_INDEX = -100

SHARD_SIZE = 1000
MANIFEST = "manifest.json"
REPORT = "prepare_report.json"
TOKENIZER_DIR = "tokenizer"
LOCK = ".prepare.lock"
FORMAT_VERSION = 1
DROP_REASONS = ("malformed", "empty_response", "duplicate", "over_length")


@dataclass(frozen=True)
class Turn:
    system: str
    prompt: str
    response: str


class Example(TypedDict):
    input_ids: list[int]
    labels: list[int]


class MalformedConversation(ValueError):
    pass


def split_user(user: str) -> tuple[str, str]:
    """(prompt, response): the text before and after the first `<end>`; no marker, no reply."""
    prompt, marker, response = user.partition(END_MARKER)
    if not marker:
        return user.strip(), ""
    return prompt.strip(), response.strip()


def parse_conversation(record: object) -> list[Turn]:
    """The turns of one record; MalformedConversation when it is not a conversation."""
    if not isinstance(record, dict) or "text" not in record:
        raise MalformedConversation('expected an object with a "text" list')
    text = record["text"]
    if not isinstance(text, list) or not text or not all(isinstance(t, str) for t in text):
        raise MalformedConversation('"text" must be a non-empty list of strings')
    if len(text) % 2:
        raise MalformedConversation('"text" must hold (system, user) pairs')
    turns = []
    for system, user in zip(text[0::2], text[1::2], strict=True):
        prompt, response = split_user(user)
        turns.append(Turn(system.strip(), prompt, response))
    return turns


def prompt_segment(turn: Turn) -> str:
    return f"{SYSTEM_TOKEN} {turn.system}{USER_TOKEN} {turn.prompt}{ASSISTANT_TOKEN}"


def response_segment(turn: Turn) -> str:
    return f" {turn.response}{EOS_TOKEN}"


def eval_prompts(turns: Sequence[Turn]) -> list[tuple[str, str]]:
    """(model input, reference reply) for every turn: the earlier turns, with their
    reference replies, then this turn's prompt. Generate until EOS_TOKEN, decode the new
    tokens with skip_special_tokens=True and strip: that is the model's reply."""
    out = []
    history = ""
    for turn in turns:
        out.append((history + prompt_segment(turn), turn.response))
        history += prompt_segment(turn) + response_segment(turn)
    return out


def encode_turns(
    turns: Sequence[Turn], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> Example:
    """Token ids with labels: IGNORE_INDEX on prompts, the ids on responses; truncated."""
    segments: list[str] = []
    for turn in turns:
        segments += [prompt_segment(turn), response_segment(turn)]
    encoded = tokenizer(segments, add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for i, ids in enumerate(encoded):
        input_ids += ids
        labels += list(ids) if i % 2 else [IGNORE_INDEX] * len(ids)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return Example(input_ids=input_ids, labels=labels)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask and labels (IGNORE_INDEX on padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(e["labels"], dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- tokenizer ------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (no hub), wrapped for transformers.

    Texts are split on whitespace before merging, so a word seen often enough becomes
    one token (a leading space belongs to the word, as GPT-2 does it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Any) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        padding_side="right",
    )


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(path))
    return tok


def ensure_chat_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """A tokenizer from elsewhere gets our markers as special tokens (and a pad token)."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS_TOKEN


def _tokenizer_texts(conversations: Iterable[list[Turn]]) -> Iterator[str]:
    for turns in conversations:
        for t in turns:
            yield f" {t.system}"
            yield f" {t.prompt}"
            yield f" {t.response}"


# --- prepare --------------------------------------------------------------------------


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


# --- reading shards -------------------------------------------------------------------


class ConversationDataset(Dataset[Example]):
    """The conversations of a prepared directory, read lazily through line offsets."""

    def __init__(self, data_dir: Path, tokenizer: PreTrainedTokenizerBase, max_length: int):
        manifest = json.loads((data_dir / MANIFEST).read_text())
        self.files = [data_dir / s for s in manifest["shards"]]
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.index: list[tuple[int, int]] = []
        for file_no, path in enumerate(self.files):
            offset = 0
            with path.open("rb") as f:
                for line in f:
                    if line.strip():
                        self.index.append((file_no, offset))
                    offset += len(line)
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def turns(self, i: int) -> list[Turn]:
        file_no, offset = self.index[i]
        handle = self._handles.get(file_no)
        if handle is None:
            handle = self._handles[file_no] = self.files[file_no].open("rb")
        handle.seek(offset)
        return parse_conversation(json.loads(handle.readline()))

    def __getitem__(self, i: int) -> Example:
        return encode_turns(self.turns(i), self.tokenizer, self.max_length)


def rank_sampler(
    dataset: Dataset[Example], rank: int, world_size: int, seed: int, epoch: int
) -> DistributedSampler[int]:
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    return sampler


def batches_per_epoch(dataset: Dataset[Example], world_size: int, micro_batch: int) -> int:
    per_rank = math.ceil(len(dataset) / world_size)  # type: ignore[arg-type]
    return math.ceil(per_rank / micro_batch)


def rank_batches(
    dataset: Dataset[Example],
    *,
    rank: int,
    world_size: int,
    micro_batch: int,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
    pad_id: int,
) -> DataLoader[Example]:
    """This rank's micro-batches of `epoch` (a DistributedSampler's share, shuffled with
    seed+epoch), after the first `skip_batches` of them: a resume does not repeat data."""
    indices = list(rank_sampler(dataset, rank, world_size, seed, epoch))
    return DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=indices[skip_batches * micro_batch :],
        collate_fn=lambda examples: collate(examples, pad_id),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.ml.data")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="clean and shard a JSONL file of conversations")
    p.add_argument("--data", required=True, type=Path, help="input JSONL")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--max-length", required=True, type=int, help="tokens per conversation")
    p.add_argument("--tokenizer", type=Path, help="use this tokenizer instead of training one")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    p.add_argument("--vocab-size", type=int, default=4096, help="for the trained tokenizer")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    report = prepare(
        args.data,
        args.out,
        args.max_length,
        tokenizer=args.tokenizer,
        shard_size=args.shard_size,
        vocab_size=args.vocab_size,
    )
    print(json.dumps(report["dropped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
