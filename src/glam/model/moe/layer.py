"""The MoE feed-forward layer: router → routing plan → dispatch → experts → combine (paper §2, §3).

Experts are NOT gated by default: ``act(x W_in[e]) W_out[e]`` with W_in [E, M, F], W_out [E, F, M];
ReLU (reference code), or GELU. ``model.expert_activation=geglu`` gives gated experts of the dense
FFN's form, ``(gelu(x W_gate[e]) * x W_in[e]) W_out[e]`` with a third weight W_gate [E, M, F] (the
form sparse upcycling copies from a dense FFN). The expert width F is ``moe.expert_dim`` (0: the
dense FFN's ``model.ffn_dim``). The router W_g [M, E] is replicated and runs in fp32.

Variants (config ``moe.*``), each one registered object in ``routers.py``: ``top_k`` experts per
token (gating.topk_gating; 2 = GShard); ``router=expert_choice`` (gating.expert_choice_gating and
dispatch.expert_choice_dispatch while training; evaluation and decoding route causally, token by
token); ``balance=bias`` (a selection bias moved by ``balance.py``);
``router_z_loss`` adds ST-MoE's mean(logsumexp(router logits)²) over real tokens to the statistics
(the loss weighs it); ``shared_experts = N`` adds N always-on experts of the expert form, stored as
one FFN of width N·F (the sum of N FFNs of one form is that FFN, exactly) with the dense FFN's axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glam.config import ModelConfig, MoEConfig
from glam.model import axes as ax
from glam.model.ffn import feed_forward, gelu, hidden
from glam.model.layers import param, uniform_fan_in
from glam.model.moe.decode import decode_layer
from glam.model.moe.gating import capacity as capacity_for
from glam.model.moe.routers import BALANCERS, ROUTERS
from glam.sharding.rules import constrain

#: expert forms: name → (activation, gated). Gated forms multiply act(x W_gate) into x W_in.
EXPERT_FORMS = {"relu": (jax.nn.relu, False), "gelu": (gelu, False), "geglu": (gelu, True)}

#: where each pair's (first) MoE FFN sits in the model's parameter tree (and in any tree of the same
#: shape: gradients, optimizer updates); with ``moe.layers=all`` the pair's second layer holds one too
MOE_FFN_PATH = ("blocks", "moe_layer", "ffn")
SECOND_FFN_PATH = ("blocks", "dense_layer", "ffn")


def moe_ffn_paths(moe: MoEConfig) -> tuple[tuple[str, ...], ...]:
    """The paths of a pair's MoE FFNs in layer order: () dense, one (alternate), or two (all).

    Routing statistics [n·P, ...] (n paths) belong to them in model order: path j has rows j::n.
    """
    if not moe.num_experts:
        return ()
    return (MOE_FFN_PATH, SECOND_FFN_PATH) if moe.layers == "all" else (MOE_FFN_PATH,)


def moe_ffn_of(tree, path: tuple[str, ...] = MOE_FFN_PATH):
    """The MoE FFN's subtree at ``path`` of a parameter-shaped tree (leaves stacked over pairs [P, ...])."""
    for key in path:
        tree = tree[key]
    return tree


def with_moe_ffn(tree: dict, ffn, path: tuple[str, ...] = MOE_FFN_PATH) -> dict:
    """A copy of the parameter-shaped ``tree`` whose subtree at ``path`` is ``ffn`` (the rest shared)."""

    def put(node: dict, path: tuple[str, ...]) -> dict:
        head, *rest = path
        return {**node, head: put(node[head], tuple(rest)) if rest else ffn}

    return put(tree, path)


class MoEFFN(nnx.Module):
    """The MoE layer (module doc). Parameter names and shapes are the checkpoint's contract."""

    def __init__(self, cfg: ModelConfig, moe: MoEConfig, *, rngs: nnx.Rngs):
        M, F, E = cfg.d_model, moe.expert_dim or cfg.ffn_dim, moe.num_experts
        self.moe = moe
        self.router = ROUTERS[moe.router]
        self.balancer = BALANCERS[moe.balance]
        self.activation, self.gated = EXPERT_FORMS[cfg.expert_activation]
        self.w_router = param(rngs, uniform_fan_in(M), (M, E), ("router_embed", "router_expert"))
        if self.gated:
            self.w_gate = param(rngs, uniform_fan_in(M), (E, M, F), ("expert", "expert_embed", "expert_mlp"))
        self.w_in = param(rngs, uniform_fan_in(M), (E, M, F), ("expert", "expert_embed", "expert_mlp"))
        self.w_out = param(rngs, uniform_fan_in(F), (E, F, M), ("expert", "expert_mlp", "expert_embed"))
        if self.balancer.bias:  # moved by the balancer after each step, not by the optimizer
            self.router_bias = param(rngs, lambda key, shape, dtype: jnp.zeros(shape, dtype), (E,), ("router_expert",))
        if moe.shared_experts:
            Fs = moe.shared_experts * F
            if self.gated:
                self.w_shared_gate = param(rngs, uniform_fan_in(M), (M, Fs), ("embed", "mlp"))
            self.w_shared_in = param(rngs, uniform_fan_in(M), (M, Fs), ("embed", "mlp"))
            self.w_shared_out = param(rngs, uniform_fan_in(F), (Fs, M), ("mlp", "embed"))

    def hidden(self, project, w_in: jax.Array | None = None, w_gate: jax.Array | None = None) -> jax.Array:
        """The experts' hidden activations, given ``project(w [E, M, F])`` = the inputs times w in any
        layout (capacity buffers, sorted rows): :func:`glam.model.ffn.hidden` of the expert form.
        ``w_in``/``w_gate`` default to the layer's own; a ``shard_map`` body passes its local slices
        [E/data, M, F/model] instead."""
        w_in = self.w_in[...] if w_in is None else w_in
        if self.gated and w_gate is None:
            w_gate = self.w_gate[...]
        return hidden(project, self.activation, w_in, w_gate if self.gated else None)

    def shared(self, x: jax.Array) -> jax.Array:
        """[..., M] → [..., M]: the always-on shared experts (0 when there are none)."""
        if not self.moe.shared_experts:
            return jnp.zeros_like(x)
        w_gate = self.w_shared_gate[...] if self.gated else None
        return feed_forward(x, self.w_shared_in[...], self.w_shared_out[...], self.activation, w_gate)

    def experts(self, xe: jax.Array) -> jax.Array:
        """[E, G, C, M] → [E, G, C, M]: each expert's FFN on its buffer.

        The buffer's G·C slots are one row axis R (G major, so a sharding of G carries over to R):
        a 3-D batched matmul per weight. On XLA:CPU the 4-D einsum over (g, c) cost 1.22–1.38× a dense
        matmul of the same FLOPs, forward + backward, and this form 1.00–1.15× (docs/benchmarks.md §1).
        """
        E, G, C, M = xe.shape
        dtype = xe.dtype
        rows = xe.reshape(E, G * C, M)
        with jax.named_scope("experts"):
            h = self.hidden(lambda w: jnp.einsum("erm,emf->erf", rows, w.astype(dtype)))
            h = constrain(h, ax.ERF)
            return jnp.einsum("erf,efm->erm", h, self.w_out[...].astype(dtype)).reshape(E, G, C, M)

    def __call__(
        self,
        x: jax.Array,  # [B, S, M], already normed
        *,
        train: bool,
        rng: jax.Array | None = None,
        valid: jax.Array | None = None,  # [B, S] bool, False on padding
        decode: bool = False,  # a decode step: every token to its top-k experts, no capacity
    ) -> tuple[jax.Array, dict]:
        B, S, M = x.shape
        if decode:  # (moe/decode.py); no routing statistics
            return constrain(decode_layer(self, x, valid), ax.BSM), {}
        E = self.moe.num_experts
        group_size = routing_group_size(self.moe, B, S)
        G = (B * S) // group_size
        xg = constrain(x.reshape(G, group_size, M), ax.GSM)  # [G, S_g, M]
        factor = self.moe.capacity_factor_train if train else self.moe.capacity_factor_eval
        group_capacity = capacity_for(group_size, E, factor, self.moe.capacity_multiple)
        no_drop = self.moe.dispatch == "dropless" or (not train and self.moe.eval_no_drop)
        # dropless: an expert receives at most one assignment per token, so C = S_g drops nothing
        C = group_size if no_drop else group_capacity
        with jax.named_scope("router"):
            logits = jnp.einsum("gsm,me->gse", xg.astype(jnp.float32), self.w_router[...])
        valid_g = None if valid is None else valid.reshape(G, group_size)
        y, stats = self.router.route(
            self, xg, logits, valid_g, train=train, rng=rng, capacity=C, group_capacity=group_capacity
        )
        if self.moe.shared_experts:
            with jax.named_scope("shared_experts"):
                y = y + self.shared(xg)
        if self.moe.router_z_loss:
            stats = {**stats, "router_z_loss": router_z_loss(logits, valid_g)}
        return constrain(y.reshape(B, S, M), ax.BSM), stats


def routing_group_size(moe: MoEConfig, B: int, S: int) -> int:
    """Tokens per routing group for a batch [B, S]: ``moe.group_size``, or one group per sequence.

    Training batches are checked to divide by ``moe.group_size`` (config); a batch it does not divide
    (scoring or a prefill of another shape) routes one group per sequence, so its rows never compete
    for capacity — never one group over the whole batch. Capacity per group and expert is then
    int(S_g · cf / E) rounded up to ``moe.capacity_multiple`` (cf: ``capacity_factor_train`` in
    training, ``capacity_factor_eval`` otherwise), or S_g (nothing dropped) for dropless dispatch and
    for evaluation with ``moe.eval_no_drop``; a decode step has no capacity at all (moe/decode.py).
    """
    g = moe.group_size or S
    return g if (B * S) % g == 0 else S


def router_z_loss(logits: jax.Array, valid: jax.Array | None) -> jax.Array:
    """ST-MoE's router z-loss: mean over real tokens of logsumexp(router logits [G, S, E])² (fp32)."""
    z = jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1))
    if valid is None:
        return jnp.mean(z)
    return jnp.sum(z * valid) / jnp.maximum(jnp.sum(valid), 1)
