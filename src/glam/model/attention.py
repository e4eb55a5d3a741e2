"""Causal multi-head attention with a per-layer T5-style relative position bias (reference doc §2).

- q, k, v, o projections without biases; q is NOT scaled by 1/sqrt(K): the reference folds that
  into the initialisation, W_q ~ N(0, (M·K)^-1/2), W_k, W_v ~ N(0, M^-1/2), W_o ~ N(0, (N·K)^-1/2).
- The bias is a table [N, 32 buckets] per layer, looked up with the causal bucket of q_pos − k_pos.
- Softmax in fp32, optionally with an extra zero logit in the denominator (reference, default off).
- Keys are masked unless they are in the same document (segment id), not padding, and not in the future.
- Incremental decoding: a KV cache [B, S_max, N, K] with the keys' positions and segment ids, so the
  same bias and masks apply to cached keys. New keys go in at one slot for the whole batch, or at
  one slot per row (:func:`write_cache`), and a query sees cache slots up to its own.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glam.config import ModelConfig
from glam.model import axes as ax
from glam.model.layers import normal, param
from glam.sharding.rules import constrain

NEG_INF = -1e30


def relative_bucket(distance: jax.Array, num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
    """Causal T5 bucket of ``distance = q_pos − k_pos`` (negative distances clamp to 0).

    bucket = n for n < num_buckets/2, else
             min(num_buckets − 1, num_buckets/2 + floor(log(n / (nb/2)) / log(max_distance / (nb/2)) · nb/2)).
    """
    n = jnp.maximum(distance, 0)
    exact = num_buckets // 2
    n_safe = jnp.maximum(n, exact).astype(jnp.float32)
    log_bucket = exact + (jnp.log(n_safe / exact) / math.log(max_distance / exact) * exact).astype(jnp.int32)
    log_bucket = jnp.minimum(log_bucket, num_buckets - 1)
    return jnp.where(n < exact, n, log_bucket).astype(jnp.int32)


class KVCache(NamedTuple):
    """Keys and values of one attention layer, plus what the bias and masks need about each key."""

    k: jax.Array  # [B, S_max, N, K]
    v: jax.Array  # [B, S_max, N, K]
    positions: jax.Array  # [B, S_max] int32
    segment_ids: jax.Array  # [B, S_max] int32, 0 = empty or padding


def empty_cache(batch: int, max_len: int, cfg: ModelConfig, dtype) -> KVCache:
    shape = (batch, max_len, cfg.num_heads, cfg.head_dim)
    return KVCache(
        jnp.zeros(shape, dtype),
        jnp.zeros(shape, dtype),
        jnp.zeros((batch, max_len), jnp.int32),
        jnp.zeros((batch, max_len), jnp.int32),
    )


def write_cache(cache: KVCache, k, v, positions, segment_ids, index) -> KVCache:
    """Write T new keys [B, T, N, K] (and their positions, segment ids) at cache slot ``index``.

    ``index`` is a scalar (every row at the same slot: a left-padded batch) or [B], one slot per
    row (the server's continuous batching, where each row of the batch has its own length). A
    per-row write is a scatter; a write that would run past the cache is dropped, not clamped.
    """
    if jnp.ndim(index) == 0:
        start = (0, index, 0, 0)
        return KVCache(
            jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start),
            jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start),
            jax.lax.dynamic_update_slice(cache.positions, positions, (0, index)),
            jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, index)),
        )
    B, T = positions.shape
    rows = jnp.arange(B, dtype=jnp.int32)[:, None]  # [B, 1]
    cols = index[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]  # [B, T]
    return KVCache(
        cache.k.at[rows, cols].set(k.astype(cache.k.dtype), mode="drop"),
        cache.v.at[rows, cols].set(v.astype(cache.v.dtype), mode="drop"),
        cache.positions.at[rows, cols].set(positions, mode="drop"),
        cache.segment_ids.at[rows, cols].set(segment_ids, mode="drop"),
    )


def attention_mask(q_seg, k_seg, q_idx, k_idx) -> jax.Array:
    """[B, T, S] boolean: same document, key not padding, key not after the query."""
    same_doc = q_seg[:, :, None] == k_seg[:, None, :]
    not_pad = (k_seg != 0)[:, None, :]
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    return same_doc & not_pad & causal


def softmax_fp32(logits: jax.Array, mask: jax.Array, extra_zero_logit: bool) -> jax.Array:
    """Masked softmax over the last axis in fp32; optionally with an implicit extra logit of 0."""
    logits = jnp.where(mask, logits.astype(jnp.float32), NEG_INF)
    m = jnp.max(logits, axis=-1, keepdims=True)
    if extra_zero_logit:
        m = jnp.maximum(m, 0.0)
    e = jnp.where(mask, jnp.exp(logits - m), 0.0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    if extra_zero_logit:
        denom = denom + jnp.exp(-m)
    # A fully masked row (a padding query) has denom 0: divide by 1 so its gradient stays finite
    # (max(denom, 1e-30) gives NaN in the backward pass, as 1e-30² underflows in fp32).
    return e / jnp.where(denom > 0, denom, 1.0)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        M, N, K = cfg.d_model, cfg.num_heads, cfg.head_dim
        self.cfg = cfg
        self.wq = param(rngs, normal((M * K) ** -0.5), (M, N, K), ("embed", "heads", "head_dim"))
        self.wk = param(rngs, normal(M**-0.5), (M, N, K), ("embed", "heads", "head_dim"))
        self.wv = param(rngs, normal(M**-0.5), (M, N, K), ("embed", "heads", "head_dim"))
        self.wo = param(rngs, normal((N * K) ** -0.5), (N, K, M), ("heads", "head_dim", "embed"))
        self.rel_bias = param(rngs, normal(0.1), (N, cfg.rel_buckets), ("heads", "rel_buckets"))

    def bias(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
        """[B, N, T, S] relative position bias."""
        buckets = relative_bucket(
            q_pos[:, :, None] - k_pos[:, None, :], self.cfg.rel_buckets, self.cfg.rel_max_distance
        )
        return jnp.transpose(self.rel_bias[...][:, buckets], (1, 0, 2, 3))  # [N,B,T,S] → [B,N,T,S]

    def __call__(
        self,
        x: jax.Array,  # [B, T, M]
        positions: jax.Array,  # [B, T]
        segment_ids: jax.Array,  # [B, T]
        cache: KVCache | None = None,
        cache_index: jax.Array | None = None,  # where x's first token goes: scalar, or [B] one per row
    ) -> tuple[jax.Array, KVCache | None]:
        dtype = x.dtype
        q = jnp.einsum("btm,mnk->btnk", x, self.wq[...].astype(dtype))
        k = jnp.einsum("bsm,mnk->bsnk", x, self.wk[...].astype(dtype))
        v = jnp.einsum("bsm,mnk->bsnk", x, self.wv[...].astype(dtype))
        q, k, v = (constrain(t, ax.BSNK) for t in (q, k, v))
        T = x.shape[1]
        q_idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), positions.shape)
        if cache is None:
            k_pos, k_seg, k_idx = positions, segment_ids, q_idx
        else:
            cache = write_cache(cache, k, v, positions, segment_ids, cache_index)
            k, v = cache.k.astype(dtype), cache.v.astype(dtype)
            k_pos, k_seg = cache.positions, cache.segment_ids
            q_idx = q_idx + (cache_index[:, None] if jnp.ndim(cache_index) else cache_index)
            k_idx = jnp.broadcast_to(jnp.arange(k.shape[1], dtype=jnp.int32), k_pos.shape)
        logits = jnp.einsum("btnk,bsnk->bnts", q, k, preferred_element_type=jnp.float32)
        logits = logits + self.bias(positions, k_pos)
        mask = attention_mask(segment_ids, k_seg, q_idx, k_idx)[:, None, :, :]
        probs = softmax_fp32(logits, mask, self.cfg.extra_zero_logit).astype(dtype)
        out = jnp.einsum("bnts,bsnk->btnk", probs, v)
        y = jnp.einsum("btnk,nkm->btm", out, self.wo[...].astype(dtype))
        return constrain(y, ax.BSM), cache


def reference_attention(x, wq, wk, wv, wo, rel_bias, positions, segment_ids, cfg: ModelConfig) -> jax.Array:
    """Slow reference: an explicit [B, N, T, S] matrix built by Python loops over (t, s) (tests only)."""
    q = jnp.einsum("btm,mnk->btnk", x, wq)
    k = jnp.einsum("bsm,mnk->bsnk", x, wk)
    v = jnp.einsum("bsm,mnk->bsnk", x, wv)
    B, T = positions.shape
    scores = jnp.einsum("btnk,bsnk->bnts", q, k)
    out = []
    for b in range(B):
        rows = []
        for t in range(T):
            logits, vals = [], []
            for s in range(T):
                if s > t or segment_ids[b, s] != segment_ids[b, t] or segment_ids[b, s] == 0:
                    continue
                d = int(positions[b, t]) - int(positions[b, s])
                bucket = relative_bucket(jnp.asarray(d), cfg.rel_buckets, cfg.rel_max_distance)
                logits.append(scores[b, :, t, s] + rel_bias[:, bucket])
                vals.append(v[b, s])
            if not logits:
                rows.append(jnp.zeros(wo.shape[-1]))
                continue
            lg = jnp.stack(logits, axis=-1)  # [N, S']
            if cfg.extra_zero_logit:
                lg = jnp.concatenate([lg, jnp.zeros((lg.shape[0], 1))], axis=-1)
            p = jax.nn.softmax(lg, axis=-1)[:, : len(vals)]
            o = jnp.einsum("ns,snk->nk", p, jnp.stack(vals))
            rows.append(jnp.einsum("nk,nkm->m", o, wo))
        out.append(jnp.stack(rows))
    return jnp.stack(out)
