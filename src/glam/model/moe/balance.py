"""Auxiliary-loss-free load balancing (DeepSeek-V3, Wang et al. 2024): ``moe.balance=bias``.

Each MoE layer holds a bias b [E] (the parameter ``router_bias``, so checkpoints save and restore it
exactly; with ``moe.layers=all`` both layers of a pair hold one, each moved by its own layer's load).
Routing chooses experts by softmax(router logits) + b, while the gates stay the softmax's
(gating.topk_gating). The bias is not trained by the optimizer: after every step

    b_e ← b_e + γ · sign(1/E − load_e)

where load_e is the fraction of this step's expert choices (before the capacity cut) that went to
e, and γ = ``moe.bias_rate``: an overloaded expert becomes less likely to be chosen, an idle one
more. The training step replaces the optimizer's update of ``router_bias`` with this one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glam.config import GLaMConfig
from glam.model.moe.layer import moe_ffn_of, moe_ffn_paths, with_moe_ffn
from glam.model.moe.routers import BALANCERS


def bias_update(load: jax.Array, rate: float) -> jax.Array:
    """[..., E] choice fractions → the step's change of the bias: rate · sign(mean load − load)."""
    E = load.shape[-1]
    return rate * jnp.sign(1.0 / E - load)


def replace_bias_update(cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
    """``updates`` with every MoE layer's router bias entry replaced by :func:`bias_update` of that
    layer's own load (``routers.BiasBalancer``). ``expert_chosen`` is [n·P, E] in model order, n the
    pair's MoE layers (``moe.layers``), so the pair's j-th MoE FFN takes rows j, j + n, …"""
    paths = moe_ffn_paths(cfg.moe)
    chosen = moe_stats["expert_chosen"]  # [n·P, E]
    for j, path in enumerate(paths):
        ffn = moe_ffn_of(updates, path)
        delta = bias_update(chosen[j :: len(paths)], cfg.moe.bias_rate).astype(ffn["router_bias"].dtype)  # [P, E]
        updates = with_moe_ffn(updates, {**ffn, "router_bias": delta}, path)
    return updates


def with_bias_updates(cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
    """``updates`` as the configured balancer applies them (unchanged unless ``moe.balance=bias``)."""
    if not cfg.is_moe:
        return updates
    return BALANCERS[cfg.moe.balance].update(cfg, updates, moe_stats)
