"""A slow, obviously correct MoE written straight from reference doc §3: loops over tokens and experts.

Tests compare the fast layer with it, forward and gradients. Routing decisions (which expert, kept
or dropped) are made with Python loops on concrete numbers; the output is then built with
differentiable jnp ops from those fixed decisions, so gradients flow exactly as in the fast layer.
Every routing variant has its loop here: token choice (any k, the selection bias of
``moe.balance=bias``), expert choice, and the shared experts as a sum of N separate FFNs;
:func:`reference_layer` runs a whole ``MoEFFN`` as its registered router and balancer say.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from glam.model.ffn import feed_forward
from glam.model.moe.gating import capacity as capacity_for
from glam.model.moe.layer import routing_group_size


def reference_routing(
    logits: np.ndarray, capacity: int, keep_second: np.ndarray | None = None, k: int = 2, bias=None, valid=None
):
    """Per group: each token's k experts, kept flags and slot positions by the §3 rules, with plain loops.

    Experts are ranked by the router's probabilities, plus ``bias [E]`` when given (it chooses only).
    Padding tokens (``valid [G, S]`` False) take no slot. Returns dict of arrays [G, S]: ``e1``,
    ``pos1``, ``kept1`` for the first choice, ``e2``... for the second, and so on up to ``k``.
    """
    logits = np.asarray(logits, np.float64)
    G, S, E = logits.shape
    scores = logits  # ranks as the probabilities do
    if bias is not None:
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        scores = probs / probs.sum(-1, keepdims=True) + np.asarray(bias, np.float64)
    out = {}
    for j in range(1, k + 1):
        out.update({f"e{j}": np.zeros((G, S), np.int64), f"pos{j}": np.zeros((G, S), np.int64)})
        out[f"kept{j}"] = np.zeros((G, S), bool)
    for g in range(G):
        fill = [0] * E
        for s in range(S):
            order = [int(np.argmax(scores[g, s]))]  # the first choice, then the best of the rest
            order += [int(e) for e in np.argsort(-scores[g, s], kind="stable") if e != order[0]]
            for j in range(1, k + 1):
                out[f"e{j}"][g, s] = order[j - 1]
        for j in range(1, k + 1):  # first choices of every token (earlier tokens first), then second, ...
            for s in range(S):
                if j == 2 and keep_second is not None and not keep_second[g, s]:
                    continue
                if valid is not None and not valid[g, s]:
                    continue
                e = out[f"e{j}"][g, s]
                if fill[e] < capacity:
                    out[f"pos{j}"][g, s], out[f"kept{j}"][g, s] = fill[e], True
                    fill[e] += 1
    return out


def reference_moe(
    x,
    w_router,
    w_in,
    w_out,
    capacity: int,
    activation=jax.nn.relu,
    keep_second=None,
    w_gate=None,
    k: int = 2,
    renormalize: bool = True,
    bias=None,
    valid=None,
    aux_scope: str = "group",
):
    """y [G, S, M] and aux loss for tokens x [G, S, M], computed token by token.

    With ``w_gate`` the experts are gated: ``(activation(x W_gate[e]) * x W_in[e]) W_out[e]``. Gates:
    the k chosen probabilities renormalised to sum to 1 (k >= 2 and ``renormalize``, GShard), the
    probabilities themselves otherwise. ``bias [E]`` changes which experts are chosen, never a gate.
    ``aux_scope``: the aux loss's expert fractions per group (GShard) or over the whole batch.
    """

    def expert(e, v):
        return feed_forward(v, w_in[e], w_out[e], activation, None if w_gate is None else w_gate[e])

    G, S, M = x.shape
    E = w_router.shape[-1]
    logits = jnp.einsum("gsm,me->gse", x.astype(jnp.float32), w_router)
    plan = reference_routing(np.asarray(jax.lax.stop_gradient(logits)), capacity, keep_second, k, bias, valid)
    gates = jax.nn.softmax(logits, axis=-1)
    rows = []
    for g in range(G):
        for s in range(S):
            chosen = [plan[f"e{j}"][g, s] for j in range(1, k + 1)]
            total = sum(gates[g, s, e] for e in chosen) if k > 1 and renormalize else 1.0
            y = jnp.zeros((M,), x.dtype)
            for j, e in enumerate(chosen, start=1):
                if plan[f"kept{j}"][g, s]:
                    y = y + gates[g, s, e] / total * expert(e, x[g, s])
            rows.append(y)
    y = jnp.stack(rows).reshape(G, S, M)
    real = np.ones((G, S), bool) if valid is None else np.asarray(valid, bool)
    aux = 0.0
    if aux_scope == "group":  # GShard: per group, then the mean over groups
        for g in range(G):
            for e in range(E):
                f_e = np.mean((plan["e1"][g] == e) & real[g])
                p_e = jnp.mean(gates[g, :, e])
                aux = aux + f_e * p_e
        aux = aux / (G * E) * E * E
    else:  # the global batch (Qiu et al. 2025): every token of every group counted together
        for e in range(E):
            f_e = np.mean((plan["e1"] == e) & real)
            p_e = jnp.mean(gates[:, :, e])
            aux = aux + f_e * p_e
        aux = aux / E * E * E
    return y, aux


def reference_expert_choice(x, w_router, w_in, w_out, capacity: int, activation=jax.nn.relu, valid=None, w_gate=None):
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
                out = feed_forward(x[g, s], w_in[e], w_out[e], activation, None if w_gate is None else w_gate[e])
                y[g][s] = y[g][s] + gates[g, s, e] * out
    return jnp.stack([jnp.stack(row) for row in y])


def reference_shared(x, w_in, w_out, n: int, activation=jax.nn.relu, w_gate=None):
    """The ``n`` shared experts as n separate FFNs of width F = (stored width) / n, summed: [..., M]."""
    F = w_in.shape[-1] // n
    y = jnp.zeros_like(x)
    for i in range(n):
        cols = slice(i * F, (i + 1) * F)
        y = y + feed_forward(x, w_in[:, cols], w_out[cols], activation, None if w_gate is None else w_gate[:, cols])
    return y


def reference_layer(layer, x, *, train: bool, valid=None):
    """An ``MoEFFN``'s output [B, S, M] on x [B, S, M], slowly, from its own weights and config: its
    router's rule for this pass (group rule or causal top-k), its balancer's selection bias, its
    capacity, and its shared experts. Not for ``second_expert_policy=random`` (that draws)."""
    moe, router = layer.moe, layer.router
    assert not (train and moe.second_expert_policy == "random"), "the reference does not draw"
    B, S, M = x.shape
    group = routing_group_size(moe, B, S)
    xg = x.reshape(-1, group, M)
    valid_g = None if valid is None else np.asarray(valid).reshape(-1, group)
    factor = moe.capacity_factor_train if train else moe.capacity_factor_eval
    group_capacity = capacity_for(group, moe.num_experts, factor, moe.capacity_multiple)
    no_drop = moe.dispatch == "dropless" or (not train and moe.eval_no_drop)
    w = [layer.w_router[...], layer.w_in[...], layer.w_out[...]]
    w_gate = layer.w_gate[...] if layer.gated else None
    if router.group_rule(moe, train):
        y = reference_expert_choice(xg, *w, group_capacity, layer.activation, valid_g, w_gate)
    else:
        y, _ = reference_moe(
            xg,
            *w,
            group if no_drop else group_capacity,
            layer.activation,
            w_gate=w_gate,
            k=router.causal_k(moe),
            renormalize=router.renormalizes,
            bias=layer.balancer.selection_bias(layer),
            valid=valid_g,
        )
    if moe.shared_experts:
        shared_gate = layer.w_shared_gate[...] if layer.gated else None
        y = y + reference_shared(
            xg, layer.w_shared_in[...], layer.w_shared_out[...], moe.shared_experts, layer.activation, shared_gate
        )
    return y.reshape(B, S, M)
