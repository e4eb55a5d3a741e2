"""A glam model behind the evaluation harness's ``LanguageModel`` protocol (glam/evals/model_api.py).

Strings in, numbers and strings out; tokenisation happens here:

- ``loglikelihood``: trailing spaces of a context move to its continuation, and the pair is split
  where ``encode(context)`` ends inside ``encode(context + continuation)`` (lm-evaluation-harness's
  rule), so the continuation is scored with the tokenisation the model would see for the whole text.
- ``generate``: a context too long for model.max_seq_len − max_tokens loses tokens from the left (the
  usual harness behaviour) instead of failing; greedy for ``beam_size=1``, beam search otherwise, and
  sampling (a :class:`~glam.inference.Sampler`, seeded) when asked with ``temperature > 0``.
"""

from __future__ import annotations

from glam.config import GLaMConfig
from glam.errors import GLaMError
from glam.inference import scoring
from glam.inference.beam import BeamSearch
from glam.inference.generate import generate
from glam.inference.sampling import Sampler


class GLaMLanguageModel:
    """``LanguageModel`` for a GLaM config, its parameters and its tokenizer.

    Args:
      batch_size: rows per forward pass (default ``cfg.eval.batch_size``).
      length_penalty: beam search's GNMT alpha (the paper does not say; 0 = sum of log-probs).
      rolling_stride: tokens newly scored per window of ``loglikelihood_rolling`` (default max_seq_len).
    """

    def __init__(
        self,
        cfg: GLaMConfig,
        params: dict,
        tokenizer,
        *,
        batch_size: int | None = None,
        length_penalty: float = 0.0,
        rolling_stride: int | None = None,
    ):
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.batch_size = batch_size or cfg.eval.batch_size
        self.length_penalty = length_penalty
        self.rolling_stride = rolling_stride

    @property
    def max_length(self) -> int:
        """Tokens of context and continuation one forward pass sees (the harness fits few-shot prefixes to it)."""
        return self.cfg.model.max_seq_len

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        if whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, self.tokenizer.encode(continuation)  # the boundary falls inside a token

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool, int]]:
        pairs = [self._split(c, x) for c, x in requests]
        return scoring.loglikelihood(
            self.cfg, self.params, pairs, bos_id=self.tokenizer.bos_id, batch_size=self.batch_size
        )

    def loglikelihood_rolling(self, texts: list[str]) -> list[tuple[float, int]]:
        return scoring.loglikelihood_rolling(
            self.cfg,
            self.params,
            [self.tokenizer.encode(t) for t in texts],
            bos_id=self.tokenizer.bos_id,
            batch_size=self.batch_size,
            stride=self.rolling_stride,
        )

    def generate(
        self,
        contexts: list[str],
        *,
        max_tokens: int,
        stop: list[str],
        beam_size: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> list[str]:
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p)  # checks the values (GLaMError)
        if beam_size > 1:
            if not sampler.greedy:
                raise GLaMError(
                    f"temperature={temperature} asks for sampling but beam_size={beam_size} for beam search; use one"
                )
            sampler = BeamSearch(beam_size, self.length_penalty)
        room = self.cfg.model.max_seq_len - max_tokens
        if room < 1:
            raise GLaMError(
                f"max_tokens={max_tokens} leaves no room for a context in model.max_seq_len="
                f"{self.cfg.model.max_seq_len}; ask for fewer tokens"
            )
        prompts = [[self.tokenizer.bos_id, *self.tokenizer.encode(c)][-room:] for c in contexts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths batch together
        outs = generate(
            self.cfg,
            self.params,
            self.tokenizer,
            [prompts[i] for i in order],
            max_tokens=max_tokens,
            sampler=sampler,
            stop=stop,
            seed=seed,
            batch_size=self.batch_size,
        )
        texts = [""] * len(contexts)
        for i, out in zip(order, outs):
            texts[i] = out.text
        return texts


def load_language_model(run_dir: str, step: int | None = None, **kwargs) -> GLaMLanguageModel:
    """The model of a training run directory (latest checkpoint unless ``step``), ready for evaluation."""
    from glam.checkpoint import load_for_inference

    cfg, params, tokenizer = load_for_inference(run_dir, step=step)
    return GLaMLanguageModel(cfg, params, tokenizer, **kwargs)
