"""Metrics on hand-made examples with literal expected values."""

import math

import pytest

from glam.evals import metrics
from glam.evals.testing import CharLanguageModel


def test_normalize_answer_squad_rules():
    assert metrics.normalize_answer("  The  Beatles!! ") == "beatles"
    assert metrics.normalize_answer("An apple, a pear & THE end.") == "apple pear end"
    assert metrics.normalize_answer("theatre") == "theatre"  # articles only as whole words


@pytest.mark.parametrize(
    ("prediction", "gold", "em", "f1"),
    [
        ("the Beatles.", "Beatles", 1.0, 1.0),
        ("Paris, France", "Paris", 0.0, 2 / 3),  # P = 1/2, R = 1
        ("in 1972", "December 1972", 0.0, 0.5),  # P = 1/2, R = 1/2
        ("blue", "red", 0.0, 0.0),
        ("", "", 1.0, 1.0),
    ],
)
def test_exact_match_and_f1(prediction, gold, em, f1):
    assert metrics.exact_match(prediction, gold) == em
    assert metrics.token_f1(prediction, gold) == pytest.approx(f1)


def test_max_over_gold_aliases_and_unanswerable():
    assert metrics.max_over_gold(metrics.exact_match, "City of Paris", ["Paris", "city of paris"]) == 1.0
    assert metrics.max_over_gold(metrics.token_f1, "paris", ["Paris France", "paris"]) == 1.0
    assert metrics.max_over_gold(metrics.exact_match, "", []) == 1.0  # SQuAD v2: no gold = abstain
    assert metrics.max_over_gold(metrics.exact_match, "Normans", []) == 0.0


def test_f1a_and_grouped_em():
    # Answer options of two questions; 1 = correct. tp = 2, fp = 1, fn = 1 -> F1a = 4 / 6.
    predictions = [1, 1, 0, 1, 0]
    labels = [1, 0, 1, 1, 0]
    groups = ["q1", "q1", "q1", "q2", "q2"]
    assert metrics.f1a(predictions, labels) == pytest.approx(4 / 6)
    assert metrics.grouped_exact_match(predictions, labels, groups) == 0.5  # q2 all right, q1 not
    assert metrics.f1a([0, 0], [1, 0]) == 0.0


def test_char_model_log_probs_by_hand():
    model = CharLanguageModel()
    ((ll, greedy, n),) = model.loglikelihood([("aab", "a")])
    assert ll == pytest.approx(math.log(3 / 259)) and greedy and n == 1
    ((ll, greedy, n),) = model.loglikelihood([("aab", "bb")])
    assert ll == pytest.approx(math.log(2 / 259) + math.log(3 / 260)) and not greedy and n == 2
    assert model.generate(["xyzz"], max_tokens=3, stop=["\n"], beam_size=4) == ["zzz"]
    assert model.generate(["xyzzy"], max_tokens=2, stop=[], beam_size=1) == ["yy"]  # tie: lowest code point
