"""What the server reports of tokens: their text pieces, their top alternatives, and the echo scoring pass.

A completion reports each token as a :class:`~glam.serve.rows.TokenInfo`: its piece (the text it
spells, SentencePiece's ▁ as a space, a byte piece as its character), log p, and the ``logprobs``
likeliest alternatives. :func:`score_echo` gives the prompt's tokens of rows that asked for
``echo`` with log-probs, in one forward pass; the engine (``glam.serve.engine``) picks the rows
and delivers what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from glam.inference.scoring import ScoreRow, make_batch, token_logprobs
from glam.serve.rows import TOP_N, Row, TokenInfo


class Pieces:
    """Every token id's reported text, computed once from the tokenizer."""

    def __init__(self, tokenizer):
        self.pieces = [piece_text(tokenizer, i) for i in range(tokenizer.vocab_size)]

    def __call__(self, token_id: int) -> str:
        """The text a completion reports for a token (ids past the tokenizer's vocabulary: ``<id N>``)."""
        return self.pieces[token_id] if token_id < len(self.pieces) else f"<id {token_id}>"

    def top(self, ids: np.ndarray, lps: np.ndarray, n: int) -> dict[str, float]:
        """The ``n`` likeliest alternatives as {piece: log p} (pieces that spell alike: the likelier one)."""
        top: dict[str, float] = {}
        for i, lp in zip(ids[:n], lps[:n]):
            top.setdefault(self(int(i)), float(lp))
        return top


def piece_text(tokenizer, token_id: int) -> str:
    """A token's text as completions report it: its piece with SentencePiece's ▁ as a space, bytes decoded."""
    piece = tokenizer.id_to_piece(token_id)
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        byte = int(piece[3:5], 16)
        return chr(byte) if byte < 0x80 else piece
    return piece.replace("\u2581", " ")


def score_echo(
    cfg, params, rows: Sequence[Row], pieces: Pieces, *, batch: int, max_seq_len: int
) -> list[tuple[TokenInfo, ...]]:
    """Each row's prompt tokens with their log-probs and top alternatives (a bos the prompt gave comes first,
    with none), for at most ``batch`` rows scored together in one forward pass padded to ``batch`` rows."""
    out: list[tuple[TokenInfo, ...]] = []
    scored = [r for r in rows if len(r.ids) > 1]
    if scored:
        batch_rows = [ScoreRow(r.ids[:-1], r.ids[1:], len(r.ids) - 1) for r in scored]
        log_p, top_ids, top_lp = jax.device_get(
            token_logprobs(cfg, params, make_batch(batch_rows, batch, max_seq_len), top_n=TOP_N)
        )
    b = 0
    for row in rows:
        infos = [TokenInfo(pieces(row.ids[0]), None, None)] if row.given_bos else []
        if len(row.ids) > 1:
            for j in range(len(row.ids) - 1):
                top = pieces.top(top_ids[b, j], top_lp[b, j], row.logprobs)
                infos.append(TokenInfo(pieces(row.ids[j + 1]), float(log_p[b, j]), top))
            b += 1
        out.append(tuple(infos))
    return out
