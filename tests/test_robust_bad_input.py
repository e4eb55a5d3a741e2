"""Bad input through the real CLI: one ``error: ...`` line naming the problem and the fix, exit 2,
no traceback, and no file created or changed. One test per row of the table in docs/robustness.md.

Commands run in this process through ``glam.cli.main.main`` (the 8 simulated devices of conftest).
The rows that need a trained model share one run directory whose checkpoints are written straight
from an initialised state (steps 1 and 2): nothing is compiled for training.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from small_runs import small_run_config

from glam.cli.main import main

TINY = ["model.d_model=32", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=64", "model.max_seq_len=64"]
TINY += ["train.batch_size=4", "train.seq_len=32", "mesh.data=4", "mesh.model=2"]  # 8 devices (conftest)


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` → a hash of its bytes."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.exists(path):  # a dangling symbolic link: its target names it
                out[os.path.relpath(path, root)] = "link to " + os.readlink(path)
                continue
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
    """Two JSONL sources and a 512-piece tokenizer (small_runs.small_run_config (tests/small_runs.py))."""
    folder = tmp_path_factory.mktemp("bad_input")
    small_run_config(str(folder))
    return folder


@pytest.fixture(scope="module")
def run_dir(corpus) -> Path:
    """A run directory with finalised checkpoints at steps 1 and 2, made without training."""
    from glam.checkpoint.manager import Checkpointer, prepare_run_dir
    from glam.config import resolve
    from glam.data.pipeline import build_pipeline, save_run_tokenizer
    from glam.sharding.mesh import make_mesh
    from glam.train.state import create_train_state

    cfg = resolve(str(corpus / "config.yaml"), TINY)
    run = corpus / "run"
    prepare_run_dir(cfg, str(run))
    mesh = make_mesh(cfg)
    state = create_train_state(cfg, mesh)
    pipeline = build_pipeline(cfg, str(run), prefetch=0)
    save_run_tokenizer(cfg, pipeline.tokenizer, str(run))
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
    """``glam train`` on the corpus's config with TINY's overrides, except those ``overrides`` replace."""
    replaced = {o.split("=", 1)[0] for o in overrides}
    base = [o for o in TINY if o.split("=", 1)[0] not in replaced]
    return ["train", str(corpus / "config.yaml"), *base, *overrides, "--run-dir", str(run)]


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
    path, source = run / "tokenizer.model", corpus / "tokenizer.model"  # the run's data.tokenizer
    assert line.startswith(f"error: {path} is not the tokenizer this run was trained with (sha256 ")
    assert line.endswith(
        f"so its ids would stand for other text; copy {source} (the run's data.tokenizer) to {path}; glam checks "
        f"it against the sha256 in {run / 'tokenizer.json'}"
    )
    os.remove(run / "tokenizer.json")  # a run older than checksums: the piece count still guards the embedding
    line = fails(capsys, tmp_path, ["generate", "--checkpoint", str(run), "--prompt", "hi"])
    assert line == (
        f"error: {path} has {big.vocab_size} pieces but the checkpoint's model.vocab_size is 512; put back a copy "
        f"of the original, or rebuild it with `glam tokenizer train {run}/config.yaml --output {path}` (the run's "
        "data, seed and vocabulary); no checksum was recorded for it, so glam cannot tell whether it is the same"
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


# One line everywhere (issue 12): config files, flags, outputs, text that is not UTF-8 ---------------


def warns(capsys, argv: list[str]) -> tuple[str, list[str]]:
    """Run ``glam ARGV``; check exit 0 and no traceback. Returns (stdout, the ``warning:`` lines)."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err + out and "error:" not in err
    return out, [line for line in err.splitlines() if line.startswith("warning:")]


BAD_CONFIG_FILES = {
    "preset-list": (b"preset: [tiny]\n", "{p}: preset: expected a preset name, got ['tiny']; write preset: tiny"),
    "not-utf8": (b"preset: tiny\n# caf\xe9\n", "{p} is not UTF-8 text (byte 0xe9 at offset 18); save it as UTF-8"),
    "empty": (b"# nothing yet\n", "{p} is empty; name a preset (preset: tiny) and the sections to change"),
    "a-list": (b"- preset: tiny\n", "{p} holds a list, not a mapping of sections (preset:, model:, train:, ...)"),
    "duplicate-keys": (
        b"preset: tiny\nmodel: {d_model: 64}\nmodel: {num_layers: 4}\n",
        "{p} is not valid YAML (key 'model' is given twice (lines 2 and 3): merge them, the second would replace "
        "the first); fix it",
    ),
}


@pytest.mark.parametrize("case", [*BAD_CONFIG_FILES, "directory"])
def test_bad_config_file(capsys, tmp_path, case):
    path = tmp_path / "exp.yaml"
    if case == "directory":
        path.mkdir()
        message = "{p} is a directory; give the path of a YAML file"
    else:
        content, message = BAD_CONFIG_FILES[case]
        path.write_bytes(content)
    assert fails(capsys, tmp_path, ["info", str(path)]) == "error: config file " + message.format(p=repr(str(path)))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.sources=[{name: web, path: x"],
            "data.sources: not valid YAML (expected ',' or '}', but got '<stream end>' at line 1, column 21)",
        ),
        (
            ["data.sources=[{name: web, path: x, name: y}]"],
            "data.sources: not valid YAML (key 'name' is given twice (lines 1 and 1): merge them, the second would "
            "replace the first)",
        ),
        (["model.norm_eps=-1"], "model.norm_eps: got -1.0; RMSNorm's epsilon must be > 0 (e.g. 1e-6)"),
        (["model.norm_eps=nan"], "model.norm_eps: got 'nan'; give a finite number"),
        (
            ["data.sources=[{name: web, path: x, weight: inf}]"],
            "data.sources[0].weight: got 'inf'; give a finite number",
        ),
    ],
    ids=["broken-yaml", "duplicate-yaml-key", "norm-eps", "nan", "weight-inf"],
)
def test_bad_override(capsys, tmp_path, overrides, message):
    assert fails(capsys, tmp_path, ["info", "tiny", *overrides]) == f"error: {message}"


def test_duplicate_override_warns_and_the_last_applies(capsys):
    out, warned = warns(capsys, ["info", "tiny", "model.d_model=64", "train.steps=3", "model.d_model=96", "--json"])
    line = "warning: model.d_model: overridden twice ('model.d_model=64', then 'model.d_model=96'); the last one "
    line += "applies"
    assert warned == [line]
    assert out == warns(capsys, ["info", "tiny", "train.steps=3", "model.d_model=96", "--json"])[0]


@pytest.mark.parametrize("command", ["train", "tokenizer"])
def test_negative_data_seed(capsys, corpus, tmp_path, command):
    if command == "train":
        argv = train_argv(corpus, tmp_path / "run", "data.seed=-1")
    else:
        argv = [
            "tokenizer",
            "train",
            str(corpus / "config.yaml"),
            "data.seed=-1",
            "--output",
            str(tmp_path / "t.model"),
        ]
    assert fails(capsys, tmp_path, argv) == "error: data.seed: got -1; the data order's seed must be >= 0"


def test_experts_that_do_not_divide_the_mesh(capsys, tmp_path):
    line = fails(capsys, tmp_path, ["train", "tiny", "moe.num_experts=3", "mesh.data=4", "mesh.model=2"])
    assert line.startswith("error: moe.num_experts=3 and mesh.data=4: one must divide the other")
    out, _ = warns(capsys, ["info", "tiny", "moe.num_experts=3"])  # accepted (one device divides 3), with a note
    assert (
        "note: moe.num_experts=3 is not a power of two: experts are split over mesh.data, which must divide 3 or be a "
        "multiple of it (3, 6, ...); on a power-of-two number of devices put the rest on mesh.model"
    ) in " ".join(out.split())


def test_info_on_two_billion_layers(capsys):
    out, _ = warns(capsys, ["info", "tiny", "model.num_layers=2e9", "--json"])  # was a MemoryError (a row per layer)
    d = json.loads(out)
    assert d["num_layers"] == 2_000_000_000 and d["params_total"] == 2_000_640_000_524_416
    assert d["layout"][0] == {"layers": "0, 2, ..., 1999999998", "count": 1_000_000_000, "ffn": "moe(8 experts, top-2)"}


def test_run_directory_whose_config_is_broken(capsys, corpus, run_dir, tmp_path):
    for content, why in (("model: [\n", "is not valid YAML ("), ("- 1\n- 2\n", "holds a list, not a mapping")):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(run_dir, run)
        (run / "config.yaml").write_text(content)
        line = fails(capsys, tmp_path, train_argv(corpus, run))
        assert line.startswith(f"error: the run directory's config file '{run / 'config.yaml'}' {why}"), line
        # Inference needs no copy: the checkpoint holds its own config (one note says the copy is unusable).
        capsys.readouterr()
        assert main(["generate", "--checkpoint", str(run), "--prompt", "hi", "--max-tokens", "2"]) == 0
        out, err = capsys.readouterr()
        assert out.strip() and "Traceback" not in err
        assert [line for line in err.strip().splitlines() if not line.startswith("[")] == [  # not [stop reason]
            f"note: {run / 'config.yaml'} disagrees with checkpoint 2 (it does not parse); "
            "using the checkpoint's config"
        ]


# Data --------------------------------------------------------------------------------------------


def test_dangling_symlink_in_a_source_directory(capsys, corpus, tmp_path):
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "a.txt").write_text("a document\n")
    (folder / "b.txt").symlink_to(tmp_path / "unmounted" / "b.txt")
    target = tmp_path / "unmounted" / "b.txt"
    why = f"cannot read '{folder / 'b.txt'}' (a symbolic link to '{target}', which does not exist)"
    line = fails(capsys, tmp_path, ["data", "stats", "tiny", sources_override(folder)])
    assert line == f"error: data source 'web': {why}; fix or remove it"
    good = str(corpus / "corpus" / "alpha.jsonl")
    argv = ["data", "filter", "--curated", str(folder), "--general", good, "--input", good]
    line = fails(capsys, tmp_path, [*argv, "--output", str(tmp_path / "kept.jsonl")])
    assert line == f"error: data source 'curated0': {why}; fix or remove it"


NOT_TEXT = {
    "gzip": (gzip.compress(b"hello\n" * 100), "is gzip-compressed, not UTF-8 text; decompress it first (gunzip)"),
    "utf16": (
        "hello\n".encode("utf-16"),
        "is UTF-16 text, not UTF-8 text; glam reads UTF-8: convert it (iconv -f UTF-16 -t UTF-8)",
    ),
    "binary": (bytes(range(256)) * 4, "is binary (a NUL byte in its first 8 KiB), not text; point glam at text files"),
}


@pytest.mark.parametrize("kind", NOT_TEXT)
def test_source_that_is_not_text(capsys, tmp_path, kind):
    content, why = NOT_TEXT[kind]
    path = tmp_path / "web.txt"
    path.write_bytes(content)
    line = fails(capsys, tmp_path, ["data", "stats", "tiny", sources_override(path, format="lines")])
    assert line == f"error: data source 'web': '{path}' {why}"


def test_latin1_source_is_replaced_counted_and_reported(capsys, tmp_path):
    path = tmp_path / "web.txt"
    path.write_bytes(b"caf\xe9 cr\xe8me\nna\xefve\n")
    out, said = warns(capsys, ["data", "stats", "tiny", sources_override(path, format="lines")])
    assert out.splitlines()[1].split() == ["web", "1.000", "1", "2", "0", "3"]
    assert said == [
        f"warning: data source 'web' ({path}): 3 invalid UTF-8 byte sequences replaced with U+FFFD; if the text is "
        "Latin-1, convert it (iconv -f LATIN1 -t UTF-8)"
    ]


def test_source_weights_not_summing_to_one_are_normalised_with_a_warning(corpus):
    from glam.config import SourceConfig
    from glam.data.mixture import Mixture
    from glam.data.sources import open_sources
    from glam.errors import GLaMWarning

    folder = corpus / "corpus"
    configs = (
        SourceConfig("alpha", str(folder / "alpha.jsonl"), 3.0),
        SourceConfig("beta", str(folder / "beta.jsonl"), 1.0),
    )
    sources = open_sources(configs)
    kw = dict(seq_len=16, seed=0, heldout_docs=1, bos_id=2, eos_id=3)
    message = "data.sources weights sum to 4, not 1; each source's share is its weight / 4: alpha 0.750, beta 0.250"
    with pytest.warns(GLaMWarning, match="^" + re.escape(message) + "$"):
        mixture = Mixture(sources, lambda text: [5] * 4, **kw)
    assert [s["weight"] for s in mixture.stats().values()] == [0.75, 0.25]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal weights (or weights summing to 1) say nothing
        Mixture(open_sources(tuple(dataclasses.replace(c, weight=2.0) for c in configs)), lambda t: [5], **kw)


def test_quality_filter_with_no_training_documents(capsys, corpus, tmp_path):
    good = str(corpus / "corpus" / "alpha.jsonl")
    argv = ["data", "filter", "--curated", good, "--general", good, "--input", good, "--max-train-docs", "0"]
    line = fails(capsys, tmp_path, [*argv, "--output", str(tmp_path / "kept.jsonl")])
    assert line == "error: argument --max-train-docs: got 0; give an integer >= 1 (see `glam data filter --help`)"


# Flags and outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, flag, example",
    [
        ("tokenizer train", "--output", "tokenizer.model"),
        ("data filter", "--output", "kept.jsonl"),
        ("eval", "--json", "results.json"),
        ("perplexity", "--json", "perplexity.json"),
    ],
)
def test_output_that_cannot_be_written(capsys, corpus, run_dir, tmp_path, command, flag, example):
    """Refused when the command line is parsed: `glam eval --json DIR` used to lose a finished evaluation."""
    good = str(corpus / "corpus" / "alpha.jsonl")
    argv = {
        "tokenizer train": ["tokenizer", "train", str(corpus / "config.yaml")],
        "data filter": ["data", "filter", "--curated", good, "--general", good, "--input", good],
        "eval": ["eval", "--checkpoint", str(run_dir), "--tasks", "copa"],
        "perplexity": ["perplexity", "--checkpoint", str(run_dir), good],
    }[command]
    folder, file = tmp_path / "out", tmp_path / "a-file"
    folder.mkdir()
    file.write_text("x")
    line = fails(capsys, tmp_path, [*argv, flag, str(folder)])
    assert line == (
        f"error: argument {flag}: '{folder}' is a directory; give a file path, e.g. {folder / example} "
        f"(see `glam {command} --help`)"
    )
    line = fails(capsys, tmp_path, [*argv, flag, str(file / "x.json")])
    assert line == (
        f"error: argument {flag}: '{file / 'x.json'}' is under '{file}', which is a file; choose a path in a "
        f"directory (see `glam {command} --help`)"
    )


def test_run_dir_that_is_a_file(capsys, corpus, tmp_path):
    file = tmp_path / "runs"
    file.write_text("x")
    line = fails(capsys, tmp_path, train_argv(corpus, file))
    assert line == (
        f"error: argument --run-dir: '{file}' is a file, not a directory; give a new or existing directory "
        "(see `glam train --help`)"
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["generate", "--batch-size", "-1"], "argument --batch-size: got -1; give an integer >= 1"),
        (["generate", "--temperature", "nan"], "argument --temperature: got 'nan'; give a finite number"),
        (["tokenizer", "--vocab-size", "0"], "argument --vocab-size: got 0; give an integer >= 1"),
    ],
    ids=["batch-size", "temperature", "vocab-size"],
)
def test_flag_out_of_range(capsys, corpus, run_dir, tmp_path, flags, message):
    command, *flag = flags
    if command == "generate":
        argv, prog = ["generate", "--checkpoint", str(run_dir), "--prompt", "hi", *flag], "glam generate"
    else:
        argv = ["tokenizer", "train", str(corpus / "config.yaml"), "--output", str(tmp_path / "t.model"), *flag]
        prog = "glam tokenizer train"
    assert fails(capsys, tmp_path, argv) == f"error: {message} (see `{prog} --help`)"


def test_sampler_refuses_a_temperature_that_is_not_finite():
    from glam.errors import GLaMError
    from glam.inference import Sampler

    for t in (float("nan"), float("inf")):
        with pytest.raises(GLaMError, match=f"temperature={t}: use 0 for greedy decoding or a finite value > 0"):
            Sampler(t)


def test_max_tokens_beyond_the_context(capsys, run_dir):
    from glam.data.tokenizer import Tokenizer

    n = 1 + len(Tokenizer(str(run_dir / "tokenizer.model")).encode("hi"))  # bos + the prompt
    line = fails(
        capsys, run_dir, ["generate", "--checkpoint", str(run_dir), "--prompt", "hi", "--max-tokens", "100000"]
    )
    assert line == (  # was "shorten the prompt to at most -99936 tokens"
        f"error: max_tokens=100000 leaves no room for a prompt in model.max_seq_len=64; with prompt 0 ({n} tokens) "
        f"ask for at most {64 - n} tokens"
    )


def test_more_beams_than_the_vocabulary(capsys, run_dir):
    """Issue 28: ``--beam 100000`` ran for 212 s on a 512-token model."""
    line = fails(
        capsys,
        run_dir,
        ["generate", "--checkpoint", str(run_dir), "--prompt", "hi", "--max-tokens", "4", "--beam", "100000"],
    )
    assert line == (
        "error: beam width 100000 is more than the model's 512 tokens: the first step has only 512 continuations "
        "to keep; use at most 512 beams (the paper uses 4)"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("moe.aux_loss_weight=-1", "moe.aux_loss_weight: got -1.0; must be >= 0 (GLaM uses 0.01; 0 = no aux loss)"),
        ("moe.capacity_factor_train=0", "moe.capacity_factor_train: got 0.0; must be > 0 (GLaM uses 2.0)"),
        ("moe.capacity_factor_eval=-2", "moe.capacity_factor_eval: got -2.0; must be > 0 (GLaM uses 2.0)"),
    ],
)
def test_moe_values_that_train_nonsense_are_refused(capsys, corpus, tmp_path, override, message):
    """Issue 28 (the MoEConfig checks of issue 25): each trained before, with a loss that went negative,
    half the first choices dropped, or an evaluation at a negative capacity."""
    assert fails(capsys, tmp_path, train_argv(corpus, tmp_path / "run", override)) == f"error: {message}"
    assert not (tmp_path / "run").exists()


def test_out_of_memory_names_the_batch_and_glam_plan(capsys, corpus, tmp_path):
    batch = 2**40
    line = fails(capsys, tmp_path, train_argv(corpus, tmp_path / "run", f"train.batch_size={batch}"))
    assert line.startswith("error: out of memory (Unable to allocate ")
    assert line.endswith(
        f"train.batch_size={batch} x train.seq_len=32 did not fit; lower train.batch_size or raise train.grad_accum "
        f"(micro-batches of batch_size/grad_accum), and check a batch first with `glam plan {corpus / 'config.yaml'} "
        f"[the same overrides] --mesh DATAxMODEL --batch {batch}`"
    )
    # An accelerator (or XLA on the host) reports RESOURCE_EXHAUSTED: the same line.
    import jax.numpy as jnp

    from glam.errors import GLaMError, out_of_memory_advice

    with pytest.raises(
        GLaMError, match=r"^out of memory \(RESOURCE_EXHAUSTED: Out of memory allocating \d+ bytes.\); advice$"
    ):
        with out_of_memory_advice("advice"):
            jnp.zeros((2**40, 2**20), jnp.int8).block_until_ready()


# Text for inference and evaluation ---------------------------------------------------------------


def test_prompt_file_that_is_not_utf8(tmp_path):
    from glam.cli.generate import read_prompts
    from glam.errors import DataError, GLaMWarning

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"caf\xe9\nplain\n")
    with pytest.warns(GLaMWarning, match=f"^--file {re.escape(str(path))}: 1 invalid UTF-8 byte sequence replaced"):
        assert read_prompts(str(path)) == ["caf\ufffd", "plain"]
    path.write_bytes(b"\x00\x01binary")
    with pytest.raises(DataError, match="is binary"):
        read_prompts(str(path))


def test_task_file_that_is_not_utf8(capsys, run_dir, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_bytes(b"name: mine\ndescription: caf\xe9\n")
    line = fails(capsys, tmp_path, ["eval", "--checkpoint", str(run_dir), "--task-dir", str(tasks), "--tasks", "mine"])
    assert (
        line == f"error: task file '{tasks / 'mine.yaml'}' is not UTF-8 text (byte 0xe9 at offset 27); save it as UTF-8"
    )


def test_perplexity_on_files_that_are_not_clean_text(capsys, run_dir, tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    line = fails(capsys, tmp_path, ["perplexity", "--checkpoint", str(run_dir), str(binary)])
    assert line == f"error: '{binary}' is binary (a NUL byte in its first 8 KiB), not text; point glam at text files"
    # Latin-1 text and malformed JSON Lines: read as training reads them, with one warning each.
    latin, lines = tmp_path / "latin.txt", tmp_path / "docs.jsonl"
    latin.write_bytes(b"caf\xe9 au lait\n")
    lines.write_text('{"text": "a document"}\n{"text": "cut off\n{"other": 1}\n')
    out, said = warns(capsys, ["perplexity", "--checkpoint", str(run_dir), str(latin), str(lines)])
    assert said == [
        f"warning: {latin}: 1 invalid UTF-8 byte sequence replaced with U+FFFD; if the text is Latin-1, convert it "
        "(iconv -f LATIN1 -t UTF-8)",
        f"warning: {lines}: skipped 2 lines that are not JSON objects with a string 'text'",
    ]
    files_ = json.loads(out)["files"]
    assert files_[str(latin)]["documents"] == 1 and files_[str(latin)]["bytes"] == len("caf\ufffd au lait\n".encode())
    assert files_[str(lines)]["documents"] == 1 and files_[str(lines)]["bytes"] == len("a document")


def test_more_shots_than_fit_are_reported():
    from glam.config import EvalConfig
    from glam.errors import GLaMWarning
    from glam.evals.harness import run_requests
    from glam.evals.tasks import Example, Task, TaskData
    from glam.evals.testing import CharLanguageModel

    class SmallContext(CharLanguageModel):
        max_length = 40  # characters are tokens

        def count_tokens(self, text: str) -> int:
            return len(text)

    task = Task("mine", "mine.yaml", "NLU", "mine", "multiple_choice", "acc", ("x",), "jsonl", "{{q}}")
    pool = [Example(i, f"d{i}", (("q?", " yes"), ("q?", " no")), f"demo {i}", gold=(0,)) for i in range(3)]
    data = TaskData(task, pool, pool, True, "x", "same split, excluding the example")
    # Each demonstration is "demo i\n\n" (8 tokens); the longest request "q? yes" is 6: 40 - 6 = 34 holds 4 whole ones,
    # but the pool offers each example only the 2 others.
    with pytest.warns(GLaMWarning) as record:
        scored = run_requests(SmallContext(), data, 1000, EvalConfig())
    assert scored["shots_used"] == {"min": 2, "mean": 2.0, "max": 2}
    assert (
        str(record[0].message)
        == "task mine: asked for 1000 shots, used 2-2 (mean 2.0): the few-shot pool holds 3 examples"
    )
    SmallContext.max_length = 20  # now 20 - 6 = 14 holds one demonstration
    with pytest.warns(GLaMWarning) as record:
        assert run_requests(SmallContext(), data, 2, EvalConfig())["shots_used"] == {"min": 1, "mean": 1.0, "max": 1}
    assert str(record[0].message) == (
        "task mine: asked for 2 shots, used 1-1 (mean 1.0): the model's context (20 tokens) holds no more whole ones "
        "(the rest is cut)"
    )
