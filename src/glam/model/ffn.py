"""The dense feed-forward layer: gated GELU (GEGLU), paper §2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glam.config import ModelConfig
from glam.model import axes as ax
from glam.model.layers import param, uniform_fan_in
from glam.sharding.rules import constrain


class GatedGeluFFN(nnx.Module):
    """``(gelu_tanh(x W_gate) * (x W_in)) W_out``; init U(±sqrt(3/fan_in)) (reference §2)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, ffn_dim: int | None = None):
        M, F = cfg.d_model, ffn_dim or cfg.ffn_dim
        self.w_gate = param(rngs, uniform_fan_in(M), (M, F), ("embed", "mlp"))
        self.w_in = param(rngs, uniform_fan_in(M), (M, F), ("embed", "mlp"))
        self.w_out = param(rngs, uniform_fan_in(F), (F, M), ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, S, M]
        dtype = x.dtype
        gate = jax.nn.gelu(jnp.einsum("bsm,mf->bsf", x, self.w_gate[...].astype(dtype)), approximate=True)
        h = constrain(gate * jnp.einsum("bsm,mf->bsf", x, self.w_in[...].astype(dtype)), ax.BSF)
        return constrain(jnp.einsum("bsf,fm->bsm", h, self.w_out[...].astype(dtype)), ax.BSM)
