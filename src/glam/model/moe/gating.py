"""GShard top-2 gating, exactly as reference doc §3 describes the reference code.

A pure function from router logits of one batch of routing groups to a routing plan: for every
token its two experts, their slot (position) in each expert's buffer, the renormalised gates (zero
where the capacity cut dropped the assignment), the load-balancing loss, and routing statistics.
Dispatch implementations (``dispatch.py``) consume the plan; ``reference.py`` re-derives it with
Python loops for the tests.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
    """The routing plan of G groups of S tokens over E experts with capacity C (index 0/1 = 1st/2nd choice)."""

    expert: jax.Array  # [G, S, 2] int32
    position: jax.Array  # [G, S, 2] int32, slot in the expert's buffer (meaningful where kept)
    gate: jax.Array  # [G, S, 2] fp32, renormalised before the cut, 0 where dropped, never re-renormalised
    kept: jax.Array  # [G, S, 2] bool
    aux_loss: jax.Array  # scalar: E² · mean_e(f_e · P_e), averaged over groups
    stats: dict  # routing statistics (see ``routing_stats``)


def capacity(group_size: int, num_experts: int, factor: float, multiple: int = 4) -> int:
    """C = int(S_g · cf / E), rounded up to a multiple of ``multiple`` (the reference uses 4), at least 1."""
    c = max(1, int(group_size * factor / num_experts))
    return int(math.ceil(c / multiple) * multiple)


def top2_gating(
    logits: jax.Array,  # [G, S, E], any float dtype; routed in fp32
    capacity: int,
    *,
    second_policy: str = "all",
    second_threshold: float = 0.5,
    rng: jax.Array | None = None,
    valid: jax.Array | None = None,  # [G, S] bool: padding tokens route nowhere
) -> Routing:
    logits = logits.astype(jnp.float32)
    G, S, E = logits.shape
    gates = jax.nn.softmax(logits, axis=-1)  # step 1
    # steps 3–4: first expert, then the best of the rest
    e1 = jnp.argmax(gates, axis=-1)
    mask1 = jax.nn.one_hot(e1, E, dtype=jnp.float32)
    e2 = jnp.argmax(gates * (1.0 - mask1), axis=-1)
    mask2 = jax.nn.one_hot(e2, E, dtype=jnp.float32)
    if valid is not None:
        mask1 = mask1 * valid[..., None]
        mask2 = mask2 * valid[..., None]
    g1 = jnp.sum(gates * mask1, axis=-1)
    g2 = jnp.sum(gates * mask2, axis=-1)
    # step 6: aux loss from top-1 assignments before any dropping
    f = jnp.mean(mask1, axis=1)  # [G, E] fraction of tokens whose first choice is e
    p = jnp.mean(gates, axis=1)  # [G, E] mean gate of e
    aux_loss = jnp.mean(jnp.mean(f * p, axis=-1) * E * E)
    # step 5: renormalise BEFORE the capacity cut
    # padding tokens have g1 = g2 = 0: divide by 1 (a tiny floor squares to 0 in the backward pass → NaN)
    denom = jnp.where(g1 + g2 > 0, g1 + g2, 1.0)
    g1, g2 = g1 / denom, g2 / denom
    if second_policy == "random":
        # GShard: keep the 2nd expert with probability g2 / threshold (= 2·g2 for the default 0.5)
        assert rng is not None, "second_expert_policy='random' needs an rng"
        keep_random = jax.random.uniform(rng, (G, S)) < g2 / second_threshold
        mask2 = mask2 * keep_random[..., None]
    # step 7: first choices take slots first (earlier tokens first), then second choices
    pos1 = jnp.sum((jnp.cumsum(mask1, axis=1) - mask1) * mask1, axis=-1)  # [G, S]
    kept1 = (pos1 < capacity) & (jnp.sum(mask1, axis=-1) > 0)
    kept_first_per_expert = jnp.sum(mask1 * kept1[..., None], axis=1, keepdims=True)  # [G, 1, E]
    pos2 = jnp.sum((jnp.cumsum(mask2, axis=1) - mask2 + kept_first_per_expert) * mask2, axis=-1)
    kept2 = (pos2 < capacity) & (jnp.sum(mask2, axis=-1) > 0)
    routing = Routing(
        expert=jnp.stack([e1, e2], axis=-1).astype(jnp.int32),
        position=jnp.stack([pos1, pos2], axis=-1).astype(jnp.int32),
        gate=jnp.stack([g1 * kept1, g2 * kept2], axis=-1),
        kept=jnp.stack([kept1, kept2], axis=-1),
        aux_loss=aux_loss,
        stats={},
    )
    wanted2 = jnp.sum(mask2, axis=-1) > 0
    return routing._replace(stats=routing_stats(routing, gates, wanted2, valid, E))


def routing_stats(r: Routing, gates: jax.Array, wanted2: jax.Array, valid: jax.Array | None, E: int) -> dict:
    """Per-layer statistics: dropped fractions, expert load, gate entropy, unused experts."""
    valid = jnp.ones(gates.shape[:2], bool) if valid is None else valid
    n_tokens = jnp.maximum(jnp.sum(valid), 1)
    drop1 = 1.0 - jnp.sum(r.kept[..., 0]) / n_tokens
    drop2 = 1.0 - jnp.sum(r.kept[..., 1]) / jnp.maximum(jnp.sum(wanted2), 1)
    load = jnp.zeros((E,), jnp.float32)
    for k in range(2):
        load = load + jnp.sum(jax.nn.one_hot(r.expert[..., k], E) * r.kept[..., k, None], axis=(0, 1))
    load_frac = load / jnp.maximum(jnp.sum(load), 1.0)
    entropy = -jnp.sum(gates * jnp.log(jnp.maximum(gates, 1e-30)), axis=-1)
    return {
        "aux_loss": r.aux_loss,
        "dropped_first": drop1,
        "dropped_second": drop2,
        "expert_load": load_frac,  # [E] fraction of kept assignments per expert
        "gate_entropy": jnp.sum(entropy * valid) / n_tokens,
        "unused_experts": jnp.sum(load == 0).astype(jnp.float32),
    }
