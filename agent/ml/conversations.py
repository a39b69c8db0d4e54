"""The conversation format: turns, their rendering with the chat markers, token ids with
the loss mask, padded batches, and the byte-level BPE tokenizer that knows the markers.

A conversation is a JSON line `{"text": [system, user, system, user, ...]}`, read in
(system, user) pairs; the user entry holds the reply after an `<end>` marker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

END_MARKER = "<end>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]
IGNORE_INDEX = -100


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
