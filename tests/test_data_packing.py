"""Packing documents into rows of the batch schema: hand-worked examples and properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from glam.data.packing import BATCH_KEYS, pack_documents, unpack_targets

BOS, EOS = 2, 3


def test_two_documents_fill_one_row():
    batch = pack_documents([[5, 6, 7, EOS], [8, EOS]], seq_len=6)
    np.testing.assert_array_equal(batch["inputs"], [[BOS, 5, 6, 7, BOS, 8]])
    np.testing.assert_array_equal(batch["targets"], [[5, 6, 7, EOS, 8, EOS]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1, 2, 2]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 3, 0, 1]])
    np.testing.assert_array_equal(batch["loss_weights"], [[1, 1, 1, 1, 1, 1]])
    assert {k: v.dtype for k, v in batch.items()} == {
        "inputs": np.int32,
        "targets": np.int32,
        "segment_ids": np.int32,
        "positions": np.int32,
        "loss_weights": np.float32,
    }


def test_document_that_fits_an_empty_row_moves_to_the_next_row():
    batch = pack_documents([[5, 6, EOS], [7, 8, 9, 10, EOS]], seq_len=6)
    np.testing.assert_array_equal(batch["inputs"], [[BOS, 5, 6, 0, 0, 0], [BOS, 7, 8, 9, 10, 0]])
    np.testing.assert_array_equal(batch["targets"], [[5, 6, EOS, 0, 0, 0], [7, 8, 9, 10, EOS, 0]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0, 0, 0], [0, 1, 2, 3, 4, 0]])
    np.testing.assert_array_equal(batch["loss_weights"], [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])


def test_long_document_fills_the_row_and_continues():
    # [4, EOS] then an 8-token document in rows of 5: the long one fills the 3 free slots, then 5 more.
    batch = pack_documents([[4, EOS], [10, 11, 12, 13, 14, 15, 16, EOS]], seq_len=5)
    np.testing.assert_array_equal(batch["inputs"], [[BOS, 4, BOS, 10, 11], [12, 13, 14, 15, 16]])
    np.testing.assert_array_equal(batch["targets"], [[4, EOS, 10, 11, 12], [13, 14, 15, 16, EOS]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 2, 2, 2], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(batch["loss_weights"], np.ones((2, 5)))


documents = st.lists(
    st.lists(st.integers(4, 50), min_size=0, max_size=20).map(lambda d: [*d, EOS]), min_size=0, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(docs=documents, seq_len=st.integers(1, 12))
def test_packing_properties(docs, seq_len):
    batch = pack_documents(docs, seq_len)
    assert set(batch) == set(BATCH_KEYS)
    assert all(v.shape == (len(batch["inputs"]), seq_len) for v in batch.values())
    real = batch["segment_ids"] > 0
    # Loss weights are zero exactly on padding, and padding is all zeros.
    np.testing.assert_array_equal(batch["loss_weights"] > 0, real)
    for key in ("inputs", "targets", "positions"):
        assert not batch[key][~real].any()
    # No token lost or duplicated: the targets, read in order, are the documents concatenated.
    np.testing.assert_array_equal(batch["targets"][real], np.concatenate([[], *docs]).astype(np.int32))
    for row in range(len(batch["inputs"])):
        seg, pos, inp, tgt = (batch[k][row] for k in ("segment_ids", "positions", "inputs", "targets"))
        ids = seg[seg > 0]
        # Segments are contiguous, numbered 1..n, and padding only trails.
        assert list(ids) == sorted(ids) and (len(ids) == 0 or set(ids) == set(range(1, ids.max() + 1)))
        assert not seg[len(ids) :].any()
        for s in set(ids):
            where = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[where], np.arange(len(where)))  # positions restart per segment
            np.testing.assert_array_equal(inp[where][1:], tgt[where][:-1])  # inputs = targets shifted by one
    # Every document starts with bos as its first input; continuation chunks keep the true predecessor.
    chunks = unpack_targets(batch)
    assert sum(len(c) for c in chunks) == sum(len(d) for d in docs)


def test_rows_from_tokens_and_random_batch():
    from glam.data.packing import random_batch, rows_from_tokens

    b = rows_from_tokens(np.array([[5, 6, 7, 8], [9, 10, 11, 12]]))
    np.testing.assert_array_equal(b["inputs"], [[5, 6, 7], [9, 10, 11]])
    np.testing.assert_array_equal(b["targets"], [[6, 7, 8], [10, 11, 12]])
    np.testing.assert_array_equal(b["positions"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(b["segment_ids"], np.ones((2, 3)))
    assert b["inputs"].dtype == np.int32 and b["loss_weights"].dtype == np.float32
    r = random_batch(3, 16, 20, seed=1)
    assert r["inputs"].shape == (3, 16) and r["inputs"].min() >= 4 and r["inputs"].max() < 20
    np.testing.assert_array_equal(r["inputs"][:, 1:], r["targets"][:, :-1])
    np.testing.assert_array_equal(random_batch(3, 16, 20, seed=1)["targets"], r["targets"])
