"""Adafactor (paper §5) against a hand computation, its factoring layout, and the learning-rate schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glam.config import resolve
from glam.model.init import abstract_params
from glam.train.optimizer import (
    FactoredState,
    clip_by_layer_rms,
    learning_rate_schedule,
    make_optimizer,
    rsqrt_schedule,
    scale_by_factored_rms,
    scale_by_param_layer_rms,
    stacked_dims,
)


def reference_update(g, x, v, t, factored, lr, stacked=0):
    """Shazeer & Stern (2018), Alg. 4/5 with β1 = 0, written out in numpy for one parameter.

    ``v`` is (R, C) for a factored parameter, else the full second moment; returns (update, v).
    """
    beta = 1.0 - t**-0.8
    g2 = g**2 + 1e-30
    if factored:
        r, c = v
        r = beta * r + (1 - beta) * g2.mean(axis=-1)
        c = beta * c + (1 - beta) * g2.mean(axis=-2)
        v_hat = r[..., :, None] * c[..., None, :] / r.mean(axis=-1, keepdims=True)[..., None]
        v = (r, c)
    else:
        v = beta * v + (1 - beta) * g2
        v_hat = v
    u = g / np.sqrt(v_hat)
    axes = tuple(range(stacked, u.ndim))
    rms = lambda a: np.sqrt(np.mean(a**2, axis=axes, keepdims=True))  # noqa: E731
    u = u / np.maximum(1.0, rms(u) / 1.0)  # update clipping at RMS 1
    return -lr * np.maximum(rms(x), 1e-3) * u, v  # relative step


def test_adafactor_matches_hand_computation_factored_unfactored_and_stacked():
    rng = np.random.default_rng(0)
    params = {
        "matrix": rng.normal(size=(3, 4)).astype(np.float32),  # factored: last two dims ≥ 2
        "vector": rng.normal(size=(4,)).astype(np.float32) * 1e-4,  # unfactored; RMS below the 1e-3 floor
        "stacked": rng.normal(size=(2, 3, 4)).astype(np.float32),  # one layer axis, factored per layer
    }
    stacked = {"matrix": 0, "vector": 0, "stacked": 1}
    opt = optax.chain(
        scale_by_factored_rms(0.8, 1e-30, min_dim_size_to_factor=2),
        clip_by_layer_rms(1.0, stacked),
        scale_by_param_layer_rms(1e-3, stacked),
        optax.scale_by_learning_rate(rsqrt_schedule(1.0, 100)),
    )
    state = opt.init(params)
    x = {k: v.astype(np.float64) for k, v in params.items()}
    v = {"matrix": (np.zeros(3), np.zeros(4)), "vector": np.zeros(4), "stacked": (np.zeros((2, 3)), np.zeros((2, 4)))}
    for t in (1, 2, 3):
        grads = {
            k: rng.normal(size=p.shape).astype(np.float32) * (10.0 if k == "matrix" else 1.0) for k, p in x.items()
        }
        updates, state = opt.update(grads, state, jax.tree.map(jnp.asarray, params))
        params = optax.apply_updates(params, updates)
        for k in x:
            u, v[k] = reference_update(grads[k].astype(np.float64), x[k], v[k], t, k != "vector", 0.1, stacked[k])
            x[k] = x[k] + u
            np.testing.assert_allclose(np.asarray(updates[k]), u, rtol=2e-5, atol=1e-9, err_msg=f"{k} at t={t}")
    np.testing.assert_allclose(np.asarray(params["matrix"]), x["matrix"], rtol=1e-5)


def test_first_update_is_clipped_sign_like():
    """t = 1: β2 = 0, so v = g² and u = g/|g| (RMS 1, not clipped), scaled by max(RMS(x), 1e-3) · lr."""
    opt = optax.chain(scale_by_factored_rms(min_dim_size_to_factor=128), clip_by_layer_rms(1.0, {"w": 0}))
    g = {"w": jnp.asarray([3.0, -0.5, 2.0])}
    u, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(u["w"], [1.0, -1.0, 1.0], rtol=1e-6)


def test_factoring_layout_per_layer_and_per_expert():
    cfg = resolve("tiny")
    state = jax.eval_shape(make_optimizer(cfg).init, abstract_params(cfg))
    factored: FactoredState = state[0]
    P, E, M, F = cfg.num_pairs, cfg.moe.num_experts, cfg.model.d_model, cfg.model.ffn_dim
    w_in = ("blocks", "moe_layer", "ffn", "w_in")
    pick = lambda tree, path: tree[path[0]][path[1]][path[2]][path[3]]  # noqa: E731
    assert pick(factored.v_row, w_in).shape == (P, E, M)  # one row statistic per layer and expert
    assert pick(factored.v_col, w_in).shape == (P, E, F)
    assert pick(factored.v, w_in).shape == ()
    assert factored.v["embed"]["embedding"].shape == ()  # [V, M] = [4096, 128]: factored
    wq = ("blocks", "moe_layer", "attn", "wq")  # [P, M, N, K]: N, K = 4, 32 < 128 → unfactored
    assert pick(factored.v, wq).shape == (P, M, cfg.model.num_heads, cfg.model.head_dim)
    assert stacked_dims(cfg)["blocks"]["moe_layer"]["ffn"]["w_in"] == 1
    assert stacked_dims(cfg)["embed"]["embedding"] == 0


def test_adafactor_schedule_is_the_papers():
    cfg = resolve("tiny", ["optim.warmup_steps=10000", "optim.lr_scale=1.0"])
    lr = learning_rate_schedule(cfg)
    for step, expected in [(0, 0.01), (1, 0.01), (10_000, 0.01), (40_000, 0.005), (1_000_000, 0.001)]:
        assert float(lr(step)) == pytest.approx(expected, rel=1e-6)


def test_adamw_warmup_then_cosine():
    cfg = resolve("tiny", ["optim.name=adamw", "optim.learning_rate=1e-3", "optim.adam_warmup_steps=10"])
    lr = learning_rate_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(cfg.train.steps)) == pytest.approx(1e-4)  # cosine to 10% of the peak
    assert float(lr(100)) > float(lr(200)) > float(lr(280))
