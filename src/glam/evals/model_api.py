"""The only interface between the evaluation harness and a model.

Anything with these three methods can be evaluated: a glam checkpoint (``glam.inference.GLaMLanguageModel``),
the deterministic character model in :mod:`glam.evals.testing`, or a wrapper around another library.
Strings in, numbers and strings out: tokenisation is the model's business, so the harness never
depends on a tokenizer, JAX or a device.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LanguageModel(Protocol):
    """A text-in, scores-out language model (the protocol of lm-evaluation-harness, in plain types)."""

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool, int]]:
        """Score continuations.

        For each ``(context, continuation)`` return ``(sum of the log-probabilities of the continuation's
        tokens given the context, whether every continuation token is the greedy argmax, the number of
        continuation tokens)``. The token count is what per-token length normalisation divides by.
        """
        ...

    def loglikelihood_rolling(self, texts: list[str]) -> list[tuple[float, int]]:
        """Whole-text log-likelihood (nats) and token count for each text, for perplexity."""
        ...

    def generate(
        self,
        contexts: list[str],
        *,
        max_tokens: int,
        stop: list[str],
        beam_size: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> list[str]:
        """Continuation text for each context, cut before the first stop string.

        ``beam_size > 1`` asks for beam search (the paper decodes generation tasks with width 4).
        ``temperature > 0`` asks for sampling (with ``beam_size=1``), filtered by ``top_k`` (0 = off) and
        ``top_p`` (1.0 = off) and deterministic in ``seed``; ``temperature=0`` is greedy.

        The sampling keywords are optional for a model: the harness never passes them (the paper decodes
        greedily or by beam search), and a caller that samples (the lm-eval adapter) checks that
        ``generate`` accepts ``temperature`` first and otherwise refuses with a clear error.
        """
        ...
