"""GLaM's web-page quality filter (paper §6; reference doc §6).

A fast linear classifier over hashed features is trained to tell curated text (Wikipedia, books,
selected sites: positives) from general web pages (negatives). Its score then decides which pages
are kept, not by a threshold but by Pareto-distributed sampling, so that some lower-scored pages
survive and the filtered set stays diverse: keep a page when ``np.random.pareto(alpha) > 1 - score``
(the GPT-3 rule, alpha = 9, which GLaM follows).

Features: lower-cased word unigrams and bigrams, hashed (CRC32) into ``2**18`` buckets, as
``log(1 + count)`` scaled to unit L2 norm. Model: logistic regression fitted by Adagrad SGD in numpy,
with the two classes weighted equally.

:func:`filter_documents` is the whole pipeline ``glam data filter`` runs: fit on curated and general
files, score every document of an input source, keep by Pareto sampling, write the kept ones as JSONL.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from glam.config import SourceConfig
from glam.errors import DataError

_WORD = re.compile(r"\w+", re.UNICODE)
SCORE_BANDS = np.linspace(0.0, 1.0, 11)


def hashed_features(text: str, num_features: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """Sparse features of one document: (bucket ids [n] int64, values [n] float32), unit L2 norm."""
    words = _WORD.findall(text.lower())
    grams = Counter(words)
    grams.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    if not grams:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    buckets: dict[int, float] = {}
    for gram, count in grams.items():
        h = zlib.crc32(gram.encode("utf-8")) % num_features
        buckets[h] = buckets.get(h, 0.0) + float(np.log1p(count))
    ids = np.fromiter(buckets.keys(), np.int64, len(buckets))
    values = np.fromiter(buckets.values(), np.float32, len(buckets))
    return ids, values / np.linalg.norm(values)


@dataclass
class QualityClassifier:
    """Logistic regression on hashed unigram+bigram features. ``score(text)`` is P(curated) in [0, 1]."""

    num_features: int = 1 << 18
    weights: np.ndarray = field(default=None, repr=False)  # [num_features] float32
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = np.zeros(self.num_features, np.float32)

    def logit(self, text: str) -> float:
        ids, values = hashed_features(text, self.num_features)
        return float(values @ self.weights[ids]) + self.bias

    def score(self, text: str) -> float:
        return float(1.0 / (1.0 + np.exp(-self.logit(text))))

    def scores(self, texts: Iterable[str]) -> np.ndarray:
        """Scores [N] of N documents."""
        return np.asarray([self.score(t) for t in texts], dtype=np.float64)

    def fit(
        self,
        curated: list[str],
        general: list[str],
        *,
        epochs: int = 5,
        lr: float = 0.5,
        l2: float = 1e-6,
        seed: int = 0,
    ) -> QualityClassifier:
        """Adagrad SGD on the class-balanced logistic loss; curated = label 1, general = label 0."""
        if not curated or not general:
            raise DataError(
                f"the quality classifier needs both curated and general documents (got {len(curated)} curated, "
                f"{len(general)} general); check --curated and --general"
            )
        feats = [hashed_features(t, self.num_features) for t in (*curated, *general)]
        labels = np.r_[np.ones(len(curated)), np.zeros(len(general))]
        class_weight = np.where(labels == 1, len(labels) / (2 * len(curated)), len(labels) / (2 * len(general)))
        accum = np.full(self.num_features, 1e-8, np.float32)
        bias_accum = 1e-8
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            for i in rng.permutation(len(feats)):
                ids, values = feats[i]
                z = float(values @ self.weights[ids]) + self.bias
                g = (1.0 / (1.0 + np.exp(-z)) - labels[i]) * class_weight[i]
                grad = g * values + l2 * self.weights[ids]
                accum[ids] += grad * grad
                self.weights[ids] -= lr * grad / np.sqrt(accum[ids])
                bias_accum += g * g
                self.bias -= lr * g / np.sqrt(bias_accum)
        return self

    def save(self, path: str) -> None:
        np.savez_compressed(path, weights=self.weights, bias=self.bias, num_features=self.num_features)

    @classmethod
    def load(cls, path: str) -> QualityClassifier:
        with np.load(path) as z:
            return cls(int(z["num_features"]), z["weights"].astype(np.float32), float(z["bias"]))


def pareto_keep(scores: np.ndarray, *, alpha: float = 9.0, seed: int = 0) -> np.ndarray:
    """Which documents to keep: [N] bool, ``pareto(alpha) > 1 - score`` with one draw per document.

    High scores are kept almost always (score 1 always), low scores sometimes: P(keep | s) =
    P(X > 1 - s) for X ~ Lomax(alpha), i.e. (2 - s)^-alpha; at alpha = 9, s = 0 survives 0.2% of the time.
    """
    draws = np.random.default_rng(seed).pareto(alpha, size=len(scores))
    return draws > 1.0 - np.asarray(scores)


def band_report(scores: np.ndarray, kept: np.ndarray) -> list[tuple[float, float, int, int]]:
    """Per score band [lo, hi): (lo, hi, documents, kept)."""
    bands = np.clip(np.digitize(scores, SCORE_BANDS[1:-1]), 0, len(SCORE_BANDS) - 2)
    return [
        (float(SCORE_BANDS[b]), float(SCORE_BANDS[b + 1]), int((bands == b).sum()), int(kept[bands == b].sum()))
        for b in range(len(SCORE_BANDS) - 1)
    ]


def format_report(report: list[tuple[float, float, int, int]]) -> str:
    """A small table of :func:`band_report`."""
    lines = ["score band    docs    kept   kept%"]
    for lo, hi, n, k in report:
        share = f"{100 * k / n:6.1f}" if n else "     -"
        lines.append(f"[{lo:.1f}, {hi:.1f})  {n:6d}  {k:6d}  {share}")
    total, kept = sum(r[2] for r in report), sum(r[3] for r in report)
    lines.append(f"total         {total:6d}  {kept:6d}  {100 * kept / max(total, 1):6.1f}")
    return "\n".join(lines)


@dataclass
class FilterResult:
    """What :func:`filter_documents` did: documents the classifier was fitted on, every input document's
    score [N] and whether it was kept [N] (written to ``output`` in input order)."""

    curated: int
    general: int
    scores: np.ndarray
    kept: np.ndarray
    output: str


def read_documents(paths: Iterable[str], name: str, fmt: str, limit: int) -> list[str]:
    """Up to ``limit`` documents from the sources at ``paths`` (files, directories or globs), in order."""
    from glam.data.sources import Source

    docs: list[str] = []
    for i, path in enumerate(paths):
        source = Source(SourceConfig(name=f"{name}{i}", path=path, format=fmt))
        for k in range(min(len(source), limit - len(docs))):
            docs.append(source.document(k))
    return docs


def filter_documents(
    curated: list[str],
    general: list[str],
    input_path: str,
    output: str,
    *,
    formats: tuple[str, str, str] = ("auto", "auto", "auto"),
    alpha: float = 9.0,
    seed: int = 0,
    max_train_docs: int = 20_000,
    save_model: str | None = None,
) -> FilterResult:
    """The paper's quality filter end to end: fit on ``curated`` (positives) and ``general`` (negatives)
    paths, at most ``max_train_docs`` documents each; score every document of ``input_path``; keep each
    by :func:`pareto_keep`; write the kept ones to ``output`` as JSONL (``text``, ``score``), atomically.

    ``formats``: the source format of the curated, general and input files. ``save_model``: also save
    the classifier (``.npz``).
    """
    from glam.data.sources import Source

    if alpha <= 0:
        raise DataError(f"--alpha {alpha}: the Pareto shape must be > 0 (the paper uses 9)")
    positives = read_documents(curated, "curated", formats[0], max_train_docs)
    negatives = read_documents(general, "general", formats[1], max_train_docs)
    model = QualityClassifier().fit(positives, negatives, seed=seed)
    if save_model:
        model.save(save_model)
    source = Source(SourceConfig(name="input", path=input_path, format=formats[2]))
    scores = model.scores(source)
    kept = pareto_keep(scores, alpha=alpha, seed=seed)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".filter-", suffix=".jsonl", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for k in kept.nonzero()[0]:
                record = {"text": source.document(int(k)), "score": round(float(scores[k]), 6)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return FilterResult(len(positives), len(negatives), scores, kept, output)
