"""Small building blocks: parameters with logical axes, RMSNorm, the tied embedding, initialisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
    """An fp32 parameter carrying its logical axis names (the contract with the mesh)."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, jnp.float32), axes=axes)


def normal(stddev: float):
    def init(key, shape, dtype):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def uniform_fan_in(fan_in: int):
    """U(±sqrt(3 / fan_in)): unit-variance-preserving init of the reference FFNs (§2)."""
    limit = (3.0 / fan_in) ** 0.5

    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


class RMSNorm(nnx.Module):
    """RMSNorm: no mean subtraction, no bias, scale initialised to 1, eps 1e-6 (paper §2)."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.scale = param(rngs, ones, (dim,), ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        return y.astype(x.dtype)


class Embed(nnx.Module):
    """Tied input/output embedding [V, M], init N(0, 1); logits = (h · M^-1/2) @ Emb^T (reference §2)."""

    def __init__(self, vocab: int, d_model: int, *, rngs: nnx.Rngs):
        self.embedding = param(rngs, normal(1.0), (vocab, d_model), ("vocab", "embed"))
        self.d_model = d_model

    def encode(self, tokens: jax.Array, dtype) -> jax.Array:
        # The input is not scaled (reference §2).
        return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)

    def decode(self, h: jax.Array) -> jax.Array:
        h = h * (self.d_model**-0.5)
        return jnp.einsum("bsm,vm->bsv", h, self.embedding[...].astype(h.dtype))
