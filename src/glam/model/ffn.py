"""Feed-forward math, written once: the dense gated-GELU layer (paper §2), the experts, the shared
experts and the slow reference all compute ``hidden`` and ``feed_forward`` below."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glam.config import ModelConfig
from glam.model import axes as ax
from glam.model.layers import param, uniform_fan_in
from glam.sharding.rules import constrain


def gelu(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation (the reference's, §2): the one definition glam uses."""
    return jax.nn.gelu(x, approximate=True)


def hidden(project, activation, w_in: jax.Array, w_gate: jax.Array | None = None) -> jax.Array:
    """An FFN's hidden layer, given ``project(w)`` = the inputs times w in any layout:
    ``act(project(W_in))``, or gated (``w_gate`` given) ``act(project(W_gate)) * project(W_in)``."""
    h = project(w_in)
    return activation(h) if w_gate is None else activation(project(w_gate)) * h


def feed_forward(x: jax.Array, w_in, w_out, activation, w_gate=None, hidden_axes=None) -> jax.Array:
    """``x [..., M]`` through one FFN (W_in, W_gate [M, F], W_out [F, M]) in x's dtype → ``[..., M]``;
    ``hidden_axes`` constrains the hidden layer's sharding."""
    dtype = x.dtype

    def project(w):
        return jnp.einsum("...m,mf->...f", x, w.astype(dtype))

    h = hidden(project, activation, w_in, w_gate)
    if hidden_axes is not None:
        h = constrain(h, hidden_axes)
    return jnp.einsum("...f,fm->...m", h, w_out.astype(dtype))


class GatedGeluFFN(nnx.Module):
    """``(gelu_tanh(x W_gate) * (x W_in)) W_out``; init U(±sqrt(3/fan_in)) (reference §2)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, ffn_dim: int | None = None):
        M, F = cfg.d_model, ffn_dim or cfg.ffn_dim
        self.w_gate = param(rngs, uniform_fan_in(M), (M, F), ("embed", "mlp"))
        self.w_in = param(rngs, uniform_fan_in(M), (M, F), ("embed", "mlp"))
        self.w_out = param(rngs, uniform_fan_in(F), (F, M), ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, S, M]
        y = feed_forward(x, self.w_in[...], self.w_out[...], gelu, self.w_gate[...], hidden_axes=ax.BSF)
        return constrain(y, ax.BSM)
