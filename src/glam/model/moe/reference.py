"""A slow, obviously correct MoE written straight from reference doc §3: loops over tokens and experts.

Tests compare the fast layer with it, forward and gradients. Routing decisions (which expert, kept
or dropped) are made with Python loops on concrete numbers; the output is then built with
differentiable jnp ops from those fixed decisions, so gradients flow exactly as in the fast layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def reference_routing(logits: np.ndarray, capacity: int, keep_second: np.ndarray | None = None):
    """Per group: e1, e2, kept1, kept2 and slot positions by the §3 rules, with plain loops.

    Returns dict of arrays [G, S] (e1, e2, pos1, pos2, kept1, kept2).
    """
    logits = np.asarray(logits, np.float64)
    G, S, E = logits.shape
    out = {k: np.zeros((G, S), np.int64) for k in ("e1", "e2", "pos1", "pos2")}
    out.update(kept1=np.zeros((G, S), bool), kept2=np.zeros((G, S), bool))
    for g in range(G):
        fill = [0] * E
        for s in range(S):  # first choices, earlier tokens first
            e1 = int(np.argmax(logits[g, s]))
            order = [e for e in np.argsort(-logits[g, s], kind="stable") if e != e1]
            out["e1"][g, s], out["e2"][g, s] = e1, int(order[0])
            if fill[e1] < capacity:
                out["pos1"][g, s], out["kept1"][g, s] = fill[e1], True
                fill[e1] += 1
        for s in range(S):  # then second choices
            if keep_second is not None and not keep_second[g, s]:
                continue
            e2 = out["e2"][g, s]
            if fill[e2] < capacity:
                out["pos2"][g, s], out["kept2"][g, s] = fill[e2], True
                fill[e2] += 1
    return out


def reference_moe(x, w_router, w_in, w_out, capacity: int, activation=jax.nn.relu, keep_second=None, w_gate=None):
    """y [G, S, M] and aux loss for tokens x [G, S, M], computed token by token.

    With ``w_gate`` the experts are gated: ``(activation(x W_gate[e]) * x W_in[e]) W_out[e]``.
    """

    def expert(e, v):
        h = v @ w_in[e]
        h = activation(h) if w_gate is None else activation(v @ w_gate[e]) * h
        return h @ w_out[e]

    G, S, M = x.shape
    E = w_router.shape[-1]
    logits = jnp.einsum("gsm,me->gse", x.astype(jnp.float32), w_router)
    plan = reference_routing(np.asarray(jax.lax.stop_gradient(logits)), capacity, keep_second)
    gates = jax.nn.softmax(logits, axis=-1)
    rows = []
    for g in range(G):
        for s in range(S):
            e1, e2 = plan["e1"][g, s], plan["e2"][g, s]
            g1, g2 = gates[g, s, e1], gates[g, s, e2]
            total = g1 + g2
            y = jnp.zeros((M,), x.dtype)
            for e, gate, kept in ((e1, g1 / total, plan["kept1"][g, s]), (e2, g2 / total, plan["kept2"][g, s])):
                if kept:
                    y = y + gate * expert(e, x[g, s])
            rows.append(y)
    y = jnp.stack(rows).reshape(G, S, M)
    aux = 0.0
    for g in range(G):
        for e in range(E):
            f_e = np.mean(plan["e1"][g] == e)
            p_e = jnp.mean(gates[g, :, e])
            aux = aux + f_e * p_e
    aux = aux / (G * E) * E * E
    return y, aux
