"""KV-cache decoding equals the full forward pass; beam width 1 equals greedy; prompt-length errors."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from glam.config import resolve
from glam.errors import GLaMError
from glam.inference.beam import BeamSearch, beam_search
from glam.inference.decode import left_pad, sample_stream
from glam.inference.sampling import GREEDY, Sampler
from glam.model.init import init_params
from glam.model.losses import forward

SMALL = [
    "train.seq_len=32",
    "model.max_seq_len=48",
    "model.vocab_size=256",
    "model.d_model=64",
    "model.num_heads=2",
    "model.head_dim=16",
    "model.ffn_dim=128",
    "model.num_layers=2",
]
DENSE = resolve("tiny-dense", SMALL)
# eval_no_drop: with a finite capacity the full forward pass routes each sequence as one group, where
# a token's assignment can be dropped because of LATER tokens of the sequence (every first choice
# outranks every second choice), while a decode step sends each current token to its top-2 experts
# with no capacity. Without dropping each token's MoE output depends on that token alone, so the
# full pass, by every dispatch path, and the decode steps must agree exactly.
MOE = {
    dispatch: resolve("tiny", [*SMALL, "moe.num_experts=4", "moe.eval_no_drop=true", f"moe.dispatch={dispatch}"])
    for dispatch in ("einsum", "index", "dropless")
}
PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11, 12, 13], [2, 40], [2, 70, 71, 72, 73]]
MAX_TOKENS = 5


@functools.cache
def params_for(cfg):
    return init_params(cfg, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def full_logits(cfg, params, tokens):
    """Logits [1, n, V] of one unpadded row (the reference the cache must match)."""
    n = tokens.shape[1]
    batch = {"inputs": tokens, "positions": np.arange(n)[None], "segment_ids": np.ones((1, n), np.int32)}
    return forward(cfg, params, batch, train=False)[0]


def run_greedy(cfg, params, prompts, max_tokens=MAX_TOKENS, batch_size=4, sampler=GREEDY):
    """Greedy tokens [B, L] and the logits [L, B, V] each step drew from, via the cached path."""
    batch = left_pad(prompts, max_tokens=max_tokens, max_seq_len=cfg.model.max_seq_len, batch_size=batch_size)
    active = batch.lengths > 0
    steps = list(sample_stream(cfg, params, batch, active, max_tokens=max_tokens, sampler=sampler, with_logits=True))
    return np.stack([t for t, _ in steps], axis=1), np.stack([lg for _, lg in steps])


@pytest.mark.parametrize("cfg", [DENSE, *MOE.values()], ids=["dense", *(f"moe-{d}" for d in MOE)])
def test_cached_decoding_matches_full_forward(cfg):
    assert_cached_decoding_matches_full_forward(cfg, params_for(cfg))


def assert_cached_decoding_matches_full_forward(cfg, params):
    """Greedy cached decoding of PROMPTS gives the full forward's logits at every step, and its argmax."""
    tokens, step_logits = run_greedy(cfg, params, PROMPTS)  # a batch of 4: one filler row
    assert step_logits.shape == (MAX_TOKENS, 4, cfg.model.vocab_size)
    for b, prompt in enumerate(PROMPTS):
        row = np.asarray([prompt + tokens[b].tolist()], np.int32)
        ref = np.asarray(full_logits(cfg, params, row))[0]
        for i in range(MAX_TOKENS):
            np.testing.assert_allclose(step_logits[i, b], ref[len(prompt) - 1 + i], atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(tokens[b], ref[len(prompt) - 1 : len(prompt) - 1 + MAX_TOKENS].argmax(-1))


def test_left_pad_layout():
    batch = left_pad([[2, 7, 8], [2]], max_tokens=4, max_seq_len=48, batch_size=3)
    assert batch.tokens.shape == (3, 8)  # padded to a power of two
    np.testing.assert_array_equal(batch.tokens[0], [0, 0, 0, 0, 0, 2, 7, 8])
    np.testing.assert_array_equal(batch.positions[0], [0, 0, 0, 0, 0, 0, 1, 2])
    np.testing.assert_array_equal(batch.segment_ids[1], [0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(batch.lengths, [3, 1, 0])


def test_top_k_one_equals_greedy():
    params = params_for(DENSE)
    greedy, _ = run_greedy(DENSE, params, PROMPTS)
    top1, _ = run_greedy(DENSE, params, PROMPTS, sampler=Sampler(temperature=1.0, top_k=1))
    np.testing.assert_array_equal(top1, greedy)


def test_beam_width_one_equals_greedy():
    params = params_for(DENSE)
    greedy, step_logits = run_greedy(DENSE, params, PROMPTS)
    batch = left_pad(PROMPTS, max_tokens=MAX_TOKENS, max_seq_len=DENSE.model.max_seq_len, batch_size=4)
    tokens, lengths, scores = beam_search(
        DENSE, params, batch, max_tokens=MAX_TOKENS, search=BeamSearch(width=1), eos_id=-1
    )
    n = len(PROMPTS)
    np.testing.assert_array_equal(tokens[:n], greedy[:n])
    np.testing.assert_array_equal(lengths[:n], MAX_TOKENS)
    log_probs = jax.nn.log_softmax(step_logits, axis=-1)  # [L, B, V]
    expected = np.take_along_axis(log_probs, greedy.T[..., None], axis=-1)[..., 0].sum(0)
    np.testing.assert_allclose(scores[:n], expected[:n], rtol=1e-5)


def test_prompt_longer_than_context_is_a_clear_error():
    too_long = [2] + [5] * 44  # 45 tokens + 5 to generate > max_seq_len 48
    with pytest.raises(GLaMError, match=r"prompt 1 is 45 tokens.*room for 43.*lower max_tokens to 3"):
        left_pad([[2, 5], too_long], max_tokens=5, max_seq_len=48)
    left_pad([too_long[:43]], max_tokens=5, max_seq_len=48)  # exactly fits
