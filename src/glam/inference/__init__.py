"""Inference: KV-cache decoding, sampling, beam search, generation, scoring, and the evals adapter.

Modules, read in this order: ``sampling`` (next-token choice), ``decode`` (left-padded prefill and
the jitted cached step), ``beam`` (beam search), ``text`` (stop strings while streaming),
``generate`` (the text API), ``scoring`` (log-likelihoods), ``lm`` (the ``LanguageModel`` adapter).
"""

from glam.inference.beam import BeamSearch
from glam.inference.generate import Completion, TokenEvent, generate, stream_generate
from glam.inference.lm import GLaMLanguageModel, load_language_model
from glam.inference.sampling import GREEDY, Sampler
from glam.inference.scoring import loglikelihood, loglikelihood_rolling

__all__ = [
    "GREEDY",
    "BeamSearch",
    "Completion",
    "GLaMLanguageModel",
    "Sampler",
    "TokenEvent",
    "generate",
    "load_language_model",
    "loglikelihood",
    "loglikelihood_rolling",
    "stream_generate",
]
