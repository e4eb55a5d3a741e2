"""Text generation: prompts in, completions (or a stream of text deltas) out.

    from glam.inference import generate, Sampler, BeamSearch
    outs = generate(cfg, params, tokenizer, ["The capital of France is"], max_tokens=32,
                    sampler=Sampler(temperature=0.8, top_p=0.95), stop=["\\n"],
                    stream=lambda event: print(event.text, end="", flush=True))

A text prompt becomes ``[bos] + tokenizer.encode(text)`` (training puts bos before every document,
docs/design.md); a prompt given as a list of token ids is used as it is. Prompts are decoded in
batches of ``batch_size`` (default: all at once) with the KV cache of ``decode.py``; a batch is padded
to its full size, so every batch of a run reuses one compiled step. A row ends at eos (not part of the
text), at the first stop string (the text is cut before it) or after ``max_tokens`` tokens.
Sampling streams token by token; beam search (``sampler=BeamSearch(4)``) delivers each row whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from glam.config import GLaMConfig
from glam.errors import GLaMError
from glam.inference.beam import BeamSearch, beam_search
from glam.inference.decode import check_prompt_fits, left_pad, sample_stream
from glam.inference.sampling import GREEDY, Sampler
from glam.inference.text import TextStream

Prompt = str | Sequence[int]


@dataclass(frozen=True)
class TokenEvent:
    """One step of one row: the tokens it added, the text it released, and why the row ended (if it did)."""

    index: int  # which prompt
    tokens: tuple[int, ...]  # generated tokens this event adds (eos is never included)
    text: str  # newly released text (may be "" while a possible stop string is held back)
    finish_reason: str | None = None  # "eos", "stop" or "length" on the row's last event


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: tuple[int, ...]
    finish_reason: str  # "eos", "stop" or "length"


def encode_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Text prompts → ``[bos] + encode(text)``; token-id prompts are kept as they are."""
    return [[tokenizer.bos_id, *tokenizer.encode(p)] if isinstance(p, str) else [int(t) for t in p] for p in prompts]


def _vocab_limit(cfg: GLaMConfig, tokenizer) -> int | None:
    """Ids the tokenizer cannot decode (a model vocabulary padded beyond it) are never generated."""
    size = getattr(tokenizer, "vocab_size", None)
    return size if size is not None and size < cfg.model.vocab_size else None


def _sample_events(cfg, params, tokenizer, ids, offset, *, max_tokens, sampler, stop, seed, batch_size):
    prompts = left_pad(ids, max_tokens=max_tokens, max_seq_len=cfg.model.max_seq_len, batch_size=batch_size)
    active = prompts.lengths > 0  # read by sample_stream before every step; cleared as rows finish
    rows = [TextStream(tokenizer.decode, stop) for _ in ids]
    steps = sample_stream(
        cfg,
        params,
        prompts,
        active,
        max_tokens=max_tokens,
        sampler=sampler,
        seed=seed,
        vocab_limit=_vocab_limit(cfg, tokenizer),
    )
    for step, (tokens, _) in enumerate(steps):
        for b, row in enumerate(rows):
            if not active[b]:
                continue
            token = int(tokens[b])
            if token == tokenizer.eos_id:
                added, text = (), row.finish("eos")
            else:
                added, text = (token,), row.push(token)
                if row.finish_reason is None and step == max_tokens - 1:
                    text += row.finish("length")
            active[b] = row.finish_reason is None
            yield TokenEvent(offset + b, added, text, row.finish_reason)


def _beam_events(cfg, params, tokenizer, ids, offset, *, max_tokens, search, stop, batch_size):
    prompts = left_pad(ids, max_tokens=max_tokens, max_seq_len=cfg.model.max_seq_len, batch_size=batch_size)
    tokens, lengths, _ = beam_search(
        cfg,
        params,
        prompts,
        max_tokens=max_tokens,
        search=search,
        eos_id=tokenizer.eos_id,
        vocab_limit=_vocab_limit(cfg, tokenizer),
    )
    for b in range(len(ids)):
        seq = [int(t) for t in tokens[b, : lengths[b]]]
        reason = "eos" if seq and seq[-1] == tokenizer.eos_id else "length"
        seq = seq[:-1] if reason == "eos" else seq
        row = TextStream(tokenizer.decode, stop)
        text = ""
        for token in seq:
            text += row.push(token)
            if row.finish_reason:
                break
        if row.finish_reason is None:
            text += row.finish(reason)
        yield TokenEvent(offset + b, tuple(row.tokens), text, row.finish_reason)


def stream_generate(
    cfg: GLaMConfig,
    params: dict,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_tokens: int,
    sampler: Sampler | BeamSearch = GREEDY,
    stop: Sequence[str] = (),
    seed: int = 0,
    batch_size: int | None = None,
) -> Iterator[TokenEvent]:
    """Yield :class:`TokenEvent`s as the rows grow; every row's last event has a ``finish_reason``.

    Raises GLaMError (before any work) when a prompt plus ``max_tokens`` exceeds model.max_seq_len.
    """
    if batch_size is not None and batch_size < 1:
        raise GLaMError(f"batch_size={batch_size}: decode at least 1 prompt at a time")
    ids = encode_prompts(tokenizer, prompts)
    for i, p in enumerate(ids):
        check_prompt_fits(len(p), max_tokens, cfg.model.max_seq_len, i)
    size = batch_size or len(ids)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        if isinstance(sampler, BeamSearch):
            kw = dict(max_tokens=max_tokens, search=sampler, stop=stop, batch_size=size)
            yield from _beam_events(cfg, params, tokenizer, chunk, start, **kw)
        else:
            kw = dict(max_tokens=max_tokens, sampler=sampler, stop=stop, seed=seed + start, batch_size=size)
            yield from _sample_events(cfg, params, tokenizer, chunk, start, **kw)


def generate(
    cfg: GLaMConfig,
    params: dict,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_tokens: int,
    sampler: Sampler | BeamSearch = GREEDY,
    stop: Sequence[str] = (),
    stream: Callable[[TokenEvent], None] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[Completion]:
    """Complete every prompt; ``stream`` (if given) is called with each :class:`TokenEvent` as it happens."""
    texts, tokens = [""] * len(prompts), [()] * len(prompts)
    reasons: list[str] = ["length"] * len(prompts)
    events = stream_generate(
        cfg,
        params,
        tokenizer,
        prompts,
        max_tokens=max_tokens,
        sampler=sampler,
        stop=stop,
        seed=seed,
        batch_size=batch_size,
    )
    for event in events:
        if stream is not None:
            stream(event)
        i = event.index
        texts[i] += event.text
        tokens[i] += event.tokens
        reasons[i] = event.finish_reason or reasons[i]
    return [Completion(t, k, r) for t, k, r in zip(texts, tokens, reasons)]
