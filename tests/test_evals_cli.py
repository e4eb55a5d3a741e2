"""``glam eval`` / ``glam perplexity`` through argparse, with a fake model in place of a checkpoint."""

import argparse
import json

import pytest

import glam.inference
from glam.cli import eval as eval_cli
from glam.evals import TaskDataError, TaskError
from glam.evals.testing import CharLanguageModel


@pytest.fixture
def parser(monkeypatch):
    loaded = []

    def load_language_model(run_dir):
        loaded.append(run_dir)
        return CharLanguageModel()

    monkeypatch.setattr(glam.inference, "load_language_model", load_language_model, raising=False)
    p = argparse.ArgumentParser(prog="glam")
    eval_cli.add_parser(p.add_subparsers(dest="command"))
    p.loaded = loaded
    return p


def test_eval_command_writes_json(parser, tmp_path, capsys):
    (tmp_path / "copa").mkdir()
    rows = [
        {"premise": "A.", "choice1": "B.", "choice2": "C.", "question": "cause", "label": 0, "idx": i} for i in range(3)
    ]
    (tmp_path / "copa/val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "res.json"
    args = parser.parse_args(
        ["eval", "--checkpoint", "runs/x", "--tasks", "all", "--shots", "1", "--limit", "2",
         "--json", str(out), "--data-root", str(tmp_path), "--beam-size", "2"]
    )  # fmt: skip
    assert args.func(args) == 0
    results = json.loads(out.read_text())
    assert list(results["tasks"]) == ["copa"] and results["tasks"]["copa"]["n"] == 2  # 'all' = tasks with data
    assert results["settings"]["eval"]["beam_size"] == 2 and parser.loaded == ["runs/x"]
    assert "copa" in capsys.readouterr().out


def test_eval_command_errors(parser, tmp_path):
    (tmp_path / "copa").mkdir()
    (tmp_path / "copa/val.jsonl").write_text("")
    args = parser.parse_args(["eval", "--checkpoint", "r", "--tasks", "copa,piqa", "--data-root", str(tmp_path)])
    with pytest.raises(TaskDataError, match=r"task piqa: data not found at .*piqa/llmfoundry_piqa\.jsonl"):
        args.func(args)
    assert parser.loaded == []  # the missing data is reported before the (slow) checkpoint load
    args = parser.parse_args(["eval", "--checkpoint", "r", "--tasks", "bogus"])
    with pytest.raises(TaskError, match="unknown task 'bogus'"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--checkpoint", "r", "--shots", "-1"])


def test_perplexity_command(parser, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("hello")
    args = parser.parse_args(["perplexity", "--checkpoint", "r", str(tmp_path / "t.txt")])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["total"]["tokens"] == 5
