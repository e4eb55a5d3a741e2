"""Sampling filters and beam search on hand-made distributions (literal expected results)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glam.errors import GLaMError
from glam.inference.beam import BeamSearch, beam_update, beams_done, best_hypotheses, init_beams
from glam.inference.sampling import (
    Sampler,
    draw_rows,
    filter_logits,
    filter_rows,
    mask_vocab,
    next_tokens,
    top_k_logits,
    top_p_logits,
)

PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32)


def probs_of(logits):
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def test_temperature_sharpens_and_flattens():
    logits = jnp.log(jnp.array([[1.0, 2.0]]))  # p = [1/3, 2/3]
    np.testing.assert_allclose(probs_of(filter_logits(logits, Sampler(temperature=0.5))), [[1 / 5, 4 / 5]], rtol=1e-6)
    r = 2**0.5
    np.testing.assert_allclose(probs_of(filter_logits(logits, Sampler(temperature=2.0))), [[1 / (1 + r), r / (1 + r)]])


def test_top_k_keeps_the_k_largest():
    out = top_k_logits(jnp.array([[1.0, 3.0, 2.0, 0.0]]), 2)
    np.testing.assert_array_equal(np.isfinite(out), [[False, True, True, False]])
    np.testing.assert_allclose(probs_of(out)[0, 1:3], probs_of(jnp.array([3.0, 2.0])), rtol=1e-6)
    np.testing.assert_array_equal(top_k_logits(jnp.array([[1.0, 2.0]]), 5), [[1.0, 2.0]])  # k >= V: unchanged


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.45, [1, 0, 0, 0, 0]),  # the top token alone already reaches p
        (0.6, [5 / 7, 2 / 7, 0, 0, 0]),  # 0.5 before token 1 is < 0.6: kept; 0.7 before token 2: cut
        (0.8, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]),
        (1.0, PROBS),
    ],
)
def test_top_p_keeps_the_nucleus(p, expected):
    logits = jnp.log(jnp.asarray(PROBS))[::-1][None]  # reversed vocab order: sorting must not matter
    out = probs_of(top_p_logits(logits, p))[0][::-1]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_filters_apply_temperature_then_top_k_then_top_p():
    # T = 0.5 squares the odds: [0.5, 0.2, 0.15, 0.1, 0.05]² ∝ [.25, .04, .0225, .01, .0025]
    logits = jnp.log(jnp.asarray(PROBS))[None]
    out = probs_of(filter_logits(logits, Sampler(temperature=0.5, top_k=3, top_p=0.9)))[0]
    np.testing.assert_allclose(out, [0.25 / 0.29, 0.04 / 0.29, 0, 0, 0], atol=1e-6)


def test_sampling_draws_only_from_the_filtered_distribution():
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS)), (4000, 5))
    draws = np.asarray(next_tokens(logits, jax.random.key(0), Sampler(temperature=1.0, top_p=0.6)))
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, [5 / 7, 2 / 7, 0, 0, 0], atol=0.03)


def test_top_k_one_and_greedy_pick_the_argmax():
    logits = jax.random.normal(jax.random.key(1), (16, 50))
    argmax = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(next_tokens(logits, jax.random.key(2), Sampler()), argmax)
    np.testing.assert_array_equal(next_tokens(logits, jax.random.key(2), Sampler(temperature=3.0, top_k=1)), argmax)


def test_vocab_beyond_the_tokenizer_is_never_drawn():
    logits = jnp.array([[0.0, 1.0, 9.0]])
    assert np.isneginf(mask_vocab(logits, 2)[0, 2])
    assert int(next_tokens(logits, jax.random.key(0), Sampler(), vocab_limit=2)[0]) == 1


def test_per_row_filters_equal_each_rows_own_sampler():
    """filter_rows (the server's batch of mixed samplers) == filter_logits row by row, ties and all."""
    logits = jnp.log(jnp.array([PROBS, PROBS[::-1], [0.3, 0.3, 0.2, 0.1, 0.1]]))
    samplers = [Sampler(0.7, top_k=2), Sampler(1.0, top_p=0.6), Sampler(2.0, top_k=1, top_p=0.5)]
    rows = filter_rows(
        logits,
        jnp.array([s.temperature for s in samplers]),
        jnp.array([s.top_k for s in samplers]),
        jnp.array([s.top_p for s in samplers]),
    )
    for b, sampler in enumerate(samplers):
        np.testing.assert_allclose(rows[b], filter_logits(logits[b : b + 1], sampler)[0], rtol=1e-6)
    # row 0: the 2 likeliest (0.5, 0.2); row 1: 0.5 and 0.2 (the mass before 0.2 is 0.5 < 0.6); row 2: top-1
    # keeps both tied 0.3s, then top-p 0.5 keeps the first (the mass before the second is 0.5, not < 0.5)
    np.testing.assert_array_equal(np.isfinite(rows), [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0]])


def test_draw_rows_greedy_rows_and_a_seeded_row_does_not_depend_on_its_batchmates():
    logits = jnp.log(jnp.array([PROBS, PROBS[::-1], PROBS]))
    args = dict(top_k=jnp.zeros(3, jnp.int32), top_p=jnp.ones(3))
    draw = draw_rows(logits, jnp.array([0, 0, 7], jnp.uint32), jnp.int32(3), jnp.array([0.0, 0.0, 1.0]), **args)
    assert draw.tokens[:2].tolist() == [0, 4]  # greedy rows take the argmax
    np.testing.assert_allclose(draw.logprob[:2], np.log([0.5, 0.5]), rtol=1e-6)
    np.testing.assert_array_equal(draw.top_ids[:, 0], [0, 4, 0])
    alone = draw_rows(logits[2:], jnp.array([7], jnp.uint32), jnp.int32(3), jnp.array([1.0]), top_k=args["top_k"][:1],
                      top_p=args["top_p"][:1])  # fmt: skip
    assert int(alone.tokens[0]) == int(draw.tokens[2])
    drawn = [
        int(
            draw_rows(
                logits[:1],
                jnp.array([s], jnp.uint32),
                jnp.int32(0),
                jnp.ones(1),
                top_k=jnp.zeros(1, jnp.int32),
                top_p=jnp.ones(1),
            ).tokens[0]
        )  # fmt: skip
        for s in range(400)
    ]
    np.testing.assert_allclose(np.bincount(drawn, minlength=5) / 400, PROBS, atol=0.07)  # seeds draw from p


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 5}, "set a temperature"),
    ],
)
def test_bad_sampler_settings_are_clear_errors(kwargs, message):
    with pytest.raises(GLaMError, match=message):
        Sampler(**kwargs)
    with pytest.raises(GLaMError, match="width"):
        BeamSearch(width=0)


# ---- beam search on a fake next-token distribution ------------------------------------------------

EOS = 3


def run_beams(table, width, max_tokens, alpha=0.0):
    """Beam search where p(next | prefix) = table[last token] (table["start"] for the first token)."""
    beam = init_beams(1, width, max_tokens)
    for _ in range(max_tokens):
        t = int(beam.step)
        last = np.asarray(beam.live_tokens[0, :, t - 1])  # dead beams may end in any token
        rows = [table["start"]] * width if t == 0 else [table.get(int(k), [0.25] * 4) for k in last]
        log_probs = jnp.log(jnp.asarray(rows, jnp.float32))[None]  # [1, W, V]
        beam, _, _ = beam_update(beam, log_probs, eos_id=EOS, alpha=alpha, max_tokens=max_tokens)
        if bool(beams_done(beam, alpha=alpha, max_tokens=max_tokens)[0]):
            break
    tokens, lengths, scores = best_hypotheses(beam)
    return tokens[0, : lengths[0]].tolist(), float(scores[0])


def test_beam_finds_the_more_likely_sequence_that_greedy_misses():
    # Greedy takes 0 (p 0.5) and then at best 0.3: total 0.15. Starting with 1 (p 0.4) leads to
    # 2 with p 0.85: total 0.34.
    table = {
        "start": [0.5, 0.4, 0.05, 0.05],
        0: [0.3, 0.3, 0.3, 0.1],
        1: [0.05, 0.05, 0.85, 0.05],
        2: [0.25, 0.25, 0.25, 0.25],
    }
    tokens, score = run_beams(table, width=1, max_tokens=2)
    assert tokens == [0, 0] and score == pytest.approx(np.log(0.15), rel=1e-5)
    for width in (2, 4):
        tokens, score = run_beams(table, width=width, max_tokens=2)
        assert tokens == [1, 2] and score == pytest.approx(np.log(0.34), rel=1e-5)


def test_finished_hypotheses_and_length_penalty():
    # [eos] has p 0.5 (log -0.693); [1, 2, eos] has p 0.5·0.99·0.99 (log -0.713).
    table = {
        "start": [0.0, 0.5, 0.0, 0.5],
        1: [0.0, 0.0, 0.99, 0.01],
        2: [0.005, 0.005, 0.0, 0.99],
        0: [0.25] * 4,
    }
    tokens, score = run_beams(table, width=2, max_tokens=4)  # raw sum: the short one wins
    assert tokens == [EOS] and score == pytest.approx(np.log(0.5), rel=1e-5)
    # GNMT alpha = 1: -0.693 / 1 vs -0.713 / ((5 + 3) / 6) = -0.535: the long one wins.
    tokens, score = run_beams(table, width=2, max_tokens=4, alpha=1.0)
    assert tokens == [1, 2, EOS] and score == pytest.approx(np.log(0.5 * 0.99 * 0.99) / (8 / 6), rel=1e-5)


def test_beams_at_the_token_limit_count_as_finished():
    table = {"start": [0.6, 0.4, 0.0, 0.0], 0: [0.7, 0.3, 0.0, 0.0], 1: [0.1, 0.9, 0.0, 0.0]}
    tokens, score = run_beams(table, width=2, max_tokens=2)
    assert tokens == [0, 0] and score == pytest.approx(np.log(0.42), rel=1e-5)
