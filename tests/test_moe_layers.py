"""``moe.layers``: a MoE FFN in every other layer (GLaM, "alternate") or in every layer (Mixtral, DeepSeek, "all").

Parameter counts worked by hand at the sweep's d64 shape; the model's statistics in model order (one
row per MoE layer) against the layers run one by one; scanned equals unrolled; cached decoding equals
the full forward pass; bias balancing moves each layer's bias by its own load; a checkpoint round
trip; upcycling copies the dense FFN into both layers' experts; ``glam train`` end to end.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_runs import BIAS_TRAIN, SMALL_MODEL
from test_model_transformer import batch, loss_and_grads

from glam.config import resolve
from glam.errors import ConfigError
from glam.model.flops import counting_rule, model_size
from glam.model.init import bind, init_params
from glam.model.losses import loss_fn
from glam.model.moe.layer import MOE_FFN_PATH, SECOND_FFN_PATH, moe_ffn_of, moe_ffn_paths
from glam.model.transformer import _dtype, apply, split_pairs

ALL = ("moe.layers=all",)
#: experiments/sweep_common.py base_config at glam_claims.SCALES["powered"] d64
D64 = ("model.vocab_size=2048", "model.d_model=64", "model.num_layers=4", "model.num_heads=4", "model.head_dim=16")
D64 = (*D64, "model.ffn_dim=256")
SMALL = [*SMALL_MODEL, "train.batch_size=2", "train.seq_len=16", "model.num_layers=4"]


def test_bad_values_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"moe\.layers") as bad:
        resolve("tiny", ["moe.layers=every"])
    assert "\n" not in str(bad.value) and "alternate" in str(bad.value) and "all" in str(bad.value)
    with pytest.raises(ConfigError, match=r"^moe\.layers: .*moe\.num_experts > 0") as dense:
        resolve("tiny-dense", [*ALL])
    assert "\n" not in str(dense.value)
    assert resolve("tiny", []).moe.layers == "alternate"  # GLaM's layout stays the default
    assert [resolve("tiny", o).num_moe_layers for o in ([], ALL)] == [2, 4]
    assert resolve("tiny-dense", []).num_moe_layers == 0


def test_d64_every_layer_e5_activates_exactly_glams_e8_ffn_parameters():
    """The sweep's pairing: GLaM E=8 (F = 256) against every-layer E=5 at F_e = 224, counted by hand."""
    glam = model_size(resolve("tiny", [*D64, "moe.num_experts=8"]))
    every = model_size(resolve("tiny", [*D64, *ALL, "moe.num_experts=5", "moe.expert_dim=224"]))
    embed, attention, norms = 2048 * 64, 4 * (4 * 64 * 64 + 4 * 32), 9 * 64  # 32 position buckets per layer
    base = embed + attention + norms  # 197_696
    # activated FFN parameters: 2 pairs × (gated dense 3·64·256 + two experts 2·2·64·256) = 4 layers × two experts
    ffn_active = 2 * (3 * 64 * 256 + 2 * 2 * 64 * 256)
    assert ffn_active == 2 * 2 * (2 * 2 * 64 * 224) == 229_376
    router_glam, router_every = 2 * 64 * 8, 4 * 64 * 5  # W_g per MoE layer: 512 × 2 layers vs 320 × 4
    assert glam.params_activated == base + ffn_active + router_glam == 428_096
    assert every.params_activated == base + ffn_active + router_every == 428_352
    assert glam.params_total == base + 2 * 3 * 64 * 256 + 2 * 8 * 2 * 64 * 256 + router_glam == 821_312
    assert every.params_total == base + 4 * 5 * 2 * 64 * 224 + router_every == 772_416
    assert every.params_experts == 4 * 5 * 2 * 64 * 224
    assert every.flops_per_token_train == 6 * 428_352 + 12 * 4 * 64 * 128  # S = tiny's train.seq_len 128
    for cfg in (resolve("tiny", [*D64, "moe.num_experts=8"]), resolve("tiny", [*D64, *ALL, "moe.num_experts=5"])):
        size = model_size(cfg)
        assert counting_rule(cfg) == (size.params_total, size.params_activated)  # the formula agrees


def test_info_plan_and_path_helpers_know_the_layout():
    from glam.cli.info import info
    from glam.plan.serving import counts, dense_twin

    cfg = resolve("tiny", [*D64, *ALL, "moe.num_experts=5", "moe.expert_dim=224"])
    assert info(cfg)["layout"] == [{"layers": "0, 1, 2, 3", "count": 4, "ffn": "moe(5 experts, top-2)"}]
    assert [x["count"] for x in info(resolve("tiny", list(D64)))["layout"]] == [2, 2]
    c = counts(cfg)
    assert (c.moe_layers, c.expert_params) == (4, 2 * 64 * 224)
    # dense twin: a pair's two MoE layers activate 2 · (k=2 experts · 2·M·224) = 1792·M, its two gated FFNs
    # 2 · 3·M·F', so F' = 1792 / 6 = 298.67 → 299
    assert dense_twin(cfg).model.ffn_dim == 299 and dense_twin(cfg).moe.layers == "alternate"
    assert moe_ffn_paths(cfg.moe) == (MOE_FFN_PATH, SECOND_FFN_PATH)
    assert moe_ffn_paths(resolve("tiny").moe) == (MOE_FFN_PATH,) and moe_ffn_paths(resolve("tiny-dense").moe) == ()


@pytest.fixture(scope="module")
def small_all():
    cfg = resolve("tiny", [*SMALL, *ALL, "moe.capacity_factor_train=1.0"])
    return cfg, init_params(cfg, jax.random.key(0)), batch(cfg)


def test_statistics_are_one_row_per_moe_layer_in_model_order(small_all):
    """apply's stats [2P, ...] against the four layers called one by one: rows (p0 first, p0 second, p1 ...)."""
    cfg, params, b = small_all
    model = bind(cfg, params)
    assert moe_ffn_of(params, SECOND_FFN_PATH)["w_in"].shape == (2, 8, 32, 64)  # [P, E, M, F]: MoE in layer 2p+1
    args = (b["positions"], b["segment_ids"])
    _, stats, _ = apply(model, b["inputs"], *args, train=False)
    x = model.embed.encode(b["inputs"], _dtype(cfg))
    rows = []
    for block in split_pairs(model.blocks):  # eager, layer by layer
        for layer in (block.moe_layer, block.dense_layer):
            x, layer_stats, _ = layer(x, *args, train=False, rng=None)
            rows.append(layer_stats)
    want = jax.tree.map(lambda *a: jnp.stack(a), *rows)
    assert stats["aux_loss"].shape == (4,) and stats["expert_load"].shape == (4, 8)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6), stats, want)
    assert len({round(float(v), 5) for v in stats["aux_loss"]}) == 4  # four different layers, so the order shows
    loss, m = loss_fn(cfg, params, b, train=True, rng=jax.random.key(1))
    assert m["moe"]["aux_loss"].shape == (4,)
    np.testing.assert_allclose(m["aux_loss"], np.sum(m["moe"]["aux_loss"]), rtol=1e-6)  # summed over all 4
    ce = m["ce_loss"] + cfg.moe.aux_loss_weight * m["aux_loss"] + cfg.train.z_loss_weight * m["z_loss"]
    np.testing.assert_allclose(loss, ce, rtol=1e-6)


def test_scanned_equals_unrolled(small_all):
    cfg, params, b = small_all
    l1, g1 = loss_and_grads(cfg, params, b)
    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
    l2, g2 = loss_and_grads(unrolled, params, b)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, atol=2e-5), g1, g2)
    assert float(jnp.abs(moe_ffn_of(g1, SECOND_FFN_PATH)["w_router"]).max()) > 0  # the second router trains


def test_cached_decoding_matches_full_forward():
    from test_inference_decode import SMALL as DECODE
    from test_inference_decode import assert_cached_decoding_matches_full_forward

    overrides = [*DECODE, "model.num_layers=4", "moe.num_experts=4", "moe.eval_no_drop=true", *ALL]
    cfg = resolve("tiny", overrides)
    assert_cached_decoding_matches_full_forward(cfg, init_params(cfg, jax.random.key(0)))


def test_bias_balancing_moves_each_layer_by_its_own_load_and_checkpoints_round_trip(tmp_path):
    from glam.checkpoint import Checkpointer
    from glam.data.packing import random_batch
    from glam.sharding.mesh import make_mesh
    from glam.train.state import create_train_state
    from glam.train.step import make_train_step, shard_batch

    cfg = resolve("tiny", [*SMALL_MODEL, *BIAS_TRAIN, *ALL])
    mesh = make_mesh(cfg)
    step = make_train_step(cfg, mesh)
    state = create_train_state(cfg, mesh)
    for path in (MOE_FFN_PATH, SECOND_FFN_PATH):
        assert moe_ffn_of(state.params, path)["router_bias"].shape == (1, 8)  # [P, E], zeros
    state, metrics = step(state, shard_batch(random_batch(8, 32, 128, 0), mesh))
    chosen = np.asarray(metrics["moe"]["expert_chosen"])  # [2P, E]: layer 0 (first of the pair), layer 1
    assert chosen.shape == (2, 8)
    np.testing.assert_allclose(chosen.sum(-1), 1.0, rtol=1e-6)
    first, second = (np.asarray(moe_ffn_of(state.params, p)["router_bias"]) for p in (MOE_FFN_PATH, SECOND_FFN_PATH))
    np.testing.assert_allclose(first, 0.01 * np.sign(1 / 8 - chosen[0:1]))
    np.testing.assert_allclose(second, 0.01 * np.sign(1 / 8 - chosen[1:2]))
    assert not np.array_equal(first, second)  # the two layers' loads differ, so a swap would show

    checkpointer = Checkpointer(str(tmp_path), writer=True)
    checkpointer.save(state, {"position": 1}, cfg)
    checkpointer.wait()
    restored, data = checkpointer.restore(create_train_state(cfg, mesh))
    checkpointer.close()
    assert data == {"position": 1} and int(restored.step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params), jax.device_get(state.params))
    nxt = shard_batch(random_batch(8, 32, 128, 1), mesh)
    (a, ma), (b, mb) = step(state, nxt), step(restored, nxt)
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params), jax.device_get(b.params))


def test_upcycling_copies_the_dense_ffn_into_both_layers_experts():
    """With identical experts and no drops each MoE layer computes its dense FFN: same loss as the dense model."""
    from glam.train.upcycle import upcycle_config, upcycle_params

    dense_cfg = resolve("tiny-dense", SMALL)
    cfg = upcycle_config(dense_cfg, ["moe.num_experts=4", "moe.eval_no_drop=true", *ALL])
    assert cfg.moe.layers == "all" and cfg.model.expert_activation == "geglu"
    dense = init_params(dense_cfg, jax.random.key(0))
    params = upcycle_params(dense_cfg, dense, cfg, init_params(cfg, jax.random.key(1)))
    for path in (MOE_FFN_PATH, SECOND_FFN_PATH):
        for name in ("w_gate", "w_in", "w_out"):
            for e in range(4):
                np.testing.assert_array_equal(moe_ffn_of(params, path)[name][:, e], moe_ffn_of(dense, path)[name])
    b = batch(dense_cfg)
    _, ours = loss_fn(cfg, params, b, train=False)
    _, theirs = loss_fn(dense_cfg, dense, b, train=False)
    np.testing.assert_allclose(ours["ce_loss"], theirs["ce_loss"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_glam_train_end_to_end(tmp_path):
    """``glam train`` with moe.layers=all, then the checkpoint loads with its config."""
    from small_runs import small_run_config

    from glam.checkpoint import load_for_inference
    from glam.cli.main import main
    from glam.train.metrics import read_metrics

    config = small_run_config(str(tmp_path), moe={"num_experts": 4, "layers": "all", "balance": "bias"})
    run = str(tmp_path / "run")
    steps = ["train.steps=3", "train.eval_every=3", "checkpoint.every=3", "mesh.data=4", "mesh.model=2"]
    assert main(["train", config, *steps, "--run-dir", run]) == 0
    records = [r for r in read_metrics(run) if r.get("kind") == "train"]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    assert "moe/dropped_first/3" in records[-1] and "moe/dropped_first/4" not in records[-1]  # 4 MoE layers
    cfg, params, _ = load_for_inference(run)
    assert cfg.moe.layers == "all"
    bias = np.asarray(moe_ffn_of(params, SECOND_FFN_PATH)["router_bias"])
    assert bias.shape == (2, 4) and np.abs(bias).max() > 0  # moved by the balancer (0.001 a step, 3 steps)
    np.testing.assert_allclose(bias * 1000, np.round(bias * 1000), atol=1e-4)  # whole steps of moe.bias_rate
