"""A slow, obviously correct MoE written straight from reference doc §3: loops over tokens and experts.

Tests compare the fast layer with it, forward and gradients. Routing decisions (which expert, kept
or dropped) are made with Python loops on concrete numbers; the output is then built with
differentiable jnp ops from those fixed decisions, so gradients flow exactly as in the fast layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def reference_routing(logits: np.ndarray, capacity: int, keep_second: np.ndarray | None = None, k: int = 2):
    """Per group: each token's k experts, kept flags and slot positions by the §3 rules, with plain loops.

    Returns dict of arrays [G, S]: ``e1``, ``pos1``, ``kept1`` for the first choice, ``e2``... for the
    second, and so on up to ``k``.
    """
    logits = np.asarray(logits, np.float64)
    G, S, E = logits.shape
    out = {}
    for j in range(1, k + 1):
        out.update({f"e{j}": np.zeros((G, S), np.int64), f"pos{j}": np.zeros((G, S), np.int64)})
        out[f"kept{j}"] = np.zeros((G, S), bool)
    for g in range(G):
        fill = [0] * E
        for s in range(S):
            order = [int(np.argmax(logits[g, s]))]  # the first choice, then the best of the rest
            order += [int(e) for e in np.argsort(-logits[g, s], kind="stable") if e != order[0]]
            for j in range(1, k + 1):
                out[f"e{j}"][g, s] = order[j - 1]
        for j in range(1, k + 1):  # first choices of every token (earlier tokens first), then second, ...
            for s in range(S):
                if j == 2 and keep_second is not None and not keep_second[g, s]:
                    continue
                e = out[f"e{j}"][g, s]
                if fill[e] < capacity:
                    out[f"pos{j}"][g, s], out[f"kept{j}"][g, s] = fill[e], True
                    fill[e] += 1
    return out


def reference_moe(
    x, w_router, w_in, w_out, capacity: int, activation=jax.nn.relu, keep_second=None, w_gate=None, k: int = 2
):
    """y [G, S, M] and aux loss for tokens x [G, S, M], computed token by token.

    With ``w_gate`` the experts are gated: ``(activation(x W_gate[e]) * x W_in[e]) W_out[e]``. Gates:
    the k chosen probabilities renormalised to sum to 1 (k >= 2, GShard), the probability itself (k = 1).
    """

    def expert(e, v):
        h = v @ w_in[e]
        h = activation(h) if w_gate is None else activation(v @ w_gate[e]) * h
        return h @ w_out[e]

    G, S, M = x.shape
    E = w_router.shape[-1]
    logits = jnp.einsum("gsm,me->gse", x.astype(jnp.float32), w_router)
    plan = reference_routing(np.asarray(jax.lax.stop_gradient(logits)), capacity, keep_second, k)
    gates = jax.nn.softmax(logits, axis=-1)
    rows = []
    for g in range(G):
        for s in range(S):
            chosen = [plan[f"e{j}"][g, s] for j in range(1, k + 1)]
            total = sum(gates[g, s, e] for e in chosen) if k > 1 else 1.0
            y = jnp.zeros((M,), x.dtype)
            for j, e in enumerate(chosen, start=1):
                if plan[f"kept{j}"][g, s]:
                    y = y + gates[g, s, e] / total * expert(e, x[g, s])
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


def reference_expert_choice(x, w_router, w_in, w_out, capacity: int, activation=jax.nn.relu, valid=None):
    """y [G, S, M] of expert-choice routing, expert by expert: each picks its top-C tokens (ties: earlier first)."""
    G, S, M = x.shape
    E = w_router.shape[-1]
    logits = jnp.einsum("gsm,me->gse", x.astype(jnp.float32), w_router)
    gates = jax.nn.softmax(logits, axis=-1)
    concrete = np.asarray(jax.lax.stop_gradient(gates), np.float64)
    y = [[jnp.zeros((M,), x.dtype) for _ in range(S)] for _ in range(G)]
    for g in range(G):
        for e in range(E):
            candidates = [s for s in range(S) if valid is None or valid[g, s]]
            chosen = sorted(candidates, key=lambda s: (-concrete[g, s, e], s))[: min(capacity, S)]
            for s in chosen:
                out = activation(x[g, s] @ w_in[e]) @ w_out[e]
                y[g][s] = y[g][s] + gates[g, s, e] * out
    return jnp.stack([jnp.stack(row) for row in y])
