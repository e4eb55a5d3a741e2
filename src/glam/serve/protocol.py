"""The OpenAI completions protocol as glam serves it: request validation and response bodies.

Requests are validated strictly (pydantic, no coercion: ``"max_tokens": "16"`` is an error, not 16)
and a field glam does not know is rejected by name, also inside ``stream_options``. Every number is
range-checked here, at admission, so nothing out of range reaches the engine (``"top_k": 2**40`` is a
400 naming ``top_k``, never a failed batch). Fields glam knows but cannot honour
(``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``suffix``, ``best_of`` > ``n``) are
accepted only at their neutral values, so a client is never silently given something it did not ask
for. Defaults are OpenAI's: ``max_tokens`` 16, ``temperature`` 1 (sampling; send 0 for greedy).
vLLM's ``top_k`` (-1 or 0: off), ``ignore_eos`` and ``min_tokens`` are accepted.

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

from glam.serve.rows import TOP_N, RequestError, Row, TokenInfo

MAX_N = 16  # choices per prompt
MAX_PROMPTS = 256  # prompts per request
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
INT32_MAX = 2**31 - 1  # the largest token count or top_k a request may name
MAX_DEPTH = 32  # JSON nesting deeper than this is refused (no request field nests past 4)


class StreamOptions(BaseModel):
    """``stream_options``: OpenAI's ``include_usage`` and vLLM's ``continuous_usage_stats``; nothing else."""

    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage (so far) in every chunk


class SamplingRequest(BaseModel):
    """The fields completions and chat completions share, checked without coercion and range-checked."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    model: str | None = None
    max_tokens: int = Field(16, ge=0, le=INT32_MAX)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=INT32_MAX)  # vLLM: -1 or 0 is off
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # vLLM: eos does not end the row; it is reported as an ordinary token
    min_tokens: int = Field(0, ge=0, le=INT32_MAX)  # vLLM: eos is masked until this many tokens


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: OpenAI's fields and vLLM's ``top_k``, ``ignore_eos``, ``min_tokens``."""

    prompt: Any = None  # checked by hand in :func:`prompts_of`: four shapes, one clear message
    logprobs: int | None = Field(None, ge=0, le=TOP_N)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


def validate(model: type[BaseModel], body: Any) -> Any:
    """A decoded JSON body → a checked request of ``model``, or :class:`RequestError` naming the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(part) for part in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            raise RequestError(f"unrecognized request argument supplied: {param}", param) from None
        got = repr(err.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        raise RequestError(f"{param}: {err['msg']} (got {got})", param) from None


def check_sampling(req: SamplingRequest, max_tokens: int | None) -> None:
    """The checks that span fields (``max_tokens``: the request's, or None when the server picks it)."""
    unsupported = [
        ("presence_penalty", req.presence_penalty != 0),
        ("frequency_penalty", req.frequency_penalty != 0),
        ("logit_bias", bool(req.logit_bias)),
    ]
    for name, used in unsupported:
        if used:
            raise RequestError(f"{name} is not supported by glam serve; leave it out", name)
    if req.stream_options is not None and not req.stream:
        raise RequestError("stream_options is only allowed with stream=true", "stream_options")
    if isinstance(req.stop, list) and len(req.stop) > MAX_STOP:
        raise RequestError(f"stop: at most {MAX_STOP} stop strings (got {len(req.stop)})", "stop")
    if max_tokens is not None and req.min_tokens > max_tokens:
        raise RequestError(
            f"min_tokens={req.min_tokens} is more than max_tokens={max_tokens}; lower min_tokens", "min_tokens"
        )


def parse_request(body: Any) -> CompletionRequest:
    """A decoded JSON body → a checked completions request, or :class:`RequestError` naming the field."""
    req = validate(CompletionRequest, body)
    check_sampling(req, req.max_tokens)
    if req.suffix is not None:
        raise RequestError("suffix is not supported by glam serve; leave it out", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise RequestError("best_of is not supported by glam serve; leave it out", "best_of")
    if req.max_tokens == 0 and not req.echo:
        raise RequestError("max_tokens=0 returns nothing without echo=true; ask for at least 1 token", "max_tokens")
    if req.stream and req.max_tokens == 0:
        raise RequestError("stream=true needs max_tokens >= 1", "stream")
    return req


def check_json(value: Any) -> None:
    """Refuse what JSON allows but a request must not hold: nesting past MAX_DEPTH, lone surrogates.

    ``"\\ud800"`` is valid JSON but no Unicode text (it cannot be encoded as UTF-8, so the tokenizer
    would fail on it); the error names where it is, e.g. ``prompt.2`` or ``messages.0.content``.
    """
    todo: list[tuple[Any, str, int]] = [(value, "", 0)]
    while todo:
        item, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise RequestError(f"the request body nests deeper than {MAX_DEPTH} levels", "body")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_text(key, path or "body")
                todo.append((sub, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            todo.extend((sub, f"{path}.{i}" if path else str(i), depth + 1) for i, sub in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = path or "body"
        raise RequestError(
            f"{where}: holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not "
            "Unicode text; send valid UTF-8 (a surrogate pair or the character itself)",
            where,
        ) from None


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


def rows_of(
    req: SamplingRequest,
    prompts: list[tuple[tuple[int, ...], bool, str]],
    random_seed: int,
    *,
    max_tokens: int | None = None,
    logprobs: int | None = None,
    echo: bool = False,
    extra_stop: tuple[str, ...] = (),
) -> list[Row]:
    """One :class:`Row` per choice: choice ``i·n + c`` is choice c of prompt i (OpenAI's order).

    ``max_tokens``, ``logprobs`` and ``echo`` default to the completions request's own fields.
    """
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    stop += tuple(s for s in extra_stop if s not in stop)
    seed = req.seed if req.seed is not None else random_seed
    greedy = req.temperature == 0
    if isinstance(req, CompletionRequest):
        max_tokens, logprobs, echo = req.max_tokens, req.logprobs, req.echo
    return [
        Row(
            ids=ids,
            given_bos=given,
            echo_text=text,
            max_tokens=max_tokens if max_tokens is not None else req.max_tokens,
            temperature=req.temperature,
            top_k=0 if greedy else max(req.top_k, 0),
            top_p=1.0 if greedy else req.top_p,
            stop=stop,
            seed=(seed + 7919 * c) % 2**32,  # choices of one prompt draw differently, reproducibly
            logprobs=logprobs,
            echo=echo,
            choice=i * req.n + c,
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
        )
        for i, (ids, given, text) in enumerate(prompts)
        for c in range(req.n)
    ]


class Choice:
    """A choice being assembled from engine events (text, tokens, finish, tokens generated so far)."""

    def __init__(self, index: int, offset: int, logprobs: bool, echoed: int = 0, echo: bool = False):
        self.index, self.text, self.finish_reason = index, "", None
        self.tokens: list[TokenInfo] = []
        self.offset, self.logprobs, self.completion_tokens = offset, logprobs, 0
        self.echoed, self.echo, self.events = echoed, echo, 0  # prompt tokens echoed with log-probs

    def apply(self, text: str, tokens, finish_reason: str | None, completion_tokens: int) -> None:
        self.text += text
        self.tokens.extend(tokens)
        self.events += 1
        if finish_reason:
            self.finish_reason, self.completion_tokens = finish_reason, completion_tokens

    @property
    def generated(self) -> int:
        """Tokens generated so far: exact once finished; before, counted from the events (one per token)."""
        if self.finish_reason:
            return self.completion_tokens
        if self.logprobs:
            return max(0, len(self.tokens) - self.echoed)
        return max(0, self.events - self.echo)

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


def completion_id(prefix: str = "cmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


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


class CompletionFormat:
    """Response bodies of /v1/completions (the app's exchange calls these)."""

    def __init__(self, model: str):
        self.model, self.prefix = model, "cmpl"

    def final(self, cid, choices, usage) -> dict:
        return completion_body(cid, self.model, [c.body() for c in choices], usage)

    def opening(self, cid, choices) -> list[dict]:
        return []

    def chunk(self, cid, event, choice, tokens, usage) -> dict:
        part = {
            "text": event.text,
            "index": event.choice,
            "logprobs": choice.logprobs_body(tokens),
            "finish_reason": event.finish_reason,
        }
        return completion_body(cid, self.model, [part], usage)

    def usage_chunk(self, cid, usage) -> dict:
        return completion_body(cid, self.model, [], usage)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
