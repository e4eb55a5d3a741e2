"""The jitted train step on the 8 simulated devices of the test session (mesh 8 × 1).

A non-finite gradient skips the update bit for bit and is counted (paper §5); gradient accumulation
over micro-batches equals one large batch; the step is a pure function of (state, batch).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from glam.config import resolve
from glam.data.packing import random_batch
from glam.sharding.mesh import make_mesh
from glam.train.state import create_train_state
from glam.train.step import make_train_step, shard_batch

SMALL = ["model.vocab_size=256", "model.d_model=32", "model.ffn_dim=64", "model.num_layers=2", "train.seq_len=32"]


def small_cfg(*overrides: str):
    return resolve("tiny", [*SMALL, *overrides])


def make_batch(cfg, seed: int = 0, nan: bool = False) -> dict:
    batch = random_batch(cfg.train.batch_size, cfg.train.seq_len, cfg.model.vocab_size, seed)
    if nan:
        batch["loss_weights"][0, 0] = np.nan  # makes the loss, hence every gradient, NaN
    return batch


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def setup():
    cfg = small_cfg("train.batch_size=8")
    mesh = make_mesh(cfg)
    return cfg, mesh, make_train_step(cfg, mesh)


def test_nonfinite_gradient_is_skipped_and_counted(setup):
    cfg, mesh, step = setup
    state, _ = step(create_train_state(cfg, mesh), shard_batch(make_batch(cfg, 0), mesh))
    before = host(state)
    state, metrics = step(state, shard_batch(make_batch(cfg, 1, nan=True), mesh))
    after = host(state)
    assert not bool(metrics["finite"]) and int(after.skipped_steps) == 1
    assert int(after.step) == 2  # the batch is consumed all the same
    for a, b in zip(
        jax.tree.leaves((before.params, before.opt_state)), jax.tree.leaves((after.params, after.opt_state))
    ):
        np.testing.assert_array_equal(a, b)  # bit for bit
    state, metrics = step(state, shard_batch(make_batch(cfg, 2), mesh))
    assert bool(metrics["finite"]) and int(state.skipped_steps) == 1
    assert not np.array_equal(np.asarray(state.params["embed"]["embedding"]), after.params["embed"]["embedding"])


def test_step_is_deterministic(setup):
    cfg, mesh, step = setup
    batch = make_batch(cfg, 3)
    runs = [step(create_train_state(cfg, mesh), shard_batch(batch, mesh)) for _ in range(2)]
    for a, b in zip(jax.tree.leaves(host(runs[0])), jax.tree.leaves(host(runs[1]))):
        np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_equals_one_big_batch():
    cfg1 = small_cfg("train.batch_size=16", "moe.num_experts=0")
    cfg2 = small_cfg("train.batch_size=16", "moe.num_experts=0", "train.grad_accum=2")
    mesh = make_mesh(cfg1)
    batch = make_batch(cfg1, 4)
    out = [host(make_train_step(c, mesh)(create_train_state(c, mesh), shard_batch(batch, mesh))) for c in (cfg1, cfg2)]
    (s1, m1), (s2, m2) = out
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
