"""Perplexity on held-out text files through ``LanguageModel.loglikelihood_rolling``.

A ``.jsonl`` file is a list of documents (field ``text``); any other file is one document.
Reported per file and in total: tokens, nats, nats per token, perplexity, and bits per UTF-8 byte,
which (unlike per-token numbers) compares models with different tokenizers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glam.evals.model_api import LanguageModel
from glam.evals.readers import open_text


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """The documents of one file: JSON Lines records' ``text_field``, or the whole file."""
    path = Path(path)
    with open_text(path) as f:
        if ".jsonl" in path.suffixes:
            return [json.loads(line)[text_field] for line in f if line.strip()]
        return [f.read()]


def _summary(nats: float, tokens: int, num_bytes: int, documents: int) -> dict[str, float | int]:
    per_token = nats / tokens if tokens else float("nan")
    return {
        "documents": documents,
        "tokens": tokens,
        "bytes": num_bytes,
        "nats": nats,
        "nats_per_token": per_token,
        "perplexity": math.exp(per_token) if tokens else float("nan"),
        "bits_per_byte": nats / math.log(2) / num_bytes if num_bytes else float("nan"),
    }


def evaluate_perplexity(model: LanguageModel, paths: Sequence[str | Path]) -> dict[str, Any]:
    """Negative log-likelihood of every file under ``model``: ``{"files": {path: summary}, "total": summary}``."""
    files: dict[str, Any] = {}
    total = [0.0, 0, 0, 0]
    for path in paths:
        docs = [d for d in read_documents(path) if d]
        scored = model.loglikelihood_rolling(docs) if docs else []
        nats = -sum(ll for ll, _ in scored)
        tokens = sum(n for _, n in scored)
        num_bytes = sum(len(d.encode("utf-8")) for d in docs)
        files[str(path)] = _summary(nats, tokens, num_bytes, len(docs))
        total = [total[0] + nats, total[1] + tokens, total[2] + num_bytes, total[3] + len(docs)]
    return {"files": files, "total": _summary(*total)}
