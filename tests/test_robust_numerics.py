"""Numerical guards: the loss-spike rollback end to end, and fp32 where bf16 would hurt.

- A real in-process training run whose parameters are blown up just before step 7 (a test hook around
  the jitted step) sees its loss spike, restores checkpoint 4, skips the offending batches and trains
  on to the end at the loss it had before; the summary and metrics.jsonl count the rollback.
- With ``model.activation_dtype=bfloat16`` the router logits, every softmax (router, attention) and
  the cross-entropy run in fp32, read off the jaxpr of the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from small_runs import small_run_config

from glam.config import resolve
from glam.data.packing import random_batch
from glam.train.metrics import read_metrics

SMALL = ["model.d_model=32", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=64", "model.num_layers=2"]
SMALL += ["mesh.data=4", "mesh.model=2", "train.batch_size=4", "train.seq_len=16"]  # 8 devices (conftest)
SPIKE_STEP = 7


@pytest.mark.slow
def test_loss_spike_rolls_back_to_the_last_checkpoint_and_trains_on(tmp_path, monkeypatch, capsys):
    import glam.train.loop as loop

    real_make_train_step = loop.make_train_step

    def make_train_step(cfg, mesh):
        step, calls = real_make_train_step(cfg, mesh), []

        def hooked(state, batch):
            calls.append(1)
            if len(calls) == SPIKE_STEP:  # a bad update: every weight x 30
                state = state._replace(params=jax.tree.map(lambda p: p * 30, state.params))
            return step(state, batch)

        return hooked

    monkeypatch.setattr(loop, "make_train_step", make_train_step)
    config = small_run_config(str(tmp_path))
    overrides = [
        "train.steps=12",
        "checkpoint.every=4",
        "train.rollback=true",
        "train.spike_factor=2",
        "train.log_every=1",
    ]
    cfg = resolve(config, SMALL + overrides)
    summary = loop.train(cfg, str(tmp_path / "run"))

    assert summary["rollbacks"] == 1 and summary["step"] == 12
    assert "step 7: loss spike: " in capsys.readouterr().out
    records = read_metrics(str(tmp_path / "run"))
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    assert [s for s, _ in train] == [*range(1, 8), *range(5, 13)]  # steps 5..7 trained again on new batches
    losses = dict(train[:6])  # before the spike
    spike = train[6][1]
    assert spike > 2 * losses[6]
    after = [loss for _, loss in train[7:]]
    assert max(after) < losses[1] and abs(after[0] - losses[4]) < 0.5  # the good parameters came back
    (rollback,) = [r for r in records if r["kind"] == "rollback"]
    assert rollback["step"] == SPIKE_STEP and rollback["to_step"] == 4 and rollback["rollbacks"] == 1
    assert rollback["reason"].startswith("loss spike: ")


def equations(jaxpr):
    """Every equation of a jaxpr, recursing into scans, remat, pjit, cond branches and custom rules."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from equations(inner)


def test_bf16_activations_keep_router_softmax_and_loss_fp32():
    from glam.model.init import init_params
    from glam.model.losses import loss_fn

    bf16 = ["model.activation_dtype=bfloat16", "model.vocab_size=128", "train.seq_len=24"]  # S differs from K and M
    cfg = resolve("tiny", SMALL + bf16)
    E, S = cfg.moe.num_experts, cfg.train.seq_len
    params = init_params(cfg, jax.random.key(0))
    batch = random_batch(4, S, 128)
    closed = jax.make_jaxpr(lambda p: loss_fn(cfg, p, batch, train=True, rng=jax.random.key(1)))(params)
    eqns = list(equations(closed.jaxpr))
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    # The activations really are bf16: most matmuls take bf16 operands.
    assert sum(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots) >= len(dots) // 2
    # Router logits [G, S, E]: the only matmul with E outputs; fp32 in and out.
    router = [e for e in dots if e.outvars[0].aval.shape[-1] == E]
    assert router and all(e.outvars[0].aval.dtype == jnp.float32 for e in router)
    assert all(v.aval.dtype == jnp.float32 for e in router for v in e.invars)
    # Attention logits [B, N, T, S] come out of their matmul in fp32.
    attn = [e for e in dots if e.outvars[0].aval.shape == (4, cfg.model.num_heads, S, S)]
    assert attn and all(e.outvars[0].aval.dtype == jnp.float32 for e in attn)
    # Every exp (the softmaxes of router and attention, the log-softmax of the loss) is fp32.
    exps = [e for e in eqns if e.primitive.name == "exp"]
    assert len(exps) >= 3 and all(e.invars[0].aval.dtype == jnp.float32 for e in exps)
    # The vocabulary logits reach the loss in fp32, and the loss and its terms are fp32.
    assert any(v.aval.shape[-1:] == (128,) and v.aval.dtype == jnp.float32 for e in eqns for v in e.outvars)
    assert all(v.aval.dtype == jnp.float32 for v in closed.jaxpr.outvars)
