"""Streaming text of one completion: incremental detokenization and stop strings (pure).

Text is emitted only once it is final: a trailing partial UTF-8 character (decoded as
U+FFFD) waits for its next bytes, and a tail that could still grow into a stop string
is held back until it cannot. The concatenation of the emitted pieces is the text of
the whole completion, cut before the first stop string.

Decoding uses the offsets scheme of vLLM and TGI: each new piece is the difference
between decoding the ids from a few tokens back with and without the new ones, so
tokenizers that drop or merge leading spaces still give the right text while each
step decodes only a few tokens. With a fast tokenizer decoded as is, the Rust
tokenizer's own `DecodeStream` runs that scheme (one call per token); the Python one
here does for other tokenizers, and ends every stream (a partial character at the end).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

Decode = Callable[[Sequence[int]], str]
# A token into an incremental decoder: the text it makes final, or None (not yet whole).
Step = Callable[[int], "str | None"]
# An incremental decoder after these ids, or None where the Python scheme must decode.
StreamOf = Callable[[Sequence[int]], "Step | None"]
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT = "\ufffd"


def _fast_backend(tokenizer: Any) -> Any:
    """The Rust tokenizer, where the wrapper would only pass ids through to it (no
    clean-up of spaces); else None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "decode"):
        return None
    return None if getattr(tokenizer, "clean_up_tokenization_spaces", True) else backend


def text_decoder(tokenizer: Any) -> Decode:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, calling the Rust tokenizer
    directly when the wrapper would only pass the ids through (no clean-up of spaces):
    the wrapper's Python costs ~3x the decoding itself, twice per token per sequence."""
    backend = _fast_backend(tokenizer)
    if backend is not None:

        def fast(ids: Sequence[int]) -> str:
            return str(backend.decode(list(ids), skip_special_tokens=True))

        return fast

    def wrapped(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    return wrapped


def stream_decoder(tokenizer: Any) -> StreamOf | None:
    """tokenizers' `DecodeStream` for a tokenizer `text_decoder` calls directly (a token
    costs a quarter of the Python scheme's two decodes on the demo tokenizer); None
    otherwise, or where tokenizers' DecodeStream takes no starting ids (older releases)."""
    backend = _fast_backend(tokenizer)
    if backend is None:
        return None
    try:
        from tokenizers.decoders import DecodeStream

        DecodeStream(ids=[], skip_special_tokens=True)
    except (ImportError, TypeError):
        return None

    def stream_of(context: Sequence[int]) -> Step | None:
        ids = list(context)
        # After a partial character DecodeStream's first piece would repeat the context.
        if backend.decode(ids, skip_special_tokens=True).endswith(REPLACEMENT):
            return None
        stream = DecodeStream(ids=ids, skip_special_tokens=True)
        return functools.partial(stream.step, backend)

    return stream_of


class TextStream:
    def __init__(
        self,
        decode: Decode,
        prompt_ids: Sequence[int],
        stop: Sequence[str],
        stream_of: StreamOf | None = None,
    ) -> None:
        self._decode = decode
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._step = stream_of(context) if stream_of is not None else None
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
        start = len(self._ids)
        self._ids.extend(token_ids)
        if self._step is None:
            self._read(final=False)
        else:
            self._read_stream(start)
        return self._release(final=False)

    def finish(self) -> str:
        """The completion ended (end of text, length): releases what was held back,
        a partial character included (as U+FFFD, as decoding the whole text gives it)."""
        if self.stopped:
            return ""
        self._read(final=True)
        return self._release(final=True)

    def _read_stream(self, start: int) -> None:
        """The ids from `start` through the incremental decoder, whose state the offsets
        follow (as `_read` moves them), so `_read` can take over at any token."""
        assert self._step is not None
        for end in range(start + 1, len(self._ids) + 1):
            try:
                piece = self._step(self._ids[end - 1])
            except Exception:  # a decoding it cannot extend (not a prefix): the scheme here
                self._step = None
                self._read(final=False)
                return
            if piece is not None:
                self._text += piece
                self._prefix_offset, self._read_offset = self._read_offset, end

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
        if not self._stop:  # nothing to hold back
            piece = self._text[self._emitted :]
            self._emitted = len(self._text)
            return piece
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
