"""The MoE feed-forward layer: router → routing plan → dispatch → experts → combine (paper §2, §3).

Experts are NOT gated: ``act(x W_in[e]) W_out[e]`` with W_in [E, M, F], W_out [E, F, M]; ReLU by
default (reference code), GELU as an option. The router W_g [M, E] is replicated and runs in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glam.config import ModelConfig, MoEConfig
from glam.model import axes as ax
from glam.model.layers import param, uniform_fan_in
from glam.model.moe.dispatch import DISPATCH
from glam.model.moe.gating import capacity as capacity_for
from glam.model.moe.gating import top2_gating
from glam.sharding.rules import constrain

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=True)}


class MoEFFN(nnx.Module):
    def __init__(self, cfg: ModelConfig, moe: MoEConfig, *, rngs: nnx.Rngs):
        M, F, E = cfg.d_model, cfg.ffn_dim, moe.num_experts
        self.moe = moe
        self.activation = cfg.expert_activation
        self.w_router = param(rngs, uniform_fan_in(M), (M, E), ("router_embed", "router_expert"))
        self.w_in = param(rngs, uniform_fan_in(M), (E, M, F), ("expert", "expert_embed", "expert_mlp"))
        self.w_out = param(rngs, uniform_fan_in(F), (E, F, M), ("expert", "expert_mlp", "expert_embed"))

    def act(self, h: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.activation](h)

    def experts(self, xe: jax.Array) -> jax.Array:
        """[E, G, C, M] → [E, G, C, M]: each expert's two-matrix FFN on its buffer."""
        dtype = xe.dtype
        h = jnp.einsum("egcm,emf->egcf", xe, self.w_in[...].astype(dtype))
        h = constrain(self.act(h), ax.EGCF)
        return jnp.einsum("egcf,efm->egcm", h, self.w_out[...].astype(dtype))

    def __call__(
        self,
        x: jax.Array,  # [B, S, M], already normed
        *,
        train: bool,
        rng: jax.Array | None = None,
        valid: jax.Array | None = None,  # [B, S] bool, False on padding
        single_group: bool = False,  # decode: route all current tokens as one group
    ) -> tuple[jax.Array, dict]:
        B, S, M = x.shape
        E = self.moe.num_experts
        group_size = self.moe.group_size or S
        if single_group or (B * S) % group_size:
            # Decode steps, and batches that a configured group size does not divide (scoring,
            # prefill of odd shapes): all tokens form one group. Training batches are validated to divide.
            group_size = B * S
        G = (B * S) // group_size
        xg = constrain(x.reshape(G, group_size, M), ax.GSM)  # [G, S_g, M]
        factor = self.moe.capacity_factor_train if train else self.moe.capacity_factor_eval
        C = capacity_for(group_size, E, factor, self.moe.capacity_multiple)
        if self.moe.dispatch == "dropless" or (not train and self.moe.eval_no_drop):
            C = group_size  # an expert receives at most one assignment per token: nothing is dropped
        logits = jnp.einsum("gsm,me->gse", xg.astype(jnp.float32), self.w_router[...])
        routing = top2_gating(
            logits,
            C,
            second_policy=self.moe.second_expert_policy if train else "all",
            second_threshold=self.moe.second_expert_threshold,
            rng=rng,
            valid=None if valid is None else valid.reshape(G, group_size),
        )
        dispatch = DISPATCH[self.moe.dispatch]
        y = dispatch(xg, routing, self, E, C)
        return constrain(y.reshape(B, S, M), ax.BSM), routing.stats
