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


def bias_update(load: jax.Array, rate: float) -> jax.Array:
    """[..., E] choice fractions → the step's change of the bias: rate · sign(mean load − load)."""
    E = load.shape[-1]
    return rate * jnp.sign(1.0 / E - load)


def with_bias_updates(cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
    """``updates`` with the router bias's entry replaced by :func:`bias_update` (no-op unless balance=bias)."""
    if not (cfg.is_moe and cfg.moe.balance == "bias"):
        return updates
    ffn = updates["blocks"]["moe_layer"]["ffn"]
    delta = bias_update(moe_stats["expert_chosen"], cfg.moe.bias_rate).astype(ffn["router_bias"].dtype)  # [P, E]
    ffn = {**ffn, "router_bias": delta}
    return {**updates, "blocks": {**updates["blocks"], "moe_layer": {**updates["blocks"]["moe_layer"], "ffn": ffn}}}
