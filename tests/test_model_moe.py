"""GShard top-2 gating and the MoE layer against hand-worked examples and the slow reference (§3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glam.config import ModelConfig, MoEConfig
from glam.model.moe.gating import capacity, topk_gating
from glam.model.moe.layer import EXPERT_FORMS, MoEFFN
from glam.model.moe.reference import reference_moe, reference_routing

# Four tokens, three experts, capacity 2. Gate probabilities chosen by hand (logits = log p).
PROBS = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])


def test_hand_worked_routing():
    r = topk_gating(jnp.log(jnp.asarray(PROBS))[None], capacity=2, k=2)
    # First choices: t0, t1 → expert 0 (slots 0, 1); t2 → expert 0 slot 2 ≥ C: dropped; t3 → expert 1 slot 0.
    # Second choices queue behind ALL kept first choices of their expert:
    # t0 → e1 slot 1 (after t3), t1 → e2 slot 0, t2 → e1 slot 2: dropped, t3 → e2 slot 1.
    np.testing.assert_array_equal(r.expert[0], [[0, 1], [0, 2], [0, 1], [1, 2]])
    np.testing.assert_array_equal(r.kept[0], [[True, True], [True, True], [False, False], [True, True]])
    np.testing.assert_array_equal(np.where(r.kept[0], r.position[0], -1), [[0, 1], [1, 0], [-1, -1], [0, 1]])
    # Renormalised before the cut; a dropped gate is 0 and the other gate is NOT renormalised.
    np.testing.assert_allclose(r.gate[0], [[2 / 3, 1 / 3], [5 / 9, 4 / 9], [0, 0], [5 / 8, 3 / 8]], rtol=1e-6)
    # aux = E² · mean_e(f_e · P_e): f = (3/4, 1/4, 0), P = (0.5, 0.275, 0.225) → 9 · 0.44375 / 3
    np.testing.assert_allclose(r.aux_loss, 1.33125, rtol=1e-6)
    np.testing.assert_allclose(r.stats["dropped_first"], 0.25)
    np.testing.assert_allclose(r.stats["dropped_second"], 0.25)
    np.testing.assert_allclose(r.stats["expert_load"], [2 / 6, 2 / 6, 2 / 6])


def test_first_choices_outrank_earlier_second_choices():
    # t0's SECOND choice and t1's FIRST choice both want expert 1, capacity 1: the first choice wins
    # although t0 comes earlier.
    probs = np.array([[0.6, 0.4, 0.0], [0.1, 0.8, 0.1]]) + 1e-9
    r = topk_gating(jnp.log(jnp.asarray(probs))[None], capacity=1, k=2)
    np.testing.assert_array_equal(r.expert[0, :, 0], [0, 1])
    np.testing.assert_array_equal(r.kept[0], [[True, False], [True, False]])


def test_perfect_balance_aux_is_one():
    probs = np.full((1, 8, 4), 0.25) + np.eye(4)[np.arange(8) % 4][None] * 1e-3
    r = topk_gating(jnp.log(jnp.asarray(probs)), capacity=8, k=2)
    np.testing.assert_allclose(r.aux_loss, 1.0, rtol=1e-2)


def test_capacity_formula():
    assert capacity(1024, 64, 2.0) == 32  # GLaM: S_g=1024, E=64, cf=2
    assert capacity(100, 8, 1.25, multiple=4) == 16  # int(15.6)=15 → 16
    assert capacity(16, 4, 0.5, multiple=1) == 2
    assert capacity(1, 64, 2.0) == 4  # never zero


def test_padding_routes_nowhere():
    logits = jnp.log(jnp.asarray(PROBS))[None]
    valid = jnp.asarray([[True, False, True, True]])
    r = topk_gating(logits, capacity=2, valid=valid, k=2)
    assert not bool(r.kept[0, 1].any())
    assert bool(r.kept[0, 2, 0])  # t2 takes the slot the padding token would have used


def _layer(dispatch: str, cf: float = 0.5, E: int = 4, activation: str = "relu", policy: str = "all"):
    mcfg = ModelConfig(d_model=8, ffn_dim=16, num_layers=2, num_heads=2, head_dim=4, expert_activation=activation)
    moe = MoEConfig(
        num_experts=E, capacity_factor_train=cf, capacity_multiple=1, dispatch=dispatch, second_expert_policy=policy
    )
    return MoEFFN(mcfg, moe, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dispatch", ["einsum", "index"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fast_layer_equals_reference_forward_and_grads(dispatch, activation):
    layer = _layer(dispatch, activation=activation)
    x = jax.random.normal(jax.random.key(1), (2, 16, 8))  # G = B = 2 groups of 16 tokens
    C = capacity(16, 4, 0.5, 1)
    graphdef, state = nnx.split(layer)

    def fast(state, x):
        y, stats = nnx.merge(graphdef, state)(x, train=True)
        return jnp.sum(jnp.sin(y)) + stats["aux_loss"], (y, stats)

    def slow(w, x):
        y, aux = reference_moe(x, w["w_router"], w["w_in"], w["w_out"], C, EXPERT_FORMS[activation][0])
        return jnp.sum(jnp.sin(y)) + aux, (y, aux)

    (lf, (yf, stats)), (gf, gxf) = jax.value_and_grad(fast, argnums=(0, 1), has_aux=True)(state, x)
    w = {k: state[k][...] for k in ("w_router", "w_in", "w_out")}
    (ls, (ys, aux)), (gs, gxs) = jax.value_and_grad(slow, argnums=(0, 1), has_aux=True)(w, x)
    assert float(stats["dropped_first"]) + float(stats["dropped_second"]) > 0, "the case must exercise drops"
    np.testing.assert_allclose(yf, ys, atol=1e-5)
    np.testing.assert_allclose(stats["aux_loss"], aux, rtol=1e-5)
    np.testing.assert_allclose(gxf, gxs, atol=1e-5)
    for k in w:
        np.testing.assert_allclose(gf[k][...], gs[k], atol=1e-5, err_msg=k)


def test_random_second_expert_policy_matches_reference():
    layer = _layer("index", cf=1.0, policy="random")
    x = jax.random.normal(jax.random.key(2), (2, 16, 8))
    rng = jax.random.key(7)
    y, _ = layer(x, train=True, rng=rng)
    # The same draw by hand: keep the 2nd expert with probability g2 / 0.5 (g2 renormalised).
    gates = jax.nn.softmax(jnp.einsum("gsm,me->gse", x, layer.w_router[...]), axis=-1)
    top = jnp.sort(gates, axis=-1)[..., ::-1]
    g2 = top[..., 1] / (top[..., 0] + top[..., 1])
    keep = np.asarray(jax.random.uniform(rng, (2, 16)) < g2 / 0.5)
    assert 0 < keep.mean() < 1
    C = capacity(16, 4, 1.0, 1)
    ys, _ = reference_moe(x, layer.w_router[...], layer.w_in[...], layer.w_out[...], C, keep_second=keep)
    np.testing.assert_allclose(y, ys, atol=1e-5)


def test_reference_routing_agrees_with_gating_positions():
    logits = jax.random.normal(jax.random.key(3), (3, 32, 8)) * 2
    r = topk_gating(logits, capacity=5, k=2)
    ref = reference_routing(np.asarray(logits), 5)
    np.testing.assert_array_equal(r.kept[..., 0], ref["kept1"])
    np.testing.assert_array_equal(r.kept[..., 1], ref["kept2"])
    np.testing.assert_array_equal(np.where(ref["kept1"], r.position[..., 0], 0), ref["pos1"])
    np.testing.assert_array_equal(np.where(ref["kept2"], r.position[..., 1], 0), ref["pos2"])


def test_eval_no_drop_keeps_everything():
    layer = _layer("index", cf=0.25)
    layer.moe = MoEConfig(num_experts=4, capacity_factor_eval=0.25, capacity_multiple=1, eval_no_drop=True)
    _, stats = layer(jax.random.normal(jax.random.key(4), (2, 16, 8)), train=False)
    assert float(stats["dropped_first"]) == 0 and float(stats["dropped_second"]) == 0


def test_group_size_that_does_not_divide_routes_one_group_per_sequence():
    layer = _layer("index", cf=1.0)
    layer.moe = MoEConfig(num_experts=4, capacity_factor_eval=1.0, capacity_multiple=1, group_size=12)
    x = jax.random.normal(jax.random.key(5), (2, 10, 8))  # 20 tokens: 12 does not divide them
    y, _ = layer(x, train=False)
    ys, _ = reference_moe(x, layer.w_router[...], layer.w_in[...], layer.w_out[...], capacity(10, 4, 1.0, 1))
    np.testing.assert_allclose(y, ys, atol=1e-5)  # two groups of 10, each with its own capacity
