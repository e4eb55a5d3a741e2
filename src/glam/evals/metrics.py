"""Scores: rank-classification normalisations, accuracy, MultiRC's F1a, SQuAD-style exact match and token F1.

Rank classification divides each option's log-likelihood by one of the :data:`NORMALIZATIONS` (the
registry task files, the harness and the docs read their names from) and picks the highest.

Answer normalisation follows the official SQuAD v1.1/v2.0 evaluation script: lowercase, drop
punctuation, drop the articles a/an/the, collapse whitespace. Generation scores take the max over
the gold aliases. An empty gold list (SQuAD v2 unanswerable) is scored against the empty string.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


@dataclass(frozen=True)
class Normalization:
    """How an option's log-likelihood is divided before the options are ranked.

    ``divisor(num_tokens, continuation, option)``: the option's token count, the scored continuation
    (``target_delimiter`` + option for full scoring) and the option text as rendered (no delimiter).
    ``metric``: the key of its accuracy in a result row's ``extra``.
    """

    metric: str
    divisor: Callable[[int, str, str], int]
    meaning: str


NORMALIZATIONS: dict[str, Normalization] = {
    "per_token": Normalization(
        "acc_per_token", lambda tokens, cont, option: max(tokens, 1), "the option's token count (GLaM §7, GPT-3)"
    ),
    "per_char": Normalization(
        "acc_per_char",
        lambda tokens, cont, option: max(len(cont), 1),
        "characters of the scored continuation, target_delimiter included (glam's own)",
    ),
    "acc_norm": Normalization(
        "acc_norm",
        lambda tokens, cont, option: max(len(option), 1),
        "characters of the option text, no delimiter (lm-evaluation-harness's acc_norm)",
    ),
    "none": Normalization("acc_none", lambda tokens, cont, option: 1, "unnormalised (lm-evaluation-harness's acc)"),
}


def option_score(loglikelihood: float, num_tokens: int, continuation: str, option: str, normalization: str) -> float:
    """The rank-classification score of one option under ``normalization`` (a :data:`NORMALIZATIONS` name)."""
    return loglikelihood / NORMALIZATIONS[normalization].divisor(num_tokens, continuation, option)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between normalised strings (both empty counts as a match)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_gold(metric, prediction: str, golds: Sequence[str]) -> float:
    """``metric`` against the best-matching gold alias; no gold means "unanswerable" (gold = "")."""
    return max(metric(prediction, g) for g in (golds or [""]))


def f1a(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """MultiRC F1a: binary F1 over all answer options, the positive class being "correct" (1)."""
    tp = sum(1 for p, y in zip(predictions, labels) if p == 1 and y == 1)
    fp = sum(1 for p, y in zip(predictions, labels) if p == 1 and y == 0)
    fn = sum(1 for p, y in zip(predictions, labels) if p == 0 and y == 1)
    if tp == 0:
        return 0.0
    return 2 * tp / (2 * tp + fp + fn)


def grouped_exact_match(predictions: Sequence[int], labels: Sequence[int], groups: Sequence[str]) -> float:
    """MultiRC EM: the fraction of questions whose answer options are all labelled correctly."""
    correct: dict[str, bool] = {}
    for p, y, g in zip(predictions, labels, groups):
        correct[g] = correct.get(g, True) and p == y
    return sum(correct.values()) / len(correct) if correct else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
