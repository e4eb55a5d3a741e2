"""The MoE layer of a decode step: every current token goes to its top-k experts, nothing dropped.

A decode step feeds T = B tokens, one per row (letters of docs/design.md; T here counts those
tokens). The full forward pass routes each sequence as a group with capacity C, where a token's
assignment can be dropped because of LATER tokens of its sequence (every first choice outranks
every second choice), which a decode step cannot know. Routing the B current tokens as one group
with a finite capacity instead would make rows compete for slots, so a row's continuation would
depend on its batchmates. So a decode step has no capacity: each token's output is
``Σ_j g_j·expert_{e_j}(x)`` of that token alone, batch-independent, and equal to the full
forward pass whenever the full pass drops nothing (always with ``moe.eval_no_drop=true``).

Gates are those of ``gating.topk_gating`` (reference doc §3 for k = 2): softmax over E in fp32,
the k largest (first choice first), renormalised to sum to 1 for k >= 2 (GShard), the probability
itself for k = 1 (Switch); an invalid token
(segment id 0: a finished or filler row) has gates 0 and contributes nothing.

Two ways to run the experts, both exact (nothing is dropped), picked by shape:

- ``grouped`` (the default): each expert's tokens gathered into a buffer [E, C, M] whose capacity C
  is the smallest of 1, 2, 4, ..., T that holds the busiest expert's tokens this step, chosen at run
  time by ``lax.switch`` (one compiled branch per size). The experts' compute is E·C rows, about the
  kT the assignments need when routing is balanced, instead of E·T for every expert on every token;
  every expert's weights are read once.
- ``sliced`` (few assignments: T = 1, or 8T <= E): each of the kT assignments reads its expert's
  weights by a dynamic slice, so a step reads kT experts' weights instead of all E.

A decode step on CPU is bound by reading the weights whenever the experts it touches hold most of
them: at T = 8 with E = 8, 16 draws touch 7 of the 8 experts on average. docs/benchmarks.md §5
has the measurements.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glam.model.moe.dispatch import ExpertFFN


def topk_no_capacity(
    logits: jax.Array,
    valid: jax.Array | None = None,
    k: int = 2,
    renormalize: bool = True,
    bias: jax.Array | None = None,  # [E], for choosing only (moe.balance=bias)
) -> tuple[jax.Array, jax.Array]:
    """Router logits [T, E] → (expert [T, J] int32, gate [T, J] fp32), J = k, first choice first; gates
    renormalised to sum to 1 for k >= 2 unless ``renormalize=False``."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if bias is None:
        gate, expert = jax.lax.top_k(probs, k)
    else:
        _, expert = jax.lax.top_k(probs + bias, k)
        gate = jnp.take_along_axis(probs, expert, axis=-1)
    if k > 1 and renormalize:
        gate = gate / jnp.sum(gate, axis=-1, keepdims=True)  # >= 1/E > 0
    if valid is not None:
        gate = jnp.where(valid[:, None], gate, 0.0)
    return expert.astype(jnp.int32), gate


def _grouped(x: jax.Array, expert: jax.Array, gate: jax.Array, ffn: ExpertFFN) -> jax.Array:
    """Every expert on its own tokens, in a buffer [E, C, M] just big enough for this step."""
    T, M = x.shape
    E, J = ffn.w_in.shape[0], expert.shape[-1]
    dtype = x.dtype
    e_a = expert.reshape(-1)  # [A = JT]: assignment a = Jt + j
    t_a = jnp.arange(J * T, dtype=jnp.int32) // J
    onehot = jax.nn.one_hot(e_a, E, dtype=jnp.int32)  # [A, E]
    slot_a = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # [A]: its place in its expert's buffer
    busiest = jnp.max(jnp.sum(onehot, axis=0))  # <= T: a token's k experts differ
    sizes = [1]
    while sizes[-1] < T:
        sizes.append(min(2 * sizes[-1], T))
    xz = jnp.concatenate([x, jnp.zeros((1, M), dtype)])  # row T: what an empty slot reads

    def run(C: int):
        def branch(_):
            table = jnp.full((E, C), T, jnp.int32).at[e_a, slot_a].set(t_a)  # [E, C] token of each slot
            xe = xz[table]  # [E, C, M]
            h = ffn.hidden(lambda w: jnp.einsum("ecm,emf->ecf", xe, w.astype(dtype)))
            ye = jnp.einsum("ecf,efm->ecm", h, ffn.w_out[...].astype(dtype))
            return jnp.einsum("tjm,tj->tm", ye[e_a, slot_a].reshape(T, J, M), gate.astype(dtype))

        return branch

    index = jnp.searchsorted(jnp.asarray(sizes, jnp.int32), busiest)  # the first size >= busiest
    return jax.lax.switch(index, [run(C) for C in sizes], None)


def _sliced(x: jax.Array, expert: jax.Array, gate: jax.Array, ffn: ExpertFFN) -> jax.Array:
    """Each of the kT assignments through its own expert's weights, read by a dynamic slice."""
    T, _ = x.shape
    dtype = x.dtype

    def one(xt: jax.Array, e: jax.Array) -> jax.Array:  # [M] through expert e
        def take(w: jax.Array) -> jax.Array:
            return jax.lax.dynamic_index_in_dim(w, e, keepdims=False).astype(dtype)

        h = ffn.hidden(lambda w: jnp.einsum("m,mf->f", xt, take(w)))
        return jnp.einsum("f,fm->m", h, take(ffn.w_out[...]))

    g = gate.astype(dtype)
    rows = []
    for t in range(T):
        y = g[t, 0] * one(x[t], expert[t, 0])
        for j in range(1, expert.shape[-1]):
            y = y + g[t, j] * one(x[t], expert[t, j])
        rows.append(y)
    return jnp.stack(rows)


def decode_moe(
    x: jax.Array,  # [T, M], already normed
    w_router: jax.Array,  # [M, E]
    ffn: ExpertFFN,
    valid: jax.Array | None = None,  # [T] bool, False for finished and filler rows
    path: str | None = None,  # "grouped" or "sliced"; default: by shape (module doc)
    k: int = 2,  # experts per token (moe.top_k)
    renormalize: bool = True,  # False: the k probabilities as they are (expert-choice models)
    bias: jax.Array | None = None,  # [E] selection bias (moe.balance=bias)
) -> jax.Array:
    """y [T, M] = Σ_j gate_j · expert_{e_j}(x) per token, with no capacity (see the module doc)."""
    T, _ = x.shape
    E = w_router.shape[-1]
    logits = jnp.einsum("tm,me->te", x.astype(jnp.float32), w_router)
    expert, gate = topk_no_capacity(logits, valid, k, renormalize, bias)
    path = path or ("sliced" if 8 * T <= E or T == 1 else "grouped")
    return (_sliced if path == "sliced" else _grouped)(x, expert, gate, ffn)


def decode_layer(ffn, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """A decode step of the MoE layer ``ffn`` (``MoEFFN``) on x [B, S, M] → [B, S, M]: its router's causal
    k and gate rule and its balancer's selection bias (``routers.py``), plus the shared experts."""
    B, S, M = x.shape
    flat = x.reshape(B * S, M)
    mask = None if valid is None else valid.reshape(-1)
    k, renormalize = ffn.router.causal_k(ffn.moe), ffn.router.renormalizes
    y = decode_moe(
        flat, ffn.w_router[...], ffn, mask, k=k, renormalize=renormalize, bias=ffn.balancer.selection_bias(ffn)
    )
    if ffn.moe.shared_experts:
        y = y + ffn.shared(flat)
    return y.reshape(B, S, M)
