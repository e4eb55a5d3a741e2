"""lm-evaluation-harness adapter: run any :class:`~glam.evals.model_api.LanguageModel` under ``lm_eval``.

Needs the optional extra (``pip install 'glam[lm-eval]'``). Importing this module registers the model
name ``glam`` with lm-eval's registry, so both work::

    lm_eval.simple_evaluate(model=GLaMLM(model=my_language_model), tasks=[...])
    python -m glam.evals.lm_eval_adapter run --model glam --model_args checkpoint=runs/demo --tasks ...

``model_args``: ``checkpoint=RUN_DIR`` (a glam run, loaded with ``glam.inference.load_language_model``),
or ``model=package.module:Name`` (any importable LanguageModel class or factory, e.g.
``glam.evals.testing:CharLanguageModel``), plus ``beam_size`` and ``max_gen_toks``.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # the optional extra is not installed
    raise ImportError("glam.evals.lm_eval_adapter needs lm-eval: pip install 'glam[lm-eval]'") from exc

from glam.evals.model_api import LanguageModel


def _import_model(spec: str) -> LanguageModel:
    """``package.module:Name`` → ``Name()`` (a class or a zero-argument factory)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"model={spec!r}: write it as package.module:Name")
    return getattr(importlib.import_module(module_name), attr)()


@register_model("glam")
class GLaMLM(LM):
    """lm-eval's ``LM`` over a glam :class:`LanguageModel` (a checkpoint by default)."""

    def __init__(
        self,
        model: LanguageModel | str | None = None,
        checkpoint: str | None = None,
        beam_size: int = 1,
        max_gen_toks: int = 32,
        **_: Any,  # lm-eval's batch_size / device / max_batch_size: the wrapped model batches itself
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            model = _import_model(model)
        if model is None:
            if not checkpoint:
                raise ValueError("give model_args checkpoint=RUN_DIR (or model=package.module:Name)")
            from glam.inference import load_language_model

            model = load_language_model(checkpoint)
        self.model = model
        self.beam_size = int(beam_size)
        self.max_gen_toks = int(max_gen_toks)

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

    def generate_until(self, requests) -> list[str]:
        """``(context, gen_kwargs)`` requests → generated text, cut at ``until``; one model call per kwargs group."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            kwargs = req.args[1] or {}
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            groups.setdefault((tuple(until), int(kwargs.get("max_gen_toks", self.max_gen_toks))), []).append(i)
        for (until, max_tokens), indices in groups.items():
            contexts = [requests[i].args[0] for i in indices]
            texts = self.model.generate(contexts, max_tokens=max_tokens, stop=list(until), beam_size=self.beam_size)
            for i, text in zip(indices, texts):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out[i] = text
        return out  # type: ignore[return-value]


def main() -> None:
    """lm-eval's command line with the ``glam`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
