"""Beam search (the paper decodes generation tasks with width 4, reference doc §7).

Shapes: B prompts, W beams per prompt, L = max_tokens generated tokens, V vocabulary.

Every step extends each live beam by every token, takes the 2W best candidates by total
log-probability, moves those that end in eos (or reach the token limit) to a pool of W finished
hypotheses scored with the GNMT length penalty, score = log p / ((5 + length) / 6)^alpha (alpha = 0:
the raw sum), and keeps the W best others live. A prompt is done when its best finished score beats
anything a live beam could still reach. :func:`beam_update` is a pure function of the log-probs, so
the tests drive it with hand-made distributions; :func:`beam_search` drives it with the model, the
KV cache of the W beams of a prompt being reordered to follow their parents at every step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from glam.config import GLaMConfig
from glam.errors import GLaMError
from glam.inference.decode import DecodeState, Prompts, advance, decode_params, prefill
from glam.inference.sampling import GREEDY, mask_vocab


@dataclass(frozen=True)
class BeamSearch:
    """Beam search settings: ``width`` beams; ``length_penalty`` alpha >= 0 (0 = sum of log-probs)."""

    width: int = 4
    length_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.width < 1:
            raise GLaMError(f"beam width={self.width}: use 1 or more beams (the paper uses 4)")
        if not (math.isfinite(self.length_penalty) and self.length_penalty >= 0):
            raise GLaMError(f"length_penalty={self.length_penalty}: use alpha >= 0 (0 = no normalisation)")


class BeamState(NamedTuple):
    live_tokens: jax.Array  # [B, W, L] int32
    live_scores: jax.Array  # [B, W] fp32 sum of log-probs; -inf = no hypothesis
    finished_tokens: jax.Array  # [B, W, L] int32 (including the final eos, if any)
    finished_scores: jax.Array  # [B, W] fp32 length-penalised; -inf = empty slot
    finished_lengths: jax.Array  # [B, W] int32
    step: jax.Array  # int32 scalar: tokens generated so far


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT length penalty ((5 + length) / 6)^alpha (Wu et al. 2016); 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


def init_beams(batch: int, width: int, max_tokens: int, real: jax.Array | None = None) -> BeamState:
    """Only beam 0 is live at first: the W copies of a prompt must not yield W equal hypotheses.

    ``real`` [B] bool marks real prompts; filler rows of a padded batch start (and stay) dead.
    """
    real = jnp.ones((batch,), bool) if real is None else real
    live = jnp.full((batch, width), -jnp.inf).at[:, 0].set(jnp.where(real, 0.0, -jnp.inf))
    return BeamState(
        live_tokens=jnp.zeros((batch, width, max_tokens), jnp.int32),
        live_scores=live,
        finished_tokens=jnp.zeros((batch, width, max_tokens), jnp.int32),
        finished_scores=jnp.full((batch, width), -jnp.inf),
        finished_lengths=jnp.zeros((batch, width), jnp.int32),
        step=jnp.zeros((), jnp.int32),
    )


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, K, ...] gathered along axis 1 with idx [B, J] → [B, J, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_update(
    beam: BeamState, log_probs: jax.Array, *, eos_id: int, alpha: float, max_tokens: int
) -> tuple[BeamState, jax.Array, jax.Array]:
    """Extend the beams by one token, given log_probs [B, W, V] of each live beam's next token.

    Returns (new state, parents [B, W]: the old beam each new live beam extends, tokens [B, W]: the
    token it was extended with).
    """
    B, W, V = log_probs.shape
    t = beam.step
    candidates = (beam.live_scores[..., None] + log_probs).reshape(B, W * V)
    scores, flat = jax.lax.top_k(candidates, 2 * W)  # [B, 2W]
    parents, tokens = flat // V, flat % V
    seqs = _take(beam.live_tokens, parents)  # [B, 2W, L]
    seqs = jnp.where(jnp.arange(max_tokens) == t, tokens[..., None], seqs)
    ends = (tokens == eos_id) | (t + 1 >= max_tokens)
    # Live: the W best candidates that did not end.
    live_scores, keep = jax.lax.top_k(jnp.where(ends, -jnp.inf, scores), W)
    # Finished: merge the candidates that ended into the pool, keep the W best normalised scores.
    new_finished = jnp.where(ends, scores / length_penalty(t + 1.0, alpha), -jnp.inf)
    pool_scores = jnp.concatenate([beam.finished_scores, new_finished], axis=1)  # [B, 3W]
    pool_tokens = jnp.concatenate([beam.finished_tokens, seqs], axis=1)
    pool_lengths = jnp.concatenate([beam.finished_lengths, jnp.full((B, 2 * W), t + 1, jnp.int32)], axis=1)
    finished_scores, best = jax.lax.top_k(pool_scores, W)
    new = BeamState(
        live_tokens=_take(seqs, keep),
        live_scores=live_scores,
        finished_tokens=_take(pool_tokens, best),
        finished_scores=finished_scores,
        finished_lengths=_take(pool_lengths, best),
        step=t + 1,
    )
    return new, _take(parents, keep), _take(tokens, keep)


def beams_done(beam: BeamState, *, alpha: float, max_tokens: int) -> jax.Array:
    """[B] bool: the best finished hypothesis cannot be beaten by any live beam any more.

    Log-probs only fall as a beam grows, and the penalty grows with length, so a live beam's final
    score is at most its current sum divided by the penalty at the token limit.
    """
    bound = jnp.max(beam.live_scores, axis=1) / length_penalty(float(max_tokens), alpha)
    best_finished = jnp.max(beam.finished_scores, axis=1)
    return (beam.step >= max_tokens) | (best_finished >= bound)


def best_hypotheses(beam: BeamState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [B, L], lengths [B], scores [B]) of each prompt's best finished hypothesis."""
    best = np.asarray(jnp.argmax(beam.finished_scores, axis=1))
    rows = np.arange(best.shape[0])
    return (
        np.asarray(beam.finished_tokens)[rows, best],
        np.asarray(beam.finished_lengths)[rows, best],
        np.asarray(beam.finished_scores)[rows, best],
    )


def _reorder(state: DecodeState, rows: jax.Array) -> DecodeState:
    """Rows [B·W] of the decode state gathered by ``rows`` (every cache leaf is [B·W, ...])."""
    caches = jax.tree.map(lambda a: jnp.take(a, rows, axis=0), state.caches)
    return state._replace(caches=caches, positions=state.positions[rows], logits=state.logits[rows])


@functools.partial(
    jax.jit, static_argnames=("cfg", "eos_id", "alpha", "max_tokens", "vocab_limit"), donate_argnames=("beam", "state")
)
def _beam_step(cfg, params, beam, state, *, eos_id, alpha, max_tokens, vocab_limit):
    """One beam step with the model: choose W continuations per prompt, reorder the cache, feed them."""
    B, W = beam.live_scores.shape
    log_probs = jax.nn.log_softmax(mask_vocab(state.logits, vocab_limit), axis=-1).reshape(B, W, -1)
    beam, parents, tokens = beam_update(beam, log_probs, eos_id=eos_id, alpha=alpha, max_tokens=max_tokens)
    rows = (jnp.arange(B)[:, None] * W + parents).reshape(B * W)
    state = _reorder(state, rows)
    active = jnp.isfinite(beam.live_scores).reshape(B * W)  # dead beams take no MoE capacity
    return beam, advance(cfg, params, state, tokens.reshape(B * W), active)


def check_width(width: int, vocab: int) -> None:
    """Refuse more beams than vocabulary tokens: the first step has only ``vocab`` continuations of a
    prompt to keep, and each beam costs a row of KV cache (``--beam 100000`` ran 212 s on ``tiny``)."""
    if width > vocab:
        raise GLaMError(
            f"beam width {width} is more than the model's {vocab} tokens: the first step has only {vocab} "
            f"continuations to keep; use at most {vocab} beams (the paper uses 4)"
        )


def beam_search(
    cfg: GLaMConfig,
    params: dict,
    prompts: Prompts,
    *,
    max_tokens: int,
    search: BeamSearch,
    eos_id: int,
    vocab_limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beam-search continuations of a left-padded batch: (tokens [B, L], lengths [B], scores [B]).

    The prompts are run once; the cache of each prompt is then copied to its W beams ([B·W] rows).
    A hypothesis's tokens end with eos when it finished that way (``lengths`` counts the eos).
    """
    B, W = prompts.tokens.shape[0], search.width
    check_width(W, vocab_limit or cfg.model.vocab_size)
    state, _ = prefill(
        cfg,
        params,
        *(jnp.asarray(a) for a in prompts[:3]),
        jax.random.key(0),
        sampler=GREEDY,
        cache_len=prompts.tokens.shape[1] + max_tokens,
        vocab_limit=vocab_limit,
    )
    state = _reorder(state, jnp.repeat(jnp.arange(B), W))
    beam = init_beams(B, W, max_tokens, jnp.asarray(prompts.lengths > 0))
    step_params = decode_params(params)
    for _ in range(max_tokens):
        beam, state = _beam_step(
            cfg,
            step_params,
            beam,
            state,
            eos_id=eos_id,
            alpha=search.length_penalty,
            max_tokens=max_tokens,
            vocab_limit=vocab_limit,
        )
        if bool(jnp.all(beams_done(beam, alpha=search.length_penalty, max_tokens=max_tokens))):
            break
    return best_hypotheses(beam)
