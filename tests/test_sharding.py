"""The paper's 2D sharding on 8 simulated CPU devices (conftest sets the device count).

Sharded equals unsharded for every mesh shape; expert weights really sit (None, data, None, model);
the compiled MoE layer moves tokens with all-to-all and never gathers the expert weights.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from glam.config import ConfigError, resolve
from glam.data.packing import random_batch
from glam.model.init import init_params
from glam.model.losses import loss_fn
from glam.sharding.mesh import make_mesh
from glam.sharding.rules import activate

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices; see tests/conftest.py")

OVERRIDES = [
    "model.d_model=64",
    "model.num_heads=8",
    "model.head_dim=8",
    "model.ffn_dim=96",
    "model.vocab_size=256",
    "moe.num_experts=8",
    "train.batch_size=8",
    "train.seq_len=16",
    "moe.capacity_factor_train=1.0",
]


def _batch(cfg):
    return random_batch(cfg.train.batch_size, cfg.train.seq_len, cfg.model.vocab_size)


def _loss_and_grads(cfg, mesh, dispatch="index", extra=()):
    overrides = OVERRIDES + [f"moe.dispatch={dispatch}", f"mesh.data={mesh[0]}", f"mesh.model={mesh[1]}", *extra]
    cfg = resolve("tiny", overrides)
    b = _batch(cfg)
    devices = jax.devices()[: mesh[0] * mesh[1]]
    m = make_mesh(cfg, devices)
    params = init_params(cfg, jax.random.key(0), m)
    b = jax.device_put(b, NamedSharding(m, PartitionSpec("data")))

    def f(p, b):
        return jax.value_and_grad(lambda p: loss_fn(cfg, p, b, train=True, rng=jax.random.key(1))[0])(p)

    with activate(m):
        fn = jax.jit(f)
        compiled = fn.lower(params, b).compile()
        loss, grads = fn(params, b)
    return cfg, params, loss, grads, compiled


@pytest.fixture(scope="module")
def single_device():
    _, params, loss, grads, _ = _loss_and_grads(None, (1, 1))
    return params, loss, grads


@pytest.mark.parametrize("mesh", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_sharded_equals_single_device(single_device, mesh):
    p0, l0, g0 = single_device
    _, params, loss, grads, _ = _loss_and_grads(None, mesh)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p0, params)
    np.testing.assert_allclose(loss, l0, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4), g0, grads)


def test_global_batch_balance_loss_is_the_same_on_a_mesh(single_device):
    """moe.balance=global_batch counts expert fractions over the whole batch: on a 4 x 2 mesh the routing
    groups sit on 4 data shards, and the loss and its gradients equal one device's (a reduction over the
    data axis), while differing from the per-group loss of the same weights."""
    extra = ("moe.balance=global_batch",)
    _, params, l0, g0, _ = _loss_and_grads(None, (1, 1), extra=extra)
    _, _, loss, grads, _ = _loss_and_grads(None, (4, 2), extra=extra)
    np.testing.assert_allclose(loss, l0, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4), g0, grads)
    _, per_group_loss, _ = single_device
    assert abs(float(l0) - float(per_group_loss)) > 1e-5  # the same weights and batch: only the aux loss moved


def test_more_data_shards_than_experts_split_each_expert():
    """mesh.data=8 with 4 experts: each expert spans 2 devices (paper §4) and results are unchanged."""
    _, _, l0, g0, _ = _loss_and_grads(None, (1, 1), extra=["moe.num_experts=4"])
    _, params, loss, grads, _ = _loss_and_grads(None, (8, 1), extra=["moe.num_experts=4"])
    w_in = params["blocks"]["moe_layer"]["ffn"]["w_in"]
    assert w_in.sharding.spec == PartitionSpec(None, "data", None, "data_inner")
    assert w_in.addressable_shards[0].data.shape == (2, 1, 64, 48)  # [P, E/4, M, F/2]
    np.testing.assert_allclose(loss, l0, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4), g0, grads)


@pytest.mark.parametrize("dispatch", ["index", "einsum"])
def test_expert_weights_2d_sharded_and_exchanged_by_all_to_all(dispatch):
    cfg, params, _, _, compiled = _loss_and_grads(None, (4, 2), dispatch)
    w_in = params["blocks"]["moe_layer"]["ffn"]["w_in"]
    assert w_in.sharding.spec == PartitionSpec(None, "data", None, "model")
    assert w_in.addressable_shards[0].data.shape == (2, 2, 64, 48)  # [P, E/4, M, F/2]
    hlo = compiled.as_text()
    assert "all-to-all" in hlo
    P, E, M, F = 2, 8, 64, 96
    full_expert = [f"[{P},{E},{M},{F}]", f"[{E},{M},{F}]", f"[{P},{E},{F},{M}]", f"[{E},{F},{M}]"]
    gathers = re.findall(r"= \w+(\[[\d,]+\])[^=]*all-gather\(", hlo)
    assert not [g for g in gathers if g in full_expert], f"expert weights all-gathered: {gathers}"


def test_mesh_that_does_not_divide_is_a_clear_error():
    cfg = resolve("tiny", OVERRIDES + ["moe.num_experts=6", "mesh.data=4", "mesh.model=2"])
    with pytest.raises(ConfigError, match="moe.num_experts=6 and mesh.data=4"):
        make_mesh(cfg, jax.devices()[:8])
    cfg = resolve("tiny", OVERRIDES + ["model.num_heads=6", "model.head_dim=8", "mesh.data=2", "mesh.model=4"])
    with pytest.raises(ConfigError, match="num_heads=6 is not divisible by mesh.model=4"):
        make_mesh(cfg, jax.devices()[:8])
    cfg = resolve("tiny", OVERRIDES + ["mesh.data=3", "mesh.model=1"])
    with pytest.raises(ConfigError, match="needs 3 devices"):
        make_mesh(cfg, jax.devices()[:8])


def test_activation_constraint_is_noop_without_mesh():
    from glam.sharding.rules import constrain

    x = jnp.ones((2, 3, 4))
    assert constrain(x, ("act_batch", None, "act_embed")) is x
