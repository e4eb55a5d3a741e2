"""Incremental decoding with a KV cache: a left-padded prefill, then one jitted step per token.

Shapes (letters of docs/design.md): B batch rows, T padded prompt length, S = T + max_tokens cache
slots, V vocabulary.

- ``prompts [B, T]`` are left-padded: padding has segment id 0 (masked as a key, routed nowhere) and
  each prompt's positions start at 0 at its first real token, so every row's last prompt token sits
  in column T−1 and its relative position bias is the same as in an unpadded forward pass.
- :func:`prefill` runs one forward pass over [B, T], writes cache slots [0, T) and draws each row's
  first new token. :func:`decode_step` feeds the [B] newest tokens at slot ``cache_index``, gets the
  next-token logits and draws again. Both are jitted; the step takes its :class:`DecodeState` as a
  donated argument (the cache is updated in place) and has fixed shapes, so it compiles once per
  (B, S, sampler). T is rounded up to a power of two so few prompt lengths compile.
- The step reads the parameters as :func:`decode_params` lays them out, once per generation: each
  pair-block's parameters as separate arrays, and one KV cache per pair. Under the layer scan, XLA
  on CPU copies a pair's slice of every stacked weight and cache into a fresh buffer each step (for
  an MoE layer, every expert's weights: most of the step; docs/benchmarks.md §5).

MoE routing (reference doc §3) when decoding:

- The prefill routes with the model's own grouping, as training and scoring do: by default one group
  per prompt, so a prompt does not compete with its batchmates (a set ``moe.group_size`` that does
  not divide B·T falls back to one group per prompt: ``moe.layer.routing_group_size``), with the
  eval capacity (or none with ``moe.eval_no_drop=true``).
- Each step calls the blocks with ``decode=True``: the B current tokens go to their top-2
  experts with no capacity at all (``glam.model.moe.decode``), so nothing is dropped and a row's
  continuation never depends on its batchmates. A step therefore equals the full forward pass over
  the row's tokens whenever that pass drops nothing, which ``moe.eval_no_drop=true`` guarantees; with
  a finite eval capacity the prefill (and any full pass) may drop where a step does not. Finished
  and padding rows are fed with segment id 0: their gates are 0 (and their cache slots stay masked).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from glam.config import GLaMConfig
from glam.errors import GLaMError
from glam.inference.sampling import Sampler, next_tokens
from glam.model.init import bind, bind_pairs
from glam.model.transformer import apply, init_caches, split_pairs


class Prompts(NamedTuple):
    """A left-padded prompt batch (numpy, host side). Rows past the real prompts are all padding."""

    tokens: np.ndarray  # [B, T] int32, pad id 0 on the left
    positions: np.ndarray  # [B, T] int32, 0 at each prompt's first real token, 0 on padding
    segment_ids: np.ndarray  # [B, T] int32, 1 on prompt tokens, 0 on padding
    lengths: np.ndarray  # [B] int32 real prompt lengths (0 for filler rows)


class DecodeParams(NamedTuple):
    """The parameters as a decode step reads them (see :func:`decode_params`)."""

    rest: dict  # the parameters outside the pair-blocks: embedding, final norm
    pairs: tuple  # P pure dicts, the parameters of pair-block p, each leaf without the pair axis


def decode_params(params: dict) -> DecodeParams:
    """Split the stacked pair-block parameters [P, ...] into P separate arrays, once per generation.

    A second copy of the pair parameters lives while generating; in exchange a step reads every
    weight where it is instead of copying it out of the stack (see :func:`~glam.model.transformer.run_pairs`).
    """
    rest = {name: value for name, value in params.items() if name != "blocks"}
    return DecodeParams(rest, split_pairs(params["blocks"]))


class DecodeState(NamedTuple):
    """Everything the decode step carries from one token to the next (device arrays)."""

    caches: tuple  # P pairs (KVCache, KVCache), one per pair-block, leaves [B, S, ...]
    cache_index: jax.Array  # int32 scalar: the cache slot the next fed token is written to
    positions: jax.Array  # [B] int32: the position of the next fed token in its row
    logits: jax.Array  # [B, V] fp32: the next-token logits the latest tokens were drawn from
    rng: jax.Array  # PRNG key for sampling


def check_prompt_fits(length: int, max_tokens: int, max_seq_len: int, index: int = 0) -> None:
    """Raise a GLaMError naming the fix when prompt ``index`` leaves no room for ``max_tokens``."""
    if max_tokens < 1:
        raise GLaMError(f"max_tokens={max_tokens}: ask for at least 1 token")
    if max_tokens >= max_seq_len:  # no prompt fits, however short (every prompt holds at least bos)
        fix = (
            f"with prompt {index} ({length} tokens) ask for at most {max_seq_len - length} tokens"
            if length < max_seq_len
            else f"prompt {index} is {length} tokens: shorten it and ask for fewer tokens"
        )
        raise GLaMError(
            f"max_tokens={max_tokens} leaves no room for a prompt in model.max_seq_len={max_seq_len}; {fix}"
        )
    if length + max_tokens > max_seq_len:
        room = max_seq_len - max_tokens
        fix = f"shorten the prompt to at most {room} tokens"
        if length < max_seq_len:  # otherwise no max_tokens >= 1 fits
            fix += f" or lower max_tokens to {max_seq_len - length}"
        raise GLaMError(
            f"prompt {index} is {length} tokens, but model.max_seq_len={max_seq_len} leaves room for "
            f"{room} prompt tokens when generating max_tokens={max_tokens}; {fix}"
        )


def bucket_length(length: int, limit: int) -> int:
    """A padded length: the next power of two (at least 8), capped at ``limit``."""
    return min(max(8, 1 << max(length - 1, 0).bit_length()), limit)


def left_pad(
    prompts: Sequence[Sequence[int]], *, max_tokens: int, max_seq_len: int, batch_size: int | None = None
) -> Prompts:
    """Left-pad token-id prompts into a [B, T] batch; B = ``batch_size`` (filler rows) or len(prompts)."""
    B = batch_size or len(prompts)
    if not prompts or len(prompts) > B:
        raise GLaMError(f"got {len(prompts)} prompts for a batch of {B}; pass between 1 and {B}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise GLaMError(f"prompt {i} is empty; start it with the bos token (id 2)")
        check_prompt_fits(len(p), max_tokens, max_seq_len, i)
    T = bucket_length(max(len(p) for p in prompts), max_seq_len - max_tokens)
    batch = Prompts(*(np.zeros((B, T), np.int32) for _ in range(3)), np.zeros((B,), np.int32))
    for b, p in enumerate(prompts):
        n = len(p)
        batch.tokens[b, T - n :] = p
        batch.positions[b, T - n :] = np.arange(n)
        batch.segment_ids[b, T - n :] = 1
        batch.lengths[b] = n
    return batch


@functools.partial(jax.jit, static_argnames=("cfg", "sampler", "cache_len", "vocab_limit"))
def prefill(
    cfg: GLaMConfig,
    params: dict,
    tokens: jax.Array,  # [B, T]
    positions: jax.Array,  # [B, T]
    segment_ids: jax.Array,  # [B, T]
    rng: jax.Array,
    *,
    sampler: Sampler,
    cache_len: int,
    vocab_limit: int | None = None,
) -> tuple[DecodeState, jax.Array]:
    """Run the prompts, fill cache slots [0, T) of a cache of ``cache_len`` slots, draw tokens [B]."""
    B, T = tokens.shape
    model = bind(cfg, params)
    caches = init_caches(cfg, B, cache_len)
    logits, _, caches = apply(
        model,
        tokens,
        positions,
        segment_ids,
        train=False,
        caches=caches,
        cache_index=jnp.zeros((), jnp.int32),
    )
    rng, draw = jax.random.split(rng)
    last = logits[:, -1]  # [B, V]: left padding puts every row's last prompt token in column T−1
    state = DecodeState(split_pairs(caches), jnp.asarray(T, jnp.int32), positions[:, -1] + 1, last, rng)
    return state, next_tokens(last, draw, sampler, vocab_limit)


def advance(
    cfg: GLaMConfig, params: DecodeParams, state: DecodeState, tokens: jax.Array, active: jax.Array
) -> DecodeState:
    """Feed tokens [B] at slot ``cache_index``; inactive rows are segment 0 (gates 0, masked keys)."""
    model = bind(cfg, params.rest)  # embedding and final norm; the blocks come from params.pairs
    segment_ids = active.astype(jnp.int32)[:, None]  # [B, 1]
    logits, _, caches = apply(
        model,
        tokens[:, None],
        state.positions[:, None],
        segment_ids,
        train=False,
        caches=state.caches,
        cache_index=state.cache_index,
        decode=True,
        pairs=bind_pairs(cfg, params.pairs),
    )
    return DecodeState(caches, state.cache_index + 1, state.positions + 1, logits[:, 0], state.rng)


@functools.partial(jax.jit, static_argnames=("cfg", "sampler", "vocab_limit"), donate_argnames=("state",))
def decode_step(
    cfg: GLaMConfig,
    params: DecodeParams,  # decode_params(params), made once per generation
    state: DecodeState,
    tokens: jax.Array,  # [B] the tokens drawn last
    active: jax.Array,  # [B] bool, False for finished and filler rows
    *,
    sampler: Sampler,
    vocab_limit: int | None = None,
) -> tuple[DecodeState, jax.Array]:
    """One token per row: feed ``tokens``, then draw the next ones [B] from the new logits."""
    state = advance(cfg, params, state, tokens, active)
    rng, draw = jax.random.split(state.rng)
    return state._replace(rng=rng), next_tokens(state.logits, draw, sampler, vocab_limit)


def sample_stream(
    cfg: GLaMConfig,
    params: dict,
    prompts: Prompts,
    active: np.ndarray,
    *,
    max_tokens: int,
    sampler: Sampler,
    seed: int = 0,
    vocab_limit: int | None = None,
    with_logits: bool = False,
):
    """Yield (tokens [B], logits [B, V] or None) as numpy arrays, once per generated position.

    ``active`` [B] bool is read before every step: the consumer clears a row (eos, a stop string) to
    stop feeding it; iteration ends after ``max_tokens`` tokens or when no row is active. The logits
    the tokens were drawn from are copied to the host only ``with_logits`` (the tests use them).
    """
    state, tokens = prefill(
        cfg,
        params,
        *(jnp.asarray(a) for a in prompts[:3]),
        jax.random.key(seed),
        sampler=sampler,
        cache_len=prompts.tokens.shape[1] + max_tokens,
        vocab_limit=vocab_limit,
    )
    step_params = decode_params(params)
    for i in range(max_tokens):
        yield np.asarray(tokens), (np.asarray(state.logits) if with_logits else None)
        if i == max_tokens - 1 or not active.any():
            return
        state, tokens = decode_step(
            cfg, step_params, state, tokens, jnp.asarray(active), sampler=sampler, vocab_limit=vocab_limit
        )
