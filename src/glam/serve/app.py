"""``glam serve``'s HTTP application (FastAPI): OpenAI-compatible completions over :class:`Engine`.

Routes:

- ``POST /v1/completions`` — glam.serve.protocol; ``POST /v1/chat/completions`` — glam.serve.chat
  (a base model's chat through a plain template). ``stream: true`` answers with server-sent events
  (one ``data: {...}`` chunk per released piece of text, then ``data: [DONE]``).
- ``GET /v1/models``; ``GET /health`` (200 once warmed up, 503 while warming up or draining);
  ``GET /metrics`` (Prometheus, glam.serve.metrics).
- ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize`` — vLLM's tokenizer endpoints, which
  lm-evaluation-harness's ``local-completions`` model detects and uses, so it tokenises with the
  model's own SentencePiece model. ``/tokenize`` maps the exact text of a special token (``<s>``,
  ``</s>``, ``<pad>``) to its id, so lm-eval's bos/eos lookups find the real ids.

Every error is OpenAI's JSON shape with a 4xx (400 a bad field, named in ``param``; 401 no or a wrong
API key; 404; 413 a body over ``max_body_bytes``; 415 a body that is not JSON; 429 with
``Retry-After`` when the engine admits no more; 503 while draining) or 500 when generation fails; the
server keeps serving. A client that disconnects — streaming or not — has its job cancelled at once:
its admission slot is freed and its rows stop at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from glam.serve import chat, protocol
from glam.serve.auth import ApiKey
from glam.serve.engine import Engine
from glam.serve.metrics import CONTENT_TYPE, Metrics, RequestCounter
from glam.serve.rows import Busy, Draining, Event, Job, RequestError

RETRY_AFTER_S = 1
log = logging.getLogger("uvicorn.error")


class ApiError(Exception):
    """An HTTP error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


class _ClientGone(Exception):
    """The client closed the connection before its request body arrived whole."""


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app reads it whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return _error(413, f"the request body is over {limit} bytes; send a smaller one", "body")


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", headers=None):
    return JSONResponse(protocol.error_body(message, kind, param), status_code=status, headers=headers)


@dataclass
class ServerState:
    """What the routes share besides the engine: the drain flag and the metrics."""

    engine: Engine
    metrics: Metrics
    draining: bool = False

    def drain(self) -> None:
        """Admit nothing new (503); requests already admitted run to their end."""
        self.draining = True
        self.engine.drain()

    @property
    def ready(self) -> bool:
        return self.engine.ready and not self.draining


def create_app(
    engine: Engine,
    *,
    model_name: str = "glam",
    max_body_bytes: int = 4 << 20,
    api_key: str | None = None,
    chat_template: chat.ChatTemplate | None = None,
) -> FastAPI:
    """The FastAPI app serving ``engine`` (start the engine's thread first: ``engine.start()``).

    ``api_key``: every route but ``/health`` then needs ``Authorization: Bearer KEY``.
    ``chat_template``: for ``/v1/chat/completions`` (default: glam.serve.chat's plain template).
    ``app.state.glam`` is the :class:`ServerState` (``.drain()``, ``.metrics``).
    """
    app = FastAPI(title="glam serve", docs_url=None, redoc_url=None, openapi_url=None)
    tok = engine.tokenizer
    specials = {tok.id_to_piece(i): i for i in (tok.pad_id, tok.bos_id, tok.eos_id)}
    template = chat_template or chat.ChatTemplate(
        bos_token=tok.id_to_piece(tok.bos_id), eos_token=tok.id_to_piece(tok.eos_id)
    )
    state = app.state.glam = ServerState(engine, Metrics(engine))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.param, exc.kind, exc.headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return _error(400, str(exc), exc.param)

    @app.exception_handler(_ClientGone)
    async def client_gone(request: Request, exc: _ClientGone):
        log.info("client left while sending its request body (%s %s)", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    @app.get("/health")
    async def health():
        status = "draining" if state.draining else "ok" if state.ready else "warming up"
        body = {
            "status": status,
            "ready": state.ready,
            "model": model_name,
            "requests_in_flight": engine.in_flight,
            "max_batch": engine.max_batch,
            "max_queue": engine.max_queue,
            "max_seq_len": engine.max_seq_len,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "glam"}
        return {"object": "list", "data": [card]}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {
            "tokenizer_class": "SentencePiece",
            "bos_token": tok.id_to_piece(tok.bos_id),
            "eos_token": tok.id_to_piece(tok.eos_id),
            "pad_token": tok.id_to_piece(tok.pad_id),
            "model_max_length": engine.max_seq_len,
            "vocab_size": tok.vocab_size,
        }

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await _json(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ApiError(400, "prompt must be a string", "prompt")
        ids = [specials[text]] if text in specials else tok.encode(text)
        if body.get("add_special_tokens") and text not in specials:
            ids = [tok.bos_id, *ids]
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_seq_len}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await _json(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(protocol._is_id(t) and 0 <= t < tok.vocab_size for t in ids):
            raise ApiError(400, f"tokens must be a list of token ids in [0, {tok.vocab_size})", "tokens")
        return {"prompt": tok.decode(ids)}

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise RequestError(f"model {name!r} is not served here; this server serves {model_name!r}", "model")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = protocol.parse_request(await _json(request))
        check_model(req.model)
        prompts = [engine.prompt_ids(p) for p in protocol.prompts_of(req)]
        rows = protocol.rows_of(req, prompts, _random_seed())
        choices = [
            protocol.Choice(
                i,
                0 if req.echo else len(text),
                req.logprobs is not None,
                echoed=len(ids) - 1 + given if req.echo and req.logprobs is not None else 0,
                echo=req.echo,
            )
            for i, (ids, given, text) in enumerate(p for p in prompts for _ in range(req.n))
        ]
        run = _Run(
            state,
            rows,
            choices,
            sum(len(ids) for ids, _, _ in prompts),
            protocol.CompletionFormat(model_name),
            req.echo,
        )
        return await run.respond(request, req.stream, req.stream_options)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = chat.parse_chat(await _json(request))
        check_model(req.model)
        ids, given, text = engine.prompt_ids(template.render(chat.messages_of(req)))
        max_tokens = chat.requested_max_tokens(req)
        if max_tokens is None:  # as vLLM: what the context leaves
            max_tokens = engine.max_seq_len - len(ids)
            if max_tokens < 1:
                raise RequestError(
                    f"the chat renders to {len(ids)} tokens with bos: no room left in the model's context of "
                    f"{engine.max_seq_len}; send fewer or shorter messages",
                    "messages",
                )
            if req.min_tokens > max_tokens:
                raise RequestError(f"min_tokens={req.min_tokens}: only {max_tokens} fit the context", "min_tokens")
        top = req.top_logprobs or 0 if req.logprobs else None
        rows = protocol.rows_of(
            req, [(ids, given, text)], _random_seed(), max_tokens=max_tokens, logprobs=top, extra_stop=template.stop
        )
        choices = [protocol.Choice(i, 0, req.logprobs) for i in range(len(rows))]
        run = _Run(state, rows, choices, len(ids), chat.ChatFormat(model_name, top), False)
        return await run.respond(request, req.stream, req.stream_options)

    routes = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(RequestCounter, metrics=state.metrics, routes=routes)
    return app


def _random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; send numbers as finite values")


async def _json(request: Request) -> Any:
    """The body as checked JSON, or an :class:`ApiError` / :class:`RequestError` saying why it is not."""
    ctype = request.headers.get("content-type")
    if ctype is not None:
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise ApiError(
                415,
                f"Content-Type {ctype!r} is not supported; send JSON with Content-Type: application/json",
                "content-type",
            )
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise _ClientGone from None
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {protocol.MAX_DEPTH} levels", "body") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", "body") from None
    protocol.check_json(body)
    return body


_GONE = object()  # put on a job's event queue when its (non-streaming) client disconnects


class _Run:
    """One admitted request: its job on the engine, its choices, and how its answer is shaped."""

    def __init__(self, state: ServerState, rows, choices, prompt_tokens: int, fmt, echo: bool):
        self.state, self.engine, self.rows, self.choices = state, state.engine, rows, choices
        self.prompt_tokens, self.fmt = prompt_tokens, fmt
        self.timer = state.metrics.timer(echo)
        self.events: asyncio.Queue = asyncio.Queue()
        self.cid = protocol.completion_id(fmt.prefix)
        self.closed = False

    def _admit(self) -> None:
        for row in self.rows:
            self.engine.check(row)
        if self.state.draining:
            raise ApiError(503, "the server is shutting down and admits no new requests", kind="server_error")
        try:
            self.engine.admit()
        except Busy as exc:
            raise ApiError(
                429, str(exc), kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from None
        except Draining as exc:
            raise ApiError(503, str(exc), kind="server_error") from None
        loop = asyncio.get_running_loop()
        self.job = Job(self.rows, lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event))
        try:
            self.engine.submit(self.job)
        except BaseException:
            self.engine.release()
            raise

    async def respond(self, request: Request, stream: bool, options: protocol.StreamOptions | None) -> Response:
        self._admit()
        if stream:
            return _EventStream(self._stream(options or protocol.StreamOptions()), self.close)
        return await self._answer(request)

    def close(self) -> None:
        """The exchange is over (answered, failed or its client gone): cancel what is left, free the slot once."""
        if not self.closed:
            self.closed = True
            self.job.cancel()  # a no-op when every row is done; stops the rows of a client that left
            self.engine.release()

    def _apply(self, event: Event) -> list:
        self.timer.event()
        self.choices[event.choice].apply(event.text, event.tokens, event.finish_reason, event.completion_tokens)
        return list(event.tokens)

    def _usage(self) -> dict:
        return protocol.usage_body(self.prompt_tokens, sum(c.generated for c in self.choices))

    def _done(self) -> None:
        self.timer.done(self.prompt_tokens, sum(c.generated for c in self.choices))

    async def _answer(self, request: Request) -> Response:
        """Wait for every choice to finish, then answer in one body; a client that leaves cancels the job."""
        watcher = asyncio.create_task(self._watch(request))
        try:
            left = len(self.choices)
            while left:
                event = await self.events.get()
                if event is _GONE:
                    return Response(status_code=499)
                if event.error:
                    self.job.cancel()
                    raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
                self._apply(event)
                left -= event.finish_reason is not None
            self._done()
            return JSONResponse(self.fmt.final(self.cid, self.choices, self._usage()))
        finally:
            watcher.cancel()
            self.close()

    async def _watch(self, request: Request) -> None:
        """Read the connection until the client leaves (``http.disconnect``), then cancel the job.

        ``request.is_disconnected()`` only looks when called, and a loop that waits for events never
        calls it while events keep coming; reading ``receive`` in a task of its own notices at once.
        """
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the connection broke some other way: the same as gone
            pass
        self.job.cancel()
        self.events.put_nowait(_GONE)

    async def _stream(self, options: protocol.StreamOptions) -> AsyncIterator[str]:
        """Server-sent events: a chunk per event, ``[DONE]`` last. Cancelled (client gone): the job stops."""
        continuous = options.continuous_usage_stats
        try:
            for body in self.fmt.opening(self.cid, self.choices):
                yield _sse(body)
            left = len(self.choices)
            while left:
                event = await self.events.get()
                if event.error:
                    yield _sse(protocol.error_body(f"generation failed: {event.error}", "server_error"))
                    break
                tokens = self._apply(event)
                left -= event.finish_reason is not None
                choice = self.choices[event.choice]
                yield _sse(self.fmt.chunk(self.cid, event, choice, tokens, self._usage() if continuous else None))
            if not left:
                self._done()
                if options.include_usage:
                    yield _sse(self.fmt.usage_chunk(self.cid, self._usage()))
            yield "data: [DONE]\n\n"
        finally:
            self.close()


class _EventStream(StreamingResponse):
    """Server-sent events that close their exchange however the response ends, even if the client left
    before the first chunk (then the body's generator never starts and its ``finally`` never runs)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream")
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
