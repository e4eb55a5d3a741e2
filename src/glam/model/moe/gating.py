"""Token-choice top-k gating: GShard top-2 exactly as reference doc §3 describes the reference code.

A pure function from router logits of one batch of routing groups to a routing plan: for every
token its k experts (``moe.top_k``, default 2), their slot (position) in each expert's buffer, the
renormalised gates (zero where the capacity cut dropped the assignment), the load-balancing loss,
and routing statistics.
Dispatch implementations (``dispatch.py``) consume the plan; ``reference.py`` re-derives it with
Python loops for the tests.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from glam.model.moe.routers import STATS


class Routing(NamedTuple):
    """The routing plan of G groups of S tokens over E experts with capacity C (index j = choice j + 1)."""

    expert: jax.Array  # [G, S, J] int32
    position: jax.Array  # [G, S, J] int32, slot in the expert's buffer (meaningful where kept)
    gate: jax.Array  # [G, S, J] fp32, renormalised before the cut, 0 where dropped, never re-renormalised
    kept: jax.Array  # [G, S, J] bool
    aux_loss: jax.Array  # scalar: E² · mean_e(f_e · P_e), averaged over groups
    stats: dict  # routing statistics (see ``routing_stats``)


def capacity(group_size: int, num_experts: int, factor: float, multiple: int = 4) -> int:
    """C = int(S_g · cf / E), rounded up to a multiple of ``multiple`` (the reference uses 4), at least 1."""
    c = max(1, int(group_size * factor / num_experts))
    return int(math.ceil(c / multiple) * multiple)


def topk_gating(
    logits: jax.Array,  # [G, S, E], any float dtype; routed in fp32
    capacity: int,
    *,
    k: int = 2,
    renormalize: bool = True,
    bias: jax.Array | None = None,  # [E]: added to the scores for choosing experts only (moe.balance=bias)
    second_policy: str = "all",
    second_threshold: float = 0.5,
    rng: jax.Array | None = None,
    valid: jax.Array | None = None,  # [G, S] bool: padding tokens route nowhere
    aux_scope: str = "group",  # where the aux loss counts expert fractions: "group" (GShard) or "batch"
) -> Routing:
    """Top-k token-choice gating; k = 2 is GShard's (reference doc §3, bit for bit), k = 1 Switch's.

    Choice j of a token is the best expert not among its first j. Gates: k >= 2 renormalises the k
    chosen probabilities to sum to 1 before the capacity cut (GShard); k = 1 keeps the softmax
    probability itself (Switch Transformer: renormalised, a single gate would always be 1 and the
    router would get no gradient from the task loss). Capacity slots go to all first choices (earlier
    tokens first), then all second choices, and so on. GShard's "random" policy applies to choice 2.
    ``renormalize=False`` keeps the k probabilities as they are (an expert-choice model's causal rule).
    ``aux_scope``: where the aux loss counts expert fractions (:func:`balance_loss`).
    """
    logits = logits.astype(jnp.float32)
    G, S, E = logits.shape
    gates = jax.nn.softmax(logits, axis=-1)  # step 1
    # steps 3–4: first expert, then the best of the rest, ...
    scores = gates if bias is None else gates + bias  # what chooses; the gates stay the softmax's
    experts, masks, taken = [], [], None
    for j in range(k):
        if j == 0:
            e_j = jnp.argmax(scores, axis=-1)
        elif bias is None:  # GShard's own formula (a taken expert scores 0)
            e_j = jnp.argmax(gates * (1.0 - taken), axis=-1)
        else:  # biased scores may be negative: a taken expert must score -inf
            e_j = jnp.argmax(jnp.where(taken > 0, -jnp.inf, scores), axis=-1)
        mask_j = jax.nn.one_hot(e_j, E, dtype=jnp.float32)
        taken = mask_j if j == 0 else taken + mask_j
        experts.append(e_j)
        masks.append(mask_j)
    if valid is not None:
        masks = [m * valid[..., None] for m in masks]
    g = [jnp.sum(gates * m, axis=-1) for m in masks]
    # step 6: aux loss from top-1 assignments before any dropping
    aux_loss = balance_loss(masks[0], gates, aux_scope)
    if k > 1 and renormalize:
        # step 5: renormalise BEFORE the capacity cut
        # padding tokens have gates 0: divide by 1 (a tiny floor squares to 0 in the backward pass → NaN)
        total = g[0]
        for g_j in g[1:]:
            total = total + g_j
        denom = jnp.where(total > 0, total, 1.0)
        g = [g_j / denom for g_j in g]
    if second_policy == "random":
        # GShard: keep the 2nd expert with probability g2 / threshold (= 2·g2 for the default 0.5)
        assert rng is not None and k == 2, "second_expert_policy='random' needs an rng and top-2"
        keep_random = jax.random.uniform(rng, (G, S)) < g[1] / second_threshold
        masks[1] = masks[1] * keep_random[..., None]
    # step 7: first choices take slots first (earlier tokens first), then second choices, ...
    positions, kept, earlier = [], [], None  # earlier: [G, 1, E] slots taken by earlier choices
    for m in masks:
        before = jnp.cumsum(m, axis=1) - m if earlier is None else jnp.cumsum(m, axis=1) - m + earlier
        pos = jnp.sum(before * m, axis=-1)  # [G, S]
        kept_j = (pos < capacity) & (jnp.sum(m, axis=-1) > 0)
        filled = jnp.sum(m * kept_j[..., None], axis=1, keepdims=True)
        earlier = filled if earlier is None else earlier + filled
        positions.append(pos)
        kept.append(kept_j)
    routing = Routing(
        expert=jnp.stack(experts, axis=-1).astype(jnp.int32),
        position=jnp.stack(positions, axis=-1).astype(jnp.int32),
        gate=jnp.stack([g_j * kept_j for g_j, kept_j in zip(g, kept)], axis=-1),
        kept=jnp.stack(kept, axis=-1),
        aux_loss=aux_loss,
        stats={},
    )
    valid_f = jnp.ones((G, S), jnp.float32) if valid is None else valid.astype(jnp.float32)
    n_tokens = jnp.maximum(jnp.sum(valid_f), 1.0)
    wanted_later = sum(jnp.sum(m) for m in masks[1:]) if k > 1 else 0.0  # later choices the policy asked for
    load = sum(jnp.sum(m * kept_j[..., None], axis=(0, 1)) for m, kept_j in zip(masks, kept))  # [E]
    stats = routing_stats(
        gates,
        valid_f,
        load,
        aux_loss=aux_loss,
        dropped_first=1.0 - jnp.sum(kept[0]) / n_tokens,
        # with k > 2: all choices after the first
        dropped_second=1.0 - sum(jnp.sum(c) for c in kept[1:]) / jnp.maximum(wanted_later, 1) if k > 1 else 0.0,
    )
    if bias is not None:  # the load the bias balances: choices before the capacity cut
        chosen = sum(jnp.sum(m, axis=(0, 1)) for m in masks)
        stats["expert_chosen"] = chosen / jnp.maximum(jnp.sum(chosen), 1.0)
    return routing._replace(stats=stats)


def balance_loss(first: jax.Array, gates: jax.Array, scope: str = "group") -> jax.Array:
    """The aux loss E²·mean_e(f_e·P_e) from first choices ``first [G, S, E]`` (one-hot, 0 for padding) and
    softmax ``gates [G, S, E]``: f_e is the fraction of tokens whose first choice is e, P_e the mean gate.

    ``scope="group"`` (GShard, GLaM; reference doc §3): f and P per routing group, the loss averaged over
    groups. ``scope="batch"`` (the global-batch balance loss of Qiu et al. 2025, Qwen3-MoE): f and P over
    every token of all G groups, so a group may lean on some experts as long as the batch is balanced.
    Averaging P per group and then over groups gives the batch's P (groups are equal in size), so only f
    differs. Under GSPMD the groups are sharded on the ``data`` mesh axis and the batch mean is a
    reduction over it: the loss is the same on any mesh."""
    E = gates.shape[-1]
    if scope == "group":
        f, p = jnp.mean(first, axis=1), jnp.mean(gates, axis=1)  # [G, E]
    else:
        f, p = jnp.mean(first, axis=(0, 1)), jnp.mean(gates, axis=(0, 1))  # [E]
    return jnp.mean(jnp.mean(f * p, axis=-1) * E * E)


def routing_stats(
    gates: jax.Array, valid: jax.Array, load: jax.Array, *, aux_loss, dropped_first, dropped_second
) -> dict:
    """The statistics every router reports (``routers.STATS``), from softmax ``gates [G, S, E]``, real
    tokens ``valid [G, S]`` (float) and the kept assignments per expert ``load [E]``: the aux loss, the
    fractions dropped (first choices; all later ones), each expert's share of the load, the mean gate
    entropy and the number of unused experts."""
    entropy = -jnp.sum(gates * jnp.log(jnp.maximum(gates, 1e-30)), axis=-1)
    values = (
        aux_loss,
        dropped_first,
        dropped_second,
        load / jnp.maximum(jnp.sum(load), 1.0),
        jnp.sum(entropy * valid) / jnp.maximum(jnp.sum(valid), 1.0),
        jnp.sum(load == 0).astype(jnp.float32),
    )
    return {name: jnp.asarray(v, jnp.float32) for name, v in zip(STATS, values, strict=True)}


# --------------------------------------------------------------------------------------------------------
# Expert choice (Zhou et al. 2022): each expert takes its top-C tokens of the group


class ExpertChoice(NamedTuple):
    """Expert-choice plan of G groups: expert e's C slots hold tokens ``token[g, e]`` with weights ``gate``."""

    token: jax.Array  # [G, E, C] int32, the token of each slot
    gate: jax.Array  # [G, E, C] fp32: softmax probability of (token, expert); 0 where the slot holds padding
    stats: dict


def expert_choice_gating(
    logits: jax.Array,  # [G, S, E]
    capacity: int,  # C per expert (moe capacity factor: C = S·cf/E)
    valid: jax.Array | None = None,  # [G, S] bool
) -> ExpertChoice:
    """Each expert picks the C tokens of the group with the highest softmax(router logits) for it.

    A token may be picked by several experts or none; loads are equal by construction (no aux loss).
    NOT causal within a group: whether a token is picked depends on the other tokens' scores,
    later ones included, so it is a training rule only (the layer routes causally otherwise).
    Ties go to the earlier token. Padding tokens score below every real token (gate 0 if picked).
    """
    logits = logits.astype(jnp.float32)
    G, S, E = logits.shape
    C = min(capacity, S)
    gates = jax.nn.softmax(logits, axis=-1)
    scores = gates if valid is None else jnp.where(valid[..., None], gates, -1.0)
    top, token = jax.lax.top_k(jnp.swapaxes(scores, 1, 2), C)  # [G, E, C]
    gate = jnp.where(top >= 0, top, 0.0)
    picked = (gate > 0).astype(jnp.float32)
    times = jnp.zeros((G, S), jnp.float32).at[jnp.arange(G)[:, None, None], token].add(picked)  # experts per token
    valid_f = jnp.ones((G, S), jnp.float32) if valid is None else valid.astype(jnp.float32)
    stats = routing_stats(
        gates,
        valid_f,
        jnp.sum(picked, axis=(0, 2)),
        aux_loss=0.0,  # balanced by construction
        dropped_first=jnp.sum((times == 0) * valid_f) / jnp.maximum(jnp.sum(valid_f), 1.0),  # tokens no expert took
        dropped_second=0.0,
    )
    return ExpertChoice(token.astype(jnp.int32), gate, stats)
