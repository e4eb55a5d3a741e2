"""lm-evaluation-harness adapter: run any :class:`~glam.evals.model_api.LanguageModel` under ``lm_eval``.

Needs lm-eval (``pip install 'glam[lm-eval]'``). Two ways in (commands: README, docs/tasks.md):

- lm-eval releases that discover plugins (those after 0.4.13, EleutherAI/lm-evaluation-harness#4013) find
  ``--model glam`` through the ``lm_eval.models`` entry point in glam's pyproject:
  ``lm_eval run --model glam --model_args checkpoint=runs/demo --tasks ...``
- Every release, 0.4.13 included: ``python -m glam.evals.lm_eval_adapter run --model glam ...`` is lm-eval's
  own command line with the model registered on import (``@register_model``); a :class:`GLaMError` is one
  ``error: ...`` line and exit status 2, not a traceback.

``model_args`` (anything else is an error naming it): ``checkpoint=RUN_DIR`` (a glam run, loaded with
``glam.inference.load_language_model``) or ``model=package.module:Name`` (any importable LanguageModel class
or factory, e.g. ``glam.evals.testing:CharLanguageModel``); ``beam_size`` (1), ``max_gen_toks`` (32, for a
request that names none), ``seed`` (0, for sampling). lm-eval passes its own ``batch_size``,
``max_batch_size`` and ``device``: ``batch_size`` is a checkpoint's rows per forward pass (lm-eval's default
is 1; ``auto`` keeps the checkpoint's ``eval.batch_size``, capped by ``max_batch_size``); ``device`` is
accepted and unused (JAX places the model: set ``JAX_PLATFORMS``).

Generation kwargs (a task's ``generation_kwargs``, ``--gen_kwargs``): :data:`GEN_KWARGS`. As lm-eval's
Hugging Face backend does, only ``do_sample=true`` samples; without it decoding is greedy (beam search
with ``beam_size > 1``) whatever ``temperature`` says, and a warning says so when it is > 0.
``do_sample=true`` samples at ``temperature`` (1.0 when absent; 0 is an error) with ``top_p``/``top_k``.
``max_gen_toks`` must leave room for a context in the model's window: it is refused, never clamped.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
import warnings
from typing import Any

try:
    # lm-eval's own models first: it fills its registry lazily only while the registry is EMPTY
    # (lm_eval.api.registry.get_model), so registering glam first would hide every built-in model
    # (local-completions, hf, ...) from the rest of the process.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # the optional extra is not installed
    raise ImportError("glam.evals.lm_eval_adapter needs lm-eval: pip install 'glam[lm-eval]'") from exc

from glam.errors import ConfigError, GLaMError, GLaMWarning
from glam.evals.model_api import LanguageModel

API_METHODS = ("loglikelihood", "loglikelihood_rolling", "generate")  # glam.evals.model_api.LanguageModel
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "seed")


def _import_model(spec: str) -> LanguageModel:
    """``package.module:Name`` → ``Name()`` (a class or a zero-argument factory)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"model_args model={spec!r}: write it as package.module:Name")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model_args model={spec!r}: cannot load it ({exc}); check the module and the name") from None
    if not callable(factory):
        raise ConfigError(f"model_args model={spec!r}: {attr} is a {type(factory).__name__}, not a class or factory")
    try:
        model = factory()
    except Exception as exc:  # the user's code: any failure is reported in one line, not lm-eval's traceback
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ConfigError(
            f"model_args model={spec!r}: calling {attr}() failed ({type(exc).__name__}: {first}); it must build the "
            "model with no arguments"
        ) from None
    missing = [m for m in API_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise ConfigError(
            f"model_args model={spec!r}: {attr}() gave a {type(model).__name__}, which has no {', '.join(missing)}; "
            "name a glam LanguageModel (glam.evals.model_api), e.g. glam.evals.testing:CharLanguageModel"
        )
    return model


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r}: give a whole number >= 1")
    return int(value)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not str(value).lstrip("-").isdigit():
        raise ConfigError(f"{name}={value!r}: give a whole number")
    return int(value)


def _batch_size(value: Any) -> int | None:
    """lm-eval's ``batch_size``: a number, or ``auto`` / ``auto:N`` (None: the checkpoint's own)."""
    if isinstance(value, str) and value.split(":")[0] == "auto":
        return None
    return _positive_int("batch_size", value)


def _flag(value: Any) -> bool:
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def _can_sample(model: LanguageModel) -> bool:
    params = inspect.signature(model.generate).parameters.values()
    return any(p.name == "temperature" or p.kind is p.VAR_KEYWORD for p in params)


@register_model("glam")
class GLaMLM(LM):
    """lm-eval's ``LM`` over a glam :class:`LanguageModel` (a checkpoint by default); arguments: module docstring."""

    def __init__(
        self,
        model: LanguageModel | str | None = None,
        checkpoint: str | None = None,
        beam_size: int = 1,
        max_gen_toks: int = 32,
        seed: int = 0,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,  # accepted from lm-eval, unused: JAX chooses the backend
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            name = sorted(unknown)[0]
            accepted = sorted(p for p in inspect.signature(GLaMLM.__init__).parameters if p not in ("self", "unknown"))
            close = difflib.get_close_matches(name, accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"model_args: unknown argument {name!r}{hint}; accepted: {', '.join(accepted)}")
        if model is not None and checkpoint:
            raise ConfigError("model_args: give checkpoint=RUN_DIR or model=package.module:Name, not both")
        self.beam_size = _positive_int("beam_size", beam_size)  # every argument is checked before a load
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.seed = _int("seed", seed)
        rows = _batch_size(batch_size) if batch_size is not None else None
        cap = _positive_int("max_batch_size", max_batch_size) if max_batch_size is not None else None
        if isinstance(model, str):
            model = _import_model(model)
        if model is None:
            if not checkpoint:
                raise ConfigError("model_args: give checkpoint=RUN_DIR (or model=package.module:Name)")
            model = self._load(str(checkpoint), rows, cap)
        self.model = model

    @staticmethod
    def _load(checkpoint: str, rows: int | None, cap: int | None) -> LanguageModel:
        """A glam run with ``rows`` per forward pass (None: its ``eval.batch_size``, at most ``cap``)."""
        from glam.inference import load_language_model

        model = load_language_model(checkpoint, batch_size=rows)
        if rows is None and cap is not None:
            model.batch_size = min(model.batch_size, cap)
        return model

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(context, continuation)`` requests → ``(log-likelihood, is_greedy)``."""
        pairs = [tuple(req.args) for req in requests]
        results = [(float(ll), bool(greedy)) for ll, greedy, _ in self.model.loglikelihood(pairs)]
        for pair, result in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        """``(text,)`` requests → whole-text log-likelihood."""
        texts = [req.args[0] for req in requests]
        return [float(ll) for ll, _ in self.model.loglikelihood_rolling(texts)]

    def _decoding(self, kwargs: dict) -> tuple:
        """A request's generation kwargs → ``(until, max_tokens, sampling)`` (hashable; module docstring)."""
        unknown = sorted(set(kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ConfigError(f"generation kwarg {unknown[0]!r} is not supported; glam accepts {', '.join(GEN_KWARGS)}")
        until = kwargs.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_tokens = _positive_int("max_gen_toks", kwargs.get("max_gen_toks", self.max_gen_toks))
        limit = getattr(self.model, "max_length", None)
        if limit is not None and max_tokens >= limit:
            raise ConfigError(
                f"max_gen_toks={max_tokens} leaves no room for a context in the model's {limit}-token window; "
                f"pass --gen_kwargs max_gen_toks=N with N < {limit} (the context keeps its last {limit} - N tokens)"
            )
        temperature = kwargs.get("temperature")
        if not _flag(kwargs.get("do_sample", False)):
            if temperature is not None and float(temperature) > 0:
                warnings.warn(
                    f"temperature={temperature} without do_sample=true: decoding greedily (lm-eval's rule); "
                    "add do_sample=true to sample",
                    GLaMWarning,
                    stacklevel=3,
                )
            return until, max_tokens, ()
        temperature = 1.0 if temperature is None else float(temperature)
        if temperature <= 0:
            raise ConfigError(f"do_sample=true with temperature={temperature}: set temperature > 0, or do_sample=false")
        if self.beam_size > 1:
            raise ConfigError(f"do_sample=true samples but model_args beam_size={self.beam_size} asks for beam search")
        if not _can_sample(self.model):
            raise ConfigError(f"do_sample=true: {type(self.model).__name__}.generate cannot sample (no temperature)")
        sampling = {
            "temperature": temperature,
            "top_p": float(kwargs.get("top_p", 1.0)),
            "top_k": _int("top_k", kwargs.get("top_k", 0)),
            "seed": _int("seed", kwargs.get("seed", self.seed)),
        }
        return until, max_tokens, tuple(sampling.items())

    def generate_until(self, requests) -> list[str]:
        """``(context, gen_kwargs)`` requests → generated text, cut at ``until``; one model call per kwargs group."""
        out: list[str | None] = [None] * len(requests)
        decodings: dict[str, tuple] = {}  # each distinct kwargs checked (and warned about) once
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            kwargs = req.args[1] or {}
            key = repr(sorted(kwargs.items()))
            if key not in decodings:
                decodings[key] = self._decoding(kwargs)
            groups.setdefault(decodings[key], []).append(i)
        for (until, max_tokens, sampling), indices in groups.items():
            contexts = [requests[i].args[0] for i in indices]
            texts = self.model.generate(
                contexts, max_tokens=max_tokens, stop=list(until), beam_size=self.beam_size, **dict(sampling)
            )
            for i, text in zip(indices, texts):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out[i] = text
        return out  # type: ignore[return-value]


def main() -> int:
    """lm-eval's command line with the ``glam`` model registered; a GLaMError is one ``error:`` line (status 2)."""
    from lm_eval.__main__ import cli_evaluate

    from glam.cli.main import _one_line_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always", GLaMWarning)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            cli_evaluate()
        except GLaMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
