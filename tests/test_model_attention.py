"""Relative position buckets, attention against an explicit [B, N, T, S] computation, and masks (§2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glam.config import ModelConfig
from glam.model.attention import Attention, reference_attention, relative_bucket


@pytest.mark.parametrize(
    "distance,bucket",
    [(-5, 0), (0, 0), (1, 1), (15, 15), (16, 16), (20, 17), (32, 21), (64, 26), (127, 31), (128, 31), (10_000, 31)],
)
def test_relative_bucket_hand_values(distance, bucket):
    # n < 16: exact; else 16 + floor(log(n/16) / log(8) · 16), capped at 31. E.g. 32: 16 + floor(16/3) = 21.
    assert int(relative_bucket(jnp.asarray(distance))) == bucket


CFG = ModelConfig(d_model=16, num_heads=2, head_dim=4, num_layers=2, ffn_dim=8)


def _attn(cfg=CFG):
    a = Attention(cfg, rngs=nnx.Rngs(0))
    a.rel_bias[...] = jax.random.normal(jax.random.key(5), a.rel_bias[...].shape)  # a bias that matters
    return a


def _packed():
    # Row 0: documents of length 5 and 3 (positions restart), then 2 padding tokens.
    # Row 1: one document of 10 tokens.
    seg = jnp.asarray([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0], [1] * 10], jnp.int32)
    pos = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0], list(range(10))], jnp.int32)
    return seg, pos


@pytest.mark.parametrize("extra_zero_logit", [False, True])
def test_attention_equals_explicit_reference(extra_zero_logit):
    cfg = ModelConfig(**{**CFG.__dict__, "extra_zero_logit": extra_zero_logit})
    a = _attn(cfg)
    seg, pos = _packed()
    x = jax.random.normal(jax.random.key(1), (2, 10, 16))
    y, _ = a(x, pos, seg)
    ref = reference_attention(x, a.wq[...], a.wk[...], a.wv[...], a.wo[...], a.rel_bias[...], pos, seg, cfg)
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_causal_mask_future_tokens_do_not_leak():
    a = _attn()
    seg, pos = jnp.ones((1, 8), jnp.int32), jnp.arange(8, dtype=jnp.int32)[None]
    x = jax.random.normal(jax.random.key(2), (1, 8, 16))
    y1, _ = a(x, pos, seg)
    y2, _ = a(x.at[0, 5:].set(100.0), pos, seg)
    np.testing.assert_allclose(y1[0, :5], y2[0, :5], atol=1e-6)
    assert not np.allclose(y1[0, 5:], y2[0, 5:])


def test_packed_documents_do_not_see_each_other():
    a = _attn()
    seg, pos = _packed()
    x = jax.random.normal(jax.random.key(3), (2, 10, 16))
    y1, _ = a(x, pos, seg)
    y2, _ = a(x.at[0, :5].set(-3.0), pos, seg)  # change document 1 of row 0
    np.testing.assert_allclose(y1[0, 5:8], y2[0, 5:8], atol=1e-6)  # document 2 unchanged
    # Document 2 alone at the start of a row gives the same result: positions, not row offsets, drive the bias.
    alone, _ = a(x[:1, 5:8], pos[:1, 5:8], jnp.ones((1, 3), jnp.int32))
    np.testing.assert_allclose(y1[0, 5:8], alone[0], atol=1e-5)
    np.testing.assert_allclose(y1[0, 8:], 0.0)  # padding queries attend nowhere


def test_no_query_scaling_in_forward():
    # The reference folds 1/sqrt(K) into W_q's init: doubling W_q must double the pre-softmax logits.
    a = _attn()
    a.rel_bias[...] = jnp.zeros_like(a.rel_bias[...])
    seg, pos = jnp.ones((1, 2), jnp.int32), jnp.arange(2, dtype=jnp.int32)[None]
    x = jax.random.normal(jax.random.key(4), (1, 2, 16))
    q = jnp.einsum("btm,mnk->btnk", x, a.wq[...])
    k = jnp.einsum("bsm,mnk->bsnk", x, a.wk[...])
    v = jnp.einsum("bsm,mnk->bsnk", x, a.wv[...])
    logit = jnp.einsum("nk,nk->n", q[0, 1], k[0, 0]), jnp.einsum("nk,nk->n", q[0, 1], k[0, 1])
    p = jax.nn.softmax(jnp.stack(logit, -1), axis=-1)  # [N, 2], no 1/sqrt(K)
    expected = jnp.einsum("ns,snk,nkm->m", p, v[0], a.wo[...])
    y, _ = a(x, pos, seg)
    np.testing.assert_allclose(y[0, 1], expected, atol=1e-5)
