"""Dispatch/combine implementations behind one interface.

Each takes tokens ``x [G, S, M]``, a :class:`~glam.model.moe.gating.Routing` plan with capacity C,
the layer's experts (an :class:`ExpertFFN`, i.e. the ``MoEFFN`` module) and returns ``y [G, S, M]``
= Σ over kept assignments of gate · expert_e(x). Under a mesh, ``x`` is group-sharded on ``data``
and the expert buffers expert-sharded on ``data``: the transpose between the two layouts is the
all-to-all of reference doc §4, once before the experts and once after.

- ``einsum``: GShard's one-hot dispatch/combine tensors [G, S, E, C] (the reference formulation).
- ``index``: a table of token indices per capacity slot: gather in, gather out (no [G,S,E,C] tensor).
- ``dropless``: no capacity buffers at all: assignments sorted by expert and a grouped matmul over
  the sorted rows (``jax.lax.ragged_dot`` on GPU/TPU, expert-aligned row blocks on CPU). The layer
  routes it with C = S_g, so nothing is dropped; one device only (see ``dropless_dispatch``).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from glam.errors import GLaMError
from glam.model import axes as ax
from glam.model.moe.gating import Routing
from glam.sharding.rules import active_mesh, constrain


class ExpertFFN(Protocol):
    """What a dispatch needs from the MoE layer; :class:`glam.model.moe.layer.MoEFFN` provides it."""

    w_in: nnx.Param  # [E, M, F]
    w_out: nnx.Param  # [E, F, M]

    def hidden(self, project) -> jax.Array:
        """The experts' hidden layer from ``project(w [E, M, F])`` (ReLU, GELU, or gated GELU)."""

    def experts(self, xe: jax.Array) -> jax.Array:
        """Capacity buffers [E, G, C, M] → [E, G, C, M]: each expert's FFN on its buffer."""


def einsum_dispatch(x: jax.Array, r: Routing, ffn: ExpertFFN, num_experts: int, capacity: int) -> jax.Array:
    E, C = num_experts, capacity
    dtype = x.dtype
    slot = (
        jax.nn.one_hot(r.expert, E, dtype=dtype)[..., None] * jax.nn.one_hot(r.position, C, dtype=dtype)[..., None, :]
    )
    slot = slot * r.kept[..., None, None].astype(dtype)  # [G, S, K, E, C]
    dispatch = jnp.sum(slot, axis=2)  # [G, S, E, C] 0/1
    combine = jnp.einsum("gskec,gsk->gsec", slot, r.gate.astype(dtype))
    xe = constrain(jnp.einsum("gsec,gsm->egcm", dispatch, x), ax.EGCM)
    ye = constrain(ffn.experts(xe), ax.EGCM)
    return constrain(jnp.einsum("gsec,egcm->gsm", combine, ye), ax.GSM)


def _flat_slot(r: Routing, num_experts: int, capacity: int) -> jax.Array:
    """[G, S, K] index into an expert buffer flattened to E·C slots; E·C (a sentinel) where dropped."""
    return jnp.where(r.kept, r.expert * capacity + r.position, num_experts * capacity)


def index_dispatch(x: jax.Array, r: Routing, ffn: ExpertFFN, num_experts: int, capacity: int) -> jax.Array:
    G, S, M = x.shape
    E, C = num_experts, capacity
    flat = _flat_slot(r, E, C)  # [G, S, K]
    # token_of_slot[g, e·C + c] = the token in that slot, or S (a zero row) when the slot is empty
    tokens = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32)[None, :, None], flat.shape)
    token_of_slot = jnp.full((G, E * C + 1), S, jnp.int32)
    token_of_slot = token_of_slot.at[jnp.arange(G)[:, None, None], flat].set(tokens)[:, : E * C]
    x_pad = jnp.concatenate([x, jnp.zeros((G, 1, M), x.dtype)], axis=1)  # [G, S+1, M]
    xe = jnp.take_along_axis(x_pad, token_of_slot[..., None], axis=1)  # [G, E·C, M], a gather within each group
    # kept group-sharded until the transpose, so the gather stays local and only the transpose moves
    # tokens (an all-to-all); unconstrained, XLA all-gathers every group's tokens instead
    xe = constrain(xe.reshape(G, E, C, M), ax.GECM)
    xe = constrain(jnp.transpose(xe, (1, 0, 2, 3)), ax.EGCM)  # all-to-all
    ye = constrain(ffn.experts(xe), ax.EGCM)
    ye = constrain(jnp.transpose(ye, (1, 0, 2, 3)), ax.GECM).reshape(G, E * C, M)  # all-to-all back
    ye_pad = jnp.concatenate([ye, jnp.zeros((G, 1, M), ye.dtype)], axis=1)  # [G, E·C+1, M]
    y = jnp.zeros_like(x)
    for k in range(r.expert.shape[-1]):
        picked = jnp.take_along_axis(ye_pad, flat[..., k, None], axis=1)  # [G, S, M]
        y = y + r.gate[..., k, None].astype(x.dtype) * picked
    return constrain(y, ax.GSM)


# --------------------------------------------------------------------------------------------
# Dropless: every assignment the policy keeps is computed (no capacity), tokens sorted by expert
# --------------------------------------------------------------------------------------------

BLOCK_ROWS = 128  # rows per block of the CPU grouped matmul (measured: 128–256 best at M=256, F=1024)


def grouped_matmul_impl() -> str:
    """``ragged`` (``jax.lax.ragged_dot``, a native grouped GEMM on GPU/TPU) or ``blocks`` (CPU).

    On CPU, XLA lowers ``ragged_dot`` to one masked dense matmul per expert (E× the FLOPs: measured
    5.5× at E=8, 36× at E=64), so the CPU path is a scan over expert-aligned row blocks instead.
    """
    return "blocks" if jax.default_backend() == "cpu" else "ragged"


class SortedPlan(NamedTuple):
    """Assignments sorted by expert into blocks of ``rows`` rows, each block owned by one expert.

    ``src[i]``: the flat assignment (token·K + k) in padded row i, or A (a zero row) for padding;
    ``dst[a]``: the padded row of assignment a, or nb·rows (a zero row) if the policy dropped it;
    ``block_expert [nb]``, ``block_used [nb]``; ``group_sizes [E]`` assignments per expert.
    """

    src: jax.Array
    dst: jax.Array
    block_expert: jax.Array
    block_used: jax.Array
    group_sizes: jax.Array


def sort_by_expert(expert: jax.Array, num_experts: int, rows: int) -> SortedPlan:
    """``expert [A]`` in [0, E], E meaning "not computed" → a block layout with static shapes.

    Each expert's assignments start at a multiple of ``rows``; nb = ceil(A / rows) + E blocks bound
    the padding statically, and blocks past the last used one are skipped at run time.
    """
    (A,), E = expert.shape, num_experts
    nb = -(-A // rows) + E
    sizes = jnp.bincount(expert, length=E + 1)[:E].astype(jnp.int32)
    padded = (sizes + rows - 1) // rows * rows
    padded_start = jnp.cumsum(padded) - padded
    start = jnp.cumsum(sizes) - sizes
    order = jnp.argsort(expert, stable=True).astype(jnp.int32)  # [A] assignments grouped by expert
    sorted_expert = jnp.minimum(expert[order], E - 1)
    row = padded_start[sorted_expert] + jnp.arange(A, dtype=jnp.int32) - start[sorted_expert]
    row = jnp.where(expert[order] < E, row, nb * rows)
    src = jnp.full((nb * rows + 1,), A, jnp.int32).at[row].set(order)[: nb * rows]
    dst = jnp.zeros((A,), jnp.int32).at[order].set(row)
    block_end = jnp.cumsum(padded) // rows  # [E] first block after expert e's blocks
    blocks = jnp.arange(nb, dtype=jnp.int32)
    block_expert = jnp.minimum(jnp.searchsorted(block_end, blocks, side="right"), E - 1).astype(jnp.int32)
    return SortedPlan(src, dst, block_expert, blocks < block_end[-1], sizes)


@jax.custom_vjp
def block_matmul(xb: jax.Array, w: jax.Array, block_expert: jax.Array, block_used: jax.Array) -> jax.Array:
    """``xb [nb, b, K] @ w[block_expert] [nb, K, N] → [nb, b, N]``; unused blocks give zeros.

    A scan over blocks, so no [nb, K, N] copy of the weights is ever made; the custom VJP adds each
    block's weight gradient into its expert's slice in place (differentiating the indexing would add
    a full [E, K, N] tensor per block).
    """

    def body(_, xs):
        x, e, used = xs
        w_e = w[e]
        return None, jax.lax.cond(used, lambda: x @ w_e, lambda: jnp.zeros((x.shape[0], w.shape[2]), x.dtype))

    return jax.lax.scan(body, None, (xb, block_expert, block_used))[1]


def _block_matmul_fwd(xb, w, block_expert, block_used):
    return block_matmul(xb, w, block_expert, block_used), (xb, w, block_expert, block_used)


def _block_matmul_bwd(res, dy):
    xb, w, block_expert, block_used = res

    def body(dw, xs):
        x, g, e, used = xs
        w_e = w[e]

        def grads(dw):
            return dw.at[e].add((x.T @ g).astype(dw.dtype)), g @ w_e.T

        return jax.lax.cond(used, grads, lambda dw: (dw, jnp.zeros_like(x)), dw)

    dw, dx = jax.lax.scan(body, jnp.zeros(w.shape, w.dtype), (xb, dy, block_expert, block_used))
    return dx, dw, None, None


block_matmul.defvjp(_block_matmul_fwd, _block_matmul_bwd)


def dropless_dispatch(x: jax.Array, r: Routing, ffn: ExpertFFN, num_experts: int, capacity: int) -> jax.Array:
    """Sort the kept assignments by expert, run a grouped matmul, unsort and combine.

    ``capacity`` is unused: the layer routes dropless with C = S_g, so only the policy (padding
    tokens, GShard's "random" second expert) removes assignments. Single data shard only: the sort
    is over one device's tokens and the experts it needs are all local.
    """
    _check_unsharded()
    G, S, M = x.shape
    K = r.expert.shape[-1]
    E, A = num_experts, G * S * K
    dtype = x.dtype
    w_out = ffn.w_out[...].astype(dtype)
    expert = jnp.where(r.kept, r.expert, E).reshape(A)  # [A], assignment a = token·K + k
    x_pad = jnp.concatenate([x.reshape(G * S, M), jnp.zeros((1, M), dtype)])  # [G·S+1, M], last row zero
    if grouped_matmul_impl() == "ragged":
        order = jnp.argsort(expert, stable=True)
        sizes = jnp.bincount(expert, length=E + 1)[:E].astype(jnp.int32)
        xs = x_pad[order // K]  # [A, M]; rows past sum(sizes) (dropped) come out of ragged_dot as 0
        h = ffn.hidden(lambda w: jax.lax.ragged_dot(xs, w.astype(dtype), sizes))
        ys = jax.lax.ragged_dot(h, w_out, sizes)
        y_assign = jnp.zeros_like(ys).at[order].set(ys)  # [A, M]
    else:
        plan = sort_by_expert(expert, E, BLOCK_ROWS)
        token = jnp.where(plan.src < A, plan.src // K, G * S)
        xb = x_pad[token].reshape(-1, BLOCK_ROWS, M)  # [nb, b, M]
        h = ffn.hidden(lambda w: block_matmul(xb, w.astype(dtype), plan.block_expert, plan.block_used))
        yb = block_matmul(h, w_out, plan.block_expert, plan.block_used).reshape(-1, M)
        y_assign = jnp.concatenate([yb, jnp.zeros((1, M), dtype)])[plan.dst]  # [A, M]
    y = jnp.einsum("gskm,gsk->gsm", y_assign.reshape(G, S, K, M), r.gate.astype(dtype))
    return y


def _check_unsharded() -> None:
    mesh = active_mesh()
    if mesh is not None and mesh.size > 1:
        raise GLaMError(
            f"moe.dispatch=dropless runs on one device only (mesh {dict(mesh.shape)}); it sorts each device's "
            "tokens by expert with no all-to-all exchange yet. Use moe.dispatch=index (or einsum) on a mesh."
        )


def expert_choice_dispatch(x: jax.Array, plan, ffn: ExpertFFN) -> jax.Array:
    """Expert choice (gating.ExpertChoice): gather each expert's C tokens, run the experts, scatter-add back.

    The transposes [G, E, C, M] ↔ [E, G, C, M] are the same all-to-all exchanges as the index path.
    """
    G, S, M = x.shape
    xe = jnp.take_along_axis(x[:, None], plan.token[..., None], axis=2)  # [G, E, C, M]
    xe = constrain(jnp.transpose(xe, (1, 0, 2, 3)), ax.EGCM)
    ye = constrain(ffn.experts(xe), ax.EGCM)
    ye = constrain(jnp.transpose(ye, (1, 0, 2, 3)), ax.GECM)  # [G, E, C, M]
    weighted = plan.gate[..., None].astype(x.dtype) * ye
    y = jnp.zeros_like(x).at[jnp.arange(G)[:, None, None], plan.token].add(weighted)
    return constrain(y, ax.GSM)


DISPATCH = {"einsum": einsum_dispatch, "index": index_dispatch, "dropless": dropless_dispatch}
