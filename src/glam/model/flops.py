"""Parameter counts from real shapes, and FLOPs per token.

Counting (reference doc §1): total parameters are summed over the real parameter shapes of
``jax.eval_shape`` (nothing allocated). Activated parameters per token count each MoE layer's
routed experts at k / E of their size, k the router's causal k (``glam.model.moe.routers``: top_k,
or round(cf) for expert choice); the router, shared experts and everything else in full.

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B):
  training  = 6·N + 12·L·A·S
  inference = 2·N + 4·L·A·S      (a forward pass: one third of training)
with N the activated parameters (the tied embedding counted once, for the output projection; the
input lookup is free), L layers, A = heads·head_dim, S the context length.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from glam.config import GLaMConfig
from glam.model.init import abstract_params, param_axes
from glam.model.moe.routers import BALANCERS


@dataclass(frozen=True)
class ModelSize:
    params_total: int
    params_activated: int
    params_embedding: int
    params_experts: int
    flops_per_token_train: float
    flops_per_token_inference: float


def model_size(cfg: GLaMConfig, seq_len: int | None = None) -> ModelSize:
    shapes = abstract_params(cfg)
    axes = param_axes(cfg)
    total = experts = 0
    for shape, names in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        size = int(shape.size)
        total += size
        if "expert" in names:
            experts += size
    E = cfg.moe.num_experts
    activated = total - experts + (experts * cfg.moe.causal_top_k // E if E else 0)
    m = cfg.model
    S = seq_len or cfg.train.seq_len
    attn = m.num_layers * m.num_heads * m.head_dim * S
    return ModelSize(
        params_total=total,
        params_activated=activated,
        params_embedding=m.vocab_size * m.d_model,
        params_experts=experts,
        flops_per_token_train=6.0 * activated + 12.0 * attn,
        flops_per_token_inference=2.0 * activated + 4.0 * attn,
    )


def counting_rule(cfg: GLaMConfig) -> tuple[int, int]:
    """(total, activated) by the formula of reference doc §1, norms and bias tables included exactly."""
    m, E = cfg.model, cfg.moe.num_experts
    M, F, L, A, N = m.d_model, m.ffn_dim, m.num_layers, m.num_heads * m.head_dim, m.num_heads
    expert = (3 if m.expert_activation == "geglu" else 2) * M * (cfg.moe.expert_dim or F)  # one expert's FFN
    attention = L * (4 * M * A + N * m.rel_buckets)
    norms = (2 * L + 1) * M
    embed = m.vocab_size * M
    if E:
        n_moe = cfg.num_moe_layers  # L/2 (moe.layers=alternate: layers 0, 2, 4, …) or L (all)
        dense = (L - n_moe) * 3 * M * F
        shared = cfg.moe.shared_experts * expert  # always on: total and activated alike
        router = M * E + (E if BALANCERS[cfg.moe.balance].bias else 0)  # W_g, and the selection bias
        moe_total = n_moe * (E * expert + shared + router)
        moe_active = n_moe * (cfg.moe.causal_top_k * expert + shared + router)
    else:
        dense, moe_total, moe_active = L * 3 * M * F, 0, 0
    base = attention + norms + embed + dense
    return base + moe_total, base + moe_active
