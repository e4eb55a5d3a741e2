"""Dispatch/combine implementations behind one interface (``DISPATCH``, keyed by ``moe.dispatch``).

Each function runs the whole routed computation, not only the dispatch: tokens to the experts'
buffers, the experts (``ffn.experts`` / ``ffn.hidden``), and the gate-weighted combine back, each in
its own named scope (``dispatch``, ``experts``, ``combine``).

Each takes tokens ``x [G, S, M]``, a :class:`~glam.model.moe.gating.Routing` plan with capacity C,
the layer's experts (an :class:`ExpertFFN`, i.e. the ``MoEFFN`` module) and returns ``y [G, S, M]``
= Σ over kept assignments of gate · expert_e(x). Under a mesh, ``x`` is group-sharded on ``data``
and the expert buffers expert-sharded on ``data``: the transpose between the two layouts is the
all-to-all of reference doc §4, once before the experts and once after.

- ``einsum``: GShard's one-hot dispatch/combine tensors [G, S, E, C] (the reference formulation).
- ``index``: a table of token indices per capacity slot: gather in, gather out (no [G,S,E,C] tensor).
- ``dropless``: no capacity buffers at all: assignments sorted by expert and a grouped matmul over
  the sorted rows (``jax.lax.ragged_dot`` on GPU/TPU, expert-aligned row blocks on CPU). The layer
  routes it with C = S_g, so nothing is dropped. On a mesh a padded all-to-all inside ``shard_map``
  moves each assignment to its expert's data shard and back (``dropless_exchange``).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from glam.errors import GLaMError
from glam.model import axes as ax
from glam.model.moe.gating import Routing
from glam.sharding.rules import active_mesh, constrain


class ExpertFFN(Protocol):
    """What a dispatch needs from the MoE layer; :class:`glam.model.moe.layer.MoEFFN` provides it."""

    w_in: nnx.Param  # [E, M, F]
    w_gate: nnx.Param  # [E, M, F], present only when ``gated``
    w_out: nnx.Param  # [E, F, M]
    gated: bool  # gated experts (act(x W_gate) * x W_in)

    def hidden(self, project, w_in: jax.Array | None = None, w_gate: jax.Array | None = None) -> jax.Array:
        """The experts' hidden layer from ``project(w [E, M, F])`` (ReLU, GELU, or gated GELU);
        ``w_in``/``w_gate`` replace the layer's own weights (a ``shard_map`` body's local slices)."""

    def experts(self, xe: jax.Array) -> jax.Array:
        """Capacity buffers [E, G, C, M] → [E, G, C, M]: each expert's FFN on its buffer."""


def einsum_dispatch(x: jax.Array, r: Routing, ffn: ExpertFFN, num_experts: int, capacity: int) -> jax.Array:
    E, C = num_experts, capacity
    dtype = x.dtype
    with jax.named_scope("dispatch"):
        slot = (
            jax.nn.one_hot(r.expert, E, dtype=dtype)[..., None]
            * jax.nn.one_hot(r.position, C, dtype=dtype)[..., None, :]
        )
        slot = slot * r.kept[..., None, None].astype(dtype)  # [G, S, J, E, C]
        dispatch = jnp.sum(slot, axis=2)  # [G, S, E, C] 0/1
        xe = constrain(jnp.einsum("gsec,gsm->egcm", dispatch, x), ax.EGCM)
    ye = constrain(ffn.experts(xe), ax.EGCM)
    with jax.named_scope("combine"):
        combine = jnp.einsum("gsjec,gsj->gsec", slot, r.gate.astype(dtype))
        return constrain(jnp.einsum("gsec,egcm->gsm", combine, ye), ax.GSM)


def _flat_slot(r: Routing, num_experts: int, capacity: int) -> jax.Array:
    """[G, S, J] index into an expert buffer flattened to E·C slots; E·C (a sentinel) where dropped."""
    return jnp.where(r.kept, r.expert * capacity + r.position, num_experts * capacity)


def index_dispatch(x: jax.Array, r: Routing, ffn: ExpertFFN, num_experts: int, capacity: int) -> jax.Array:
    G, S, M = x.shape
    E, C = num_experts, capacity
    with jax.named_scope("dispatch"):
        flat = _flat_slot(r, E, C)  # [G, S, J]
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
    with jax.named_scope("combine"):
        ye = constrain(jnp.transpose(ye, (1, 0, 2, 3)), ax.GECM).reshape(G, E * C, M)  # all-to-all back
        ye_pad = jnp.concatenate([ye, jnp.zeros((G, 1, M), ye.dtype)], axis=1)  # [G, E·C+1, M]
        y = jnp.zeros_like(x)
        for j in range(r.expert.shape[-1]):
            picked = jnp.take_along_axis(ye_pad, flat[..., j, None], axis=1)  # [G, S, M]
            y = y + r.gate[..., j, None].astype(x.dtype) * picked
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

    ``src[i]``: the flat assignment (token·J + j) in padded row i, or A (a zero row) for padding;
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
    """``xb [nb, b, in] @ w[block_expert] [nb, in, out] → [nb, b, out]``; unused blocks give zeros.

    A scan over blocks, so no [nb, in, out] copy of the weights is ever made; the custom VJP adds each
    block's weight gradient into its expert's slice in place (differentiating the indexing would add
    a full [E, in, out] tensor per block).
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


def grouped_ffn(x_src: jax.Array, row_of: jax.Array, expert: jax.Array, num_experts: int, hidden, w_out) -> jax.Array:
    """Each item's expert FFN, grouped by expert: item i is row ``row_of[i]`` of ``x_src [N, M]`` for
    expert ``expert[i]`` in [0, E], E meaning "not computed" (a zero output) → ``[R, M]``.

    ``hidden(project)`` is the experts' hidden layer (``ExpertFFN.hidden``); ``w_out [E, F, M]``.
    The last row of ``x_src`` must be zeros (padding rows read it).
    """
    (R,), E, M = expert.shape, num_experts, x_src.shape[-1]
    dtype = x_src.dtype
    if grouped_matmul_impl() == "ragged":
        order = jnp.argsort(expert, stable=True)
        sizes = jnp.bincount(expert, length=E + 1)[:E].astype(jnp.int32)
        xs = x_src[row_of[order]]  # [R, M]; rows past sum(sizes) (not computed) come out of ragged_dot as 0
        h = hidden(lambda w: jax.lax.ragged_dot(xs, w.astype(dtype), sizes))
        ys = jax.lax.ragged_dot(h, w_out.astype(dtype), sizes)
        return jnp.zeros_like(ys).at[order].set(ys)  # [R, M]
    plan = sort_by_expert(expert, E, BLOCK_ROWS)
    rows = jnp.where(plan.src < R, row_of[jnp.minimum(plan.src, R - 1)], x_src.shape[0] - 1)
    xb = x_src[rows].reshape(-1, BLOCK_ROWS, M)  # [nb, b, M]
    h = hidden(lambda w: block_matmul(xb, w.astype(dtype), plan.block_expert, plan.block_used))
    yb = block_matmul(h, w_out.astype(dtype), plan.block_expert, plan.block_used).reshape(-1, M)
    return jnp.concatenate([yb, jnp.zeros((1, M), dtype)])[plan.dst]  # [R, M]


def dropless_dispatch(x: jax.Array, r: Routing, ffn: ExpertFFN, num_experts: int, capacity: int) -> jax.Array:
    """Sort the kept assignments by expert, run a grouped matmul, unsort and combine.

    ``capacity`` is unused: the layer routes dropless with C = S_g, so only the policy (padding
    tokens, GShard's "random" second expert) removes assignments. On a mesh the assignments first
    travel to their expert's data shard (``dropless_exchange``); on one device they stay.
    """
    G, S, M = x.shape
    J, E = r.expert.shape[-1], num_experts
    expert = jnp.where(r.kept, r.expert, E)  # [G, S, J]
    mesh = active_mesh()
    if mesh is not None and mesh.size > 1:
        return dropless_exchange(x, expert, r.gate, ffn, E, mesh)
    x_pad = jnp.concatenate([x.reshape(G * S, M), jnp.zeros((1, M), x.dtype)])  # [G·S+1, M], last row zero
    token = jnp.arange(G * S * J, dtype=jnp.int32) // J  # assignment a = token·J + j
    with jax.named_scope("experts"):  # the dispatch (a sort) and the experts' grouped matmul
        y_assign = grouped_ffn(x_pad, token, expert.reshape(-1), E, ffn.hidden, ffn.w_out[...])
    with jax.named_scope("combine"):
        return jnp.einsum("gsjm,gsj->gsm", y_assign.reshape(G, S, J, M), r.gate.astype(x.dtype))


# --------------------------------------------------------------------------------------------
# Dropless on a mesh: a padded all-to-all to the experts' data shards and back
# --------------------------------------------------------------------------------------------


def dropless_exchange(x: jax.Array, expert: jax.Array, gate: jax.Array, ffn: ExpertFFN, num_experts: int, mesh):
    """Dropless dispatch under ``mesh``: groups sharded over data, experts over ``data`` (rules table).

    Inside ``shard_map`` each device holds G/D groups (A = G/D · S · J assignments) and E/n experts,
    n = the ``data`` axis size. It sends each of the n shards a buffer of exactly A rows: the exact
    worst case (every local assignment may pick an expert on one shard), so nothing is ever dropped
    and no count can overflow; the price is an n·A-row receive buffer, of which A rows per device are
    real on average. XLA:CPU has no ragged all-to-all, so this padded exchange is the portable one.
    Received rows run through the local experts' grouped matmul (F split over ``model``, partial sums
    added by ``psum``), travel back by the inverse all-to-all and are combined with the gates.
    With ``data_inner`` (more data shards than experts) each expert's F is gathered over it first.
    """
    x_axes, n, model = _exchange_axes(x.shape[0], num_experts, ffn, mesh)
    E_l = num_experts // n
    gated = ffn.gated
    w = (ffn.w_in[...], ffn.w_gate[...] if gated else ffn.w_in[...], ffn.w_out[...])
    w_spec = (P("data", None, model), P("data", None, model), P("data", model, None))

    def body(x, expert, gate, w_in, w_gate, w_out):
        G_l, S, M = x.shape
        J = expert.shape[-1]
        A = G_l * S * J
        flat = expert.reshape(A)  # [A] global expert, E = not computed
        dest = flat // E_l  # [A] destination shard, n = none
        order = jnp.argsort(dest, stable=True).astype(jnp.int32)
        sizes = jnp.bincount(dest, length=n + 1)[:n]
        start = jnp.cumsum(sizes) - sizes
        d_sorted = dest[order]
        pos = jnp.arange(A, dtype=jnp.int32) - start[jnp.minimum(d_sorted, n - 1)]  # < sizes[d] <= A
        slot_sorted = jnp.where(d_sorted < n, d_sorted * A + pos, n * A)
        src = jnp.full((n * A + 1,), A, jnp.int32).at[slot_sorted].set(order)[: n * A]  # assignment per slot
        slot = jnp.zeros((A,), jnp.int32).at[order].set(slot_sorted)  # slot per assignment, n·A if none
        x_pad = jnp.concatenate([x.reshape(G_l * S, M), jnp.zeros((1, M), x.dtype)])
        send_x = x_pad[jnp.where(src < A, src // J, G_l * S)]  # [n·A, M]: A rows for each shard
        send_e = jnp.where(src < A, jnp.concatenate([flat, jnp.array([0], flat.dtype)])[src] % E_l, E_l)
        recv_x = jax.lax.all_to_all(send_x, "data", 0, 0, tiled=True)  # row block s came from shard s
        recv_e = jax.lax.all_to_all(send_e, "data", 0, 0, tiled=True)  # local expert, E_l = empty
        recv_pad = jnp.concatenate([recv_x, jnp.zeros((1, M), x.dtype)])
        rows = jnp.arange(n * A, dtype=jnp.int32)

        def hidden(project):
            return ffn.hidden(project, w_in=w_in, w_gate=w_gate if gated else None)

        y_rows = grouped_ffn(recv_pad, rows, recv_e, E_l, hidden, w_out)  # [n·A, M], partial over F
        if model is not None:
            y_rows = jax.lax.psum(y_rows, model)
        back = jax.lax.all_to_all(y_rows, "data", 0, 0, tiled=True)  # [n·A, M] in this shard's slots
        y_assign = jnp.concatenate([back, jnp.zeros((1, M), x.dtype)])[slot]  # [A, M]
        return jnp.einsum("gsjm,gsj->gsm", y_assign.reshape(G_l, S, J, M), gate.astype(x.dtype))

    g_spec = P(x_axes)
    # check_vma=False: block_matmul's lax.cond pairs a device-varying product with unvarying zeros
    fn = jax.shard_map(body, mesh=mesh, in_specs=(g_spec, g_spec, g_spec, *w_spec), out_specs=g_spec, check_vma=False)
    return constrain(fn(x, expert, gate, *w), ax.GSM)


def _exchange_axes(groups: int, num_experts: int, ffn: ExpertFFN, mesh) -> tuple[tuple[str, ...], int, str | None]:
    """(mesh axes of the groups, size n of ``data``, the expert-F axis or None); a clear error if they don't divide."""
    names = mesh.axis_names
    x_axes = tuple(a for a in ("data", "data_inner") if a in names)
    shards = 1
    for a in x_axes:
        shards *= mesh.shape[a]
    n = mesh.shape.get("data", 1)
    model = "model" if mesh.shape.get("model", 1) > 1 else None
    F = ffn.w_in[...].shape[-1]
    if "data" not in names:
        raise GLaMError(f"moe.dispatch=dropless needs a mesh with a 'data' axis (got {names}); build it with make_mesh")
    if num_experts % n:
        raise GLaMError(
            f"moe.dispatch=dropless: moe.num_experts={num_experts} is not divisible by the mesh's data axis ({n}); "
            "choose mesh.data dividing the experts (or a multiple of them: glam's make_mesh then splits each expert)"
        )
    if groups % shards:
        raise GLaMError(
            f"moe.dispatch=dropless: {groups} routing groups do not divide over {shards} data shards; "
            "make train.batch_size x train.seq_len / moe.group_size a multiple of mesh.data"
        )
    if model is not None and F % mesh.shape["model"]:
        raise GLaMError(
            f"moe.dispatch=dropless: the expert width {F} is not divisible by mesh.model={mesh.shape['model']}; "
            "choose moe.expert_dim (or model.ffn_dim) divisible by mesh.model"
        )
    return x_axes, n, model


def expert_choice_dispatch(x: jax.Array, plan, ffn: ExpertFFN) -> jax.Array:
    """Expert choice (gating.ExpertChoice): gather each expert's C tokens, run the experts, scatter-add back.

    The transposes [G, E, C, M] ↔ [E, G, C, M] are the same all-to-all exchanges as the index path.
    """
    G, S, M = x.shape
    with jax.named_scope("dispatch"):
        xe = jnp.take_along_axis(x[:, None], plan.token[..., None], axis=2)  # [G, E, C, M]
        xe = constrain(jnp.transpose(xe, (1, 0, 2, 3)), ax.EGCM)
    ye = constrain(ffn.experts(xe), ax.EGCM)
    with jax.named_scope("combine"):
        ye = constrain(jnp.transpose(ye, (1, 0, 2, 3)), ax.GECM)  # [G, E, C, M]
        weighted = plan.gate[..., None].astype(x.dtype) * ye
        y = jnp.zeros_like(x).at[jnp.arange(G)[:, None, None], plan.token].add(weighted)
        return constrain(y, ax.GSM)


DISPATCH = {"einsum": einsum_dispatch, "index": index_dispatch, "dropless": dropless_dispatch}
