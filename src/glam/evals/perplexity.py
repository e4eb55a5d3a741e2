"""Perplexity on held-out text files through ``LanguageModel.loglikelihood_rolling``.

A ``.jsonl`` file is a list of documents (field ``text``), and so is a ``.json`` file, by the rule of
training sources (glam.data.formats.JSON_RULE: a JSON array of objects, or one object per line); any
other file is one document. Files are
read under the text policy of training sources (:mod:`glam.files`): bytes that are not UTF-8 become
U+FFFD (counted, one warning), a file that is not text is refused, ``.gz``/``.bz2`` are decompressed,
and a JSONL line that is not a record with a string ``text`` is skipped and counted (one warning), as
training's default ``data.on_bad_json=skip`` does.
Reported per file and in total: tokens, nats, nats per token, perplexity, and bits per UTF-8 byte,
which (unlike per-token numbers) compares models with different tokenizers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glam.data.formats import JSON_RULE, BadRecord, json_layout, jsonl_text
from glam.errors import GLaMError, GLaMWarning
from glam.evals.model_api import LanguageModel
from glam.files import SNIFF_BYTES, read_text


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """The documents of one file: JSON Lines records' ``text_field``, or the whole file."""
    path = Path(path)
    text = read_text(str(path))
    layout = "jsonl" if ".jsonl" in path.suffixes else None
    if ".json" in path.suffixes:
        layout = json_layout(text[:SNIFF_BYTES].encode("utf-8"))
        if layout is None:
            raise GLaMError(f"{str(path)!r} is neither a JSON array of objects nor JSON Lines; {JSON_RULE}")
    if layout is None:
        return [text]
    if layout == "json":
        try:
            records = [json.dumps(r) for r in json.loads(text)]
        except json.JSONDecodeError as exc:
            raise GLaMError(f"{str(path)!r}: not valid JSON ({exc}); fix the file") from None
    else:
        records = [line for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028 in strings
    docs, bad = [], 0
    for record in records:
        try:
            docs.append(jsonl_text(record, text_field))
        except BadRecord:
            bad += 1
    if bad:
        what = ("line" if layout == "jsonl" else "element") + (
            "s that are not JSON objects" if bad != 1 else " that is not a JSON object"
        )
        warnings.warn(
            f"{path}: skipped {bad} {what} with a string {text_field!r}",
            GLaMWarning,
            stacklevel=2,
        )
    return docs


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


def evaluate_perplexity(model: LanguageModel, paths: Sequence[str | Path] | Mapping[str, list[str]]) -> dict[str, Any]:
    """Negative log-likelihood of every file under ``model``: ``{"files": {path: summary}, "total": summary}``.

    ``paths`` may map each path to its documents already read (``read_documents``: before loading a model)."""
    files: dict[str, Any] = {}
    total = [0.0, 0, 0, 0]
    for path in paths:
        docs = [d for d in (paths[path] if isinstance(paths, Mapping) else read_documents(path)) if d]
        scored = model.loglikelihood_rolling(docs) if docs else []
        nats = -sum(ll for ll, _ in scored)
        tokens = sum(n for _, n in scored)
        num_bytes = sum(len(d.encode("utf-8")) for d in docs)
        files[str(path)] = _summary(nats, tokens, num_bytes, len(docs))
        total = [total[0] + nats, total[1] + tokens, total[2] + num_bytes, total[3] + len(docs)]
    return {"files": files, "total": _summary(*total)}
