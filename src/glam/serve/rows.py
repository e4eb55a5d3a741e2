"""What a request is to the serving engine, and what comes back: rows, token reports, events, jobs, errors.

:func:`prompt_ids` reads a text or token-id prompt as the model's ids; :func:`check_row` refuses a row
that cannot fit the model's context before it is queued.

A request becomes one :class:`Row` per choice; the engine (``glam.serve.engine``) reports each row's
progress as :class:`Event`\\ s through its :class:`Job`'s ``deliver`` callback. Refusals are
:class:`Busy` (HTTP 429), :class:`Draining` (503) and :class:`RequestError` (400, naming the field).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from glam.errors import GLaMError

TOP_N = 5  # alternatives computed per token: the most a completions request may ask for (OpenAI: 5)


class Busy(GLaMError):
    """More requests than the engine admits at once; retry later (HTTP 429)."""


class Draining(GLaMError):
    """The server is shutting down and admits nothing new (HTTP 503)."""


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
    ignore_eos: bool = False  # eos is an ordinary token: the row goes on to max_tokens (vLLM)
    min_tokens: int = 0  # eos cannot be drawn before this many tokens (vLLM)


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
    finish_reason: str | None = None  # "stop" (eos or a stop string), "length", or "error"
    completion_tokens: int = 0  # on the last event: tokens generated for this choice (eos included)
    error: str | None = None  # set (with finish_reason "error") when the row failed


@dataclass
class Job:
    """A request's rows and where their events go; ``cancel`` (a client gone) stops its rows at the next step."""

    rows: list[Row]
    deliver: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


def prompt_ids(tokenizer, prompt: str | Sequence[int]) -> tuple[tuple[int, ...], bool, str]:
    """(ids bos first, whether the prompt began with bos itself, its text) of a text or token-id prompt."""
    bos = tokenizer.bos_id
    if isinstance(prompt, str):
        return (bos, *tokenizer.encode(prompt)), False, prompt
    ids = [int(t) for t in prompt]
    bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise RequestError(f"token id {bad[0]} is outside the vocabulary [0, {tokenizer.vocab_size})", "prompt")
    given = bool(ids) and ids[0] == bos
    return tuple(ids if given else [bos, *ids]), given, tokenizer.decode(ids)


def check_row(row: Row, max_seq_len: int) -> None:
    """Raise :class:`RequestError` when the row cannot fit the model's context."""
    n, limit = len(row.ids), max_seq_len
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
    if row.min_tokens > row.max_tokens:
        raise RequestError(f"min_tokens={row.min_tokens} is over max_tokens={row.max_tokens}", "min_tokens")
