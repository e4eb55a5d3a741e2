"""Packing tokenized documents into fixed-length rows of the batch schema (docs/design.md).

A document is a token list ending with ``eos``. Inside a row it becomes a segment whose
``targets`` are the document's tokens and whose ``inputs`` are the same tokens shifted right by one,
with ``bos`` in front (so the first token is predicted too)::

    document  [a, b, c, eos]      S = 6, next document [d, eos]
    inputs    [bos, a, b, c,   bos, d]
    targets   [a,   b, c, eos, d,   eos]
    segments  [1,   1, 1, 1,   2,   2]
    positions [0,   1, 2, 3,   0,   1]

Placement (greedy, in document order): a document that fits in the rest of the row goes there; one
that does not fit but would fit in an empty row starts the next row (the rest of this row is padding:
segment 0, targets 0, loss weight 0); a document longer than a row fills the rest of the current row
and continues in the following rows. A continuation chunk is a new segment whose positions restart
at 0 (the model cannot attend across rows anyway) and whose first input is the previous chunk's last
token, so every target keeps its true predecessor and no token is lost or repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_weights")

#: ``get_document(k)`` returns document ``k`` as token ids ending with eos, or ``None`` past the end.
GetDocument = Callable[[int], "np.ndarray | None"]


def empty_rows(num_rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """All-padding rows: every array [num_rows, seq_len], zeros (loss weight 0 everywhere)."""
    batch = {k: np.zeros((num_rows, seq_len), np.int32) for k in BATCH_KEYS}
    batch["loss_weights"] = np.zeros((num_rows, seq_len), np.float32)
    return batch


def pack_row(
    get_document: GetDocument, cursor: tuple[int, int], seq_len: int, bos_id: int
) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """Fill one row of ``seq_len`` tokens starting at ``cursor``.

    Args:
      get_document: document ``k`` as int token ids ending with eos (``None`` when there are no more).
      cursor: ``(k, offset)``: the next document to place and how many of its tokens earlier rows
        already hold (``offset > 0`` only for a document split across rows).
      seq_len: S, the row length.
      bos_id: the input id in front of each document's first token.

    Returns:
      (row, cursor after the row): ``row`` maps each of BATCH_KEYS to an array [S].
    """
    row = {k: v[0] for k, v in empty_rows(1, seq_len).items()}
    doc, offset = cursor
    used, segment = 0, 0
    while used < seq_len:
        tokens = get_document(doc)
        if tokens is None:
            break
        remaining, space = len(tokens) - offset, seq_len - used
        if remaining > space and offset == 0 and used > 0 and len(tokens) <= seq_len:
            break  # it fits in an empty row: start the next row with it rather than split it
        take = min(remaining, space)
        segment += 1
        first_input = bos_id if offset == 0 else tokens[offset - 1]
        span = slice(used, used + take)
        row["targets"][span] = tokens[offset : offset + take]
        row["inputs"][span] = np.concatenate([[first_input], tokens[offset : offset + take - 1]])
        row["segment_ids"][span] = segment
        row["positions"][span] = np.arange(take)
        row["loss_weights"][span] = 1.0
        used, offset = used + take, offset + take
        if offset == len(tokens):
            doc, offset = doc + 1, 0
    return row, (doc, offset)


def pack_documents(documents: Sequence[Sequence[int]], seq_len: int, bos_id: int = 2) -> dict[str, np.ndarray]:
    """Pack a finite list of documents into as many rows as they need: arrays [R, S].

    The pure, whole-list form of :func:`pack_row` (same placement rule), for tests and held-out sets.
    """
    arrays = [np.asarray(d, dtype=np.int32) for d in documents]
    for d in arrays:
        if len(d) == 0:
            raise ValueError("a document must hold at least its eos token")

    def get_document(k: int) -> np.ndarray | None:
        return arrays[k] if k < len(arrays) else None

    rows, cursor = [], (0, 0)
    while cursor[0] < len(arrays):
        row, cursor = pack_row(get_document, cursor, seq_len, bos_id)
        rows.append(row)
    if not rows:
        return empty_rows(0, seq_len)
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def unpack_targets(batch: dict[str, np.ndarray]) -> list[list[int]]:
    """The target tokens of each segment, in row-major order: the inverse of packing for tests.

    Returns one token list per (row, segment id > 0); split documents appear as several chunks.
    """
    chunks = []
    for targets, segments in zip(batch["targets"], batch["segment_ids"]):
        for segment in np.unique(segments[segments > 0]):
            chunks.append(targets[segments == segment].tolist())
    return chunks


def rows_from_tokens(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The batch schema for rows that each hold one whole sequence: tokens [B, S+1] → [B, S] arrays."""
    tokens = np.asarray(tokens, np.int32)
    B, S = tokens.shape[0], tokens.shape[1] - 1
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": np.ones((B, S), np.int32),
        "positions": np.tile(np.arange(S, dtype=np.int32), (B, 1)),
        "loss_weights": np.ones((B, S), np.float32),
    }


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniformly random tokens (never the special ids 0–3), one sequence per row: for tests and benchmarks."""
    tokens = np.random.default_rng(seed).integers(4, vocab_size, (batch_size, seq_len + 1))
    return rows_from_tokens(tokens)
