"""A slot-based KV cache for continuous batching: each of B slots holds one row with its own length.

Shapes (letters of docs/design.md): B slots (the server's ``--max-batch``), S = model.max_seq_len
cache columns per slot, b rows of a prefill group, T the columns of one prefill chunk, V vocabulary.

The serving engine (glam.serve.engine) keeps B slots busy: a row is **prefilled** apart from the
running slots, in chunks, into a small cache of its own group (:func:`prefill_chunk`), then
**inserted** into a free slot (:func:`insert`), and from then on advances one token per
:func:`step` together with whatever else occupies the other slots; a finished row frees its slot
at once. Unlike the left-padded batch of ``glam.inference.decode`` every slot is laid out from
column 0: the row's token i sits in column i at position i, so a slot's length is its next
column and its next position, and the relative position bias and the masks are those of the row
alone. Writes go to each slot's own column (``attention.write_cache`` with a [B] index); the
causal mask hides every column past a row's own, so whatever an earlier occupant left there is
never read.

MoE layers route without capacity everywhere here: a step's tokens go to their top-k experts
(``moe/decode.py``) and the engine prefills with ``moe.eval_no_drop`` (capacity = the group, nothing
dropped), so a row's tokens never depend on what else is in the batch.

Compiled shapes: :func:`step` once per (B, S, filtered); :func:`prefill_chunk` once per (b, T),
with b and T rounded up to powers of two; :func:`insert` once per b.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from glam.config import GLaMConfig
from glam.inference.decode import DecodeParams
from glam.inference.sampling import RowDraw, draw_rows
from glam.model import axes as ax
from glam.model.attention import KVCache
from glam.model.init import bind, bind_pairs
from glam.model.transformer import _dtype, init_caches, run_blocks, run_pairs, split_pairs
from glam.sharding.rules import constrain


class Slots(NamedTuple):
    """The running batch on the device: B slots' caches, lengths and latest logits."""

    caches: tuple  # P pairs (KVCache, KVCache), leaves [B, S, ...]
    lengths: jax.Array  # [B] int32: tokens in the slot's cache = its next column and next position
    logits: jax.Array  # [B, V] fp32: the logits the slot's next token is drawn from


class Sampling(NamedTuple):
    """Each slot's sampler, as arrays [B] (host side they are numpy; the step reads them each call)."""

    seeds: jax.Array  # uint32
    steps: jax.Array  # int32: tokens generated so far (the row's key is fold_in(key(seed), step))
    temperature: jax.Array  # fp32, 0 = greedy
    top_k: jax.Array  # int32, 0 = off
    top_p: jax.Array  # fp32, 1 = off
    banned: jax.Array  # int32: a token the row may not draw now (eos before min_tokens), -1 none


def init_slots(cfg: GLaMConfig, slots: int) -> Slots:
    """B empty slots of model.max_seq_len columns each."""
    caches = split_pairs(init_caches(cfg, slots, cfg.model.max_seq_len))
    caches = jax.tree.map(jnp.array, caches)  # own buffers, not broadcasts: the step updates them in place
    return Slots(caches, jnp.zeros((slots,), jnp.int32), jnp.zeros((slots, cfg.model.vocab_size), jnp.float32))


def slot_cache_bytes(cfg: GLaMConfig) -> int:
    """KV-cache bytes one slot holds: 2 (k, v) × L layers × S columns × N heads × K, plus positions and ids."""
    m = cfg.model
    itemsize = jnp.dtype(_dtype(cfg)).itemsize
    per_layer = 2 * m.max_seq_len * m.num_heads * m.head_dim * itemsize + 2 * m.max_seq_len * 4
    return 2 * cfg.num_pairs * per_layer


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("caches",))
def prefill_chunk(
    cfg: GLaMConfig,
    params: dict,
    caches,  # the group's stacked caches ([P, b, S, ...] pairs), from group_caches
    tokens: jax.Array,  # [b, T] this chunk's tokens, right-padded
    segment_ids: jax.Array,  # [b, T] 1 on real tokens, 0 on padding
    start: jax.Array,  # int32 scalar: the chunk's first column (= position) in every row
    last: jax.Array,  # [b] int32: column within the chunk of the row's last prompt token, -1 if not here
    carry: jax.Array,  # [b, V] fp32: each row's last-token logits once its last chunk ran
):
    """Run one chunk of a prefill group; returns (caches, carry with the rows that ended here updated)."""
    b, T = tokens.shape
    model = bind(cfg, params)
    positions = start + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (b, T))
    x = constrain(model.embed.encode(tokens, _dtype(cfg)), ax.BSM)
    x, _, caches = run_blocks(
        model, x, positions, segment_ids, train=False, rng=None, caches=caches, cache_index=start
    )  # fmt: skip
    h = jnp.take_along_axis(x, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]  # [b, M]: the last tokens only
    logits = model.embed.decode(model.final_norm(h[:, None]).astype(jnp.float32))[:, 0]  # [b, V]
    return caches, jnp.where((last >= 0)[:, None], logits, carry)


def group_caches(cfg: GLaMConfig, rows: int):
    """Empty stacked caches for a prefill group of ``rows`` rows."""
    return jax.tree.map(jnp.array, init_caches(cfg, rows, cfg.model.max_seq_len))


@functools.partial(jax.jit, donate_argnames=("slots",))
def insert(slots: Slots, caches, where: jax.Array, lengths: jax.Array, logits: jax.Array) -> Slots:
    """Move a prefilled group into the running slots: row r of the group to slot ``where[r]``.

    ``where`` [b] int32 (B, out of range, for filler rows and rows cancelled meanwhile: dropped);
    ``lengths`` [b] the rows' prompt lengths; ``logits`` [b, V] their last-token logits.
    """
    stacked = caches  # ([P, b, S, ...], [P, b, S, ...])
    pairs = []
    for p, (c0, c1) in enumerate(slots.caches):
        moved = []
        for old, new in ((c0, stacked[0]), (c1, stacked[1])):
            moved.append(KVCache(*(o.at[where].set(n[p], mode="drop") for o, n in zip(old, new, strict=True))))
        pairs.append(tuple(moved))
    return Slots(
        tuple(pairs),
        slots.lengths.at[where].set(lengths, mode="drop"),
        slots.logits.at[where].set(logits, mode="drop"),
    )


@functools.partial(jax.jit, static_argnames=("cfg", "vocab_limit", "top_n", "filtered"), donate_argnames=("slots",))
def step(
    cfg: GLaMConfig,
    params: DecodeParams,
    slots: Slots,
    tokens: jax.Array,  # [B] int32: each fed slot's newest token
    fed: jax.Array,  # [B] bool: slots whose token goes in now (False: free, or inserted since the last step)
    sampling: Sampling,
    *,
    vocab_limit: int | None,
    top_n: int,
    filtered: bool,
) -> tuple[Slots, RowDraw]:
    """Feed each fed slot its token at its own column, then draw every slot's next token.

    A slot that is not fed keeps its logits (a newly inserted row draws its first token from its
    prefill's); its query is computed and thrown away, and its cache is not written (segment 0 at a
    column past its length, or dropped past the end).
    """
    model = bind(cfg, params.rest)
    segment_ids = fed.astype(jnp.int32)[:, None]  # [B, 1]
    x = constrain(model.embed.encode(tokens[:, None], _dtype(cfg)), ax.BSM)
    x, _, caches = run_pairs(
        bind_pairs(cfg, params.pairs),
        x,
        slots.lengths[:, None],
        segment_ids,
        caches=slots.caches,
        cache_index=slots.lengths,
        decode=True,
    )
    logits = model.embed.decode(model.final_norm(x).astype(jnp.float32))[:, 0]  # [B, V]
    logits = jnp.where(fed[:, None], logits, slots.logits)
    slots = Slots(caches, slots.lengths + fed.astype(jnp.int32), logits)
    draw = draw_rows(
        logits,
        sampling.seeds,
        sampling.steps,
        sampling.temperature,
        sampling.top_k,
        sampling.top_p,
        sampling.banned,
        vocab_limit=vocab_limit,
        top_n=top_n,
        filtered=filtered,
    )
    return slots, draw
