"""Choosing the next token from logits [B, V]: greedy, temperature, top-k and top-p (nucleus).

The order is the usual one (as in Hugging Face ``generate``): divide by the temperature, keep the
top-k logits, then keep the smallest set of most likely tokens whose probability reaches top-p, and
draw from what is left. Everything here is a pure function of arrays, so it runs inside the jitted
decode step; a :class:`Sampler` is a frozen dataclass and therefore a static (hashable) jit argument.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from glam.errors import GLaMError


@dataclass(frozen=True)
class Sampler:
    """How to draw the next token. ``temperature=0`` is greedy (argmax); filters need a temperature.

    Attributes:
      temperature: logits are divided by it before drawing; 0 means greedy decoding.
      top_k: keep only the k most likely tokens (0 = off). Ties with the k-th logit are kept too.
      top_p: keep the most likely tokens until their probability reaches top_p (1.0 = off).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GLaMError(f"temperature={self.temperature}: use 0 for greedy decoding or a finite value > 0")
        if self.top_k < 0:
            raise GLaMError(f"top_k={self.top_k}: use 0 to turn top-k off or a positive number of tokens")
        if not 0 < self.top_p <= 1:
            raise GLaMError(f"top_p={self.top_p}: choose a probability in (0, 1]; 1.0 turns top-p off")
        if self.temperature == 0 and (self.top_k > 0 or self.top_p < 1):
            raise GLaMError("top-k and top-p filter a sampled distribution: set a temperature > 0 (e.g. 1.0)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampler()


def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
    """[..., V] → [..., V] with every logit below the k-th largest set to -inf (k >= V: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_logits(logits: jax.Array, p: float) -> jax.Array:
    """[..., V] → [..., V] keeping the smallest most-likely set whose probability reaches ``p``.

    A token is kept when the probability of the tokens ranked strictly above it is below ``p``, so
    the most likely token always survives and ``p = 1`` keeps everything.
    """
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < p
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocab order
    return jnp.where(keep, logits, -jnp.inf)


def filter_logits(logits: jax.Array, sampler: Sampler) -> jax.Array:
    """[B, V] fp32 logits of the distribution a sampler draws from (temperature, then top-k, top-p)."""
    logits = logits.astype(jnp.float32) / sampler.temperature
    return top_p_logits(top_k_logits(logits, sampler.top_k), sampler.top_p)


def mask_vocab(logits: jax.Array, vocab_limit: int | None) -> jax.Array:
    """Forbid ids >= ``vocab_limit`` (a model vocabulary padded beyond the tokenizer's)."""
    if vocab_limit is None or vocab_limit >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)


def next_tokens(logits: jax.Array, rng: jax.Array, sampler: Sampler, vocab_limit: int | None = None) -> jax.Array:
    """Draw one token per row: logits [B, V] → ids [B] int32."""
    logits = mask_vocab(logits.astype(jnp.float32), vocab_limit)
    if sampler.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, sampler), axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------------
# Per-row sampling: every row of a batch with its own temperature, top-k, top-p and random stream (the
# server batches requests that ask for different ones). Same order of filters as ``filter_logits``.


class RowDraw(NamedTuple):
    """One drawn token per row and what the server reports about it (log-probs of the model's distribution)."""

    tokens: jax.Array  # [B] int32
    logprob: jax.Array  # [B] fp32: log p(token) under the unfiltered, untempered distribution
    top_ids: jax.Array  # [B, N] int32: the N most likely tokens
    top_logprobs: jax.Array  # [B, N] fp32


def filter_rows(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """[B, V] logits → the [B, V] logits each row draws from: ÷ its temperature, its top-k, then its top-p.

    ``temperature`` [B] > 0 (greedy rows are chosen by the caller), ``top_k`` [B] int (0 = off),
    ``top_p`` [B] in (0, 1] (1 = off). The rules per row are those of :func:`top_k_logits` and
    :func:`top_p_logits`.
    """
    V = logits.shape[-1]
    logits = logits / temperature[:, None]
    order = jnp.argsort(-logits, axis=-1)  # [B, V] most likely first
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    kth = jnp.take_along_axis(sorted_logits, jnp.clip(top_k - 1, 0, V - 1)[:, None], axis=-1)  # [B, 1]
    logits = jnp.where((top_k[:, None] > 0) & (logits < kth), -jnp.inf, logits)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    keep_sorted = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p[:, None]
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(keep | (top_p[:, None] >= 1.0), logits, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("vocab_limit", "top_n", "filtered"))
def draw_rows(
    logits: jax.Array,  # [B, V]
    seeds: jax.Array,  # [B] uint32: each row's own random stream
    step: jax.Array,  # int32, scalar or [B]: which token of the row this is (a fresh key per step)
    temperature: jax.Array,  # [B] fp32, 0 = greedy
    top_k: jax.Array,  # [B] int32, 0 = off
    top_p: jax.Array,  # [B] fp32, 1 = off
    banned: jax.Array | None = None,  # [B] int32: a token the row may not draw now (-1: none)
    *,
    vocab_limit: int | None = None,
    top_n: int = 1,
    filtered: bool = False,
) -> RowDraw:
    """Draw one token per row with the row's own sampler and key ``fold_in(key(seed), step)``.

    A row's draw depends only on its logits, its sampler, its seed and ``step``, never on its
    batchmates. ``filtered=False`` skips the top-k/top-p sort (valid when no row filters).
    ``banned`` (e.g. eos before a request's ``min_tokens``) is removed from what the row draws
    from; the log-probs reported stay those of the model's own distribution.
    """
    logits = mask_vocab(logits.astype(jnp.float32), vocab_limit)
    logp = jax.nn.log_softmax(logits, axis=-1)
    choose = logits
    if banned is not None:
        choose = jnp.where(jnp.arange(logits.shape[-1])[None, :] == banned[:, None], -jnp.inf, logits)
    hot = jnp.where(temperature > 0, temperature, 1.0)
    drawn_from = filter_rows(choose, hot, top_k, top_p) if filtered else choose / hot[:, None]
    steps = jnp.broadcast_to(step, seeds.shape)
    keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(seeds, steps)
    sampled = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, drawn_from)
    tokens = jnp.where(temperature > 0, sampled, jnp.argmax(choose, axis=-1)).astype(jnp.int32)
    top_logprobs, top_ids = jax.lax.top_k(logp, top_n)
    chosen = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return RowDraw(tokens, chosen, top_ids.astype(jnp.int32), top_logprobs)
