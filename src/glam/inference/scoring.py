"""Scoring text: log-likelihoods of continuations and of whole texts, one forward pass per batch.

Shapes: B rows per batch, S padded row length (a power of two up to model.max_seq_len), V vocabulary.

A scored row is ``inputs``/``targets`` of the batch schema (docs/design.md) with weights marking the
target tokens that count; rows are right-padded (segment 0) to their length bucket (a power of two),
sorted by length so a batch wastes little padding, and the batch is padded to ``batch_size`` rows so
one compiled pass serves every batch of a bucket. MoE layers route as in evaluation: one group per
row with the eval capacity, which grows with the row's padded length. So a batch only ever holds rows
of one bucket: a row's padded length, its capacity and so its score are functions of the row alone,
never of a longer batchmate (with ``moe.eval_no_drop=true`` nothing is dropped at all). A set
``moe.group_size`` that divides the batch makes rows share routing groups, and then compete for
capacity, as in training.

- :func:`loglikelihood`: ``[bos] + context + continuation``; the continuation's targets count. A
  sequence longer than model.max_seq_len + 1 loses context from the left (the start then is not bos;
  positions restart at 0, as training does with a document split across rows).
- :func:`loglikelihood_rolling`: ``[bos] + text`` in windows of at most model.max_seq_len inputs.
  Each window scores the next ``stride`` tokens (default max_seq_len: disjoint windows, exactly the
  rows training makes of a long document); a smaller stride gives every token more context.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from glam.config import GLaMConfig
from glam.data.packing import empty_rows
from glam.errors import GLaMError
from glam.inference.decode import bucket_length
from glam.model.init import bind
from glam.model.losses import token_log_likelihood
from glam.model.transformer import apply


class ScoreRow(NamedTuple):
    """One row to score: ``inputs`` predict ``targets``; the last ``n_scored`` targets count."""

    inputs: Sequence[int]
    targets: Sequence[int]
    n_scored: int


def _logits(cfg: GLaMConfig, params: dict, batch: dict) -> jax.Array:
    """The eval-mode logits [B, S, V] of a batch-schema batch."""
    logits, _, _ = apply(bind(cfg, params), batch["inputs"], batch["positions"], batch["segment_ids"], train=False)
    return logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def score_batch(cfg: GLaMConfig, params: dict, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row: (Σ weight · log p(target) [B], all weighted targets are the argmax [B], Σ weight [B])."""
    logits = _logits(cfg, params, batch)
    log_p, _ = token_log_likelihood(logits, batch["targets"])  # [B, S]
    w = batch["loss_weights"]
    greedy = (jnp.argmax(logits, axis=-1) == batch["targets"]) | (w == 0)
    return jnp.sum(log_p * w, axis=-1), jnp.all(greedy, axis=-1), jnp.sum(w, axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "top_n"))
def token_logprobs(cfg: GLaMConfig, params: dict, batch: dict, top_n: int = 1) -> tuple[jax.Array, ...]:
    """Per position: log p(target) [B, S], and the ``top_n`` most likely ids [B, S, N] with their log-probs.

    What an echoing completion server reports for every prompt token (glam.serve).
    """
    logits = _logits(cfg, params, batch)
    log_p, logz = token_log_likelihood(logits, batch["targets"])  # [B, S]
    top_logits, top_ids = jax.lax.top_k(logits.astype(jnp.float32), top_n)
    # the same subtraction as log_p's, so a greedy target's log-prob equals the top one bit for bit
    return log_p, top_ids.astype(jnp.int32), top_logits - logz[..., None]


def make_batch(rows: Sequence[ScoreRow], batch_size: int, max_seq_len: int) -> dict[str, np.ndarray]:
    """Right-padded batch-schema arrays [batch_size, S] for ``rows`` (filler rows are all padding)."""
    S = bucket_length(max(len(r.inputs) for r in rows), max_seq_len)
    batch = empty_rows(batch_size, S)
    for b, r in enumerate(rows):
        n = len(r.inputs)
        batch["inputs"][b, :n] = r.inputs
        batch["targets"][b, :n] = r.targets
        batch["positions"][b, :n] = np.arange(n)
        batch["segment_ids"][b, :n] = 1
        batch["loss_weights"][b, n - r.n_scored : n] = 1.0
    return batch


def score_rows(
    cfg: GLaMConfig, params: dict, rows: Sequence[ScoreRow], batch_size: int = 8
) -> list[tuple[float, bool, int]]:
    """(sum log-prob, every scored token greedy, scored tokens) per row, in the order given."""
    results: list[tuple[float, bool, int]] = [(0.0, True, 0)] * len(rows)
    order = sorted((i for i, r in enumerate(rows) if r.n_scored > 0), key=lambda i: -len(rows[i].inputs))
    bucket = {i: bucket_length(len(rows[i].inputs), cfg.model.max_seq_len) for i in order}
    for _, same in itertools.groupby(order, key=bucket.get):  # one bucket per batch (the module doc)
        same = list(same)
        for start in range(0, len(same), batch_size):
            idx = same[start : start + batch_size]
            batch = make_batch([rows[i] for i in idx], batch_size, cfg.model.max_seq_len)
            ll, greedy, count = jax.device_get(score_batch(cfg, params, batch))
            for b, i in enumerate(idx):
                results[i] = (float(ll[b]), bool(greedy[b]), int(count[b]))
    return results


def continuation_row(context: Sequence[int], continuation: Sequence[int], bos_id: int, max_seq_len: int) -> ScoreRow:
    """The row scoring ``continuation`` after ``[bos] + context``, cut from the left to fit."""
    if len(continuation) > max_seq_len:
        raise GLaMError(
            f"a continuation of {len(continuation)} tokens cannot be scored in model.max_seq_len={max_seq_len}; "
            "score it with loglikelihood_rolling or shorten it"
        )
    seq = [bos_id, *context, *continuation][-(max_seq_len + 1) :]
    return ScoreRow(seq[:-1], seq[1:], len(continuation))


def loglikelihood(
    cfg: GLaMConfig,
    params: dict,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    bos_id: int = 2,
    batch_size: int = 8,
) -> list[tuple[float, bool, int]]:
    """For each (context ids, continuation ids): (Σ log p(continuation), is greedy, token count)."""
    rows = [continuation_row(c, x, bos_id, cfg.model.max_seq_len) for c, x in requests]
    return score_rows(cfg, params, rows, batch_size)


def rolling_windows(tokens: Sequence[int], bos_id: int, max_seq_len: int, stride: int | None = None) -> list[ScoreRow]:
    """Windows that together score every token of ``tokens`` once, each with at most max_seq_len inputs."""
    stride = stride or max_seq_len
    if not 1 <= stride <= max_seq_len:
        raise GLaMError(f"stride={stride}: choose 1 <= stride <= model.max_seq_len={max_seq_len}")
    full = [bos_id, *tokens]  # inputs full[j] predict targets full[j + 1] = tokens[j]
    rows = []
    for a in range(0, len(tokens), stride):
        b = min(a + stride, len(tokens))
        lo = max(0, b - max_seq_len)
        rows.append(ScoreRow(full[lo:b], full[lo + 1 : b + 1], b - a))
    return rows


def loglikelihood_rolling(
    cfg: GLaMConfig,
    params: dict,
    texts: Sequence[Sequence[int]],
    *,
    bos_id: int = 2,
    batch_size: int = 8,
    stride: int | None = None,
) -> list[tuple[float, int]]:
    """For each token sequence: (Σ log p over all its tokens, token count), windows batched together."""
    rows, owner = [], []
    for i, tokens in enumerate(texts):
        windows = rolling_windows(tokens, bos_id, cfg.model.max_seq_len, stride)
        rows += windows
        owner += [i] * len(windows)
    totals = [[0.0, 0] for _ in texts]
    for i, (ll, _, n) in zip(owner, score_rows(cfg, params, rows, batch_size)):
        totals[i][0] += ll
        totals[i][1] += n
    return [(ll, n) for ll, n in totals]
