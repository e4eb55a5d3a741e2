"""One row's generated text while it streams: incremental detokenisation and stop strings.

Stop strings are matched on text, not tokens (a stop string may span, or sit inside, tokens). The
text released to a stream never contains a stop string: a tail that could still grow into one is
held back until the next token settles it, and so is a trailing U+FFFD, which is what a multi-byte
character looks like before all its byte tokens have arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` must wait: a proper prefix of a stop string, or U+FFFD."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    undecoded = len(text) - len(text.rstrip(REPLACEMENT_CHAR))
    return max(n, undecoded)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the first stop string, whether one was found)."""
    i = find_stop(text, stops)
    return (text, False) if i < 0 else (text[:i], True)


class TextStream:
    """Tokens in, text deltas out, for one row; ``finish_reason`` is set once the row is done.

    Args:
      decode: token ids → text (the tokenizer's ``decode``); the whole row is decoded every time, so
        pieces that merge across tokens (bytes of one character) come out right.
      stops: stop strings; the row finishes with reason ``"stop"`` at the first one.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.text = ""  # the row's text so far, cut before a stop string
        self.emitted = 0  # characters of ``text`` already released
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        """Add a generated token; return the newly releasable text (possibly empty)."""
        self.tokens.append(int(token))
        self.text, stopped = cut_at_stop(self.decode(self.tokens), self.stops)
        if stopped:
            return self.finish("stop")
        safe = len(self.text) - held_back(self.text, self.stops)
        return self._release(safe)

    def finish(self, reason: str) -> str:
        """Mark the row done (``"eos"``, ``"stop"`` or ``"length"``) and release what was held back."""
        self.finish_reason = reason
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta
