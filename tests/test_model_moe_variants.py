"""Routing variants beyond GShard top-2 (issue 13): top-k (Switch top-1, top-3), router z-loss, shared experts.

Hand-worked plans on the 4-token example of test_model_moe.py, and every dispatch path and the
decode step against the slow loop reference for k = 1 and k = 3 (forward and gradients).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from small_runs import BIAS_TRAIN, SMALL_MODEL

from glam.config import ModelConfig, MoEConfig, resolve
from glam.errors import ConfigError
from glam.model.flops import counting_rule, model_size
from glam.model.moe import dispatch as dispatch_mod
from glam.model.moe.decode import decode_moe, topk_no_capacity
from glam.model.moe.gating import capacity, topk_gating
from glam.model.moe.layer import MoEFFN, moe_ffn_of, router_z_loss
from glam.model.moe.reference import reference_moe, reference_routing

PROBS = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
G, S, M, F, E = 2, 16, 8, 16, 4


def test_hand_worked_top1_keeps_the_probability_as_its_gate():
    r = topk_gating(jnp.log(jnp.asarray(PROBS))[None], capacity=2, k=1)
    # t0, t1 → expert 0 (slots 0, 1); t2 → expert 0 slot 2 >= C: dropped; t3 → expert 1 slot 0
    np.testing.assert_array_equal(r.expert[0, :, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(r.kept[0, :, 0], [True, True, False, True])
    np.testing.assert_allclose(r.gate[0, :, 0], [0.6, 0.5, 0.0, 0.5], rtol=1e-6)  # Switch: not renormalised
    np.testing.assert_allclose(r.stats["dropped_first"], 0.25)
    assert float(r.stats["dropped_second"]) == 0.0
    np.testing.assert_allclose(r.stats["expert_load"], [2 / 3, 1 / 3, 0])


def test_hand_worked_top3_queues_third_choices_behind_all_seconds():
    r = topk_gating(jnp.log(jnp.asarray(PROBS))[None], capacity=2, k=3)
    np.testing.assert_array_equal(r.expert[0], [[0, 1, 2], [0, 2, 1], [0, 1, 2], [1, 2, 0]])
    # firsts: e0 gets t0, t1 (t2 dropped), e1 gets t3; seconds: e1 t0 (slot 1), e2 t1, t2 → e1 full, e2 t3;
    # thirds: e2 full for t0 and t2, e1 full for t1, e0 full for t3: all dropped
    np.testing.assert_array_equal(
        r.kept[0], [[True, True, False], [True, True, False], [False, False, False], [True, True, False]]
    )
    np.testing.assert_allclose(r.gate[0, 0], [0.6, 0.3, 0.0], rtol=1e-6)  # renormalised over 3: sum was 1
    ref = reference_routing(np.log(PROBS)[None], 2, k=3)
    for j in range(3):
        np.testing.assert_array_equal(r.kept[0, :, j], ref[f"kept{j + 1}"][0])
        np.testing.assert_array_equal(r.expert[0, :, j], ref[f"e{j + 1}"][0])


def test_decode_gates_follow_k():
    expert, gate = topk_no_capacity(jnp.log(jnp.asarray(PROBS)), k=1)
    np.testing.assert_array_equal(expert[:, 0], [0, 0, 0, 1])
    np.testing.assert_allclose(gate[:, 0], [0.6, 0.5, 0.7, 0.5], rtol=1e-6)
    _, gate = topk_no_capacity(jnp.log(jnp.asarray(PROBS)), k=3)
    np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-6)


def assert_same_values_and_grads(fast, slow, state, x):
    """``fast(state, x)`` (the layer) and ``slow(weights, x)`` (the loop reference) agree in output and in
    the gradients of the loss with respect to the router and expert weights and to x."""
    w = {name: state[name][...] for name in ("w_router", "w_in", "w_out")}
    (_, yf), (gf, gxf) = jax.value_and_grad(fast, argnums=(0, 1), has_aux=True)(state, x)
    (_, ys), (gs, gxs) = jax.value_and_grad(slow, argnums=(0, 1), has_aux=True)(w, x)
    np.testing.assert_allclose(yf, ys, atol=1e-5)
    np.testing.assert_allclose(gxf, gxs, atol=1e-5)
    for name in w:
        np.testing.assert_allclose(gf[name][...], gs[name], atol=1e-5, err_msg=name)


def _layer(dispatch="index", k=2, shared=0, activation="relu", cf=0.5, balance="aux_loss", aux_weight=0.01):
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4, expert_activation=activation)
    moe = MoEConfig(
        num_experts=E, top_k=k, capacity_factor_train=cf, capacity_factor_eval=cf, capacity_multiple=1,
        dispatch=dispatch, shared_experts=shared, balance=balance, aux_loss_weight=aux_weight,
    )  # fmt: skip
    return MoEFFN(mcfg, moe, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dispatch, k", [("einsum", 1), ("index", 1), ("dropless", 1), ("index", 3), ("dropless", 3)])
def test_dispatch_equals_reference_for_k(monkeypatch, dispatch, k):
    monkeypatch.setattr(dispatch_mod, "BLOCK_ROWS", 4)
    layer = _layer(dispatch, k)
    graphdef, state = nnx.split(layer)
    C = S if dispatch == "dropless" else capacity(S, E, 0.5, 1)
    x = jax.random.normal(jax.random.key(1), (G, S, M))

    def fast(state, x):
        y, stats = nnx.merge(graphdef, state)(x, train=True)
        return jnp.sum(jnp.sin(y)) + stats["aux_loss"], y

    def slow(w, x):
        y, aux = reference_moe(x, w["w_router"], w["w_in"], w["w_out"], C, k=k)
        return jnp.sum(jnp.sin(y)) + aux, y

    assert_same_values_and_grads(fast, slow, state, x)


@pytest.mark.parametrize("k", [1, 3])
def test_decode_step_equals_reference_for_k(k):
    layer = _layer(k=k)
    x = jax.random.normal(jax.random.key(2), (6, M))
    y = decode_moe(x, layer.w_router[...], layer, k=k)
    ys, _ = reference_moe(x[None], layer.w_router[...], layer.w_in[...], layer.w_out[...], 6, k=k)
    np.testing.assert_allclose(y, ys[0], atol=1e-5)


def test_router_z_loss_hand_worked_and_in_the_stats():
    logits = jnp.log(jnp.array([[[1.0, 1.0], [2.0, 2.0]]]))  # logsumexp = log 2, log 4
    np.testing.assert_allclose(router_z_loss(logits, None), (np.log(2) ** 2 + np.log(4) ** 2) / 2, rtol=1e-6)
    np.testing.assert_allclose(router_z_loss(logits, jnp.array([[True, False]])), np.log(2) ** 2, rtol=1e-6)
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4)
    layer = MoEFFN(mcfg, MoEConfig(num_experts=E, router_z_loss=1e-3), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 8, M))
    _, stats = layer(x, train=True)
    logits = jnp.einsum("gsm,me->gse", x, layer.w_router[...])
    np.testing.assert_allclose(stats["router_z_loss"], router_z_loss(logits, None), rtol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "geglu"])
def test_shared_experts_add_an_always_on_ffn(activation):
    layer = _layer(shared=2, activation=activation, cf=4.0)
    x = jax.random.normal(jax.random.key(4), (G, S, M))
    y, _ = layer(x, train=True)
    routed, _ = reference_moe(
        x, layer.w_router[...], layer.w_in[...], layer.w_out[...], S, layer.activation,
        w_gate=layer.w_gate[...] if layer.gated else None,
    )  # fmt: skip
    h = x @ layer.w_shared_in[...]
    h = layer.activation(x @ layer.w_shared_gate[...]) * h if layer.gated else layer.activation(h)
    np.testing.assert_allclose(y, routed + h @ layer.w_shared_out[...], atol=1e-5)
    assert layer.w_shared_in[...].shape == (M, 2 * F)


def test_counts_follow_top_k_and_shared_experts():
    for overrides in (["moe.top_k=1"], ["moe.shared_experts=1"], ["moe.top_k=3", "model.expert_activation=geglu"]):
        cfg = resolve("tiny", overrides)
        total, activated = counting_rule(cfg)
        size = model_size(cfg)
        assert (size.params_total, size.params_activated) == (total, activated), overrides
    base, shared = model_size(resolve("tiny", [])), model_size(resolve("tiny", ["moe.shared_experts=1"]))
    expert = 2 * 128 * 768  # one expert of tiny: W_in [128, 768] and W_out [768, 128]
    assert shared.params_activated - base.params_activated == 2 * expert  # 2 MoE layers, one shared expert each
    assert shared.params_total - base.params_total == 2 * expert
    top1 = model_size(resolve("tiny", ["moe.top_k=1"]))
    assert base.params_activated - top1.params_activated == 2 * expert


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["moe.top_k=0"], "moe.top_k"),
        (["moe.top_k=9"], "moe.top_k"),
        (["moe.top_k=3", "moe.second_expert_policy=random"], "moe.second_expert_policy"),
        (["moe.router_z_loss=-1"], "moe.router_z_loss"),
    ],
)
def test_variant_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve("tiny", overrides)


def test_the_training_loss_weighs_the_router_z_loss():
    from glam.model.init import init_params
    from glam.model.losses import loss_fn

    cfg = resolve("tiny", [*SMALL_MODEL, "model.num_layers=2", "moe.num_experts=4", "moe.router_z_loss=0.5"])
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (2, 17))
    batch = {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": np.tile(np.arange(16), (2, 1)),
        "segment_ids": np.ones((2, 16), np.int32), "loss_weights": np.ones((2, 16), np.float32),
    }  # fmt: skip
    loss, m = loss_fn(cfg, params, batch, train=False)
    assert float(m["router_z_loss"]) > 0
    expected = m["ce_loss"] + 0.01 * m["aux_loss"] + cfg.train.z_loss_weight * m["z_loss"] + 0.5 * m["router_z_loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_hand_worked_expert_choice():
    from glam.model.moe.gating import expert_choice_gating

    plan = expert_choice_gating(jnp.log(jnp.asarray(PROBS))[None], capacity=2)
    # expert 0's column (0.6, 0.5, 0.7, 0.2) → t2, t0; expert 1 (0.3, 0.1, 0.2, 0.5) → t3, t0;
    # expert 2 (0.1, 0.4, 0.1, 0.3) → t1, t3: t0 twice, t1 once, t2 once, t3 twice; nobody left out
    np.testing.assert_array_equal(plan.token[0], [[2, 0], [3, 0], [1, 3]])
    np.testing.assert_allclose(plan.gate[0], [[0.7, 0.6], [0.5, 0.3], [0.4, 0.3]], rtol=1e-6)
    assert float(plan.stats["dropped_first"]) == 0.0 and float(plan.stats["aux_loss"]) == 0.0
    valid = jnp.asarray([[True, True, False, True]])  # padding t2 is never picked over a real token
    plan = expert_choice_gating(jnp.log(jnp.asarray(PROBS))[None], capacity=2, valid=valid)
    np.testing.assert_array_equal(plan.token[0, 0], [0, 1])


def _expert_choice_layer(**moe):
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4)
    cfg = MoEConfig(num_experts=E, router="expert_choice", capacity_factor_train=2.0, capacity_multiple=1, **moe)
    return MoEFFN(mcfg, cfg, rngs=nnx.Rngs(0))


def test_expert_choice_layer_equals_reference_forward_and_grads():
    from glam.model.moe.reference import reference_expert_choice

    layer = _expert_choice_layer()
    graphdef, state = nnx.split(layer)
    x = jax.random.normal(jax.random.key(5), (G, S, M))
    valid = jnp.asarray(np.arange(S)[None] < np.array([[S], [S - 5]]))  # group 1 ends in padding

    def fast(state, x):
        y, _ = nnx.merge(graphdef, state)(x, train=True, valid=valid)
        return jnp.sum(jnp.sin(y)), y

    def slow(w, x):
        y = reference_expert_choice(x, w["w_router"], w["w_in"], w["w_out"], capacity(S, E, 2.0, 1), valid=valid)
        return jnp.sum(jnp.sin(y)), y

    assert_same_values_and_grads(fast, slow, state, x)


def test_expert_choice_evaluates_and_decodes_causally():
    """Eval = each token to its round(cf) = 2 likeliest experts, probabilities as gates, nothing dropped;
    a decode step computes the same; ``expert_choice_eval=group`` is the training rule."""
    layer = _expert_choice_layer(eval_no_drop=True)
    x = jax.random.normal(jax.random.key(6), (1, S, M))
    y_eval, _ = layer(x, train=False)
    y_step, _ = layer(x.reshape(S, 1, M), train=False, decode=True)  # S rows of one token each
    np.testing.assert_allclose(y_step.reshape(1, S, M), y_eval, atol=1e-5)
    gates = jax.nn.softmax(x[0] @ layer.w_router[...], axis=-1)
    top_p, top_e = jax.lax.top_k(gates, 2)
    out = [jax.nn.relu(x[0] @ layer.w_in[e]) @ layer.w_out[e] for e in range(E)]
    want = sum(top_p[:, j, None] * jnp.stack(out)[top_e[:, j], jnp.arange(S)] for j in range(2))
    np.testing.assert_allclose(y_eval[0], want, atol=1e-5)
    group = _expert_choice_layer(expert_choice_eval="group")
    y_group, _ = group(x, train=False)
    y_train, _ = group(x, train=True)
    np.testing.assert_allclose(y_group, y_train, atol=1e-6)


def test_hand_worked_global_batch_balance_counts_the_batch_not_the_group():
    """Group 0 sends both tokens to expert 0, group 1 both to expert 1: each group alone is as unbalanced
    as two experts allow, the batch is balanced. GShard's loss, E²·mean_e(f·P) per group then averaged:
    4 · (1 · 0.75 + 0 · 0.25) / 2 = 1.5 in both groups; the global-batch loss (Qiu et al. 2025): f = P =
    (1/2, 1/2) over the batch, 4 · (1/4 + 1/4) / 2 = 1.0, the balanced minimum."""
    probs = np.array([[[0.75, 0.25], [0.75, 0.25]], [[0.25, 0.75], [0.25, 0.75]]])
    logits = jnp.log(jnp.asarray(probs))
    group = topk_gating(logits, capacity=4, k=1)
    batch = topk_gating(logits, capacity=4, k=1, aux_scope="batch")
    np.testing.assert_array_equal(batch.expert, group.expert)  # the loss changes, not the routing
    np.testing.assert_allclose([group.aux_loss, batch.aux_loss], [1.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose([group.stats["aux_loss"], batch.stats["aux_loss"]], [1.5, 1.0], rtol=1e-6)


def test_global_batch_layer_equals_its_loop_reference_forward_and_grads():
    """The layer with moe.balance=global_batch against reference.reference_moe(aux_scope="batch"): output
    and the gradients of output + aux loss (the router's gradient is where the two losses differ)."""
    layer = _layer(balance="global_batch")
    graphdef, state = nnx.split(layer)
    x = jax.random.normal(jax.random.key(3), (G, S, M))

    def fast(state, x):
        y, stats = nnx.merge(graphdef, state)(x, train=True)
        return jnp.sum(jnp.sin(y)) + stats["aux_loss"], y

    def slow(w, x, scope="batch"):
        y, aux = reference_moe(x, w["w_router"], w["w_in"], w["w_out"], capacity(S, E, 0.5, 1), aux_scope=scope)
        return jnp.sum(jnp.sin(y)) + aux, y

    assert_same_values_and_grads(fast, slow, state, x)
    w = {name: state[name][...] for name in ("w_router", "w_in", "w_out")}
    group_aux = slow(w, x, "group")[0] - jnp.sum(jnp.sin(slow(w, x, "group")[1]))
    batch_aux = slow(w, x)[0] - jnp.sum(jnp.sin(slow(w, x)[1]))
    assert float(group_aux) - float(batch_aux) > 1e-3  # the groups are less balanced than the batch


def test_hand_worked_bias_changes_the_choice_not_the_gates():
    bias = jnp.asarray([0.0, 0.5, 0.0])  # expert 1 favoured for choosing
    r = topk_gating(jnp.log(jnp.asarray(PROBS))[None], capacity=4, bias=bias)
    # scores p + b: t0 (0.6, 0.8, 0.1) → e1, e0; t1 (0.5, 0.6, 0.4) → e1, e0; t2 (0.7, 0.7, 0.1) → e0 (tie: lower
    # id), e1; t3 (0.2, 1.0, 0.3) → e1, e2; the gates are the softmax's, renormalised over the pair
    np.testing.assert_array_equal(r.expert[0], [[1, 0], [1, 0], [0, 1], [1, 2]])
    np.testing.assert_allclose(r.gate[0], [[1 / 3, 2 / 3], [1 / 6, 5 / 6], [7 / 9, 2 / 9], [5 / 8, 3 / 8]], rtol=1e-6)
    np.testing.assert_allclose(r.stats["expert_chosen"], [3 / 8, 4 / 8, 1 / 8])
    expert, gate = topk_no_capacity(jnp.log(jnp.asarray(PROBS)), bias=bias)  # the decode step chooses alike
    np.testing.assert_array_equal(expert, r.expert[0])
    np.testing.assert_allclose(gate, r.gate[0], rtol=1e-6)


def test_the_train_step_moves_the_bias_by_the_sign_rule_and_resumes_it():
    from glam.data.packing import random_batch
    from glam.model.moe.balance import bias_update
    from glam.sharding.mesh import make_mesh
    from glam.train.state import create_train_state
    from glam.train.step import make_train_step, shard_batch

    np.testing.assert_allclose(bias_update(jnp.asarray([0.5, 0.25, 0.25, 0.0]), 0.1), [-0.1, 0.0, 0.0, 0.1])
    cfg = resolve("tiny", [*SMALL_MODEL, *BIAS_TRAIN])
    mesh = make_mesh(cfg)
    state = create_train_state(cfg, mesh)
    assert moe_ffn_of(state.params)["router_bias"].shape == (1, 8)  # [P, E], zeros
    batch = shard_batch(random_batch(8, 32, 128, 0), mesh)
    state, metrics = make_train_step(cfg, mesh)(state, batch)
    chosen = np.asarray(metrics["moe"]["expert_chosen"])  # [P, E]
    np.testing.assert_allclose(chosen.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(moe_ffn_of(state.params)["router_bias"], 0.01 * np.sign(1 / 8 - chosen))
    total, activated = counting_rule(cfg)
    assert (model_size(cfg).params_total, model_size(cfg).params_activated) == (total, activated)


def test_a_group_size_that_does_not_divide_the_batch_routes_each_row_alone():
    """Scoring a batch moe.group_size does not divide: one group per row, so a row's output does not
    depend on its batchmates (it used to be one group over the whole batch, competing for capacity)."""
    from glam.model.moe.layer import routing_group_size

    moe = MoEConfig(num_experts=E, group_size=6, capacity_factor_eval=0.5, capacity_multiple=1)
    assert routing_group_size(moe, 2, 7) == 7 and routing_group_size(moe, 2, 9) == 6  # 18 tokens: groups of 6
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4)
    layer = MoEFFN(mcfg, moe, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(7), (3, 7, M))  # 21 tokens: 6 does not divide them
    y, _ = layer(x, train=False)
    alone, _ = layer(x[1:2], train=False)
    np.testing.assert_allclose(y[1:2], alone, atol=1e-6)


def test_each_router_and_balancer_is_one_registered_object_that_everything_reads():
    """The config's choices, the causal k (eval, decode, activated counts), the stats and `glam info`'s
    layout all come from glam.model.moe.routers."""
    from glam.cli.info import info
    from glam.config import choices
    from glam.model.moe.routers import BALANCERS, ROUTERS, STATS

    assert choices(MoEConfig, "router") == tuple(ROUTERS) == ("token_choice", "expert_choice")
    assert choices(MoEConfig, "balance") == tuple(BALANCERS) == ("aux_loss", "global_batch", "bias")
    assert MoEConfig(num_experts=8, top_k=3).causal_top_k == 3
    assert MoEConfig(num_experts=8, router="expert_choice", capacity_factor_train=2.6).causal_top_k == 3
    assert (ROUTERS["token_choice"].renormalizes, ROUTERS["expert_choice"].renormalizes) == (True, False)
    layouts = [info(resolve("tiny", o))["layout"][0]["ffn"] for o in ([], ["moe.router=expert_choice"])]
    assert layouts == ["moe(8 experts, top-2)", "moe(8 experts, expert choice, cf 2; causal top-2)"]
    x = jax.random.normal(jax.random.key(7), (G, S, M))
    for layer in (_layer(balance="bias"), _expert_choice_layer()):
        for train in (True, False):
            _, stats = layer(x, train=train)
            assert tuple(stats) == STATS + layer.balancer.stats, (layer.moe.router, train)
    assert layer.router is ROUTERS["expert_choice"] and _layer(balance="bias").balancer is BALANCERS["bias"]


@pytest.mark.parametrize("train", [True, False])
def test_bias_balancing_and_shared_experts_equal_their_loop_reference(train):
    """A gated layer with a selection bias and 2 shared experts against reference.reference_layer, in
    training (capacity cut), evaluation, and a decode step; the bias really changes the routing."""
    from glam.model.moe.reference import reference_layer, reference_shared

    layer = _layer(shared=2, activation="geglu", balance="bias", cf=1.0)
    x = jax.random.normal(jax.random.key(8), (G, S, M))
    unbiased, _ = layer(x, train=train)
    layer.router_bias[...] = jnp.asarray([0.3, -0.2, 0.05, 0.0])
    y, _ = layer(x, train=train)
    np.testing.assert_allclose(y, reference_layer(layer, x, train=train), atol=1e-5)
    assert np.abs(np.asarray(y - unbiased)).max() > 1e-2
    w_gate = layer.w_shared_gate[...]
    shared = reference_shared(x, layer.w_shared_in[...], layer.w_shared_out[...], 2, layer.activation, w_gate)
    np.testing.assert_allclose(layer.shared(x), shared, atol=1e-5)
    if not train:  # a decode step: nothing dropped, so the reference with room for every token
        step, _ = layer(x.reshape(G * S, 1, M), train=False, decode=True)
        roomy = _layer(shared=2, activation="geglu", balance="bias", cf=float(E))
        nnx.update(roomy, nnx.state(layer))
        np.testing.assert_allclose(step.reshape(G, S, M), reference_layer(roomy, x, train=False), atol=1e-5)
