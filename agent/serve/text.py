"""Streaming text of one completion: incremental detokenization and stop strings (pure).

Text is emitted only once it is final: a trailing partial UTF-8 character (decoded as
U+FFFD) waits for its next bytes, and a tail that could still grow into a stop string
is held back until it cannot. The concatenation of the emitted pieces is the text of
the whole completion, cut before the first stop string.

Decoding uses the offsets scheme of vLLM and TGI: each new piece is the difference
between decoding the ids from a few tokens back with and without the new ones, so
tokenizers that drop or merge leading spaces still give the right text while each
step decodes only a few tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Decode = Callable[[Sequence[int]], str]
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT = "\ufffd"


def text_decoder(tokenizer: Any) -> Decode:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, calling the Rust tokenizer
    directly when the wrapper would only pass the ids through (no clean-up of spaces):
    the wrapper's Python costs ~3x the decoding itself, twice per token per sequence."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if (
        backend is not None
        and hasattr(backend, "decode")
        and not getattr(tokenizer, "clean_up_tokenization_spaces", True)
    ):

        def fast(ids: Sequence[int]) -> str:
            return str(backend.decode(list(ids), skip_special_tokens=True))

        return fast

    def wrapped(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    return wrapped


class TextStream:
    def __init__(self, decode: Decode, prompt_ids: Sequence[int], stop: Sequence[str]) -> None:
        self._decode = decode
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._stop = [s for s in stop if s]
        self._text = ""  # the completion's text so far, including what is held back
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """What has been emitted so far."""
        return self._text[: self._emitted]

    def push(self, token_ids: Sequence[int]) -> str:
        """Adds generated ids; returns the text that became final (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        self._read(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The completion ended (end of text, length): releases what was held back,
        a partial character included (as U+FFFD, as decoding the whole text gives it)."""
        if self.stopped:
            return ""
        self._read(final=True)
        return self._release(final=True)

    def _read(self, final: bool) -> None:
        if self._read_offset == len(self._ids):
            return
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and (final or not full.endswith(REPLACEMENT)):
            self._text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)

    def _release(self, final: bool) -> str:
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            self._text = self._text[:cut]
            end = cut
        elif final:
            end = len(self._text)
        else:
            end = len(self._text) - self._held_back()
        end = max(end, self._emitted)
        piece = self._text[self._emitted : end]
        self._emitted = end
        return piece

    def _find_stop(self) -> int | None:
        if not self._stop:
            return None
        longest = max(len(s) for s in self._stop)
        start = max(0, self._emitted - longest + 1)
        hits = [i for s in self._stop if (i := self._text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        tail = self._text[self._emitted :]
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(tail)), best, -1):
                if tail.endswith(stop[:n]):
                    best = n
                    break
        return best
