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

This module reads prepared data (the dataset, each rank's share and batches) and runs the
command; the format and the tokenizer are `agent.ml.conversations`, preparing is
`agent.ml.data_prepare`. Their public names are importable from here too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import PreTrainedTokenizerBase

from agent.ml.conversations import (
    ASSISTANT_TOKEN,
    END_MARKER,
    EOS_TOKEN,
    IGNORE_INDEX,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    SYSTEM_TOKEN,
    USER_TOKEN,
    Example,
    MalformedConversation,
    Turn,
    collate,
    encode_turns,
    ensure_chat_tokens,
    eval_prompts,
    load_tokenizer,
    parse_conversation,
    prompt_segment,
    response_segment,
    split_user,
    train_tokenizer,
    wrap_tokenizer,
)
from agent.ml.data_prepare import (
    DROP_REASONS,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    REPORT,
    SHARD_SIZE,
    TOKENIZER_DIR,
    file_lock,
    file_sha256,
    is_prepared_dir,
    prepare,
)

__all__ = [
    "ASSISTANT_TOKEN",
    "DROP_REASONS",
    "END_MARKER",
    "EOS_TOKEN",
    "FORMAT_VERSION",
    "IGNORE_INDEX",
    "LOCK",
    "MANIFEST",
    "PAD_TOKEN",
    "REPORT",
    "SHARD_SIZE",
    "SPECIAL_TOKENS",
    "SYSTEM_TOKEN",
    "TOKENIZER_DIR",
    "USER_TOKEN",
    "ConversationDataset",
    "Example",
    "MalformedConversation",
    "Turn",
    "batches_per_epoch",
    "collate",
    "encode_turns",
    "ensure_chat_tokens",
    "eval_prompts",
    "file_lock",
    "file_sha256",
    "is_prepared_dir",
    "load_tokenizer",
    "main",
    "parse_conversation",
    "prepare",
    "prompt_segment",
    "rank_batches",
    "rank_sampler",
    "response_segment",
    "split_user",
    "train_tokenizer",
    "wrap_tokenizer",
]


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
