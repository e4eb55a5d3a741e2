"""Property tests of the top-2 gating invariants (reference doc §3) over random logits and capacities."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from glam.model.moe.gating import topk_gating
from glam.model.moe.reference import reference_routing


@st.composite
def routing_case(draw):
    # a few shapes (each compiles once), many values
    G, S, E = draw(st.sampled_from([1, 2])), draw(st.sampled_from([8, 16])), draw(st.sampled_from([2, 4, 8]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    logits = np.random.default_rng(seed).normal(size=(G, S, E)).astype(np.float32) * scale
    return logits, draw(st.integers(1, S + 1))


@settings(max_examples=25, deadline=None)
@given(routing_case())
def test_gating_invariants(case):
    logits, C = case
    r = topk_gating(jnp.asarray(logits), C, k=2)
    G, S, E = logits.shape
    kept = np.asarray(r.kept)
    expert, pos, gate = np.asarray(r.expert), np.asarray(r.position), np.asarray(r.gate)
    assert kept.shape == (G, S, 2)  # at most two assignments per token
    assert np.all(expert[..., 0] != expert[..., 1])
    for g in range(G):
        for e in range(E):
            slots = pos[g][(expert[g] == e) & kept[g]]
            assert len(slots) <= C  # at most C tokens per expert
            assert sorted(slots.tolist()) == list(range(len(slots)))  # slots are distinct and packed from 0
            # no first choice dropped while a second choice to the same expert is kept
            first_dropped = np.any((expert[g, :, 0] == e) & ~kept[g, :, 0])
            second_kept = np.any((expert[g, :, 1] == e) & kept[g, :, 1])
            assert not (first_dropped and second_kept)
    assert np.all(gate.sum(-1) <= 1 + 1e-6)  # a kept token's gates sum to at most 1
    assert np.all(gate[~kept] == 0)
    ref = reference_routing(logits, C)
    np.testing.assert_array_equal(kept[..., 0], ref["kept1"])
    np.testing.assert_array_equal(kept[..., 1], ref["kept2"])
