"""Optimizers: Adafactor as GLaM trains with it (paper §5, reference doc §5), and AdamW as the alternative.

Adafactor (Shazeer & Stern 2018) in the paper's configuration:

- no momentum (β1 = 0);
- second-moment decay β2(t) = 1 − t^−0.8 (t counts updates from 1, so the first update uses g² alone);
- factored second moments over the LAST TWO dims when both are ≥ ``min_dim_size_to_factor``; every
  leading dim is a batch dim, so a stacked expert weight [P, E, M, F] keeps one (row, column) pair of
  statistics per layer and per expert: v_row [P, E, M], v_col [P, E, F];
- ε1 = 1e-30 added to g² before averaging;
- update clipping: u ← u / max(1, RMS(u) / 1.0);
- relative step: u ← u · max(RMS(param), 1e-3);
- learning rate lr(t) = lr_scale / sqrt(max(t, warmup_steps)): 0.01 for the first 10K steps, then
  inverse-square-root decay (lr_scale = 1, warmup_steps = 10⁴ in the paper).

Block RMS (clipping, relative step) is taken per layer of a scanned stack: a parameter [P, ...] is P
separate variables in the reference's unrolled model, so the stacked model updates exactly as the
unrolled one would. Optax's ``scale_by_factored_rms`` factors the two *largest* dims of the whole
tensor (the stacked P or E axis could be picked) and ``clip_by_block_rms`` / ``scale_by_param_block_rms``
take the RMS over the whole tensor, so those three pieces are written here; the chain, the schedule
and AdamW come from Optax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from glam.config import GLaMConfig
from glam.model.init import param_axes


class FactoredState(NamedTuple):
    """Second-moment statistics. Per leaf, unused slots hold a scalar 0 (factored leaves have no ``v``)."""

    count: jax.Array  # updates applied so far, int32
    v_row: dict  # [..., R] mean of g² over the last dim, for factored leaves
    v_col: dict  # [..., C] mean of g² over the second-to-last dim, for factored leaves
    v: dict  # full g² average, for unfactored leaves


def rsqrt_schedule(lr_scale: float, warmup_steps: int) -> optax.Schedule:
    """lr(t) = lr_scale / sqrt(max(t, warmup_steps)) (paper §5: 0.01 for 10K steps, then 1/sqrt(t))."""

    def schedule(count):
        t = jnp.maximum(jnp.asarray(count, jnp.float32), float(warmup_steps))
        return lr_scale * jax.lax.rsqrt(t)

    return schedule


def decay_rate(count: jax.Array, exponent: float) -> jax.Array:
    """β2(t) = 1 − t^−exponent with t = count + 1 (β2 = 0 on the first update)."""
    t = jnp.asarray(count, jnp.float32) + 1.0
    return 1.0 - t ** (-exponent)


def is_factored(shape: tuple[int, ...], min_dim_size_to_factor: int) -> bool:
    """Factor the last two dims when the tensor has them and both are large enough."""
    return len(shape) >= 2 and min(shape[-2:]) >= min_dim_size_to_factor


def scale_by_factored_rms(
    decay_exponent: float = 0.8, epsilon: float = 1e-30, min_dim_size_to_factor: int = 128
) -> optax.GradientTransformation:
    """u = g / sqrt(v̂): v̂ = v_row ⊗ v_col / mean(v_row) for factored leaves, else the full average."""

    def init_fn(params):
        def row(p):
            return jnp.zeros(p.shape[:-1], jnp.float32) if is_factored(p.shape, min_dim_size_to_factor) else _zero()

        def col(p):
            shape = p.shape[:-2] + p.shape[-1:]
            return jnp.zeros(shape, jnp.float32) if is_factored(p.shape, min_dim_size_to_factor) else _zero()

        def full(p):
            return _zero() if is_factored(p.shape, min_dim_size_to_factor) else jnp.zeros(p.shape, jnp.float32)

        tm = jax.tree.map
        return FactoredState(jnp.zeros((), jnp.int32), tm(row, params), tm(col, params), tm(full, params))

    def update_fn(grads, state, params=None):
        del params
        beta = decay_rate(state.count, decay_exponent)

        def leaf(g, v_row, v_col, v):
            g2 = jnp.square(g.astype(jnp.float32)) + epsilon
            if not is_factored(g.shape, min_dim_size_to_factor):
                v = beta * v + (1.0 - beta) * g2
                return g * jax.lax.rsqrt(v), v_row, v_col, v
            v_row = beta * v_row + (1.0 - beta) * jnp.mean(g2, axis=-1)  # [..., R]
            v_col = beta * v_col + (1.0 - beta) * jnp.mean(g2, axis=-2)  # [..., C]
            row_factor = jax.lax.rsqrt(v_row / jnp.mean(v_row, axis=-1, keepdims=True))
            u = g * row_factor[..., :, None] * jax.lax.rsqrt(v_col)[..., None, :]
            return u, v_row, v_col, v

        out = jax.tree.map(leaf, grads, state.v_row, state.v_col, state.v)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)  # noqa: E731
        new_state = FactoredState(optax.safe_increment(state.count), pick(1), pick(2), pick(3))
        return pick(0), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _zero() -> jax.Array:
    return jnp.zeros((), jnp.float32)


def block_rms(x: jax.Array, stacked: int) -> jax.Array:
    """RMS over all but the first ``stacked`` dims, shaped to broadcast against ``x``."""
    axes = tuple(range(stacked, x.ndim))
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))


def clip_by_layer_rms(threshold: float, stacked: dict) -> optax.GradientTransformation:
    """Adafactor update clipping, u / max(1, RMS(u) / threshold), per layer of a stacked parameter."""

    def update_fn(updates, state, params=None):
        del params
        clip = lambda u, n: u / jnp.maximum(1.0, block_rms(u, n) / threshold)  # noqa: E731
        return jax.tree.map(clip, updates, stacked), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_param_layer_rms(floor: float, stacked: dict) -> optax.GradientTransformation:
    """Adafactor's relative step: u · max(RMS(param), floor), per layer of a stacked parameter."""

    def update_fn(updates, state, params=None):
        scale = lambda u, p, n: u * jnp.maximum(block_rms(p, n), floor)  # noqa: E731
        return jax.tree.map(scale, updates, params, stacked), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def stacked_dims(cfg: GLaMConfig) -> dict:
    """Per parameter, the number of leading scanned-layer axes (1 for the pair-block stack, else 0)."""
    axes = param_axes(cfg)
    count = lambda names: len(names) - len(tuple(n for n in names if n != "layers"))  # noqa: E731
    return jax.tree.map(count, axes, is_leaf=lambda x: isinstance(x, tuple))


def learning_rate_schedule(cfg: GLaMConfig) -> optax.Schedule:
    """The schedule of ``optim.name``, as a function of the number of updates applied."""
    o = cfg.optim
    if o.name == "adafactor":
        return rsqrt_schedule(o.lr_scale, o.warmup_steps)
    warmup = min(o.adam_warmup_steps, max(cfg.train.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(cfg.train.steps, warmup + 1),
        end_value=0.1 * o.learning_rate,
    )


def adafactor(cfg: GLaMConfig) -> optax.GradientTransformation:
    """The paper's Adafactor (§5), built from the hand-written pieces above and Optax's chain."""
    o = cfg.optim
    stacked = stacked_dims(cfg)
    parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
    parts += [
        scale_by_factored_rms(o.decay_rate, o.epsilon1, o.min_dim_size_to_factor),
        clip_by_layer_rms(o.clip_threshold, stacked),
    ]
    if o.multiply_by_parameter_scale:
        parts.append(scale_by_param_layer_rms(o.epsilon2, stacked))
    parts.append(optax.scale_by_learning_rate(learning_rate_schedule(cfg)))
    return optax.chain(*parts)


def adamw(cfg: GLaMConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay to 10% of the peak; no decay on norms and biases."""
    o = cfg.optim
    axes = param_axes(cfg)
    decay_mask = jax.tree.map(
        lambda names: not ({"norm", "rel_buckets"} & set(names)), axes, is_leaf=lambda x: isinstance(x, tuple)
    )
    parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
    parts.append(
        optax.adamw(
            learning_rate_schedule(cfg), b1=o.adam_b1, b2=o.adam_b2, weight_decay=o.weight_decay, mask=decay_mask
        )
    )
    return optax.chain(*parts)


def make_optimizer(cfg: GLaMConfig) -> optax.GradientTransformation:
    """The optimizer named by ``optim.name``."""
    return adafactor(cfg) if cfg.optim.name == "adafactor" else adamw(cfg)
