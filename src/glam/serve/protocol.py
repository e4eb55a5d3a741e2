"""The OpenAI completions protocol as glam serves it: request validation and response bodies.

Requests are validated strictly (pydantic, no coercion: ``"max_tokens": "16"`` is an error, not 16)
and a field glam does not know is rejected by name. Fields glam knows but cannot honour
(``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``suffix``, ``best_of`` > ``n``) are
accepted only at their neutral values, so a client is never silently given something it did not ask
for. Defaults are OpenAI's: ``max_tokens`` 16, ``temperature`` 1 (sampling; send 0 for greedy).

``prompt`` is a string, a list of strings, a list of token ids, or a list of token-id lists. glam
reads every prompt after bos (as every training document starts, docs/design.md): the server puts
bos first unless a token-id prompt already starts with it.

``logprobs: k`` (0..5) reports, for every token of a choice, its text piece, log p(token | what
precedes it, after bos) and the k likeliest alternatives; with ``echo`` the prompt's tokens come
first (the first gets null only when the prompt itself gave its bos). Token pieces are SentencePiece
pieces with ▁ shown as a space, so ``text_offset`` counts characters of the pieces, which can differ
from the decoded text around the first token.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glam.serve.engine import TOP_N, RequestError, Row, TokenInfo

MAX_N = 16  # choices per prompt
MAX_PROMPTS = 256  # prompts per request


class CompletionRequest(BaseModel):
    """``POST /v1/completions``: OpenAI's fields (and vLLM's ``top_k``), checked without coercion."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = None
    prompt: Any = None  # checked by hand in :func:`prompts_of`: four shapes, one clear message
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    logprobs: int | None = Field(None, ge=0, le=TOP_N)
    echo: bool = False
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def parse_request(body: Any) -> CompletionRequest:
    """A decoded JSON body → a checked request, or :class:`RequestError` naming the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(part) for part in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            raise RequestError(f"unrecognized request argument supplied: {param}", param) from None
        raise RequestError(f"{param}: {err['msg']} (got {err.get('input')!r})", param) from None
    unsupported = [
        ("presence_penalty", req.presence_penalty != 0),
        ("frequency_penalty", req.frequency_penalty != 0),
        ("logit_bias", bool(req.logit_bias)),
        ("suffix", req.suffix is not None),
        ("best_of", req.best_of is not None and req.best_of != req.n),
    ]
    for name, used in unsupported:
        if used:
            raise RequestError(f"{name} is not supported by glam serve; leave it out", name)
    if req.max_tokens == 0 and not req.echo:
        raise RequestError("max_tokens=0 returns nothing without echo=true; ask for at least 1 token", "max_tokens")
    if req.stream and req.max_tokens == 0:
        raise RequestError("stream=true needs max_tokens >= 1", "stream")
    if isinstance(req.stop, list) and len(req.stop) > 4:
        raise RequestError(f"stop: at most 4 stop strings (got {len(req.stop)})", "stop")
    return req


def prompts_of(req: CompletionRequest) -> list[str | list[int]]:
    """The request's prompts as a list of strings and token-id lists."""
    p = req.prompt
    shape = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if p is None:
        raise RequestError(f"prompt is required: give {shape}", "prompt")
    if isinstance(p, str):
        return [p]
    if not isinstance(p, list) or not p:
        raise RequestError(f"prompt must be {shape} (got {type(p).__name__ if p != [] else 'an empty list'})", "prompt")
    if all(_is_id(t) for t in p):
        return [list(p)]
    if all(isinstance(s, str) for s in p) or all(isinstance(s, list) and all(_is_id(t) for t in s) for s in p):
        if len(p) > MAX_PROMPTS:
            raise RequestError(f"prompt: at most {MAX_PROMPTS} prompts per request (got {len(p)})", "prompt")
        return list(p)
    raise RequestError(f"prompt must be {shape}; its items mix types or are not integers", "prompt")


def _is_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def rows_of(req: CompletionRequest, prompts: list[tuple[tuple[int, ...], bool, str]], random_seed: int) -> list[Row]:
    """One :class:`Row` per choice: choice ``i·n + c`` is choice c of prompt i (OpenAI's order)."""
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    seed = req.seed if req.seed is not None else random_seed
    greedy = req.temperature == 0
    return [
        Row(
            ids=ids,
            given_bos=given,
            echo_text=text,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=0 if greedy else req.top_k,
            top_p=1.0 if greedy else req.top_p,
            stop=stop,
            seed=(seed + 7919 * c) % 2**32,  # choices of one prompt draw differently, reproducibly
            logprobs=req.logprobs,
            echo=req.echo,
            choice=i * req.n + c,
        )
        for i, (ids, given, text) in enumerate(prompts)
        for c in range(req.n)
    ]


class Choice:
    """A choice being assembled from engine events (text, tokens, finish)."""

    def __init__(self, index: int, offset: int, logprobs: bool):
        self.index, self.text, self.finish_reason = index, "", None
        self.tokens: list[TokenInfo] = []
        self.offset, self.logprobs, self.completion_tokens = offset, logprobs, 0

    def logprobs_body(self, tokens: list[TokenInfo]) -> dict | None:
        if not self.logprobs:
            return None
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(t.piece)
        return {
            "tokens": [t.piece for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [t.top for t in tokens],
            "text_offset": offsets,
        }

    def body(self) -> dict:
        return {
            "text": self.text,
            "index": self.index,
            "logprobs": self.logprobs_body(self.tokens),
            "finish_reason": self.finish_reason,
        }


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def completion_body(cid: str, model: str, choices: list[dict], usage: dict | None) -> dict:
    body = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
