"""Auxiliary-loss-free load balancing (DeepSeek-V3, Wang et al. 2024): ``moe.balance=bias``.

Each MoE layer holds a bias b [E] (the parameter ``router_bias``, so checkpoints save and restore it
exactly). Routing chooses experts by softmax(router logits) + b, while the gates stay the
softmax's (gating.topk_gating). The bias is not trained by the optimizer: after every step

    b_e ← b_e + γ · sign(1/E − load_e)

where load_e is the fraction of this step's expert choices (before the capacity cut) that went to
e, and γ = ``moe.bias_rate``: an overloaded expert becomes less likely to be chosen, an idle one
more. The training step replaces the optimizer's update of ``router_bias`` with this one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glam.config import GLaMConfig
from glam.model.moe.layer import moe_ffn_of, with_moe_ffn
from glam.model.moe.routers import BALANCERS


def bias_update(load: jax.Array, rate: float) -> jax.Array:
    """[..., E] choice fractions → the step's change of the bias: rate · sign(mean load − load)."""
    E = load.shape[-1]
    return rate * jnp.sign(1.0 / E - load)


def replace_bias_update(cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
    """``updates`` with the router bias's entry replaced by :func:`bias_update` (``routers.BiasBalancer``)."""
    ffn = moe_ffn_of(updates)
    delta = bias_update(moe_stats["expert_chosen"], cfg.moe.bias_rate).astype(ffn["router_bias"].dtype)  # [P, E]
    return with_moe_ffn(updates, {**ffn, "router_bias": delta})


def with_bias_updates(cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
    """``updates`` as the configured balancer applies them (unchanged unless ``moe.balance=bias``)."""
    if not cfg.is_moe:
        return updates
    return BALANCERS[cfg.moe.balance].update(cfg, updates, moe_stats)
