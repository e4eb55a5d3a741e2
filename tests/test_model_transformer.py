"""The whole model: scanned equals unrolled, dense presets, shapes of every preset, loss terms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_runs import SMALL_MODEL

from glam.config import resolve
from glam.config.presets import PAPER_FIGURES, PAPER_PRESETS, PRESETS
from glam.model.flops import counting_rule, model_size
from glam.model.init import abstract_params, init_params
from glam.model.losses import loss_fn

SMALL = [*SMALL_MODEL, "train.batch_size=2", "train.seq_len=16", "moe.capacity_factor_train=1.0"]


def batch(cfg, seed=0):
    B, S = cfg.train.batch_size, cfg.train.seq_len
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, cfg.model.vocab_size, (B, S + 1))
    seg = np.ones((B, S), np.int32)
    seg[0, S // 2 :] = 2  # two packed documents in row 0
    pos = np.tile(np.arange(S), (B, 1))
    pos[0, S // 2 :] -= S // 2
    return {
        "inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
        "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
        "segment_ids": jnp.asarray(seg),
        "positions": jnp.asarray(pos, jnp.int32),
        "loss_weights": jnp.ones((B, S), jnp.float32),
    }


def loss_and_grads(cfg, params, b):
    f = jax.jit(jax.value_and_grad(lambda p: loss_fn(cfg, p, b, train=True, rng=jax.random.key(3))[0]))
    return f(params)


@pytest.mark.parametrize("preset,remat", [("tiny", "full"), ("tiny-dense", "none")])
def test_scanned_equals_unrolled(preset, remat):
    cfg = resolve(preset, SMALL + [f"model.remat={remat}", "model.num_layers=4"])
    params = init_params(cfg, jax.random.key(0))
    b = batch(cfg)
    l1, g1 = loss_and_grads(cfg, params, b)
    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
    l2, g2 = loss_and_grads(unrolled, params, b)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, atol=2e-5), g1, g2)


@pytest.fixture(scope="module")
def small():
    """The SMALL model, its parameters, a batch, and its training loss and metrics: computed once."""
    cfg = resolve("tiny", SMALL)
    params = init_params(cfg, jax.random.key(0))
    b = batch(cfg)
    loss, m = loss_fn(cfg, params, b, train=True, rng=jax.random.key(1))
    return cfg, params, b, loss, m


def test_initial_loss_near_uniform_and_aux_near_one(small):
    cfg, _, _, loss, m = small
    assert abs(float(m["ce_loss"]) - np.log(128)) < 1.0
    assert m["moe"]["expert_load"].shape == (cfg.num_pairs, cfg.moe.num_experts)
    # aux is summed over MoE layers, each ≈ 1 near balance; the loss adds 0.01 · aux
    assert 0.9 * cfg.num_pairs < float(m["aux_loss"]) < 3.0 * cfg.num_pairs
    np.testing.assert_allclose(loss, m["ce_loss"] + 0.01 * m["aux_loss"], rtol=1e-6)


def test_z_loss_and_loss_weights(small):
    cfg = resolve("tiny", SMALL + ["train.z_loss_weight=1e-4"])
    _, params, b, _, _ = small  # the same shapes: the z-loss weight adds no parameter
    loss, m = loss_fn(cfg, params, b, train=True, rng=jax.random.key(1))
    np.testing.assert_allclose(loss, m["ce_loss"] + 0.01 * m["aux_loss"] + 1e-4 * m["z_loss"], rtol=1e-6)
    # Zero weight on a token removes it from the mean: change its target, the loss does not move.
    b2 = dict(b, loss_weights=b["loss_weights"].at[1, 3].set(0.0))
    b3 = dict(b2, targets=b2["targets"].at[1, 3].set(5))
    np.testing.assert_allclose(
        loss_fn(cfg, params, b2, train=False)[1]["ce_loss"],
        loss_fn(cfg, params, b3, train=False)[1]["ce_loss"],
        rtol=1e-6,
    )


def test_bf16_activations_keep_router_and_loss_fp32(small):
    cfg = resolve("tiny", SMALL + ["model.activation_dtype=bfloat16"])
    _, params, b, ref, _ = small  # fp32 parameters either way; ref: the fp32 model's loss
    loss, m = loss_fn(cfg, params, b, train=True, rng=jax.random.key(1))
    assert loss.dtype == jnp.float32 and m["aux_loss"].dtype == jnp.float32
    np.testing.assert_allclose(loss, ref, rtol=2e-2)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_shapes_and_counting_rule(preset):
    cfg = resolve(preset)
    shapes = abstract_params(cfg)
    size = model_size(cfg)
    total, active = counting_rule(cfg)  # the formula of reference doc §1, independent of the shapes
    assert (size.params_total, size.params_activated) == (total, active)
    if cfg.is_moe:
        w_in = shapes["blocks"]["moe_layer"]["ffn"]["w_in"]
        assert w_in.shape == (cfg.num_pairs, cfg.moe.num_experts, cfg.model.d_model, cfg.model.ffn_dim)


@pytest.mark.parametrize("preset", [p for p in PAPER_PRESETS if not PAPER_FIGURES[p].note])
def test_consistent_paper_rows_match_table4(preset):
    size, paper = model_size(resolve(preset)), PAPER_FIGURES[preset]
    assert abs(size.params_activated / paper.activated - 1) < 0.02
    assert abs(size.params_total / paper.total - 1) < 0.02


def test_glam_64b_64e_matches_the_paper():
    size = model_size(resolve("glam-64b-64e"))
    assert abs(size.params_activated / 96.6e9 - 1) < 0.02  # 96.60B with the 256K vocabulary
    assert round(size.params_total / 1e12, 1) == 1.2  # 1.162T: the paper's "1.2T" is rounded


def test_gated_experts_of_their_own_width_count_by_the_rule():
    # tiny: M = 128, F = 768, E = 8, 2 pairs; gated experts of width 96: 3·128·96 = 36,864 weights each
    cfg = resolve("tiny", ["model.expert_activation=geglu", "moe.expert_dim=96"])
    ffn = abstract_params(cfg)["blocks"]["moe_layer"]["ffn"]
    assert ffn["w_gate"].shape == ffn["w_in"].shape == (2, 8, 128, 96) and ffn["w_out"].shape == (2, 8, 96, 128)
    size, plain = model_size(cfg), model_size(resolve("tiny"))
    assert size.params_experts == 2 * 8 * 36_864
    assert plain.params_total - size.params_total == 2 * 8 * (2 * 128 * 768 - 36_864)
    assert counting_rule(cfg) == (size.params_total, size.params_activated)


def test_tiny_dense_matches_tiny_activated_params():
    a, b = model_size(resolve("tiny")), model_size(resolve("tiny-dense"))
    assert abs(a.params_activated - b.params_activated) / a.params_activated < 0.002


def test_tiny_counts_and_flops_by_hand():
    """tiny: V = 4096, M = 128, L = 4, 4 heads x 32, F = 768, E = 8, 32 position buckets, S = 128."""
    size = model_size(resolve("tiny"))
    embed, attention, norms = 4096 * 128, 4 * (4 * 128 * 128 + 4 * 32), 9 * 128
    dense, expert, router = 2 * 3 * 128 * 768, 2 * 128 * 768, 128 * 8
    assert size.params_total == embed + attention + norms + dense + 2 * (8 * expert + router) == 4_525_696
    assert size.params_activated == embed + attention + norms + dense + 2 * (2 * expert + router) == 2_166_400
    assert size.params_experts == 2 * 8 * expert
    assert size.flops_per_token_train == 6 * 2_166_400 + 12 * 4 * 128 * 128
    assert size.flops_per_token_inference == 2 * 2_166_400 + 4 * 4 * 128 * 128


def test_stage_names_reach_the_compiled_hlo():
    """jax.named_scope on the blocks and the MoE stages: an XLA or Perfetto profile names them."""
    cfg = resolve("tiny", SMALL + ["model.num_layers=2"])
    params = init_params(cfg, jax.random.key(0))
    b = batch(cfg)
    hlo = jax.jit(lambda p: loss_fn(cfg, p, b, train=True, rng=jax.random.key(1))[0]).lower(params).compile()
    text = hlo.as_text()
    for scope in ("moe_layer/moe/router", "dispatch", "experts", "combine", "dense_layer/ffn", "attention"):
        assert f"/{scope}/" in text, scope
