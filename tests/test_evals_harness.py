"""The protocol on hand-checkable fake models: rank classification, normalisation, F1a, EM/F1, few-shot, output."""

import json
import math

import pytest
import yaml

from glam.config import EvalConfig
from glam.errors import GLaMError, GLaMWarning
from glam.evals import evaluate, evaluate_perplexity, load_data, load_task
from glam.evals.fewshot import sample_demonstrations
from glam.evals.report import print_results, write_json
from glam.evals.testing import CharLanguageModel


class ScriptedModel:
    """Log-likelihoods and generations looked up by the (stripped) continuation / question; records calls."""

    def __init__(self, scores=None, answers=None):
        self.scores = scores or {}
        self.answers = answers or {}
        self.requests: list[tuple[str, str]] = []
        self.beam_sizes: list[int] = []

    def loglikelihood(self, requests):
        self.requests += requests
        return [(*self.scores[cont.strip()][:1], False, self.scores[cont.strip()][1]) for _, cont in requests]

    def loglikelihood_rolling(self, texts):
        raise NotImplementedError

    def generate(self, contexts, *, max_tokens, stop, beam_size):
        self.beam_sizes.append(beam_size)
        return [next(a for q, a in self.answers.items() if q in ctx.rsplit("Q:", 1)[-1]) for ctx in contexts]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def user_task(tmp_path, **overrides):
    spec = {
        "name": "pets",
        "category": "NLU",
        "group": "commonsense",
        "output": "multiple_choice",
        "metric": "acc",
        "data": {"path": "pets/val.jsonl"},
        "prompt": "Q: {{q}}\nA:",
        "options": {"field": "choices"},
        "gold": {"field": "gold"},
        **overrides,
    }
    (tmp_path / "pets.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "pets.yaml")


def test_length_normalisation_changes_the_pick(tmp_path):
    # " cat": -2.0 over 1 token (-2.0 per token); " big dog": -3.0 over 3 tokens (-1.0 per token).
    write_jsonl(tmp_path / "pets/val.jsonl", [{"q": "Which pet?", "choices": ["cat", "big dog"], "gold": 1}])
    model = ScriptedModel(scores={"cat": (-2.0, 1), "big dog": (-3.0, 3)})
    for normalization, expected in (("per_token", 1.0), ("none", 0.0)):
        path = user_task(tmp_path, normalization=normalization)
        row = evaluate(model, [path], data_root=tmp_path)["tasks"]["pets"]
        assert row["value"] == expected
        assert row["extra"]["acc_per_token"] == 1.0 and row["extra"]["acc_none"] == 0.0
    assert model.requests[:2] == [("Q: Which pet?\nA:", " cat"), ("Q: Which pet?\nA:", " big dog")]


def test_acc_norm_is_lm_evals_per_char_without_the_delimiter(tmp_path):
    # " a": -1.0; " bbbb": -3.0 (gold). acc_norm (lm-eval) divides by len(option): -1/1 = -1.0 < -3/4 = -0.75,
    # so bbbb wins; per_char divides by len(" " + option): -1/2 = -0.5 > -3/5 = -0.6, so a wins; none: a wins.
    write_jsonl(tmp_path / "pets/val.jsonl", [{"q": "Which?", "choices": ["a", "bbbb"], "gold": 1}])
    model = ScriptedModel(scores={"a": (-1.0, 1), "bbbb": (-3.0, 4)})
    for normalization, expected in (("acc_norm", 1.0), ("per_char", 0.0), ("none", 0.0), ("per_token", 1.0)):
        row = evaluate(model, [user_task(tmp_path, normalization=normalization)], data_root=tmp_path)["tasks"]["pets"]
        assert row["value"] == expected and row["normalization"] == normalization
        assert row["extra"] == {"acc_per_token": 1.0, "acc_per_char": 0.0, "acc_norm": 1.0, "acc_none": 0.0}


def test_copa_is_unnormalised(tmp_path):
    row = {"premise": "The man fell.", "choice1": "He slept well.", "choice2": "He hurt.", "question": "effect"}
    write_jsonl(tmp_path / "copa/val.jsonl", [{**row, "label": 1, "idx": 0}])
    # choice1: -4.0 over 4 tokens (-1.0 per token) beats per token; choice2: -3.0 total beats unnormalised.
    model = ScriptedModel(scores={"he slept well.": (-4.0, 4), "he hurt.": (-3.0, 1)})
    result = evaluate(model, "copa", data_root=tmp_path)["tasks"]["copa"]
    assert result["value"] == 1.0 and result["extra"]["acc_per_token"] == 0.0 and result["normalization"] == "none"
    assert model.requests[0] == ("The man fell therefore", " he slept well.")


def test_multirc_f1a_over_answer_options(tmp_path):
    questions = [
        {
            "idx": 0,
            "question": "Q1?",
            "answers": [{"text": "a1", "label": 1, "idx": 0}, {"text": "a2", "label": 0, "idx": 1}],
        },
        {
            "idx": 1,
            "question": "Q2?",
            "answers": [{"text": "a3", "label": 1, "idx": 2}, {"text": "a4", "label": 0, "idx": 3}],
        },
    ]
    write_jsonl(tmp_path / "multirc/val.jsonl", [{"idx": 0, "passage": {"text": "P.", "questions": questions}}])
    says_yes = {"a1", "a2", "a3"}  # predictions [1, 1, 1, 0] vs labels [1, 0, 1, 0]: tp 2, fp 1, fn 0
    scores = {f"{a}\nIs the answer correct? {yn}": (-1.0 if (yn == "yes") == (a in says_yes) else -5.0, 6)
              for a in ("a1", "a2", "a3", "a4") for yn in ("yes", "no")}  # fmt: skip
    result = evaluate(ScriptedModel(scores=scores), "multirc", data_root=tmp_path)["tasks"]["multirc"]
    assert result["metric"] == "f1a" and result["value"] == pytest.approx(0.8)
    assert result["extra"]["em_per_question"] == 0.5 and result["n"] == 4


def test_generation_em_f1_with_aliases(tmp_path):
    write_jsonl(
        tmp_path / "natural_questions_open/NQ-open.dev.jsonl",
        [
            {"question": "who sang yesterday", "answer": ["The Beatles"]},
            {"question": "capital of france", "answer": ["Paris", "City of Paris"]},
            {"question": "last moon landing", "answer": ["1972"]},
        ],
    )
    answers = {"yesterday": " beatles.", "france": "Paris, France", "moon": " in 1972\nQ: next"}
    model = ScriptedModel(answers=answers)
    result = evaluate(model, "natural_questions", data_root=tmp_path)["tasks"]["natural_questions"]
    assert result["value"] == pytest.approx(1 / 3)  # only "beatles" is an exact match
    assert result["extra"]["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert model.beam_sizes == [4]  # EvalConfig default = the paper's beam width


def test_squad_v2_unanswerable(tmp_path):
    qas = [
        {"id": "1", "question": "Who?", "answers": [{"text": "Rollo", "answer_start": 0}], "is_impossible": False},
        {"id": "2", "question": "When?", "answers": [], "is_impossible": True},
    ]
    data = {"data": [{"title": "Normans", "paragraphs": [{"context": "Rollo led.", "qas": qas}]}]}
    (tmp_path / "squad_v2").mkdir()
    (tmp_path / "squad_v2/dev-v2.0.json").write_text(json.dumps(data))

    class Answerer(ScriptedModel):
        def generate(self, contexts, *, max_tokens, stop, beam_size):
            return [" Rollo" if "Who?" in c.rsplit("Question:", 1)[-1] else " Unanswerable." for c in contexts]

    result = evaluate(Answerer(), "squad_v2", data_root=tmp_path)["tasks"]["squad_v2"]
    assert result["value"] == 1.0 and result["extra"]["em"] == 1.0


def _copa_rows(n):
    return [
        {"premise": f"Event {i}.", "choice1": f"Cause {i}a.", "choice2": f"Cause {i}b.", "question": "cause",
         "label": i % 2, "idx": i}
        for i in range(n)
    ]  # fmt: skip


def test_fewshot_deterministic_and_never_the_example(tmp_path):
    write_jsonl(tmp_path / "copa/val.jsonl", _copa_rows(12))
    data = load_data(load_task("copa"), tmp_path)
    assert data.same_split and "same split" in data.fewshot_source
    for ex in data.examples:
        demos = sample_demonstrations(data, ex, 5, seed=0)
        assert len(demos) == 5 and ex.doc not in {d.doc for d in demos}
        assert demos == sample_demonstrations(data, ex, 5, seed=0)
    draws = {s: [[d.index for d in sample_demonstrations(data, ex, 3, s)] for ex in data.examples] for s in (0, 1)}
    assert draws[0] != draws[1]
    limited = load_data(load_task("copa"), tmp_path, limit=2)  # the pool stays the whole split
    assert sample_demonstrations(limited, limited.examples[1], 5, 0) == sample_demonstrations(
        data, data.examples[1], 5, 0
    )


def test_fewshot_never_draws_from_the_examples_group(tmp_path):
    # Twins 0/1 share a pair id, 2/3 another; 4 shares only its continuation with 0 (the second field).
    rows = [{"q": f"S{i}", "pair": p, "cont": c, "choices": ["x", "y"], "gold": 0}
            for i, (p, c) in enumerate([("A", "c0"), ("A", "c1"), ("B", "c2"), ("B", "c3"), ("C", "c0")])]  # fmt: skip
    write_jsonl(tmp_path / "pets/val.jsonl", rows)

    def draws(**spec):
        data = load_data(load_task(user_task(tmp_path, **spec)), tmp_path)
        return [sorted(d.index for d in sample_demonstrations(data, ex, 4, seed=0)) for ex in data.examples]

    assert draws() == [[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]]
    assert draws(group_by="pair") == [[2, 3, 4], [2, 3, 4], [0, 1, 4], [0, 1, 4], [0, 1, 2, 3]]
    assert draws(group_by=["pair", "cont"]) == [[2, 3], [2, 3, 4], [0, 1, 4], [0, 1, 4], [1, 2, 3]]


def test_char_model_samples_from_its_filtered_distribution():
    # After "aab": weights a 3, b 2, each other character 1 (254 of them), total 259. top_p=0.015 keeps
    # a (mass before it 0) and b (3 < 0.015 * 259 = 3.885), not c (5 >= 3.885); top_k=2 keeps a and b too.
    model = CharLanguageModel()
    for kwargs in ({"top_p": 0.015}, {"top_k": 2}):
        firsts = {
            model.generate(["aab"], max_tokens=1, stop=[], temperature=1.0, seed=s, **kwargs)[0] for s in range(40)
        }
        assert firsts == {"a", "b"}
    assert model.generate(["aab"], max_tokens=1, stop=[], temperature=1.0, top_p=0.01, seed=1) == ["a"]  # 3 >= 2.59
    hot = model.generate(["aab", "aab"], max_tokens=6, stop=[], temperature=50.0, seed=7)
    assert hot == model.generate(["aab", "aab"], max_tokens=6, stop=[], temperature=50.0, seed=7) and hot[0] != hot[1]
    assert model.generate(["aab"], max_tokens=3, stop=[]) == ["aaa"]  # greedy without a temperature
    with pytest.raises(ValueError, match="set a temperature > 0"):
        model.generate(["aab"], max_tokens=1, stop=[], top_p=0.5)


def test_fewshot_from_training_split_in_context(tmp_path):
    write_jsonl(tmp_path / "copa/val.jsonl", _copa_rows(3))
    write_jsonl(tmp_path / "copa/train.jsonl", [{**r, "premise": f"Train {r['idx']}."} for r in _copa_rows(4)])
    scores = {f"cause {i}{x}.": (-1.0, 1) for i in range(4) for x in "ab"}
    model = ScriptedModel(scores=scores)
    result = evaluate(model, "copa", shots=2, data_root=tmp_path)["tasks"]["copa"]
    assert result["fewshot_source"] == "separate split: copa/train.jsonl" and result["shots"] == 2
    context = model.requests[0][0]
    demos = context.split("\n\n")
    assert len(demos) == 3 and all(d.startswith("Train ") and " because cause " in d for d in demos[:2])
    assert demos[2] == "Event 0 because"


def test_results_limit_table_and_json(tmp_path, capsys):
    write_jsonl(tmp_path / "copa/val.jsonl", _copa_rows(10))
    write_jsonl(tmp_path / "lambada/llmfoundry_lambada_openai.jsonl", [{"context": "aaa b", "continuation": "a"}])
    results = evaluate(CharLanguageModel(), "copa,lambada", shots=1, limit=4, data_root=tmp_path, config=EvalConfig())
    assert results["tasks"]["copa"]["n"] == 4
    # " a" after "aaa b": the greedy next char is "a" (3 of 5), not the delimiter space, so not greedy.
    assert results["tasks"]["lambada"]["value"] == 0.0
    nll = -(math.log(2 / 261) + math.log(4 / 262)) / 2
    assert results["tasks"]["lambada"]["extra"]["nll_per_token"] == pytest.approx(nll)
    assert set(results["averages"]) == {"all", "NLU", "NLG", "group:superglue", "group:cloze_completion"}
    again = evaluate(CharLanguageModel(), "copa,lambada", shots=1, limit=4, data_root=tmp_path)
    assert again["tasks"] == results["tasks"]
    write_json(results, tmp_path / "out" / "results.json")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["copa"]["n"] == 4
    assert not list((tmp_path / "out").glob(".*tmp"))
    print_results(results)
    assert "copa" in capsys.readouterr().out


def test_perplexity_by_hand(tmp_path):
    (tmp_path / "a.txt").write_text("ab")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "aa"}])
    result = evaluate_perplexity(CharLanguageModel(), [tmp_path / "a.txt", tmp_path / "b.jsonl"])
    nats_a = -(math.log(1 / 256) + math.log(1 / 257))
    file_a = result["files"][str(tmp_path / "a.txt")]
    assert file_a["tokens"] == 2 and file_a["nats_per_token"] == pytest.approx(nats_a / 2)
    assert file_a["bits_per_byte"] == pytest.approx(nats_a / math.log(2) / 2)
    nats_b = -(math.log(1 / 256) + math.log(2 / 257))
    assert result["total"]["nats"] == pytest.approx(nats_a + nats_b) and result["total"]["documents"] == 2
    assert result["total"]["perplexity"] == pytest.approx(math.exp((nats_a + nats_b) / 4))


def test_perplexity_reads_a_json_file_as_training_sources_do(tmp_path):
    """``.json``: a JSON array of records (or one record per line), as in glam.data.sources; else one line."""
    from glam.evals.perplexity import read_documents

    (tmp_path / "a.json").write_text(json.dumps([{"text": "aa"}, {"text": "b"}, {"body": "no text"}], indent=1))
    with pytest.warns(GLaMWarning, match="skipped 1 element that is not"):
        assert read_documents(tmp_path / "a.json") == ["aa", "b"]
    (tmp_path / "b.json").write_text('{"text": "aa"}\n{"text": "b"}\n')
    assert read_documents(tmp_path / "b.json") == ["aa", "b"]
    (tmp_path / "c.json").write_text('{\n "text": "pretty"\n}\n')
    with pytest.raises(GLaMError, match=r"c\.json' is neither a JSON array of objects nor JSON Lines; glam reads"):
        read_documents(tmp_path / "c.json")
    by_hand = evaluate_perplexity(CharLanguageModel(), [tmp_path / "b.json"])["total"]
    assert by_hand["documents"] == 2 and by_hand["tokens"] == 3
