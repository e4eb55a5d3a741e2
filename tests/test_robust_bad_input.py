"""Bad input through the real CLI: one ``error: ...`` line naming the problem and the fix, exit 2,
no traceback, and no file created or changed. One test per row of the table in docs/robustness.md.

Commands run in this process through ``glam.cli.main.main`` (the 8 simulated devices of conftest).
The rows that need a trained model share one run directory whose checkpoints are written straight
from an initialised state (steps 1 and 2): nothing is compiled for training.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from glam.cli.main import main
from glam.train.testing import small_run_config

TINY = ["model.d_model=32", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=64", "model.max_seq_len=64"]
TINY += ["train.batch_size=4", "train.seq_len=32", "mesh.data=4", "mesh.model=2"]  # 8 devices (conftest)


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` → a hash of its bytes."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


def fails(capsys, root: Path, argv: list[str]) -> str:
    """Run ``glam ARGV``; check exit 2, one error line, no traceback, ``root`` untouched. Returns the line."""
    capsys.readouterr()
    before = files(root)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    assert out == ""
    assert files(root) == before, "the failed command created or changed files"
    return errors[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two JSONL sources and a 512-piece tokenizer (glam.train.testing.small_run_config)."""
    folder = tmp_path_factory.mktemp("bad_input")
    small_run_config(str(folder))
    return folder


@pytest.fixture(scope="module")
def run_dir(corpus) -> Path:
    """A run directory with finalised checkpoints at steps 1 and 2, made without training."""
    from glam.checkpoint.inference import save_tokenizer
    from glam.checkpoint.manager import Checkpointer, prepare_run_dir
    from glam.config import resolve
    from glam.data.pipeline import build_pipeline
    from glam.sharding.mesh import make_mesh
    from glam.train.state import create_train_state

    cfg = resolve(str(corpus / "config.yaml"), TINY)
    run = corpus / "run"
    prepare_run_dir(cfg, str(run))
    save_tokenizer(cfg, str(run))
    mesh = make_mesh(cfg)
    state = create_train_state(cfg, mesh)
    pipeline = build_pipeline(cfg, str(run), prefetch=0)
    checkpointer = Checkpointer(str(run), writer=True)
    for step in (1, 2):
        state = state._replace(step=jax.device_put(np.int32(step), state.step.sharding))
        checkpointer.save(state, pipeline.state_dict(), cfg)
    checkpointer.close()
    return run


def sources_override(path: Path, **fields) -> str:
    extra = "".join(f", {k}: {v}" for k, v in fields.items())
    return f"data.sources=[{{name: web, path: '{path}'{extra}}}]"


# Config -------------------------------------------------------------------------------------------


def test_unknown_preset(capsys, tmp_path):
    line = fails(capsys, tmp_path, ["train", "glam-tiny", "--run-dir", str(tmp_path / "run")])
    assert line.startswith("error: unknown preset 'glam-tiny'; choose one of dense-0.1b, glam-0.1b-64e,")
    assert line.endswith("tiny, tiny-dense (or pass a .yaml config file)")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_modle=64", "error: model.d_modle: unknown key; valid keys under 'model.' are activation_dtype, "),
        ("train.steps=ten", "error: train.steps: expected an integer, got 'ten'"),
        ("train=5", "error: train: is a section; set one of its fields, e.g. train.<field>=..."),
    ],
    ids=["unknown-key", "not-an-integer", "section"],
)
def test_unknown_or_ill_typed_override(capsys, tmp_path, override, message):
    line = fails(capsys, tmp_path, ["train", "tiny", override, "--run-dir", str(tmp_path / "run")])
    assert line.startswith(message)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["moe.num_experts=6", "mesh.data=4", "mesh.model=2"],
            "error: moe.num_experts=6 and mesh.data=4: one must divide the other",
        ),
        (
            ["train.batch_size=6", "mesh.data=4", "mesh.model=2"],
            "error: train.batch_size (per micro-batch)=6 is not divisible by mesh.data=4; choose a mesh that divides",
        ),
        (
            ["model.num_heads=3", "mesh.data=4", "mesh.model=2"],
            "error: model.num_heads=3 is not divisible by mesh.model=2; choose a mesh that divides it",
        ),
    ],
    ids=["experts", "batch", "heads"],
)
def test_mesh_that_does_not_divide(capsys, tmp_path, overrides, message):
    assert len(jax.devices()) == 8
    line = fails(capsys, tmp_path, ["train", "tiny", *overrides, "--run-dir", str(tmp_path / "run")])
    assert line.startswith(message)


# Data ---------------------------------------------------------------------------------------------


def train_argv(corpus: Path, run: Path, *overrides: str) -> list[str]:
    return ["train", str(corpus / "config.yaml"), *TINY, *overrides, "--run-dir", str(run)]


def test_missing_data_file(capsys, corpus, tmp_path):
    missing = tmp_path / "web.jsonl"
    line = fails(capsys, tmp_path, train_argv(corpus, tmp_path / "run", sources_override(missing)))
    assert line == (
        f"error: data source 'web': the path '{missing}' does not exist; "
        "fix data.sources[].path (a file, directory or glob)"
    )


def test_empty_corpus(capsys, corpus, tmp_path):
    empty = tmp_path / "web.txt"
    empty.write_text("\n   \n\n")
    line = fails(capsys, tmp_path, train_argv(corpus, tmp_path / "run", sources_override(empty, format="lines")))
    assert line == (
        f"error: data source 'web' ({empty}) holds no non-empty documents; "
        "check the path and the format ('lines', text_field='text')"
    )


@pytest.mark.parametrize("weight", ["0", "-0.5"])
def test_source_weight_not_positive(capsys, corpus, tmp_path, weight):
    argv = train_argv(corpus, tmp_path / "run", sources_override(corpus / "corpus" / "alpha.jsonl", weight=weight))
    line = fails(capsys, tmp_path, argv)
    assert line == (
        f"error: data.sources[web].weight: got {float(weight)}; mixture weights must be > 0 "
        "(remove the source to leave it out)"
    )


def stats_row(capsys, source: str) -> list[str]:
    """`glam data stats` for one source: the printed row (source, weight, files, documents, bad_json, non-utf8)."""
    capsys.readouterr()
    assert main(["data", "stats", "tiny", source]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out.splitlines()[1].split()


def test_non_utf8_bytes_are_replaced_and_counted(capsys, corpus, tmp_path):
    from glam.config import SourceConfig
    from glam.data.sources import Source

    path = tmp_path / "web.txt"
    path.write_bytes(b"caf\xe9 au lait\nna\xefve \xff\xfe text\nplain line\n")
    assert stats_row(capsys, sources_override(path, format="lines")) == ["web", "1.000", "1", "3", "0", "4"]
    source = Source(SourceConfig("web", str(path), format="lines"))
    assert [source.document(k) for k in range(3)] == ["caf\ufffd au lait", "na\ufffdve \ufffd\ufffd text", "plain line"]


def test_jsonl_line_that_is_not_json(capsys, corpus, tmp_path):
    path = tmp_path / "web.jsonl"
    path.write_text('{"text": "first document"}\n{"text": "cut off\n{"text": "third document"}\n')
    # Default (data.on_bad_json=skip): skipped and counted.
    assert stats_row(capsys, sources_override(path)) == ["web", "1.000", "1", "2", "1", "0"]
    # data.on_bad_json=error: one line naming the file, the line and both fixes.
    argv = train_argv(corpus, tmp_path / "run", sources_override(path), "data.on_bad_json=error")
    line = fails(capsys, tmp_path, argv)
    assert line.startswith(f"error: data source 'web': a line of '{path}' is not JSON (")
    assert line.endswith("fix the file or set data.on_bad_json=skip to skip and count such lines")


# Checkpoints and run directories -------------------------------------------------------------------


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no tracebacks around the line
@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_truncated_or_corrupt_checkpoint(capsys, run_dir, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    data = [p for p in (run / "checkpoints" / "2" / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        if damage == "truncated":
            os.truncate(p, p.stat().st_size // 2)
        else:
            p.unlink()
    folder = run / "checkpoints" / "2"
    for argv in (
        ["generate", "--checkpoint", str(run), "--prompt", "Return", "--max-tokens", "2"],
        train_argv(run_dir.parent, run, "train.steps=3"),  # resuming training hits the same checkpoint
    ):
        line = fails(capsys, tmp_path, argv)
        assert line.startswith(f"error: checkpoint {folder} is damaged or incomplete (")
        assert line.endswith(
            "; delete that folder (the run resumes from step 1), or load another step (glam generate --step)"
        )


def test_tokenizer_that_does_not_match_the_model(capsys, corpus, run_dir, tmp_path):
    from glam.data.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(3000)]
    big = train_tokenizer([" ".join(words[i : i + 30]) for i in range(0, 3000, 30)], 800, str(tmp_path / "big.model"))
    assert big.vocab_size > 512
    # A checkpoint (model.vocab_size=512) served with someone else's tokenizer.
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.copyfile(big.path, run / "tokenizer.model")
    line = fails(capsys, tmp_path, ["generate", "--checkpoint", str(run), "--prompt", "hi"])
    assert line == (
        f"error: {run / 'tokenizer.model'} has {big.vocab_size} pieces but the checkpoint's model.vocab_size "
        "is 512; put back the tokenizer the run was trained with"
    )
    # Training with it: refused before the run directory exists.
    line = fails(capsys, tmp_path, train_argv(corpus, tmp_path / "new", f"data.tokenizer={big.path}"))
    assert line == (
        f"error: tokenizer '{big.path}' has {big.vocab_size} pieces but model.vocab_size=512; "
        f"set model.vocab_size >= {big.vocab_size} or use a smaller tokenizer"
    )


def test_prompt_longer_than_the_context(capsys, run_dir):
    prompt = "Return a new dictionary " * 20
    line = fails(capsys, run_dir, ["generate", "--checkpoint", str(run_dir), "--prompt", prompt, "--max-tokens", "8"])
    assert line.startswith("error: prompt 0 is ")
    assert line.endswith(
        "tokens, but model.max_seq_len=64 leaves room for 56 prompt tokens when generating max_tokens=8; "
        "shorten the prompt to at most 56 tokens"
    )


def test_task_file_with_missing_fields(capsys, run_dir, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_text(
        "name: mine\ncategory: NLU\ngroup: mine\noutput: multiple_choice\ndata: {path: mine.jsonl}\n"
    )
    argv = ["eval", "--checkpoint", str(run_dir), "--task-dir", str(tasks), "--tasks", "mine", "--json"]
    line = fails(capsys, tmp_path, [*argv, str(tmp_path / "out.json")])
    assert line == f"error: task file {tasks / 'mine.yaml'}: field 'prompt': missing or not a string; add 'prompt: ...'"


def test_run_directory_of_another_config(capsys, corpus, run_dir):
    line = fails(capsys, run_dir, train_argv(corpus, run_dir, "model.num_heads=4", "optim.lr_scale=0.1"))
    assert line.startswith(f"error: run directory '{run_dir}' belongs to a different config (")
    assert "model.num_heads: 2 in the run directory, 4 now" in line and "optim.lr_scale: 0.5 in the run" in line
    assert line.endswith("train into a new --run-dir, or undo those overrides to resume this run")
