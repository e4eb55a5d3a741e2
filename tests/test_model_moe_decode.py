"""The decode-step MoE path (no capacity) against hand-worked gates and the slow loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glam.config import ModelConfig, MoEConfig
from glam.model.moe.decode import decode_moe, topk_no_capacity
from glam.model.moe.layer import MoEFFN
from glam.model.moe.reference import reference_moe

# Three tokens, three experts; logits = log p, so the softmax gives back p.
PROBS = np.array([[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.2, 0.2, 0.6]])


def test_hand_worked_top2_gates():
    expert, gate = topk_no_capacity(jnp.log(jnp.asarray(PROBS)), k=2)
    np.testing.assert_array_equal(expert, [[0, 1], [1, 2], [2, 0]])  # a tie (t2: 0.2, 0.2) goes to the lower id
    np.testing.assert_allclose(gate, [[2 / 3, 1 / 3], [5 / 9, 4 / 9], [3 / 4, 1 / 4]], rtol=1e-6)
    _, gate = topk_no_capacity(jnp.log(jnp.asarray(PROBS)), valid=jnp.asarray([True, False, True]), k=2)
    np.testing.assert_array_equal(gate[1], [0, 0])  # an invalid token routes nowhere


def _layer(activation: str) -> MoEFFN:
    mcfg = ModelConfig(d_model=8, ffn_dim=16, num_layers=2, num_heads=2, head_dim=4, expert_activation=activation)
    return MoEFFN(mcfg, MoEConfig(num_experts=4, capacity_factor_eval=0.5, capacity_multiple=1), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("activation", ["relu", "geglu"])
@pytest.mark.parametrize("path, T", [("grouped", 12), ("grouped", 1), ("sliced", 1), ("sliced", 5)])
def test_decode_moe_equals_reference_with_room_for_every_token(activation, path, T):
    layer = _layer(activation)
    x = jax.random.normal(jax.random.key(1), (T, 8))
    y = decode_moe(x, layer.w_router[...], layer, path=path)
    w = {"w_router": layer.w_router[...], "w_in": layer.w_in[...], "w_out": layer.w_out[...]}
    w_gate = layer.w_gate[...] if layer.gated else None
    # capacity T: no expert can overflow, so the reference keeps every assignment
    ys, _ = reference_moe(x[None], *w.values(), T, layer.activation, w_gate=w_gate)
    np.testing.assert_allclose(y, ys[0], atol=1e-5)


def test_decode_moe_ignores_capacity_and_invalid_rows():
    layer = _layer("relu")
    x = jax.random.normal(jax.random.key(2), (2, 6, 8))  # [B, 1]-style calls see S = 1; any S works
    valid = jnp.asarray([[True] * 6, [True, False, True, True, False, True]])
    y, stats = layer(x, train=False, valid=valid, decode=True)
    assert stats == {}
    np.testing.assert_array_equal(y[1, 1], 0)
    np.testing.assert_array_equal(y[1, 4], 0)
    # capacity_factor_eval=0.5 would drop tokens in a capacity path; here each valid token's output
    # is its own, whatever its batchmates are
    alone = decode_moe(x[1, 2:3], layer.w_router[...], layer)
    np.testing.assert_allclose(y[1, 2:3], alone, atol=1e-6)
    ys, _ = reference_moe(x[:1], layer.w_router[...], layer.w_in[...], layer.w_out[...], 6)
    np.testing.assert_allclose(y[:1], ys, atol=1e-5)


def test_grouped_buffer_grows_to_the_busiest_expert():
    """Every token to experts 0 and 1 (the largest buffer, C = T) and a balanced step agree with the reference."""
    layer = _layer("relu")
    T = 6
    x = jnp.abs(jax.random.normal(jax.random.key(3), (T, 8)))  # positive inputs
    skewed = jnp.zeros((8, 4)).at[:, 0].set(2.0).at[:, 1].set(1.0)  # logits e0 > e1 > e2 = e3 for every token
    for router in (skewed, layer.w_router[...]):
        y = decode_moe(x, router, layer, path="grouped")
        ys, _ = reference_moe(x[None], router, layer.w_in[...], layer.w_out[...], T)
        np.testing.assert_allclose(y, ys[0], atol=1e-5)
