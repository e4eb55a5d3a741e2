"""``POST /v1/chat/completions`` for a base model: messages → one prompt through a chat template.

glam's models are base models (no instruction tuning, no chat tokens), so a chat is served as a plain
transcript the model can continue. The default template (``DEFAULT_TEMPLATE``) renders::

    {system message}\\n\\n          (each system or developer message)
    User: {content}\\n               (each user message)
    Assistant: {content}\\n          (each assistant message)
    Assistant:                      (last: the generation prompt)

and the reply stops at eos or at ``"\\nUser:"`` (the model starting the next turn), added to the
request's stop strings. ``glam serve --chat-template FILE`` replaces it with a Jinja2 template in
Hugging Face's convention (``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``,
``raise_exception``; rendered in a sandbox); a file template adds no stop strings of its own. glam
puts bos first itself, so a template should not emit ``bos_token``.

The response shapes are OpenAI's (``chat.completion``, ``chat.completion.chunk``); ``logprobs: true``
with ``top_logprobs: k`` (0..5) reports each generated token's log-prob and k alternatives.
"""

from __future__ import annotations

import time
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import Field

from glam.errors import GLaMError
from glam.serve.protocol import INT32_MAX, SamplingRequest, check_sampling, validate
from glam.serve.rows import TOP_N, RequestError, TokenInfo

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message.role in ('system', 'developer') %}{{ message.content }}\n\n"
    "{% elif message.role == 'user' %}User: {{ message.content }}\n"
    "{% else %}Assistant: {{ message.content }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ("\nUser:",)
ROLES = ("system", "developer", "user", "assistant")


class ChatRequest(SamplingRequest):
    """``POST /v1/chat/completions``: OpenAI's chat fields that a text model can honour."""

    messages: Any = None  # checked by hand in :func:`messages_of`
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)  # default: what the context leaves
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=TOP_N)


def parse_chat(body: Any) -> ChatRequest:
    """A decoded JSON body → a checked chat request, or :class:`RequestError` naming the field."""
    req = validate(ChatRequest, body)
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        if req.max_tokens != req.max_completion_tokens:
            raise RequestError("give max_completion_tokens or max_tokens, not both", "max_completion_tokens")
    check_sampling(req, requested_max_tokens(req))
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("top_logprobs needs logprobs=true", "top_logprobs")
    messages_of(req)
    return req


def requested_max_tokens(req: ChatRequest) -> int | None:
    return req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens


def messages_of(req: ChatRequest) -> list[dict[str, str]]:
    """The messages as ``{"role", "content"}`` dicts with text content (text parts joined)."""
    if not isinstance(req.messages, list) or not req.messages:
        raise RequestError("messages is required: a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(req.messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise RequestError(f"{where}: each message must be an object with role and content", where)
        unknown = sorted(set(m) - {"role", "content", "name"})
        if unknown:
            raise RequestError(
                f"{where}.{unknown[0]}: not supported by glam serve (a text model)", f"{where}.{unknown[0]}"
            )
        if m.get("role") not in ROLES:
            raise RequestError(
                f"{where}.role: got {m.get('role')!r}; glam serve takes {', '.join(ROLES)}", f"{where}.role"
            )
        out.append({"role": m["role"], "content": _content(m.get("content"), f"{where}.content", m["role"])})
    return out


def _content(content: Any, where: str, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list) and all(
        isinstance(p, dict)
        and p.get("type") == "text"
        and isinstance(p.get("text"), str)
        and set(p) == {"type", "text"}
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise RequestError(f"{where}: give a string or a list of text parts ({{'type': 'text', 'text': ...}})", where)


class ChatTemplate:
    """A compiled chat template (Jinja2, sandboxed) and the stop strings that go with it."""

    def __init__(self, source: str | None = None, *, bos_token: str = "<s>", eos_token: str = "</s>"):
        def raise_exception(message):
            raise RequestError(f"the chat template refused the messages: {message}", "messages")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self.template = env.from_string(DEFAULT_TEMPLATE if source is None else source)
        except TemplateError as exc:
            raise GLaMError(f"the chat template is not valid Jinja2 ({exc}); fix the file") from None
        self.stop = DEFAULT_STOP if source is None else ()
        self.specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.specials)
        except TemplateError as exc:
            raise RequestError(f"the chat template failed on these messages: {exc}", "messages") from None


def read_template(path: str) -> str:
    """A ``--chat-template`` file's text, refused in one line when unreadable or not valid Jinja2."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise GLaMError(f"--chat-template {path!r}: cannot read it ({exc}); give a UTF-8 Jinja2 file") from None
    ChatTemplate(source)
    return source


def logprobs_body(tokens: list[TokenInfo], top: int | None) -> dict:
    """OpenAI's chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def entry(piece: str, lp: float | None) -> dict:
        return {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8"))}

    content = []
    for t in tokens:
        alternatives = [entry(p, lp) for p, lp in (t.top or {}).items()][: top or 0]
        content.append({**entry(t.piece, t.logprob), "top_logprobs": alternatives})
    return {"content": content}


def chat_body(cid: str, model: str, choices: list[dict], usage: dict | None) -> dict:
    body = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def chunk_body(cid: str, model: str, choices: list[dict], usage: dict | None) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    body["choices"] = choices
    if usage is not None:
        body["usage"] = usage
    return body


class ChatFormat:
    """Response bodies of /v1/chat/completions (the app's exchange calls these)."""

    def __init__(self, model: str, top: int | None):
        self.model, self.top, self.prefix = model, top, "chatcmpl"

    def _logprobs(self, tokens) -> dict | None:
        return logprobs_body(tokens, self.top) if self.top is not None else None

    def final(self, cid, choices, usage) -> dict:
        bodies = [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": self._logprobs(c.tokens),
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ]
        return chat_body(cid, self.model, bodies, usage)

    def opening(self, cid, choices) -> list[dict]:
        parts = [
            {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for c in choices
        ]
        return [chunk_body(cid, self.model, [part], None) for part in parts]

    def chunk(self, cid, event, choice, tokens, usage) -> dict:
        delta = {"content": event.text} if event.text or not event.finish_reason else {}
        part = {
            "index": event.choice,
            "delta": delta,
            "logprobs": self._logprobs(tokens),
            "finish_reason": event.finish_reason,
        }
        return chunk_body(cid, self.model, [part], usage)

    def usage_chunk(self, cid, usage) -> dict:
        return chunk_body(cid, self.model, [], usage)
