"""The training data pipeline: sources → tokenizer → weighted mixture of packed rows → batches.

What the training loop calls::

    pipeline = build_pipeline(cfg, run_dir, process_index=p, process_count=P)  # sources, tokenizer, mixture
    save_run_tokenizer(cfg, pipeline.tokenizer, run_dir)  # once the run's checks have passed
    rows = pipeline.next_batch()                     # this process's rows: 5 arrays [B / P, train.seq_len]
    state = merge_states(every process's pipeline.state_dict())  # small JSON; saved beside each checkpoint
    pipeline.load_state_dict(state)                  # the next batches equal an uninterrupted run's
    pipeline.heldout_batches("web", 2)               # per-source held-out loss (global batches)
    pipeline.stats()                                 # per source: documents, tokens, epochs, proportion, problems

Multi-host: each process builds only its own rows of the global batch. The global batch [B, S] is
cut into ``data.shards`` = H reading shards of B/H consecutive rows; shard h packs the training draws
k ≡ h (mod H) of every source's seeded order with its own cursors (glam.data.mixture). Process p of
P feeds rows [p·B/P, (p+1)·B/P): when P divides H it packs shards [p·H/P, (p+1)·H/P) and nothing else,
so the per-host cost falls as 1/P; when H divides P, the P/H processes of a shard each pack it and keep
their part (exact, but redundant). Any other pair is a DataError naming the fix.

So the global batch is a pure function of (seed, H, state), never of P, and H = 1 is the unsharded
stream of earlier versions row for row. ``data.shards = 0`` (the default) means "the process count the
run starts with"; the data state records H and every shard's cursors, and a resumed run keeps the
recorded H whatever its own process count, so resuming on another number of hosts is exact (when P
and H fit as above) and never silently changes the data order. A background thread may prepare the
next batches (``prefetch``); the state reported is always that of the batches handed out, so
prefetching never changes what a resumed run sees.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator

import numpy as np

from glam.config import GLaMConfig, SourceConfig
from glam.data.default_corpus import default_sources
from glam.data.errors import DataError
from glam.data.mixture import DocumentOrder, Mixture, SourceCursor, heldout_for
from glam.data.packing import BATCH_KEYS, empty_rows, pack_documents
from glam.data.run_tokenizer import (  # noqa: F401  (re-exported: the run's tokenizer lived here)
    TOKENIZER_FILE,
    TOKENIZER_RECORD_FILE,
    load_or_train_tokenizer,
    load_run_tokenizer,
    rebuild_advice,
    save_run_tokenizer,
    tokenizer_record,
)
from glam.data.sources import Source, iter_documents, open_sources
from glam.data.tokenizer import Tokenizer, train_tokenizer

STATE_VERSION = 2  # 1: one unsharded stream (read as H = 1)


def resolve_sources(cfg: GLaMConfig, cache_dir: str | None = None) -> tuple[SourceConfig, ...]:
    """``data.sources``, or the embedded default corpus (built into ``cache_dir``) when it is empty."""
    return cfg.data.sources or default_sources(cache_dir)


def tokenizer_sample(cfg: GLaMConfig, sources: list[Source]) -> Iterator[str]:
    """The documents a tokenizer is trained on: ``data.tokenizer_sample_docs`` spread over the sources
    by weight, never one of the held-out documents the held-out loss is measured on."""
    heldout = {
        s.name: DocumentOrder(len(s), heldout_for(s, cfg.data.heldout_docs), cfg.data.seed, s.name).heldout
        for s in sources
    }
    return iter_documents(sources, cfg.data.tokenizer_sample_docs, seed=cfg.data.seed, exclude=heldout)


def train_mixture_tokenizer(
    cfg: GLaMConfig,
    sources: list[Source] | None = None,
    out_path: str | None = None,
    *,
    vocab_size: int | None = None,
    model_type: str = "unigram",
) -> Tokenizer:
    """A SentencePiece tokenizer trained on ``tokenizer_sample(cfg, sources)`` with ``vocab_size``
    pieces (default ``model.vocab_size``), written to ``out_path`` (None: kept in memory).

    The one way glam samples and trains a tokenizer: a run without ``data.tokenizer``,
    ``glam tokenizer train``, the experiments' shared tokenizer and the test fixtures all call it.
    ``sources``: the opened sources (default: ``resolve_sources(cfg)``, opened here).
    """
    sources = sources or open_sources(resolve_sources(cfg), cfg.data.on_bad_json)
    vocab = cfg.model.vocab_size if vocab_size is None else vocab_size
    return train_tokenizer(tokenizer_sample(cfg, sources), vocab, out_path, model_type=model_type)


def build_pipeline(
    cfg: GLaMConfig,
    run_dir: str,
    *,
    prefetch: int = 2,
    process_index: int = 0,
    process_count: int = 1,
    started: bool = True,
) -> DataPipeline:
    """The pipeline a training run uses: resolved sources, its tokenizer, ``prefetch`` batches ahead,
    building the rows of process ``process_index`` of ``process_count``. ``started``: the run
    directory holds a checkpoint (see ``load_or_train_tokenizer``)."""
    sources = open_sources(resolve_sources(cfg), cfg.data.on_bad_json)
    tokenizer = load_or_train_tokenizer(cfg, run_dir, sources, started=started)
    return DataPipeline(
        cfg, tokenizer, sources, prefetch=prefetch, process_index=process_index, process_count=process_count
    )


def process_slice(batch: dict[str, np.ndarray], process_index: int, process_count: int) -> dict[str, np.ndarray]:
    """The rows of a global batch [B, S] that process ``process_index`` of ``process_count`` feeds.

    Process p feeds rows [p·B/P, (p+1)·B/P): arrays [B/P, S]. B must be divisible by P.
    """
    rows = len(batch["inputs"])
    if rows % process_count:
        raise DataError(f"train.batch_size={rows} must be divisible by the number of processes ({process_count})")
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is outside [0, {process_count})")
    per = rows // process_count
    return {k: v[process_index * per : (process_index + 1) * per] for k, v in batch.items()}


def shard_layout(batch_size: int, shards: int, process_index: int, process_count: int) -> tuple[range, slice]:
    """Which reading shards process ``process_index`` of ``process_count`` packs, and which of their
    rows it keeps: (shards, rows of their concatenation). B = ``batch_size``, H = ``shards``, P = the count.

    P divides H: shards [p·H/P, (p+1)·H/P), all their rows. H divides P: shard p·H // P, its part
    p mod (P/H) of P/H. Either way the process keeps global rows [p·B/P, (p+1)·B/P).
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(
            f"process_index={process_index} is outside [0, {process_count}) (process_count={process_count}); "
            "pass jax.process_index() and jax.process_count()"
        )
    for what, n in (("the number of processes", process_count), ("data.shards", shards)):
        if batch_size % n:
            raise DataError(f"train.batch_size={batch_size} must be divisible by {what} ({n})")
    if shards % process_count == 0:
        per = shards // process_count
        return range(process_index * per, (process_index + 1) * per), slice(None)
    if process_count % shards == 0:
        split, rows = process_count // shards, batch_size // process_count
        part = process_index % split
        return range(process_index // split, process_index // split + 1), slice(part * rows, (part + 1) * rows)
    raise DataError(
        f"{process_count} processes cannot share data.shards={shards} reading shards (one must divide the "
        f"other); run on a process count that divides or is a multiple of {shards}, or start a new run "
        f"with data.shards={process_count}"
    )


def merge_states(states: list[dict]) -> dict:
    """One data state from every process's ``state_dict()`` (``states[p]`` from process p): the union
    of their shards' cursors, and ``packed_by``: shard → the processes that packed it (a record for
    people and tests; ``load_state_dict`` ignores it)."""
    common = [{k: v for k, v in state.items() if k not in ("streams", "packed_by")} for state in states]
    if any(c != common[0] for c in common):
        raise DataError("the processes' data states disagree on more than their shards; they run different configs")
    streams = {h: stream for state in states for h, stream in state["streams"].items()}
    packed_by = {h: [p for p, state in enumerate(states) if h in state["streams"]] for h in sorted(streams, key=int)}
    return {**copy.deepcopy(common[0]), "streams": copy.deepcopy(streams), "packed_by": packed_by}


class DataPipeline:
    """This process's rows of global batches of the batch schema (docs/design.md), from a weighted
    mixture of sources.

    Args:
      cfg: the run config (``data``, ``train.batch_size``, ``train.seq_len``).
      tokenizer: anything with ``encode(str) -> list[int]``, ``bos_id``, ``eos_id``.
      sources: opened :class:`Source` objects or their configs; ``None`` = ``resolve_sources(cfg)``.
      prefetch: batches prepared ahead on a background thread (0 = none).
      process_index, process_count: which process this is, of how many (``jax.process_index()``,
        ``jax.process_count()``); it builds rows [p·B/P, (p+1)·B/P) of each global batch.
    """

    def __init__(
        self,
        cfg: GLaMConfig,
        tokenizer,
        sources=None,
        *,
        prefetch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.batch_size, self.seq_len = cfg.train.batch_size, cfg.train.seq_len
        self.process_index, self.process_count = process_index, process_count
        if sources is None:
            sources = resolve_sources(cfg)
        if sources and isinstance(sources[0], SourceConfig):
            sources = open_sources(tuple(sources), cfg.data.on_bad_json)
        self.sources = list(sources)
        if not self.sources:
            raise DataError("no data sources; set data.sources or leave it empty to use the default corpus")
        self.prefetch = prefetch
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._set_shards(cfg.data.shards or process_count)

    def _set_shards(self, shards: int) -> None:
        """Build the mixture streams of this process's reading shards (each from its beginning)."""
        own, self._keep = shard_layout(self.batch_size, shards, self.process_index, self.process_count)
        self.shards, self.shard_rows = shards, self.batch_size // shards
        self.streams = {
            h: Mixture(
                self.sources,
                self.tokenizer.encode,
                seq_len=self.seq_len,
                seed=self.cfg.data.seed,
                heldout_docs=self.cfg.data.heldout_docs,
                bos_id=self.tokenizer.bos_id,
                eos_id=self.tokenizer.eos_id,
                shard=h,
                shards=shards,
                shard_rows=self.shard_rows,
            )
            for h in own
        }
        self.mixture = next(iter(self.streams.values()))  # the held-out split and orders are the same in each
        self._state = self._snapshot()

    # Batches -----------------------------------------------------------------------------------

    def next_batch(self) -> dict[str, np.ndarray]:
        """This process's rows of the next global batch: ``inputs, targets, segment_ids, positions``
        int32 and ``loss_weights`` float32, each [train.batch_size / process_count, train.seq_len]
        (with one process: the whole global batch)."""
        if self.prefetch <= 0:
            batch = self._make_batch()
            self._state = self._snapshot()
            return batch
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        batch, self._state = item
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _make_batch(self) -> dict[str, np.ndarray]:
        parts = [stream.next_rows(self.shard_rows)[0] for stream in self.streams.values()]
        return {k: np.concatenate([part[k] for part in parts])[self._keep] for k in BATCH_KEYS}

    def _snapshot(self) -> dict:
        streams = {str(h): m.state_dict() for h, m in self.streams.items()}  # fresh dicts of ints, once a batch
        return {"version": STATE_VERSION, "seed": self.cfg.data.seed, "shards": self.shards, "streams": streams}

    # Prefetching -----------------------------------------------------------------------------

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, name="glam-data-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                item = (self._make_batch(), self._snapshot())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surface the error to the consumer instead of hanging it
            self._queue.put(exc)

    def close(self) -> None:
        """Stop the prefetch thread (batches prepared ahead are dropped; the state is unaffected)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        for h, stream in self.streams.items():
            stream.load_state_dict(self._state["streams"][str(h)])

    # State --------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The state after the last batch handed out, of this process's shards: JSON-serialisable,
        O(sources × shards). A checkpoint saves ``merge_states`` of every process's."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (same config and sources required).

        The state's number of shards is kept (``data.shards = 0``) or must equal ``data.shards``; it
        must hold the cursors of every shard this process packs (``merge_states`` of all processes').
        """
        if state.get("version") == 1:  # one unsharded stream
            state = {"version": STATE_VERSION, "seed": state.get("seed"), "shards": 1, "streams": {"0": state}}
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data state version {state.get('version')} is not {STATE_VERSION}; cannot resume it")
        if not isinstance(state.get("shards"), int) or not isinstance(state.get("streams"), dict):
            raise DataError("the data state has no shard count or no shard cursors; it is damaged, cannot resume it")
        saved = state["shards"]
        if self.cfg.data.shards not in (0, saved):
            raise DataError(
                f"the data state was saved with {saved} reading shards but data.shards={self.cfg.data.shards}; "
                f"set data.shards={saved} (or 0) to resume this run, or start a new run"
            )
        self.close()
        if saved != self.shards:
            self._set_shards(saved)
        missing = sorted(set(map(str, self.streams)) - set(state["streams"]))
        if missing:
            raise DataError(
                f"the data state lacks the cursors of reading shard(s) {', '.join(missing)} that process "
                f"{self.process_index} packs; save merge_states of every process's state_dict()"
            )
        for h, stream in self.streams.items():
            stream.load_state_dict(state["streams"][str(h)])
        self._state = self._snapshot()

    def stats(self) -> dict[str, dict]:
        """Per source: weight, documents, heldout_documents, rows, tokens, proportion (of tokens drawn),
        epochs (training passes over the source), bad_json, decode_replacements; as of the batches
        handed out, over this process's reading shards (all of them with one process)."""
        per_stream = []
        for h, stream in self.streams.items():
            live = stream.cursors
            stream.cursors = [SourceCursor(**self._state["streams"][str(h)]["sources"][s.name]) for s in self.sources]
            try:
                per_stream.append(stream.stats())
            finally:
                stream.cursors = live
        out = copy.deepcopy(per_stream[0])
        for name, entry in out.items():
            entry["rows"] = sum(st[name]["rows"] for st in per_stream)
            entry["tokens"] = sum(st[name]["tokens"] for st in per_stream)
            entry["epochs"] = float(np.mean([st[name]["epochs"] for st in per_stream]))
        total = sum(entry["tokens"] for entry in out.values()) or 1
        for entry in out.values():
            entry["proportion"] = entry["tokens"] / total
        return out

    # Held-out data ------------------------------------------------------------------------------

    def heldout_batches(self, source_name: str, num_batches: int) -> list[dict[str, np.ndarray]]:
        """Up to ``num_batches`` batches [B, S] packed from the source's held-out documents.

        The held-out documents are the first ``data.heldout_docs`` of the source's seeded order and
        never appear in training batches. Fewer batches come back when they are used up; the last one
        is padded with empty rows (loss weight 0).
        """
        names = [s.name for s in self.sources]
        if source_name not in names:
            raise DataError(f"no data source named {source_name!r}; the sources are {names}")
        i = names.index(source_name)
        eos = self.tokenizer.eos_id
        docs = [[*self.tokenizer.encode(self.sources[i].document(int(d))), eos] for d in self.mixture.orders[i].heldout]
        rows = pack_documents(docs, self.seq_len, self.tokenizer.bos_id)
        batches = []
        for start in range(0, min(len(rows["inputs"]), num_batches * self.batch_size), self.batch_size):
            part = {k: v[start : start + self.batch_size] for k, v in rows.items()}
            missing = self.batch_size - len(part["inputs"])
            if missing:
                pad = empty_rows(missing, self.seq_len)
                part = {k: np.concatenate([part[k], pad[k]]) for k in BATCH_KEYS}
            batches.append(part)
        return batches
