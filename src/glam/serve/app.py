"""``glam serve``'s HTTP application (FastAPI): an OpenAI-compatible completions endpoint over :class:`Engine`.

Routes:

- ``POST /v1/completions`` — glam.serve.protocol; ``stream: true`` answers with server-sent events
  (one ``data: {...}`` chunk per released piece of text, then ``data: [DONE]``).
- ``GET /v1/models``, ``GET /health``.
- ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize`` — vLLM's tokenizer endpoints, which
  lm-evaluation-harness's ``local-completions`` model detects and uses, so it tokenises with the
  model's own SentencePiece model. ``/tokenize`` maps the exact text of a special token (``<s>``,
  ``</s>``, ``<pad>``) to its id, so lm-eval's bos/eos lookups find the real ids.

Every error is OpenAI's JSON shape with a 4xx (400 a bad field, named in ``param``; 404; 413 a body
over ``max_body_bytes``; 429 with ``Retry-After`` when the engine admits no more) or 500 when a batch
fails; the server keeps serving. A client that disconnects has its rows stopped at the next decode
step and its admission slot freed.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glam.serve import protocol
from glam.serve.engine import Busy, Engine, Event, Job, RequestError

RETRY_AFTER_S = 1


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


def create_app(engine: Engine, *, model_name: str = "glam", max_body_bytes: int = 4 << 20) -> FastAPI:
    """The FastAPI app serving ``engine`` (start the engine's thread first: ``engine.start()``)."""
    app = FastAPI(title="glam serve", docs_url=None, redoc_url=None, openapi_url=None)
    tok = engine.tokenizer
    specials = {tok.id_to_piece(i): i for i in (tok.pad_id, tok.bos_id, tok.eos_id)}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": model_name,
            "requests_in_flight": engine.in_flight,
            "max_batch": engine.max_batch,
            "max_queue": engine.max_queue,
            "max_seq_len": engine.max_seq_len,
        }

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
        if isinstance(body, JSONResponse):
            return body
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return _error(400, "prompt must be a string", "prompt")
        ids = [specials[text]] if text in specials else tok.encode(text)
        if isinstance(body, dict) and body.get("add_special_tokens") and text not in specials:
            ids = [tok.bos_id, *ids]
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_seq_len}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(protocol._is_id(t) and 0 <= t < tok.vocab_size for t in ids):
            return _error(400, f"tokens must be a list of token ids in [0, {tok.vocab_size})", "tokens")
        return {"prompt": tok.decode(ids)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = protocol.parse_request(body)
            if req.model is not None and req.model != model_name:
                raise RequestError(
                    f"model {req.model!r} is not served here; this server serves {model_name!r}", "model"
                )
            prompts = [engine.prompt_ids(p) for p in protocol.prompts_of(req)]
            rows = protocol.rows_of(req, prompts, int.from_bytes(os.urandom(4), "little"))
            for row in rows:
                engine.check(row)
        except RequestError as exc:
            return _error(400, str(exc), exc.param)
        try:
            engine.admit()
        except Busy as exc:
            return _error(429, str(exc), kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)})
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(rows, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        prompt_tokens = sum(len(ids) for ids, _, _ in prompts)
        offsets = [0 if req.echo else len(text) for _, _, text in prompts for _ in range(req.n)]
        choices = [protocol.Choice(i, offsets[i], req.logprobs is not None) for i in range(len(rows))]
        try:
            engine.submit(job)
        except BaseException:
            engine.release()
            raise
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            stream = _stream(engine, job, events, choices, model_name, prompt_tokens, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream")
        return await _answer(request, engine, job, events, choices, model_name, prompt_tokens)

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


async def _json(request: Request):
    """The body as JSON, or a 400 response saying why it is not."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, f"the request body is not valid JSON ({exc})", "body")


def _apply(choice: protocol.Choice, event: Event) -> list:
    choice.text += event.text
    choice.tokens.extend(event.tokens)
    if event.finish_reason:
        choice.finish_reason = event.finish_reason
        choice.completion_tokens = event.completion_tokens
    return list(event.tokens)


async def _answer(request, engine, job, events, choices, model_name, prompt_tokens) -> Response:
    """Wait for every choice to finish (watching for the client leaving), then answer in one body."""
    cid = protocol.completion_id()
    try:
        left = len(choices)
        while left:
            try:
                event = await asyncio.wait_for(events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return Response(status_code=499)
                continue
            if event.error:
                job.cancel()
                return _error(500, f"generation failed: {event.error}", kind="server_error")
            _apply(choices[event.choice], event)
            left -= event.finish_reason is not None
        usage = protocol.usage_body(prompt_tokens, sum(c.completion_tokens for c in choices))
        return JSONResponse(protocol.completion_body(cid, model_name, [c.body() for c in choices], usage))
    finally:
        engine.release()


async def _stream(engine, job, events, choices, model_name, prompt_tokens, include_usage) -> AsyncIterator[str]:
    """Server-sent events: a chunk per event, ``[DONE]`` last. Cancelled (client gone): the job stops."""
    cid = protocol.completion_id()
    try:
        left = len(choices)
        while left:
            event = await events.get()
            if event.error:
                body = protocol.error_body(f"generation failed: {event.error}", "server_error")
                yield f"data: {json.dumps(body)}\n\n"
                break
            choice = choices[event.choice]
            tokens = _apply(choice, event)
            left -= event.finish_reason is not None
            part = {
                "text": event.text,
                "index": event.choice,
                "logprobs": choice.logprobs_body(tokens),
                "finish_reason": event.finish_reason,
            }
            yield f"data: {json.dumps(protocol.completion_body(cid, model_name, [part], None))}\n\n"
        if include_usage and not left:
            usage = protocol.usage_body(prompt_tokens, sum(c.completion_tokens for c in choices))
            yield f"data: {json.dumps(protocol.completion_body(cid, model_name, [], usage))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a no-op when every row is done; stops the rows of a client that left
        engine.release()
