"""The serving engine: one thread owns the model and keeps a batch of slots busy (continuous batching).

A request becomes :class:`Row`\\ s (one per choice of each prompt). The engine decodes up to
``max_batch`` rows together in **slots** of a KV cache (glam.inference.slots), each slot with its
own length and positions. Every turn of the engine thread does, in order:

1. takes in newly submitted rows (a row that echoes gets its prompt text at once);
2. scores one batch of rows that asked for ``echo`` with log-probs (one forward pass);
3. prefills one **chunk** of the current group of newcomers (up to the free slots, oldest first),
   at most ``prefill_chunk`` tokens per row; when the group's last chunk has run, its rows move into
   their slots (``insert``);
4. runs one decode **step** over all slots: every running row gets its next token, and a row that
   ends (eos, a stop string, its ``max_tokens``, its client gone) frees its slot at once.

So a request joins the running batch at the next step boundary, and a running row waits at most
one scoring pass plus one prefill chunk between two of its tokens (the bound docs/serving.md states).
``batching="static"`` keeps the old behaviour for comparison: a group forms only when no slot is
running, and the batch then runs until its last row ends.

Routing never depends on the batch: MoE layers route without capacity when serving (decode steps
always did; prefill and scoring run with ``moe.eval_no_drop``), and each row has its own sampler and
random stream (``fold_in(key(seed), step)``), so a row's tokens are those it gets alone — the same
computation in shapes padded differently (tests/test_serve_batching.py measures the equality).

Admission is bounded: at most ``max_queue`` requests are admitted (waiting or running); the caller
gets :class:`Busy` beyond that (HTTP 429), and :class:`Draining` once :meth:`Engine.drain` was called
(503). Results go back through each job's ``deliver`` callback, called on the engine thread.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from glam.config import GLaMConfig
from glam.errors import GLaMError
from glam.inference import slots as slotted
from glam.inference.decode import bucket_length, decode_params
from glam.inference.generate import _vocab_limit
from glam.inference.scoring import ScoreRow, make_batch, token_logprobs
from glam.inference.text import TextStream
from glam.serve.reports import Pieces, score_echo
from glam.serve.rows import TOP_N, Busy, Draining, Event, Job, Row, TokenInfo, check_row, prompt_ids
from glam.sharding.rules import activate

BATCHING = ("continuous", "static")


@dataclass(eq=False)
class _Live:
    """A row the engine thread is working on: its text so far and where it is."""

    job: Job
    row: Row
    stream: TextStream
    slot: int = -1
    generated: int = 0  # tokens drawn so far (eos included)

    def gone(self) -> bool:
        return self.job.cancelled.is_set()


@dataclass(eq=False)
class _Group:
    """Newcomers being prefilled together, chunk by chunk, into a cache of their own."""

    rows: list[_Live]
    caches: object  # stacked [P, b, S, ...] caches of the group
    carry: jax.Array  # [b, V] each row's last-token logits once its last chunk ran
    start: int = 0  # the next chunk's first column


def serving_config(cfg: GLaMConfig) -> GLaMConfig:
    """The model's config as the server runs it: MoE prefill and scoring route without capacity."""
    if not cfg.is_moe or cfg.moe.eval_no_drop:
        return cfg
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, eval_no_drop=True))


class Engine:
    """Continuous-batching generation and scoring for one model (cfg, params, tokenizer) on a background thread.

    Args:
      max_batch: slots decoded together (every compiled step has this batch; 1 turns batching off).
      max_queue: requests admitted at once, waiting or running; beyond it :meth:`admit` raises Busy.
      batching: ``"continuous"`` (rows join the running batch) or ``"static"`` (the next batch forms
        when the running one has ended).
      prefill_chunk: the most prompt tokens per row one prefill pass runs (a longer prompt takes
        several turns, decode steps between them).
      mesh: a device mesh (glam.sharding.mesh) the parameters were restored onto: every pass runs
        under it with the rule table's shardings (experts on ``data``, hidden on ``model``).
    """

    def __init__(
        self,
        cfg: GLaMConfig,
        params: dict,
        tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        batching: str = "continuous",
        prefill_chunk: int = 128,
        mesh=None,
    ):
        if max_batch < 1 or max_queue < 1:
            raise GLaMError(f"max_batch={max_batch}, max_queue={max_queue}: both must be at least 1")
        if batching not in BATCHING:
            raise GLaMError(f"batching={batching!r}: choose one of {', '.join(BATCHING)}")
        if prefill_chunk < 8:
            raise GLaMError(f"prefill_chunk={prefill_chunk}: use at least 8 tokens per chunk")
        self.cfg, self.params, self.tokenizer = serving_config(cfg), params, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.batching, self.prefill_chunk, self.mesh = batching, prefill_chunk, mesh
        # a prefill group has at least as many rows as the mesh has data shards (its batch is split over them)
        self._min_group = 1 if mesh is None else _data_shards(mesh)
        if max_batch % self._min_group:
            raise GLaMError(
                f"max_batch={max_batch} does not split over the mesh's {self._min_group} data shards; "
                f"use a multiple of {self._min_group}"
            )
        self.max_seq_len = cfg.model.max_seq_len
        self.vocab_limit = _vocab_limit(cfg, tokenizer)
        self.step_params = decode_params(params)
        self.piece = Pieces(tokenizer)  # a token id's reported text: self.piece(id)
        self.on_step: Callable[[int, int], None] | None = None  # (live rows, slots) after every step
        self._submitted: collections.deque[tuple[Job, Row]] = collections.deque()
        self._cond = threading.Condition()
        self._admitted = 0
        self._stopping = self._draining = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="glam-serve-engine", daemon=True)
        # engine-thread state
        B = max_batch
        self._to_score: collections.deque[_Live] = collections.deque()
        self._waiting: collections.deque[_Live] = collections.deque()
        self._group: _Group | None = None
        self._slot_rows: list[_Live | None] = [None] * B
        self._reserved = np.zeros(B, bool)  # slots promised to the group being prefilled
        self._fed = np.zeros(B, bool)
        self._tokens = np.zeros(B, np.int32)
        self._sampling = slotted.Sampling(
            np.zeros(B, np.uint32), np.zeros(B, np.int32), np.zeros(B, np.float32),
            np.zeros(B, np.int32), np.ones(B, np.float32), np.full(B, -1, np.int32),
        )  # fmt: skip
        with activate(mesh):
            self._slots = slotted.init_slots(self.cfg, B)
        self.counters = collections.Counter()  # steps, groups, prefill_tokens, generated_tokens, scored_rows

    # -- the request side (any thread) -------------------------------------------------------------------

    def start(self, warmup: bool = False) -> Engine:
        """Start the engine thread (after compiling the serving shapes when ``warmup``)."""
        if warmup:
            self.warmup()
        self._ready.set()
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def drain(self) -> None:
        """Admit nothing new from now on (:meth:`admit` raises :class:`Draining`); admitted rows go on."""
        with self._cond:
            self._draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is admitted (all answered or gone); False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._admitted > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.1))
        return True

    @property
    def in_flight(self) -> int:
        return self._admitted

    @property
    def batches(self) -> int:
        """Prefill groups formed so far (a static batch is one group)."""
        return self.counters["groups"]

    @property
    def running(self) -> list[tuple[Job, Row]]:
        """The (job, row) of every occupied slot, now."""
        return [(live.job, live.row) for live in self._slot_rows if live is not None]

    def stats(self) -> dict[str, int]:
        """Gauges and counters for /health and /metrics (read from any thread; a moment's snapshot)."""
        waiting = len(self._submitted) + len(self._to_score) + len(self._waiting)
        group = self._group
        return {
            "waiting_rows": waiting + (len(group.rows) if group is not None else 0),
            "running_rows": sum(r is not None for r in self._slot_rows),
            "slots": self.max_batch,
            "requests_in_flight": self._admitted,
            "steps": self.counters["steps"],
            "prefill_tokens": self.counters["prefill_tokens"],
            "generated_tokens": self.counters["generated_tokens"],
        }

    def admit(self) -> None:
        """Count one more request in, or raise :class:`Busy` when ``max_queue`` are in already."""
        with self._cond:
            if self._draining or self._stopping:
                raise Draining("the server is shutting down and admits no new requests")
            if self._admitted >= self.max_queue:
                raise Busy(f"{self._admitted} requests are in flight (the server admits {self.max_queue}); retry later")
            self._admitted += 1

    def release(self) -> None:
        """The request's HTTP exchange is over (answered, failed or its client gone)."""
        with self._cond:
            self._admitted -= 1
            self._cond.notify_all()

    def prompt_ids(self, prompt: str | Sequence[int]) -> tuple[tuple[int, ...], bool, str]:
        """(ids bos first, whether the prompt began with bos itself, its text): :func:`rows.prompt_ids`."""
        return prompt_ids(self.tokenizer, prompt)

    def check(self, row: Row) -> None:
        """Raise :class:`RequestError` when the row cannot fit the model's context (:func:`rows.check_row`)."""
        check_row(row, self.max_seq_len)

    def submit(self, job: Job) -> None:
        """Queue a job's rows (already checked) for the engine thread."""
        for row in job.rows:
            self.check(row)
        with self._cond:
            self._submitted.extend((job, row) for row in job.rows)
            self._cond.notify_all()

    # -- compiling ahead -----------------------------------------------------------------------------------

    def shapes(self) -> dict[str, list]:
        """What the server compiles: prefill (rows, chunk columns), insert rows, step variants, scoring lengths."""
        rows = [b for b in _powers(self.max_batch) if b >= self._min_group]
        chunks = sorted(
            {bucket_length(t, min(self.prefill_chunk, self.max_seq_len)) for t in _powers(self.max_seq_len)}
        )
        scores = sorted({bucket_length(t, self.max_seq_len) for t in _powers(self.max_seq_len)})
        return {
            "prefill": [(b, t) for b in rows for t in chunks],
            "insert": rows,
            "step": [False, True],
            "score": scores,
        }

    def warmup(self) -> float:
        """Compile (and run once on empty data) every serving shape; returns the seconds it took."""
        with activate(self.mesh):
            return self._warmup()

    def _warmup(self) -> float:
        t0 = time.perf_counter()
        shapes = self.shapes()
        V = self.cfg.model.vocab_size
        for b, t in shapes["prefill"]:
            caches = slotted.group_caches(self.cfg, b)
            zeros = jnp.zeros((b, t), jnp.int32)
            slotted.prefill_chunk(
                self.cfg, self.params, caches, zeros, zeros, jnp.int32(0), jnp.full((b,), -1, jnp.int32),
                jnp.zeros((b, V), jnp.float32),
            )  # fmt: skip
        for b in shapes["insert"]:
            caches = slotted.group_caches(self.cfg, b)
            nowhere = jnp.full((b,), self.max_batch, jnp.int32)
            self._slots = slotted.insert(self._slots, caches, nowhere, nowhere, jnp.zeros((b, V), jnp.float32))
        for filtered in shapes["step"]:
            self._slots, _ = self._run_step(np.zeros(self.max_batch, bool), filtered)
        for s in shapes["score"]:
            rows = [ScoreRow([0] * s, [0] * s, 1)]
            token_logprobs(self.cfg, self.params, make_batch(rows, self.max_batch, self.max_seq_len), top_n=TOP_N)
        jax.block_until_ready(self._slots)
        return time.perf_counter() - t0

    # -- the engine thread -------------------------------------------------------------------------------

    def _loop(self) -> None:
        with activate(self.mesh):
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._submitted or self._busy()):
                    self._cond.wait()
                if self._stopping:
                    break
                taken = list(self._submitted)
                self._submitted.clear()
            try:
                self._turn(taken)
            except Exception as exc:  # a failure of the device fails what was on it, never the server
                self._fail_everything(f"{type(exc).__name__}: {exc}".splitlines()[0])
        self._fail_everything("the server stopped before this row finished")

    def _busy(self) -> bool:
        return bool(self._to_score or self._waiting or self._group or any(r is not None for r in self._slot_rows))

    def _turn(self, taken: list[tuple[Job, Row]]) -> None:
        for job, row in taken:
            self._intake(job, row)
        self._drop_cancelled()
        if self._to_score:
            self._score_some()
        if self._group is None and self._waiting and self._may_form_group():
            self._form_group()
        if self._group is not None:
            self._prefill_some()
        if any(r is not None for r in self._slot_rows):
            self._step()

    def _intake(self, job: Job, row: Row) -> None:
        live = _Live(job, row, TextStream(self.tokenizer.decode, row.stop))
        if job.cancelled.is_set():
            return
        if row.echo:
            job.deliver(Event(row.choice, row.echo_text))
        if row.echo and row.logprobs is not None:
            self._to_score.append(live)
        else:
            self._after_prompt(live)

    def _after_prompt(self, live: _Live) -> None:
        if live.row.max_tokens == 0:
            live.job.deliver(Event(live.row.choice, "", finish_reason="length"))
        else:
            self._waiting.append(live)

    def _drop_cancelled(self) -> None:
        self._to_score = collections.deque(r for r in self._to_score if not r.gone())
        self._waiting = collections.deque(r for r in self._waiting if not r.gone())
        for b, live in enumerate(self._slot_rows):
            if live is not None and live.gone():
                self._free(b)

    def _fail(self, live: _Live, message: str) -> None:
        live.job.deliver(Event(live.row.choice, "", finish_reason="error", error=message))

    def _fail_everything(self, message: str) -> None:
        group_rows = self._group.rows if self._group is not None else []
        rows = [*self._to_score, *self._waiting, *group_rows, *(r for r in self._slot_rows if r is not None)]
        with self._cond:
            rows += [_Live(job, row, TextStream(self.tokenizer.decode)) for job, row in self._submitted]
            self._submitted.clear()
        for live in rows:
            if not live.gone():
                self._fail(live, message)
        self._to_score.clear()
        self._waiting.clear()
        self._group = None
        self._slot_rows = [None] * self.max_batch
        self._reserved[:] = False
        self._fed[:] = False
        self._slots = slotted.init_slots(self.cfg, self.max_batch)  # donated buffers may be gone

    # scoring (echo + logprobs) --------------------------------------------------------------------------

    def _score_some(self) -> None:
        """Score the oldest rows of one length bucket (a row's pass has its own bucket, whoever else is in it)."""
        first = self._to_score[0]
        bucket = bucket_length(max(len(first.row.ids) - 1, 1), self.max_seq_len)
        chunk, rest = [], collections.deque()
        for live in self._to_score:
            same = bucket_length(max(len(live.row.ids) - 1, 1), self.max_seq_len) == bucket
            (chunk if same and len(chunk) < self.max_batch else rest).append(live)
        self._to_score = rest
        reports = score_echo(
            self.cfg, self.params, [live.row for live in chunk], self.piece,
            batch=self.max_batch, max_seq_len=self.max_seq_len,
        )  # fmt: skip
        for live, infos in zip(chunk, reports):
            live.job.deliver(Event(live.row.choice, "", infos))
        self.counters["scored_rows"] += len(chunk)
        for live in chunk:
            self._after_prompt(live)

    # prefill -------------------------------------------------------------------------------------------

    def _free_slots(self) -> list[int]:
        return [b for b, r in enumerate(self._slot_rows) if r is None and not self._reserved[b]]

    def _may_form_group(self) -> bool:
        if self.batching == "static":  # the next batch forms once the running one has ended
            return all(r is None for r in self._slot_rows)
        return bool(self._free_slots())

    def _form_group(self) -> None:
        free = self._free_slots()
        rows = []
        while self._waiting and len(rows) < len(free):
            rows.append(self._waiting.popleft())
        for live, b in zip(rows, free):
            live.slot = b
            self._reserved[b] = True
        size = _next_power(max(len(rows), self._min_group), self.max_batch)
        V = self.cfg.model.vocab_size
        self._group = _Group(rows, slotted.group_caches(self.cfg, size), jnp.zeros((size, V), jnp.float32))
        self.counters["groups"] += 1

    def _prefill_some(self) -> None:
        """Run the group's next chunk; after its last one, move the rows into their slots."""
        g = self._group
        size = g.carry.shape[0]
        longest = max(len(r.row.ids) for r in g.rows)
        S = self.max_seq_len
        T = min(bucket_length(longest - g.start, min(self.prefill_chunk, S)), S - g.start)
        tokens = np.zeros((size, T), np.int32)
        segments = np.zeros((size, T), np.int32)
        last = np.full((size,), -1, np.int32)
        for r, live in enumerate(g.rows):
            piece = live.row.ids[g.start : g.start + T]
            tokens[r, : len(piece)] = piece
            segments[r, : len(piece)] = 1
            if g.start <= len(live.row.ids) - 1 < g.start + T:
                last[r] = len(live.row.ids) - 1 - g.start
        g.caches, g.carry = slotted.prefill_chunk(
            self.cfg, self.params, g.caches, jnp.asarray(tokens), jnp.asarray(segments), jnp.int32(g.start),
            jnp.asarray(last), g.carry,
        )  # fmt: skip
        self.counters["prefill_tokens"] += int(segments.sum())
        g.start += T
        if g.start < longest:
            return
        where = np.full((size,), self.max_batch, np.int32)
        lengths = np.zeros((size,), np.int32)
        for r, live in enumerate(g.rows):
            self._reserved[live.slot] = False
            if live.gone():
                continue
            where[r], lengths[r] = live.slot, len(live.row.ids)
            self._place(live)
        self._slots = slotted.insert(self._slots, g.caches, jnp.asarray(where), jnp.asarray(lengths), g.carry)
        self._group = None

    def _place(self, live: _Live) -> None:
        b, row = live.slot, live.row
        self._slot_rows[b] = live
        self._fed[b] = False  # its first token is drawn from the prefill's logits
        s = self._sampling
        s.seeds[b], s.steps[b] = np.uint32(row.seed % 2**32), 0
        s.temperature[b], s.top_k[b] = row.temperature, min(row.top_k, self.cfg.model.vocab_size)
        s.top_p[b] = row.top_p
        self._update_ban(live)

    def _update_ban(self, live: _Live) -> None:
        eos = self.tokenizer.eos_id
        self._sampling.banned[live.slot] = eos if live.generated < live.row.min_tokens else -1

    def _free(self, b: int) -> None:
        self._slot_rows[b] = None
        self._fed[b] = False

    # decode steps --------------------------------------------------------------------------------------

    def _run_step(self, fed: np.ndarray, filtered: bool):
        return slotted.step(
            self.cfg,
            self.step_params,
            self._slots,
            jnp.asarray(self._tokens),
            jnp.asarray(fed),
            slotted.Sampling(*(jnp.asarray(a) for a in self._sampling)),
            vocab_limit=self.vocab_limit,
            top_n=TOP_N,
            filtered=filtered,
        )

    def _step(self) -> None:
        live_rows = [(b, r) for b, r in enumerate(self._slot_rows) if r is not None]
        filtered = any(r.row.temperature > 0 and (r.row.top_k > 0 or r.row.top_p < 1) for _, r in live_rows)
        self._slots, draw = self._run_step(self._fed, filtered)
        tokens, chosen, top_ids, top_lp = jax.device_get(draw)
        self.counters["steps"] += 1
        if self.on_step is not None:
            self.on_step(len(live_rows), self.max_batch)
        for b, live in live_rows:
            try:
                done = self._advance(live, int(tokens[b]), chosen[b], top_ids[b], top_lp[b])
            except Exception as exc:  # a row that cannot go on fails alone
                self._fail(live, f"{type(exc).__name__}: {exc}".splitlines()[0])
                done = True
            if done:
                self._free(b)
            else:
                self._fed[b], self._tokens[b] = True, tokens[b]
                self._sampling.steps[b] = live.generated
                self._update_ban(live)

    def _advance(self, live: _Live, token: int, logprob, top_ids, top_lp) -> bool:
        """Push one drawn token into a row; deliver what it releases. True when the row has ended."""
        row, stream = live.row, live.stream
        live.generated += 1
        self.counters["generated_tokens"] += 1
        info = ()
        if row.logprobs is not None:
            info = (TokenInfo(self.piece(token), float(logprob), self.piece.top(top_ids, top_lp, row.logprobs)),)
        if token == self.tokenizer.eos_id and not row.ignore_eos:
            text = stream.finish("stop")  # eos is reported (its log-prob too) but adds no text
        else:
            text = stream.push(token)
            if stream.finish_reason is None and live.generated == row.max_tokens:
                text += stream.finish("length")
        reason = stream.finish_reason
        live.job.deliver(Event(row.choice, text, info, reason, live.generated if reason else 0))
        return reason is not None


def _data_shards(mesh) -> int:
    """How many ways the mesh splits a batch (its ``data`` axes)."""
    return int(np.prod([mesh.shape[a] for a in mesh.axis_names if a.startswith("data")]))


def _powers(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself."""
    out = [1]
    while out[-1] < limit:
        out.append(min(out[-1] * 2, limit))
    return out


def _next_power(n: int, limit: int) -> int:
    """The smallest of :func:`_powers` (``limit``) that is at least n."""
    return next(p for p in _powers(limit) if p >= n)
