"""Batched scoring equals per-token log-probs of plain forward passes; rolling windows; greedy flags."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from glam.config import resolve
from glam.errors import GLaMError
from glam.inference.decode import left_pad, sample_stream
from glam.inference.sampling import GREEDY
from glam.inference.scoring import ScoreRow, loglikelihood, loglikelihood_rolling, rolling_windows
from glam.model.init import init_params
from glam.model.losses import forward

CFG = resolve(
    "tiny-dense",
    [
        "train.seq_len=32",
        "model.max_seq_len=48",
        "model.vocab_size=256",
        "model.d_model=64",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=128",
        "model.num_layers=2",
    ],
)
BOS = 2


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def token_log_probs(cfg, params, inputs):
    """log softmax [1, n, V] of one unpadded row."""
    n = inputs.shape[1]
    batch = {"inputs": inputs, "positions": np.arange(n)[None], "segment_ids": np.ones((1, n), np.int32)}
    return jax.nn.log_softmax(forward(cfg, params, batch, train=False)[0], axis=-1)


def reference(params, seq, n_scored):
    """Σ log p of the last ``n_scored`` tokens of ``seq`` from a plain forward pass, and greediness."""
    lp = np.asarray(token_log_probs(CFG, params, np.asarray([seq[:-1]], np.int32)))[0]
    targets = np.asarray(seq[1:])
    picked = lp[np.arange(len(targets)), targets][-n_scored:]
    greedy = (lp.argmax(-1) == targets)[-n_scored:]
    return float(picked.sum()), bool(greedy.all())


def test_loglikelihood_matches_a_plain_forward_pass(params):
    rng = np.random.default_rng(0)
    requests = [
        (rng.integers(4, 256, size=c).tolist(), rng.integers(4, 256, size=x).tolist())
        for c, x in [(5, 3), (20, 1), (1, 7), (0, 4), (11, 11), (60, 5)]  # (60, 5): context cut on the left
    ]
    results = loglikelihood(CFG, params, requests, bos_id=BOS, batch_size=4)  # 2 batches, filler rows
    for (ctx, cont), (ll, greedy, n) in zip(requests, results):
        seq = [BOS, *ctx, *cont][-(CFG.model.max_seq_len + 1) :]
        ref_ll, ref_greedy = reference(params, seq, len(cont))
        assert n == len(cont) and greedy == ref_greedy
        assert ll == pytest.approx(ref_ll, abs=1e-4, rel=1e-5)


def test_greedy_continuations_are_flagged_greedy(params):
    prompts = [[BOS, 9, 8, 7], [BOS, 100, 101, 102, 103, 104, 105]]
    batch = left_pad(prompts, max_tokens=4, max_seq_len=CFG.model.max_seq_len)
    steps = list(sample_stream(CFG, params, batch, batch.lengths > 0, max_tokens=4, sampler=GREEDY))
    generated = np.stack([t for t, _ in steps], axis=1).tolist()
    perturbed = [g[:-1] + [(g[-1] + 1) % 256] for g in generated]
    requests = [(p[1:], g) for p, g in zip(prompts + prompts, generated + perturbed)]  # bos is added back
    results = loglikelihood(CFG, params, requests, bos_id=BOS, batch_size=4)
    assert [r[1] for r in results] == [True, True, False, False]
    assert all(r[0] < 0 and r[2] == 4 for r in results)


def test_empty_and_oversized_continuations(params):
    assert loglikelihood(CFG, params, [([5, 6], [])], bos_id=BOS) == [(0.0, True, 0)]
    with pytest.raises(GLaMError, match="loglikelihood_rolling"):
        loglikelihood(CFG, params, [([5], [7] * 49)], bos_id=BOS)


def test_rolling_windows_layout():
    # tokens 10..19, at most 4 inputs per window: [bos,10,11,12] → 10..13; [13..16] → 14..17; the
    # last window keeps 4 inputs of context [15..18] and scores only its 2 new targets 18, 19.
    rows = rolling_windows(list(range(10, 20)), BOS, max_seq_len=4)
    assert rows == [
        ScoreRow([BOS, 10, 11, 12], [10, 11, 12, 13], 4),
        ScoreRow([13, 14, 15, 16], [14, 15, 16, 17], 4),
        ScoreRow([15, 16, 17, 18], [16, 17, 18, 19], 2),
    ]
    strided = rolling_windows(list(range(10, 16)), BOS, max_seq_len=4, stride=2)
    assert [r.n_scored for r in strided] == [2, 2, 2] and strided[2].inputs == [11, 12, 13, 14]


def test_rolling_loglikelihood_of_a_short_text_is_one_forward_pass(params):
    tokens = list(range(30, 60))
    [(ll, n)] = loglikelihood_rolling(CFG, params, [tokens], bos_id=BOS)
    assert n == 30 and ll == pytest.approx(reference(params, [BOS, *tokens], 30)[0], abs=1e-4, rel=1e-5)


def test_rolling_loglikelihood_sums_its_windows(params):
    tokens = np.random.default_rng(1).integers(4, 256, size=110).tolist()
    [(ll, n)] = loglikelihood_rolling(CFG, params, [tokens, tokens[:7]], bos_id=BOS, batch_size=2)[:1]
    windows = rolling_windows(tokens, BOS, CFG.model.max_seq_len)
    expected = sum(reference(params, [*w.inputs, w.targets[-1]], w.n_scored)[0] for w in windows)
    assert n == 110 and ll == pytest.approx(expected, abs=1e-3, rel=1e-5)
