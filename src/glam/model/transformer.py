"""The GLaM decoder: a stack of L/2 identical (MoE layer, dense layer) pair-blocks (paper §2).

Each layer is pre-norm: ``x += attn(norm(x))``, ``x += ffn_or_moe(norm(x))``; a final norm precedes
the tied output embedding. The pair is the repeated unit: its parameters carry a leading axis P and
``forward`` scans over it (the paper's while_loop, so every MoE layer shares one compiled graph), or
unrolls the loop (``model.scan_layers=false``) for debugging and the equivalence tests. Decode steps
run the pairs from separate per-pair parameters and caches instead (``run_pairs``), so that no step
copies a layer's weights out of the stack.
Dense presets (``moe.num_experts=0``) are the same code with a dense FFN in both layers of the pair;
``moe.layers=all`` (Mixtral, DeepSeek) puts a MoE FFN in both, the second still named ``dense_layer``
so that parameter paths do not depend on the option. Routing statistics have one leading axis per MoE
layer in model order: [P] (alternate) or [2P] (all: layers 0, 1, 2, …).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from glam.config import GLaMConfig
from glam.model import axes as ax
from glam.model.attention import Attention, KVCache, empty_cache
from glam.model.ffn import GatedGeluFFN
from glam.model.layers import Embed, RMSNorm
from glam.model.moe.layer import MoEFFN
from glam.sharding.rules import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_moe_outputs": jax.checkpoint_policies.save_only_these_names("moe_out"),
}


class Layer(nnx.Module):
    """One pre-norm Transformer layer whose FFN is either the MoE layer or the gated dense FFN."""

    def __init__(self, cfg: GLaMConfig, moe: bool, *, rngs: nnx.Rngs):
        m = cfg.model
        self.attn_norm = RMSNorm(m.d_model, m.norm_eps, rngs=rngs)
        self.attn = Attention(m, rngs=rngs)
        self.ffn_norm = RMSNorm(m.d_model, m.norm_eps, rngs=rngs)
        self.ffn = MoEFFN(m, cfg.moe, rngs=rngs) if moe else GatedGeluFFN(m, rngs=rngs)
        self.is_moe = moe

    def __call__(self, x, positions, segment_ids, *, train, rng, cache=None, cache_index=None, decode=False):
        with jax.named_scope("attention"):  # named scopes: profiles and HLO metadata read by stage
            h, cache = self.attn(self.attn_norm(x), positions, segment_ids, cache, cache_index)
        x = constrain(x + h, ax.BSM)
        stats = {}
        with jax.named_scope("moe" if self.is_moe else "ffn"):
            h = self.ffn_norm(x)
            if self.is_moe:
                h, stats = self.ffn(h, train=train, rng=rng, valid=segment_ids != 0, decode=decode)
                h = checkpoint_name(h, "moe_out")
            else:
                h = self.ffn(h)
        return constrain(x + h, ax.BSM), stats, cache


class PairBlock(nnx.Module):
    """The repeated unit: layer 2i has the MoE FFN (reference: MoE first), layer 2i+1 the dense FFN,
    or a MoE FFN too with ``moe.layers=all``. Statistics: [2, ...] (both layers MoE) or one layer's."""

    def __init__(self, cfg: GLaMConfig, *, rngs: nnx.Rngs):
        self.moe_layer = Layer(cfg, moe=cfg.is_moe, rngs=rngs)
        self.dense_layer = Layer(cfg, moe=cfg.moe_per_pair == 2, rngs=rngs)

    def __call__(self, x, positions, segment_ids, *, train, rng, caches=None, cache_index=None, decode=False):
        c0, c1 = (None, None) if caches is None else caches
        if self.dense_layer.is_moe and rng is not None:  # each MoE layer its own key
            r0, r1 = jax.random.split(rng)
        else:
            r0, r1 = rng, None
        with jax.named_scope("moe_layer"):
            x, stats, c0 = self.moe_layer(
                x,
                positions,
                segment_ids,
                train=train,
                rng=r0,
                cache=c0,
                cache_index=cache_index,
                decode=decode,
            )
        with jax.named_scope("dense_layer"):
            x, stats1, c1 = self.dense_layer(
                x, positions, segment_ids, train=train, rng=r1, cache=c1, cache_index=cache_index, decode=decode
            )
        if self.dense_layer.is_moe:  # one leading axis per MoE layer: [2, ...]
            stats = jax.tree.map(lambda a, b: jnp.stack([a, b]), stats, stats1)
        return x, stats, (None if caches is None else (c0, c1))


class GLaM(nnx.Module):
    def __init__(self, cfg: GLaMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg.model.vocab_size, cfg.model.d_model, rngs=rngs)
        keys = jax.random.split(rngs.params(), cfg.num_pairs)
        # Stacked pair parameters: each leaf gains a leading axis P (the unsharded "layers" axis).
        self.blocks = nnx.vmap(lambda k: PairBlock(cfg, rngs=nnx.Rngs(k)))(keys)
        self.final_norm = RMSNorm(cfg.model.d_model, cfg.model.norm_eps, rngs=rngs)


def _dtype(cfg: GLaMConfig):
    return jnp.bfloat16 if cfg.model.activation_dtype == "bfloat16" else jnp.float32


def run_blocks(model: GLaM, x, positions, segment_ids, *, train, rng, caches=None, cache_index=None, decode=False):
    """Apply the P pair-blocks, scanned or unrolled. Returns (x, stats stacked over the MoE layers in
    model order ([P, ...], or [2P, ...] with ``moe.layers=all``), caches)."""
    cfg = model.cfg
    graphdef, block_state = nnx.split(model.blocks)
    P = cfg.num_pairs
    rngs = jax.random.split(rng, P) if rng is not None else jnp.zeros((P, 2), jnp.uint32)

    def body(carry, xs):
        state, key, layer_caches = xs
        block = nnx.merge(graphdef, state)
        key = key if rng is not None else None
        y, stats, new_caches = block(
            carry,
            positions,
            segment_ids,
            train=train,
            rng=key,
            caches=layer_caches,
            cache_index=cache_index,
            decode=decode,
        )
        return y, (stats, new_caches)

    policy = REMAT_POLICIES[cfg.model.remat]
    if cfg.model.remat != "none":
        body = jax.checkpoint(body, policy=policy, prevent_cse=not cfg.model.scan_layers)
    if cfg.model.scan_layers:
        x, (stats, caches) = jax.lax.scan(body, x, (block_state, rngs, caches))
    else:
        outs = []
        for i in range(P):
            xs = jax.tree.map(lambda a, i=i: a[i], (block_state, rngs, caches))
            x, out = body(x, xs)
            outs.append(out)
        stats, caches = jax.tree.map(lambda *a: jnp.stack(a), *outs) if outs else ({}, None)
    if cfg.moe_per_pair == 2:  # [P, 2, ...] → [2P, ...]: layer 2p + j is pair p's layer j
        stats = jax.tree.map(lambda a: a.reshape(2 * P, *a.shape[2:]), stats)
    return x, stats, caches


def split_pairs(tree):
    """A pytree whose leaves have the leading pair axis [P, ...] → a tuple of P pytrees, one per pair."""
    P = jax.tree.leaves(tree)[0].shape[0]
    return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(P))


def run_pairs(pairs: Sequence[PairBlock], x, positions, segment_ids, *, caches, cache_index, decode=False):
    """Apply pair-blocks given one by one, each with its own parameters and caches (decode steps).

    Inside the layer scan, XLA on CPU copies each pair's slice of every stacked weight and cache
    into a fresh buffer before reading it, every step; separate arrays are read (and the donated
    caches updated) in place. Returns (x, {} (no statistics), the P updated caches).
    """
    new_caches = []
    for block, cache in zip(pairs, caches, strict=True):
        x, _, cache = block(
            x,
            positions,
            segment_ids,
            train=False,
            rng=None,
            caches=cache,
            cache_index=cache_index,
            decode=decode,
        )
        new_caches.append(cache)
    return x, {}, tuple(new_caches)


def apply(
    model: GLaM,
    inputs,
    positions,
    segment_ids,
    *,
    train: bool,
    rng=None,
    caches=None,
    cache_index=None,
    decode=False,
    pairs: Sequence[PairBlock] | None = None,
) -> tuple[jax.Array, dict, Any]:
    """Logits [B, T, V] (fp32), MoE statistics stacked per MoE layer, and updated caches.

    With ``pairs`` (P separate pair-blocks, ``caches`` then one per pair) the blocks run one by one
    instead of ``model.blocks`` scanned: see :func:`run_pairs`.
    """
    cfg = model.cfg
    x = constrain(model.embed.encode(inputs, _dtype(cfg)), ax.BSM)
    kwargs = {"caches": caches, "cache_index": cache_index, "decode": decode}
    if pairs is None:
        x, stats, caches = run_blocks(model, x, positions, segment_ids, train=train, rng=rng, **kwargs)
    else:
        x, stats, caches = run_pairs(pairs, x, positions, segment_ids, **kwargs)
    h = model.final_norm(x).astype(jnp.float32)
    logits = constrain(model.embed.decode(h), ax.BSV)
    return logits, stats, caches


def init_caches(cfg: GLaMConfig, batch: int, max_len: int):
    """Stacked KV caches for both layers of every pair: ([P, ...], [P, ...])."""
    one = empty_cache(batch, max_len, cfg.model, _dtype(cfg))
    stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.num_pairs, *a.shape)), one)
    return (KVCache(*stacked), KVCache(*stacked))
