"""The training objective (reference doc §3):
cross-entropy (fp32 softmax, no label smoothing, mean over target tokens)
+ moe.aux_loss_weight (0.01) · Σ over MoE layers of the load-balancing loss
+ optional output z-loss, train.z_loss_weight · mean(logsumexp(logits)²) (reference default 1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glam.config import GLaMConfig
from glam.model.init import bind
from glam.model.transformer import apply


def forward(cfg: GLaMConfig, params: dict, batch: dict, *, train: bool, rng=None) -> tuple[jax.Array, dict]:
    """Logits [B, S, V] in fp32 and MoE statistics stacked over the P MoE layers."""
    model = bind(cfg, params)
    logits, stats, _ = apply(model, batch["inputs"], batch["positions"], batch["segment_ids"], train=train, rng=rng)
    return logits, stats


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(target) [B, S], logsumexp [B, S]) in fp32."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - logz, logz


def loss_fn(cfg: GLaMConfig, params: dict, batch: dict, *, train: bool = True, rng=None) -> tuple[jax.Array, dict]:
    logits, stats = forward(cfg, params, batch, train=train, rng=rng)
    ll, logz = token_log_likelihood(logits, batch["targets"])
    w = batch["loss_weights"].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    ce = -jnp.sum(ll * w) / n
    z_loss = jnp.sum(jnp.square(logz) * w) / n
    aux = jnp.sum(stats["aux_loss"]) if cfg.is_moe else jnp.zeros((), jnp.float32)
    loss = ce + cfg.moe.aux_loss_weight * aux + cfg.train.z_loss_weight * z_loss
    metrics = {"loss": loss, "ce_loss": ce, "aux_loss": aux, "z_loss": z_loss, "tokens": n, "moe": stats}
    if cfg.is_moe and cfg.moe.router_z_loss:  # summed over MoE layers, as the aux loss
        router_z = jnp.sum(stats["router_z_loss"])
        loss = loss + cfg.moe.router_z_loss * router_z
        metrics.update(loss=loss, router_z_loss=router_z)
    return loss, metrics
