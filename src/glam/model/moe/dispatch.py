"""Dispatch/combine implementations behind one interface.

Each takes tokens ``x [G, S, M]``, a :class:`~glam.model.moe.gating.Routing` plan with capacity C,
and ``experts(xe [E, G, C, M]) -> [E, G, C, M]``, and returns ``y [G, S, M]`` =
Σ over kept assignments of gate · expert_e(x). Under a mesh, ``x`` is group-sharded on ``data`` and
the expert buffers expert-sharded on ``data``: the transpose between the two layouts is the
all-to-all of reference doc §4, once before the experts and once after.

- ``einsum``: GShard's one-hot dispatch/combine tensors [G, S, E, C] (the reference formulation).
- ``index``: a table of token indices per capacity slot: gather in, gather out (no [G,S,E,C] tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from glam.model import axes as ax
from glam.model.moe.gating import Routing
from glam.sharding.rules import constrain

Experts = Callable[[jax.Array], jax.Array]


def einsum_dispatch(x: jax.Array, r: Routing, experts: Experts, num_experts: int, capacity: int) -> jax.Array:
    E, C = num_experts, capacity
    dtype = x.dtype
    slot = (
        jax.nn.one_hot(r.expert, E, dtype=dtype)[..., None] * jax.nn.one_hot(r.position, C, dtype=dtype)[..., None, :]
    )
    slot = slot * r.kept[..., None, None].astype(dtype)  # [G, S, 2, E, C]
    dispatch = jnp.sum(slot, axis=2)  # [G, S, E, C] 0/1
    combine = jnp.einsum("gskec,gsk->gsec", slot, r.gate.astype(dtype))
    xe = constrain(jnp.einsum("gsec,gsm->egcm", dispatch, x), ax.EGCM)
    ye = constrain(experts(xe), ax.EGCM)
    return constrain(jnp.einsum("gsec,egcm->gsm", combine, ye), ax.GSM)


def _flat_slot(r: Routing, num_experts: int, capacity: int) -> jax.Array:
    """[G, S, 2] index into an expert buffer flattened to E·C slots; E·C (a sentinel) where dropped."""
    return jnp.where(r.kept, r.expert * capacity + r.position, num_experts * capacity)


def index_dispatch(x: jax.Array, r: Routing, experts: Experts, num_experts: int, capacity: int) -> jax.Array:
    G, S, M = x.shape
    E, C = num_experts, capacity
    flat = _flat_slot(r, E, C)  # [G, S, 2]
    # token_of_slot[g, e·C + c] = the token in that slot, or S (a zero row) when the slot is empty
    tokens = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32)[None, :, None], flat.shape)
    token_of_slot = jnp.full((G, E * C + 1), S, jnp.int32)
    token_of_slot = token_of_slot.at[jnp.arange(G)[:, None, None], flat].set(tokens)[:, : E * C]
    x_pad = jnp.concatenate([x, jnp.zeros((G, 1, M), x.dtype)], axis=1)  # [G, S+1, M]
    xe = jnp.take_along_axis(x_pad, token_of_slot[..., None], axis=1)  # [G, E·C, M]
    xe = constrain(jnp.transpose(xe.reshape(G, E, C, M), (1, 0, 2, 3)), ax.EGCM)  # all-to-all
    ye = constrain(experts(xe), ax.EGCM)
    ye = constrain(jnp.transpose(ye, (1, 0, 2, 3)), ax.GECM).reshape(G, E * C, M)  # all-to-all back
    ye_pad = jnp.concatenate([ye, jnp.zeros((G, 1, M), ye.dtype)], axis=1)  # [G, E·C+1, M]
    y = jnp.zeros_like(x)
    for k in range(2):
        picked = jnp.take_along_axis(ye_pad, flat[..., k, None], axis=1)  # [G, S, M]
        y = y + r.gate[..., k, None].astype(x.dtype) * picked
    return constrain(y, ax.GSM)


DISPATCH = {"einsum": einsum_dispatch, "index": index_dispatch}
