"""A deterministic character-level :class:`~glam.evals.model_api.LanguageModel` for tests and demos.

It ships in the package on purpose (unlike the training fixtures, which live in tests/): it is the
dependency-free reference model a user passes to the lm-eval adapter
(``--model_args model=glam.evals.testing:CharLanguageModel``, docs/tasks.md) to check a task or a
harness setup without a checkpoint, and the example of the ``LanguageModel`` protocol.

Each character is a token. The next character has a Laplace-smoothed unigram probability estimated
from everything before it: ``P(c | prefix) = (count(c in prefix) + 1) / (len(prefix) + V)`` with
``V = 256``. Log-probabilities are therefore computable by hand, depend on the context (so few-shot
demonstrations change the answers), and the greedy next character is the most frequent one so far
(ties: the lowest code point). Greedy unless ``generate`` is asked to sample (``temperature > 0``,
then drawn from that distribution over the 256 characters ``chr(0)``…``chr(255)`` with
``random.Random(f"{seed}/{row}")``). No dependencies.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from glam.errors import GLaMError

VOCAB = 256


class _Counts:
    """Running character counts with the current greedy (most frequent) character."""

    def __init__(self, text: str) -> None:
        self.counts = Counter(text)
        self.total = len(text)
        self.best = min(self.counts, key=lambda c: (-self.counts[c], c)) if text else "\0"

    def logprob(self, ch: str) -> float:
        return math.log((self.counts[ch] + 1) / (self.total + VOCAB))

    def sample(self, rng: random.Random, temperature: float, top_k: int, top_p: float) -> str:
        """Draw from ``P ** (1 / temperature)`` restricted to the top-k (ties kept) and the top-p set."""
        weights = {chr(i): (self.counts[chr(i)] + 1) ** (1 / temperature) for i in range(VOCAB)}
        ranked = sorted(weights, key=lambda c: (-weights[c], c))
        if top_k:
            ranked = [c for c in ranked if weights[c] >= weights[ranked[min(top_k, VOCAB) - 1]]]
        total, kept, mass = sum(weights.values()), [], 0.0
        for c in ranked:
            if mass >= top_p * total:  # the tokens ranked above c already reach top_p
                break
            kept.append(c)
            mass += weights[c]
        return rng.choices(kept, weights=[weights[c] for c in kept])[0]

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

    def generate(
        self,
        contexts: list[str],
        *,
        max_tokens: int,
        stop: list[str],
        beam_size: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> list[str]:
        """Greedy decoding (``beam_size`` is accepted; for this model every beam agrees with greedy's first),
        or sampling for ``temperature > 0`` (see the module docstring)."""
        if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
            raise GLaMError(f"temperature={temperature}, top_k={top_k}, top_p={top_p}: need >= 0, >= 0, (0, 1]")
        if temperature == 0 and (top_k or top_p < 1):
            raise GLaMError("top-k and top-p filter a sampled distribution: set a temperature > 0 (e.g. 1.0)")
        out = []
        for row, context in enumerate(contexts):
            state, text, rng = _Counts(context), "", random.Random(f"{seed}/{row}")
            while len(text) < max_tokens and not any(s and s in text for s in stop):
                ch = state.sample(rng, temperature, top_k, top_p) if temperature else state.best
                text += ch
                state.add(ch)
            for s in stop:
                if s and s in text:
                    text = text[: text.index(s)]
            out.append(text)
        return out
