"""A deterministic character-level :class:`~glam.evals.model_api.LanguageModel` for tests and demos.

Each character is a token. The next character has a Laplace-smoothed unigram probability estimated
from everything before it: ``P(c | prefix) = (count(c in prefix) + 1) / (len(prefix) + V)`` with
``V = 256``. Log-probabilities are therefore computable by hand, depend on the context (so few-shot
demonstrations change the answers), and the greedy next character is the most frequent one so far
(ties: the lowest code point). No randomness, no dependencies.
"""

from __future__ import annotations

import math
from collections import Counter

VOCAB = 256


class _Counts:
    """Running character counts with the current greedy (most frequent) character."""

    def __init__(self, text: str) -> None:
        self.counts = Counter(text)
        self.total = len(text)
        self.best = min(self.counts, key=lambda c: (-self.counts[c], c)) if text else "\0"

    def logprob(self, ch: str) -> float:
        return math.log((self.counts[ch] + 1) / (self.total + VOCAB))

    def add(self, ch: str) -> None:
        self.counts[ch] += 1
        self.total += 1
        best_count = self.counts[self.best]
        if self.counts[ch] > best_count or (self.counts[ch] == best_count and ch < self.best):
            self.best = ch


class CharLanguageModel:
    """The smoothed-unigram character model described in the module docstring."""

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool, int]]:
        out = []
        for context, continuation in requests:
            state = _Counts(context)
            total, greedy = 0.0, True
            for ch in continuation:
                total += state.logprob(ch)
                greedy = greedy and ch == state.best
                state.add(ch)
            out.append((total, greedy, len(continuation)))
        return out

    def loglikelihood_rolling(self, texts: list[str]) -> list[tuple[float, int]]:
        return [(ll, n) for ll, _, n in self.loglikelihood([("", t) for t in texts])]

    def generate(self, contexts: list[str], *, max_tokens: int, stop: list[str], beam_size: int = 1) -> list[str]:
        """Greedy decoding (``beam_size`` is accepted; for this model every beam agrees with greedy's first)."""
        out = []
        for context in contexts:
            state, text = _Counts(context), ""
            while len(text) < max_tokens and not any(s and s in text for s in stop):
                text += state.best
                state.add(state.best)
            for s in stop:
                if s and s in text:
                    text = text[: text.index(s)]
            out.append(text)
        return out
