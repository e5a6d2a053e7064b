"""Generated tokens turned into text: `TextStream` makes a row's text chunk by chunk as its
tokens arrive, and the same code makes the whole text of a non-streamed row (`choice_of_row`),
so a stream's chunks add up to the non-streamed choice. A character split over several byte
tokens goes out whole, with its last token; with stop strings the last
``len(longest stop) - 1`` characters are held back until more text (or the row's end) shows
whether a stop string starts there, so nothing past a stop string is handed out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlhfkit.serving.batching import GenRow


@dataclass
class Choice:
    """Generated text with its tokens; also one streamed chunk of it (``finish_reason`` None)."""

    text: str
    finish_reason: str | None
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[list[tuple[int, float]]] | None  # (token id, log-prob), best first


@dataclass
class _Pending:
    """A token of a `TextStream` not handed out yet."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] | None
    piece: str | None = None  # its text; None while it may end inside a multi-byte character
    end: int = 0  # where its text ends in the row's text


class TextStream:
    """One generated row turned into text chunks token by token, never past a stop string.

    A token's text (its piece) is what decoding the row so far adds to the previous decoding; a
    token that leaves an incomplete UTF-8 character (a trailing U+FFFD) adds "" and the token
    that completes the character carries it, unless it is the row's last token. A token is handed
    out once its piece is known and it ends at least ``len(longest stop) - 1`` characters before
    the text known so far, so no stop string can start inside it. Once the earliest stop string
    is certain, the text up to it goes out -- the part of a token before it as a text-only chunk
    (no token, no log-probs) -- and the row is over with finish_reason "stop".

    Fed the whole row at once it gives what a non-streamed request returns (`choice_of_row`), so the
    chunks of a stream add up to the non-streamed choice.

    Args:
        tokenizer: Decodes the row's token ids.
        stop: Stop strings (empty ones are ignored).
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.decoded = ""  # the decoding of the tokens whose pieces are known
        self.text = ""  # those pieces joined: the row's text so far
        self.sent = 0  # characters of `text` handed out; no stop string starts before them
        self.pending: list[_Pending] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(
        self,
        token_id: int,
        logprob: float | None = None,
        top: list[tuple[int, float]] | None = None,
    ) -> list[Choice]:
        """Add the row's next token; returns the chunks that can now be handed out."""
        if self.done:
            return []
        if self.pending and self.pending[-1].piece is None:
            self._settle(self.pending[-1], "")  # a later token carries its character
        self.ids.append(token_id)
        entry = _Pending(token_id, logprob, top)
        self.pending.append(entry)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not decoded.endswith("\ufffd"):
            self._settle(entry, self._added(decoded))
        return self._release(final=False)

    def close(self, finish_reason: str) -> list[Choice]:
        """End the row (``finish_reason`` unless a stop string ended it first); returns the
        chunks still held back."""
        if self.done:
            return []
        if self.pending and self.pending[-1].piece is None:  # the last token: send what it has
            decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            self._settle(self.pending[-1], self._added(decoded))
        chunks = self._release(final=True)
        if not self.done:
            self.finish_reason = finish_reason
        return chunks

    def _added(self, decoded: str) -> str:
        piece = decoded[len(os.path.commonprefix([decoded, self.decoded])) :]
        self.decoded = decoded
        return piece

    def _settle(self, entry: _Pending, piece: str) -> None:
        entry.piece = piece
        self.text += piece
        entry.end = len(self.text)

    def _release(self, final: bool) -> list[Choice]:
        # A stop string starting before `limit` is already whole in `text`, so the earliest one
        # found there is the earliest the row will have.
        limit = len(self.text) if final else len(self.text) - self.hold
        cut = min((at for s in self.stop if (at := self.text.find(s, self.sent)) != -1), default=-1)
        stopped = cut != -1 and cut <= limit
        bound = cut if stopped else limit
        chunks = []
        while self.pending and self.pending[0].piece is not None and self.pending[0].end <= bound:
            entry = self.pending.pop(0)
            chunks.append(self._token_chunk(entry))
            self.sent = entry.end
        if stopped:
            if self.sent < cut:
                chunks.append(Choice(self.text[self.sent : cut], None, [], [], None, None))
                self.sent = cut
            self.pending.clear()
            self.finish_reason = "stop"
        return chunks

    def _token_chunk(self, entry: _Pending) -> Choice:
        return Choice(
            entry.piece,
            None,
            [entry.piece],
            [entry.token_id],
            None if entry.logprob is None else [entry.logprob],
            None if entry.top is None else [list(entry.top)],
        )


def choice_of_row(tokenizer, row: GenRow, stop: list[str]) -> Choice:
    """The choice a non-streamed request returns for ``row``: `TextStream` fed the whole row."""
    stream = TextStream(tokenizer, stop)
    chunks = []
    for k, token_id in enumerate(row.token_ids):
        chunks += stream.push(
            token_id,
            row.logprobs[k] if row.logprobs is not None else None,
            row.top_logprobs[k] if row.top_logprobs is not None else None,
        )
    chunks += stream.close(row.finish_reason)
    return Choice(
        "".join(c.text for c in chunks),
        stream.finish_reason,
        [t for c in chunks for t in c.tokens],
        [t for c in chunks for t in c.token_ids],
        [v for c in chunks for v in c.logprobs or []] if row.logprobs is not None else None,
        [a for c in chunks for a in c.top_logprobs or []] if row.top_logprobs is not None else None,
    )


__all__ = ["Choice", "TextStream", "choice_of_row"]
