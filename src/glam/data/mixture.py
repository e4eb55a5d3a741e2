"""A deterministic, resumable weighted mixture of named sources (paper §6, Table 3).

Unit of mixing: the packed row. Row ``i`` of the training stream comes from source
``draw_sources(seed, i, weights)``, a pure function of ``(seed, i)`` (a counter-based hash, no
generator state), so the mixture proportions hold in tokens, not just in documents, and any row's
source is known without replaying the stream. Each source packs its own documents into rows
(glam.data.packing) in its own order:

- the source's documents are permuted once with the seed; the first ``heldout`` of that order are
  held out (never trained on) and the rest form the training pool;
- the pool is read cyclically, epoch after epoch, each epoch in a fresh permutation that depends
  only on (seed, source name, epoch).

The whole state is therefore tiny: the next row index and, per source, the packing cursor
``(training draw k, token offset within it)`` plus counters. A source sampled more often than its
size allows shows it as ``epochs > 1`` in :meth:`Mixture.stats`.

Shards (multi-host reading, glam.data.pipeline): a mixture may be shard ``h`` of ``H``. It then packs
only the training draws ``k ≡ h (mod H)`` of each source's order, and its local row ``r`` is global
row ``(r // R)·R·H + h·R + r mod R`` of the stream (``R`` rows of each batch per shard), whose source
is drawn as above. ``H = 1`` is the unsharded stream, row for row. The H shards together read each
training draw of a source once; which rows a draw lands in depends on H, so H is part of the data
order (``data.shards``), not of how many processes compute it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from glam.data.errors import DataError
from glam.data.packing import pack_row
from glam.data.sources import Source, source_key
from glam.errors import GLaMWarning

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective 64-bit mix (Steele et al., 2014), elementwise on uint64."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform01(seed: int, indices: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): one per index, a pure function of (seed, index). Shape = indices."""
    key = _splitmix64(np.asarray([seed], dtype=np.uint64))
    bits = _splitmix64(np.asarray(indices, dtype=np.uint64) ^ key)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draw_sources(seed: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The source of each example index: [N] ints in [0, len(weights)), drawn in proportion to weights."""
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    u = uniform01(seed, indices) * cumulative[-1]
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)


def _say_how_weights_normalise(sources: list[Source], weights: np.ndarray) -> None:
    """Weights are relative (a source's share is weight / sum); unequal weights not summing to 1 get a warning."""
    total = float(weights.sum())
    if len(set(weights.tolist())) > 1 and abs(total - 1) > 1e-6:
        shares = ", ".join(f"{s.name} {w / total:.3f}" for s, w in zip(sources, weights))
        warnings.warn(
            f"data.sources weights sum to {total:g}, not 1; each source's share is its weight / {total:g}: {shares}",
            GLaMWarning,
            stacklevel=3,
        )


def heldout_for(source: Source, default: int) -> int:
    """Documents held out of ``source``: its own ``heldout_docs`` if set (>= 0), else ``default``."""
    return source.heldout_docs if source.heldout_docs >= 0 else default


class DocumentOrder:
    """A source's seeded order: held-out documents, then the training pool read in shuffled epochs."""

    def __init__(self, num_docs: int, heldout: int, seed: int, name: str):
        if num_docs <= heldout:
            raise DataError(
                f"data source {name!r} has {num_docs} documents, not more than the {heldout} held out "
                "(data.heldout_docs, or the source's own heldout_docs); add text to the source or hold out fewer"
            )
        self.seed, self.key = seed, source_key(name)
        order = np.random.default_rng([seed, self.key]).permutation(num_docs)
        self.heldout = order[:heldout]
        self.pool = order[heldout:]
        self._epoch, self._perm = -1, self.pool

    def __len__(self) -> int:
        return len(self.pool)

    def train_document(self, k: int) -> int:
        """The document id of training draw ``k`` (k >= 0; draw k belongs to epoch k // len(pool))."""
        epoch, j = divmod(k, len(self.pool))
        if epoch != self._epoch:
            self._perm = self.pool[np.random.default_rng([self.seed, self.key, epoch]).permutation(len(self.pool))]
            self._epoch = epoch
        return int(self._perm[j])


@dataclass
class SourceCursor:
    """Where one source's row stream stands; all counters are JSON-serialisable ints."""

    doc: int = 0  # next training draw to place
    offset: int = 0  # tokens of that draw already emitted (a document split across rows)
    rows: int = 0
    tokens: int = 0  # non-padding target tokens emitted


class Mixture:
    """Packed rows from a weighted mixture of sources, deterministic in (seed, row index).

    ``encode(text) -> list[int]`` tokenizes a document (eos is appended here).
    """

    def __init__(
        self,
        sources: list[Source],
        encode: Callable[[str], list[int]],
        *,
        seq_len: int,
        seed: int,
        heldout_docs: int,
        bos_id: int,
        eos_id: int,
        shard: int = 0,
        shards: int = 1,
        shard_rows: int = 1,
    ):
        if not 0 <= shard < shards:
            raise DataError(f"data shard {shard} is outside [0, {shards})")
        self.shard, self.shards, self.shard_rows = shard, shards, shard_rows
        self.sources = sources
        self.encode, self.seq_len, self.seed = encode, seq_len, seed
        self.bos_id, self.eos_id = bos_id, eos_id
        self.weights = np.asarray([s.weight for s in sources], dtype=np.float64)
        _say_how_weights_normalise(sources, self.weights)
        self.orders = [DocumentOrder(len(s), heldout_for(s, heldout_docs), seed, s.name) for s in sources]
        self.cursors = [SourceCursor() for _ in sources]
        self.example = 0
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def tokens(self, source: int, doc_id: int) -> np.ndarray:
        """Document ``doc_id`` of a source as int32 tokens ending with eos (the last few are cached)."""
        key = (source, doc_id)
        if key not in self._cache:
            ids = self.encode(self.sources[source].document(doc_id))
            self._cache[key] = np.asarray([*ids, self.eos_id], dtype=np.int32)
            if len(self._cache) > 4 * len(self.sources):
                self._cache.popitem(last=False)
        return self._cache[key]

    def global_rows(self, local: np.ndarray) -> np.ndarray:
        """The global stream index of each of this shard's local rows (the identity when unsharded)."""
        R = self.shard_rows
        return (local // R) * R * self.shards + self.shard * R + local % R

    def next_rows(self, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The next ``n`` rows: (batch of arrays [n, S], source index of each row [n])."""
        indices = self.global_rows(np.arange(self.example, self.example + n))
        chosen = draw_sources(self.seed, indices, self.weights)
        rows = [self._row_from(int(s)) for s in chosen]
        self.example += n
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, chosen

    def _row_from(self, source: int) -> dict[str, np.ndarray]:
        cursor, order = self.cursors[source], self.orders[source]

        def get_document(k: int) -> np.ndarray:  # the shard's k-th draw is the source's draw k·H + h
            return self.tokens(source, order.train_document(k * self.shards + self.shard))

        row, (cursor.doc, cursor.offset) = pack_row(
            get_document, (cursor.doc, cursor.offset), self.seq_len, self.bos_id
        )
        cursor.rows += 1
        cursor.tokens += int(row["loss_weights"].sum())
        return row

    def state_dict(self) -> dict:
        """The complete stream state: JSON-serialisable, O(number of sources)."""
        return {
            "seed": self.seed,
            "example": self.example,
            "sources": {s.name: dict(vars(c)) for s, c in zip(self.sources, self.cursors)},  # ints: a copy
        }

    def load_state_dict(self, state: dict) -> None:
        names = [s.name for s in self.sources]
        if sorted(state.get("sources", {})) != sorted(names) or state.get("seed") != self.seed:
            raise DataError(
                f"the data state was saved for sources {sorted(state.get('sources', {}))} with seed "
                f"{state.get('seed')}, but this run has sources {sorted(names)} with seed {self.seed}; "
                "resume with the same data config"
            )
        self.example = int(state["example"])
        self.cursors = [SourceCursor(**state["sources"][n]) for n in names]

    def stats(self) -> dict[str, dict]:
        """Per source: documents, held-out documents, rows, tokens drawn, epochs, proportion, problems."""
        total = sum(c.tokens for c in self.cursors) or 1
        out = {}
        for source, order, cursor in zip(self.sources, self.orders, self.cursors):
            out[source.name] = {
                "weight": float(source.weight / self.weights.sum()),
                "documents": len(order),
                "heldout_documents": len(order.heldout),
                "rows": cursor.rows,
                "tokens": cursor.tokens,
                "proportion": cursor.tokens / total,
                "epochs": (cursor.doc + (cursor.offset > 0)) * self.shards / len(order),
                "bad_json": source.stats.bad_json,
                "decode_replacements": source.stats.decode_replacements,
            }
        return out
