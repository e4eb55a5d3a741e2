"""Every dispatch path (einsum, index, dropless) against the slow loop reference, forward and grads.

The fast paths share the routing of ``topk_gating`` (k = 2); ``reference_moe`` re-derives it with loops.
Dropless equals the reference run with a capacity large enough that nothing drops.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from glam.config import ModelConfig, MoEConfig
from glam.errors import GLaMError
from glam.model.moe import dispatch as dispatch_mod
from glam.model.moe.dispatch import block_matmul, sort_by_expert
from glam.model.moe.gating import capacity
from glam.model.moe.layer import EXPERT_FORMS, MoEFFN
from glam.model.moe.reference import reference_moe
from glam.sharding.mesh import MESH_AXES
from glam.sharding.rules import activate

G, S, M, F, E = 2, 16, 8, 16, 4


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 4 rows, so a few dozen assignments span many blocks and several padded tails."""
    monkeypatch.setattr(dispatch_mod, "BLOCK_ROWS", 4)


def _layer(dispatch: str, cf: float, activation: str = "relu", policy: str = "all") -> MoEFFN:
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4, expert_activation=activation)
    moe = MoEConfig(
        num_experts=E, capacity_factor_train=cf, capacity_multiple=1, dispatch=dispatch, second_expert_policy=policy
    )
    return MoEFFN(mcfg, moe, rngs=nnx.Rngs(0))


def _fast_and_slow(dispatch: str, cf: float, activation: str, x: jax.Array):
    """(loss, y, grads wrt (weights, x)) of the layer and of the loop reference on the same weights."""
    layer = _layer(dispatch, cf, activation)
    graphdef, state = nnx.split(layer)
    C = S if dispatch == "dropless" else capacity(S, E, cf, 1)

    def fast(state, x):
        y, stats = nnx.merge(graphdef, state)(x, train=True)
        return jnp.sum(jnp.sin(y)) + stats["aux_loss"], y

    def slow(w, x):
        y, aux = reference_moe(
            x, w["w_router"], w["w_in"], w["w_out"], C, EXPERT_FORMS[activation][0], w_gate=w.get("w_gate")
        )
        return jnp.sum(jnp.sin(y)) + aux, y

    w = {k: state[k][...] for k in ("w_router", "w_in", "w_out", "w_gate") if k in state}
    (_, yf), (gf, gxf) = jax.value_and_grad(fast, argnums=(0, 1), has_aux=True)(state, x)
    (_, ys), (gs, gxs) = jax.value_and_grad(slow, argnums=(0, 1), has_aux=True)(w, x)
    gf = {k: gf[k][...] for k in w}
    return (yf, gf, gxf), (ys, gs, gxs)


@pytest.mark.parametrize(
    "dispatch,activation",
    [("einsum", "relu"), ("index", "relu"), ("dropless", "relu"), ("dropless", "gelu")]
    + [(d, "geglu") for d in ("einsum", "index", "dropless")],  # gated experts: W_gate gets gradients too
)
def test_dispatch_equals_reference_forward_and_grads(dispatch, activation):
    x = jax.random.normal(jax.random.key(1), (G, S, M))
    (yf, gf, gxf), (ys, gs, gxs) = _fast_and_slow(dispatch, 0.5, activation, x)  # cf 0.5: capacity paths drop
    np.testing.assert_allclose(yf, ys, atol=1e-5)
    np.testing.assert_allclose(gxf, gxs, atol=1e-5)
    for k in gs:
        np.testing.assert_allclose(gf[k], gs[k], atol=1e-5, err_msg=k)


def test_paths_agree_when_nothing_drops():
    x = jax.random.normal(jax.random.key(2), (G, S, M))
    outs = {}
    for dispatch in ("einsum", "index", "dropless"):
        y, stats = _layer(dispatch, cf=float(E))(x, train=True)  # C = S_g: no expert can overflow
        assert float(stats["dropped_first"]) == 0 and float(stats["dropped_second"]) == 0
        outs[dispatch] = y
    np.testing.assert_allclose(outs["einsum"], outs["index"], atol=1e-6)
    np.testing.assert_allclose(outs["dropless"], outs["index"], atol=1e-5)


def test_dropless_never_drops_and_honours_padding_and_random_policy():
    x = jax.random.normal(jax.random.key(3), (G, S, M))
    valid = jnp.arange(S)[None, :] < jnp.array([[S], [S - 5]])  # last 5 tokens of group 1 are padding
    rng = jax.random.key(7)
    kwargs = dict(train=True, rng=rng, valid=valid)
    y_drop, stats = _layer("dropless", cf=0.25, policy="random")(x, **kwargs)
    y_full, _ = _layer("index", cf=float(E), policy="random")(x, **kwargs)
    assert float(stats["dropped_first"]) == 0
    np.testing.assert_allclose(y_drop, y_full, atol=1e-5)
    np.testing.assert_array_equal(y_drop[1, S - 5 :], 0.0)


def test_sort_by_expert_layout():
    # Assignments to experts [1, 0, 1, 2(=E, not computed), 1] with E = 2 and blocks of 2 rows:
    # expert 0 → block 0 (row 0, padded row 1); expert 1 → blocks 1-2 (rows 2, 3, 4; padded row 5).
    plan = sort_by_expert(jnp.array([1, 0, 1, 2, 1]), num_experts=2, rows=2)
    A, nb = 5, 5  # ceil(5/2) + 2 blocks, the last two unused
    np.testing.assert_array_equal(plan.src, [1, A, 0, 2, 4, A, A, A, A, A])
    np.testing.assert_array_equal(plan.dst, [2, 0, 3, nb * 2, 4])
    np.testing.assert_array_equal(plan.block_expert[:3], [0, 1, 1])
    np.testing.assert_array_equal(plan.block_used, [True, True, True, False, False])
    np.testing.assert_array_equal(plan.group_sizes, [1, 3])


def test_block_matmul_grads_equal_gathered_weights():
    nb, b, K, N = 5, 3, 4, 6
    xb = jax.random.normal(jax.random.key(4), (nb, b, K))
    w = jax.random.normal(jax.random.key(5), (3, K, N))
    block_expert = jnp.array([0, 2, 2, 1, 0])
    used = jnp.array([True, True, True, True, False])

    def fast(xb, w):
        return jnp.sum(jnp.sin(block_matmul(xb, w, block_expert, used)))

    def slow(xb, w):
        y = jnp.einsum("nbk,nkd->nbd", xb, w[block_expert]) * used[:, None, None]
        return jnp.sum(jnp.sin(y))

    for a, b_ in zip(jax.grad(fast, (0, 1))(xb, w), jax.grad(slow, (0, 1))(xb, w)):
        np.testing.assert_allclose(a, b_, atol=1e-5)


def test_ragged_dot_path_equals_block_path(monkeypatch):
    x = jax.random.normal(jax.random.key(6), (G, S, M))
    layer = _layer("dropless", cf=1.0)
    y_blocks, _ = layer(x, train=True)
    monkeypatch.setattr(dispatch_mod, "grouped_matmul_impl", lambda: "ragged")
    y_ragged, _ = layer(x, train=True)
    np.testing.assert_allclose(y_ragged, y_blocks, atol=1e-5)


def _dropless_value_and_grads(mesh_shape: tuple[int, int, int] | None, groups: int = 8):
    """(y, grads wrt (weights, x)) of the dropless layer on ``groups`` groups, on one device or a
    (data, data_inner, model) mesh of simulated devices; padding and the random policy on."""
    layer = _layer("dropless", cf=1.0, policy="random")
    graphdef, state = nnx.split(layer)
    x = jax.random.normal(jax.random.key(7), (groups, S, M))
    valid = jax.random.uniform(jax.random.key(8), (groups, S)) > 0.1

    def loss(state, x):
        y, _ = nnx.merge(graphdef, state)(x, train=True, rng=jax.random.key(9), valid=valid)
        return jnp.sum(jnp.sin(y)), y

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    n = 1 if mesh_shape is None else int(np.prod(mesh_shape))
    mesh = None if mesh_shape is None else Mesh(np.array(jax.devices()[:n]).reshape(mesh_shape), MESH_AXES)
    with activate(mesh):
        (_, y), grads = fn(state, x)
    return y, grads


@pytest.fixture(scope="module")
def dropless_one_device():
    return _dropless_value_and_grads(None)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices; see tests/conftest.py")
@pytest.mark.parametrize("mesh_shape", [(4, 1, 2), (2, 2, 2)])
def test_dropless_on_a_mesh_equals_one_device(dropless_one_device, mesh_shape):
    """The all-to-all exchange (experts over data, F over model; data_inner gathers F) changes nothing."""
    y0, g0 = dropless_one_device
    y1, g1 = _dropless_value_and_grads(mesh_shape)
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), g1, g0)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices; see tests/conftest.py")
def test_dropless_on_a_mesh_that_does_not_divide_is_a_clear_error():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8, 1), ("data", "model"))  # 4 experts over 8 data shards
    with activate(mesh), pytest.raises(GLaMError, match=r"moe.num_experts=4 is not divisible by the mesh's data"):
        _layer("dropless", cf=1.0)(jnp.ones((8, S, M)), train=True)
