"""The serving engine: one thread owns the model and runs requests in batches through the KV-cache decoder.

A request becomes :class:`Row`\\ s (one per choice of each prompt). **Requests join the next batch**:
the engine thread takes up to ``max_batch`` waiting rows in arrival order, runs them together — one
scoring pass for the rows that echo their prompt with log-probs, then a prefill and one decode step
per token (glam.inference.decode) — until every row of the batch has finished, and only then forms
the next batch from what arrived meanwhile. Rows never join a running batch: its rows share the KV
cache's slot index (decode.py), so a newcomer would need its own. A batch ends as soon as its last
row does (eos, a stop string, its own ``max_tokens``, or its client gone).

Each row has its own sampler and random stream (``glam.inference.sampling.draw_rows``), so a seeded
request draws the same tokens whatever it is batched with, up to float rounding of the padded shapes.

Admission is bounded: at most ``max_queue`` requests are admitted (waiting or running); the caller
gets :class:`Busy` beyond that (the server answers 429), never an unbounded backlog. Results go back
through each job's ``deliver`` callback, called on the engine thread.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from glam.config import GLaMConfig
from glam.errors import GLaMError
from glam.inference.decode import bucket_length, decode_params, decode_step, left_pad, prefill
from glam.inference.generate import _vocab_limit
from glam.inference.sampling import GREEDY, draw_rows
from glam.inference.scoring import ScoreRow, make_batch, token_logprobs
from glam.inference.text import TextStream

TOP_N = 5  # alternatives computed per token: the most a completions request may ask for (OpenAI: 5)


class Busy(GLaMError):
    """More requests than the engine admits at once; retry later (HTTP 429)."""


class RequestError(GLaMError):
    """A request the model cannot serve (HTTP 400); ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Row:
    """One choice of one prompt: what to generate and what to report."""

    ids: tuple[int, ...]  # the prompt as the model reads it, bos first
    given_bos: bool  # the prompt itself began with bos (else the engine put it there)
    echo_text: str  # the prompt's text, returned first when ``echo``
    max_tokens: int  # 0: only the echo
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: int | None = None  # alternatives per token (0..TOP_N); None: no log-probs
    echo: bool = False
    choice: int = 0  # index among the request's choices


@dataclass(frozen=True)
class TokenInfo:
    """One token of a choice: its text piece, log p (None where nothing precedes it) and the top alternatives."""

    piece: str
    logprob: float | None
    top: dict[str, float] | None


@dataclass(frozen=True)
class Event:
    """What one choice produced since its last event; ``finish_reason`` on its last one."""

    choice: int
    text: str
    tokens: tuple[TokenInfo, ...] = ()
    finish_reason: str | None = None  # "stop" (eos or a stop string) or "length"
    completion_tokens: int = 0  # on the last event: tokens generated for this choice
    error: str | None = None  # set (with finish_reason "error") when the batch failed


@dataclass
class Job:
    """A request's rows and where their events go; ``cancel`` (a client gone) stops its rows at the next step."""

    rows: list[Row]
    deliver: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """Batched generation and scoring for one model (cfg, params, tokenizer) on a background thread.

    Args:
      max_batch: rows decoded together (the batch every compiled step has; 1 turns batching off).
      max_queue: requests admitted at once, waiting or running; beyond it :meth:`admit` raises Busy.
    """

    def __init__(self, cfg: GLaMConfig, params: dict, tokenizer, *, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1:
            raise GLaMError(f"max_batch={max_batch}, max_queue={max_queue}: both must be at least 1")
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_seq_len = cfg.model.max_seq_len
        self.vocab_limit = _vocab_limit(cfg, tokenizer)
        self.step_params = decode_params(params)
        self.pieces = [_piece(tokenizer, i) for i in range(tokenizer.vocab_size)]
        self._pending: collections.deque[tuple[Job, Row]] = collections.deque()
        self._cond = threading.Condition()
        self._admitted = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="glam-serve-engine", daemon=True)
        self.batches = 0  # batches run so far (the load benchmark reads it)
        self.running: list[tuple[Job, Row]] = []  # the batch being run

    def piece(self, token_id: int) -> str:
        """The text a completion reports for a token (ids past the tokenizer's vocabulary: ``<id N>``)."""
        return self.pieces[token_id] if token_id < len(self.pieces) else f"<id {token_id}>"

    # -- the request side (any thread) -------------------------------------------------------------------

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    @property
    def in_flight(self) -> int:
        return self._admitted

    def admit(self) -> None:
        """Count one more request in, or raise :class:`Busy` when ``max_queue`` are in already."""
        with self._cond:
            if self._admitted >= self.max_queue:
                raise Busy(f"{self._admitted} requests are in flight (the server admits {self.max_queue}); retry later")
            self._admitted += 1

    def release(self) -> None:
        """The request's HTTP exchange is over (answered, failed or its client gone)."""
        with self._cond:
            self._admitted -= 1

    def prompt_ids(self, prompt: str | Sequence[int]) -> tuple[tuple[int, ...], bool, str]:
        """(ids bos first, whether the prompt began with bos itself, its text) of a text or token-id prompt."""
        bos = self.tokenizer.bos_id
        if isinstance(prompt, str):
            return (bos, *self.tokenizer.encode(prompt)), False, prompt
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is outside the vocabulary [0, {self.tokenizer.vocab_size})", "prompt"
            )
        given = bool(ids) and ids[0] == bos
        return tuple(ids if given else [bos, *ids]), given, self.tokenizer.decode(ids)

    def check(self, row: Row) -> None:
        """Raise :class:`RequestError` when the row cannot fit the model's context."""
        n, limit = len(row.ids), self.max_seq_len
        if row.max_tokens == 0:
            if n - 1 > limit:
                raise RequestError(
                    f"the prompt is {n} tokens with bos; model.max_seq_len={limit} scores at most {limit + 1}",
                    "prompt",
                )
            return
        if n + row.max_tokens > limit:
            fix = f"ask for at most {limit - n} tokens" if n < limit else "shorten the prompt"
            raise RequestError(
                f"the prompt is {n} tokens with bos and max_tokens={row.max_tokens}: together over the model's "
                f"context of {limit} tokens; {fix}",
                "max_tokens" if n < limit else "prompt",
            )

    def submit(self, job: Job) -> None:
        """Queue a job's rows (already checked) for the next batches."""
        for row in job.rows:
            self.check(row)
        with self._cond:
            self._pending.extend((job, row) for row in job.rows)
            self._cond.notify()

    # -- the engine thread -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = self._take_batch()
            if not batch:
                continue
            self.running = batch
            try:
                self._run_batch(batch)
            except Exception as exc:  # a failed batch fails its requests, never the server
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                for job, row in batch:
                    job.deliver(Event(row.choice, "", finish_reason="error", error=message))
            self.batches += 1
            self.running = []

    def _take_batch(self) -> list[tuple[Job, Row]]:
        """Up to max_batch waiting rows, oldest first, whose longest prompt and longest output fit together."""
        batch, keep = [], collections.deque()
        longest = new = 0
        while self._pending:
            job, row = self._pending.popleft()
            if job.cancelled.is_set():
                continue
            n, m = max(longest, len(row.ids)), max(new, row.max_tokens)
            if len(batch) < self.max_batch and (m == 0 or n + m <= self.max_seq_len):
                batch.append((job, row))
                longest, new = n, m
            else:
                keep.append((job, row))
        self._pending.extendleft(reversed(keep))
        return batch

    def _run_batch(self, batch: list[tuple[Job, Row]]) -> None:
        for job, row in batch:
            if row.echo:
                job.deliver(Event(row.choice, row.echo_text))
        self._score_prompts([(job, row) for job, row in batch if row.echo and row.logprobs is not None])
        generating = [(job, row) for job, row in batch if row.max_tokens > 0]
        for job, row in batch:
            if row.max_tokens == 0:
                job.deliver(Event(row.choice, "", finish_reason="length"))
        if generating:
            self._generate(generating)

    def _score_prompts(self, rows: list[tuple[Job, Row]]) -> None:
        """Deliver every prompt token's log-prob and alternatives (one forward pass per batch of rows)."""
        scored = [(job, row) for job, row in rows if len(row.ids) > 1]
        for job, row in rows:
            if len(row.ids) == 1 and row.given_bos:
                job.deliver(Event(row.choice, "", (TokenInfo(self.piece(row.ids[0]), None, None),)))
        for start in range(0, len(scored), self.max_batch):
            chunk = scored[start : start + self.max_batch]
            score_rows = [ScoreRow(r.ids[:-1], r.ids[1:], len(r.ids) - 1) for _, r in chunk]
            batch = make_batch(score_rows, self.max_batch, self.max_seq_len)
            log_p, top_ids, top_lp = jax.device_get(token_logprobs(self.cfg, self.params, batch, top_n=TOP_N))
            for b, (job, row) in enumerate(chunk):
                infos = [TokenInfo(self.piece(row.ids[0]), None, None)] if row.given_bos else []
                for j in range(len(row.ids) - 1):
                    top = self._top(top_ids[b, j], top_lp[b, j], row.logprobs)
                    infos.append(TokenInfo(self.piece(row.ids[j + 1]), float(log_p[b, j]), top))
                job.deliver(Event(row.choice, "", tuple(infos)))

    def _top(self, ids: np.ndarray, lps: np.ndarray, n: int) -> dict[str, float]:
        top: dict[str, float] = {}
        for i, lp in zip(ids[:n], lps[:n]):
            top.setdefault(self.piece(int(i)), float(lp))  # pieces that spell alike: the likelier one
        return top

    def _generate(self, batch: list[tuple[Job, Row]]) -> None:
        B, eos = self.max_batch, self.tokenizer.eos_id
        rows = [row for _, row in batch]
        new = max(r.max_tokens for r in rows)
        prompts = left_pad([r.ids for r in rows], max_tokens=new, max_seq_len=self.max_seq_len, batch_size=B)
        cache_len = bucket_length(prompts.tokens.shape[1] + new, self.max_seq_len)  # few distinct lengths compile
        state, _ = prefill(
            self.cfg,
            self.params,
            *(jnp.asarray(a) for a in prompts[:3]),
            jax.random.key(0),
            sampler=GREEDY,
            cache_len=cache_len,
            vocab_limit=self.vocab_limit,
        )
        pad = B - len(rows)
        seeds = jnp.asarray([np.uint32(r.seed % 2**32) for r in rows] + [0] * pad, jnp.uint32)
        temperature = jnp.asarray([r.temperature for r in rows] + [0.0] * pad, jnp.float32)
        top_k = jnp.asarray([r.top_k for r in rows] + [0] * pad, jnp.int32)
        top_p = jnp.asarray([r.top_p for r in rows] + [1.0] * pad, jnp.float32)
        filtered = any(r.temperature > 0 and (r.top_k > 0 or r.top_p < 1) for r in rows)
        streams = [TextStream(self.tokenizer.decode, r.stop) for r in rows]
        active = np.zeros(B, bool)
        active[: len(rows)] = True
        for step in range(new):
            draw = draw_rows(
                state.logits,
                seeds,
                jnp.asarray(step, jnp.int32),
                temperature,
                top_k,
                top_p,
                vocab_limit=self.vocab_limit,
                top_n=TOP_N,
                filtered=filtered,
            )
            tokens, chosen, top_ids, top_lp = jax.device_get(draw)
            for b, ((job, row), stream) in enumerate(zip(batch, streams)):
                if not active[b]:
                    continue
                if job.cancelled.is_set():
                    active[b] = False
                    continue
                self._advance_row(job, row, stream, int(tokens[b]), chosen[b], top_ids[b], top_lp[b], eos)
                active[b] = stream.finish_reason is None
            if not active.any() or step == new - 1:
                return
            state, _ = decode_step(
                self.cfg, self.step_params, state, draw.tokens, jnp.asarray(active), sampler=GREEDY,
                vocab_limit=self.vocab_limit,
            )  # fmt: skip

    def _advance_row(self, job, row, stream, token, logprob, top_ids, top_lp, eos) -> None:
        """Push one drawn token into a row's text; deliver what it releases (and the finish, if it ends)."""
        if token == eos:
            text, infos = stream.finish("stop"), ()
        else:
            text = stream.push(token)
            top = self._top(top_ids, top_lp, row.logprobs) if row.logprobs is not None else None
            infos = (TokenInfo(self.piece(token), float(logprob), top),) if row.logprobs is not None else ()
            if stream.finish_reason is None and len(stream.tokens) == row.max_tokens:
                text += stream.finish("length")
        reason = stream.finish_reason
        if reason == "eos":
            reason = "stop"
        done = len(stream.tokens) if reason else 0
        job.deliver(Event(row.choice, text, infos, reason, done))


def _piece(tokenizer, token_id: int) -> str:
    """A token's text as completions report it: its piece with SentencePiece's ▁ as a space, bytes decoded."""
    piece = tokenizer.id_to_piece(token_id)
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        byte = int(piece[3:5], 16)
        return chr(byte) if byte < 0x80 else piece
    return piece.replace("\u2581", " ")
