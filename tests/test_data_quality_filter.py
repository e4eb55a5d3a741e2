"""The paper's quality filter: hashed-feature classifier, Pareto sampling, and the CLI commands."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from glam.cli import data as data_cli
from glam.cli import tokenizer as tokenizer_cli
from glam.config import SourceConfig
from glam.data.quality_filter import QualityClassifier, band_report, pareto_keep
from glam.data.sources import Source
from glam.errors import DataError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "corpus")
CURATED = "the committee examined the historical evidence and published a careful detailed analysis".split()
GENERAL = "click here buy now free best deal cheap offer login subscribe win prize".split()
COMMON = "and the of a to in is for it this".split()


def synthetic(words, n, seed) -> list[str]:
    rng = np.random.default_rng(seed)
    pool = words + COMMON
    return [" ".join(rng.choice(pool, size=rng.integers(8, 40))) for _ in range(n)]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_classifier_separates_synthetic_classes_on_heldout_docs():
    model = QualityClassifier(num_features=1 << 14).fit(synthetic(CURATED, 200, 0), synthetic(GENERAL, 200, 1))
    pos, neg = model.scores(synthetic(CURATED, 100, 2)), model.scores(synthetic(GENERAL, 100, 3))
    assert auc(pos, neg) > 0.95
    assert (pos > 0.5).mean() > 0.8 and (neg < 0.5).mean() > 0.8


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="the shared corpus (../shared/data/corpus) is not available")
def test_classifier_separates_wiki_and_books_from_web_on_the_shared_corpus():
    wiki = Source(SourceConfig("wiki", f"{SHARED}/wiki/*.txt", format="lines"))
    books = Source(SourceConfig("books", f"{SHARED}/books/*/*.txt", format="paragraphs"))
    web = Source(SourceConfig("web", f"{SHARED}/web/*.jsonl", format="jsonl"))
    rng = np.random.default_rng(0)
    curated = [s.document(int(k)) for s in (wiki, books) for k in rng.permutation(len(s))[:400]]
    curated = [c for c in curated if len(c) > 100]
    rng.shuffle(curated)
    general = [web.document(k) for k in range(len(web))]
    half, split = len(curated) // 2, 700
    model = QualityClassifier().fit(curated[:half], general[:split])
    score = auc(model.scores(curated[half:]), model.scores(general[split:]))
    assert score > 0.75, score


def test_pareto_sampling_keeps_high_scores_more_often_and_is_deterministic():
    scores = np.repeat([0.05, 0.5, 0.95, 1.0], 5000)
    kept = pareto_keep(scores, alpha=9, seed=0)
    rates = [kept[scores == s].mean() for s in (0.05, 0.5, 0.95, 1.0)]
    assert rates[0] < rates[1] < rates[2] <= rates[3] == 1.0
    assert 0 < rates[0] < 0.02  # some low-scored pages survive: P = (2 - s)^-9 ≈ 0.0025
    assert rates[2] == pytest.approx(1.05**-9, abs=0.02)
    np.testing.assert_array_equal(kept, pareto_keep(scores, alpha=9, seed=0))
    assert not np.array_equal(kept, pareto_keep(scores, alpha=9, seed=1))
    report = band_report(scores, kept)
    assert sum(r[2] for r in report) == len(scores) and report[-1][2] == 10000


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="glam")
    sub = parser.add_subparsers(dest="command", required=True)
    tokenizer_cli.add_parser(sub)
    data_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_filter_cli_writes_kept_documents(tmp_path, capsys):
    for name, words, seed in (("cur", CURATED, 0), ("gen", GENERAL, 1)):
        (tmp_path / f"{name}.txt").write_text("\n".join(synthetic(words, 150, seed)) + "\n")
    docs = synthetic(CURATED, 50, 5) + synthetic(GENERAL, 50, 6)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "out" / "kept.jsonl"
    args = parse(["data", "filter", "--curated", str(tmp_path / "cur.txt"), "--general", str(tmp_path / "gen.txt"),
                  "--curated-format", "lines", "--general-format", "lines", "--input", str(tmp_path / "in.jsonl"),
                  "--output", str(out), "--seed", "0"])  # fmt: skip
    assert args.func(args) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 40 <= len(kept) < 100
    assert sum(k["text"] in docs[:50] for k in kept) > sum(k["text"] in docs[50:] for k in kept)
    assert "score band" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["kept.jsonl"]  # no temporary file left behind


def test_tokenizer_cli_trains_from_the_config_mixture(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n".join(synthetic(CURATED, 300, 0)) + "\n")
    output = tmp_path / "tok.model"
    sources = f"data.sources=[{{name: a, path: {tmp_path / 'a.txt'}, format: lines}}]"
    args = parse(["tokenizer", "train", "tiny", sources, "--vocab-size", "400", "--output", str(output)])
    assert args.func(args) == 0
    assert output.is_file() and "wrote" in capsys.readouterr().out


def test_filter_documents_is_the_library_behind_the_cli(tmp_path):
    from glam.data.quality_filter import filter_documents

    for name, words, seed in (("cur", CURATED, 0), ("gen", GENERAL, 1)):
        (tmp_path / f"{name}.txt").write_text("\n".join(synthetic(words, 150, seed)) + "\n")
    docs = synthetic(CURATED, 50, 5) + synthetic(GENERAL, 50, 6)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "kept.jsonl"
    result = filter_documents(
        [str(tmp_path / "cur.txt")], [str(tmp_path / "gen.txt")], str(tmp_path / "in.jsonl"), str(out),
        formats=("lines", "lines", "auto"), seed=0, max_train_docs=100, save_model=str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert (result.curated, result.general, len(result.scores)) == (100, 100, 100)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [k["text"] for k in kept] == [d for d, keep in zip(docs, result.kept) if keep]
    assert [k["score"] for k in kept] == [round(float(s), 6) for s in result.scores[result.kept]]
    assert QualityClassifier.load(str(tmp_path / "m.npz")).scores(docs[:3]) == pytest.approx(result.scores[:3])
    with pytest.raises(DataError, match="the Pareto shape must be > 0"):
        filter_documents([], [], str(tmp_path / "in.jsonl"), str(out), alpha=0)
