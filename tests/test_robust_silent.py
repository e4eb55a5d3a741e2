"""Silent wrong results and dead ends outside the server (issue 28), through real ``glam`` processes.

A run's tokenizer is checked against the sha256 its ``tokenizer.json`` records wherever a run is
loaded; a start that fails before its first checkpoint leaves nothing that blocks the corrected
command; a write of the run that fails (a full disk, a read-only directory) is one line with exit 2;
``metrics.jsonl`` deleted during a run is written back. The processes share one compilation cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from small_runs import small_run_config, subprocess_env, train_command, train_records

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("robust_silent")]

SIZES = {"d_model": 32, "num_heads": 2, "head_dim": 16, "ffn_dim": 64, "max_seq_len": 64}
FAST = ("train.peak_flops=1e9", "train.eval_every=1000")  # no matmul probe, no held-out evaluation
OWN_TOKENIZER = "data.tokenizer="  # the run trains its own tokenizer (and records what from)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, config, compilation cache, a run trained to step 2 with its own tokenizer)."""
    folder = tmp_path_factory.mktemp("silent")
    config = small_run_config(
        str(folder), model=SIZES, train={"batch_size": 4, "seq_len": 32}, checkpoint={"every": 2, "keep": 2}
    )
    cache = str(folder / "jax_cache")
    trained = str(folder / "trained")
    result = cli(train_command(config, trained, OWN_TOKENIZER, "train.steps=2", *FAST), cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, config, cache, trained


def cli(argv: list[str], cache: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=subprocess_env(1, cache), capture_output=True, text=True, timeout=timeout)


def glam(*args: str) -> list[str]:
    return [sys.executable, "-m", "glam.cli.main", *args]


def one_error_line(stderr: str) -> str:
    """The stderr of a failed command: one ``error:`` line at the end, no traceback, no logged noise."""
    for noise in ("Traceback", "Exception ignored", "ERROR:absl", "WARNING:absl"):
        assert noise not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]), stderr[-3000:]
    return errors[0]


def other_tokenizer(folder, config: str) -> str:
    """A tokenizer of the same corpus and size made with data.seed=7: the one a user who follows
    generic advice ("train a tokenizer") ends up with."""
    from glam.config import resolve
    from glam.data.pipeline import train_mixture_tokenizer

    path = str(folder / "seed7.model")
    if not os.path.isfile(path):
        train_mixture_tokenizer(resolve(config, [OWN_TOKENIZER, "data.seed=7"]), out_path=path)
    return path


# The run's tokenizer ------------------------------------------------------------------------------


def test_a_tokenizer_that_is_not_the_runs_is_refused_everywhere_a_run_is_loaded(setup, tmp_path):
    """generate, eval, perplexity, upcycle and (in this process) the loader serve and export call."""
    folder, config, cache, trained = setup
    run = str(shutil.copytree(trained, tmp_path / "run"))
    shutil.copy(other_tokenizer(folder, config), os.path.join(run, "tokenizer.model"))
    (tmp_path / "copa").mkdir()
    row = {"premise": "A.", "choice1": "B.", "choice2": "C.", "question": "cause", "label": 0, "idx": 0}
    (tmp_path / "copa" / "val.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "text.txt").write_text("some text\n")
    path = os.path.join(run, "tokenizer.model")
    expected = re.compile(
        rf"error: {re.escape(path)} is not the tokenizer this run was trained with \(sha256 [0-9a-f]{{16}}\.\.\., "
        r"but tokenizer\.json records [0-9a-f]{16}\.\.\.\), so its ids would stand for other text; put back a copy "
        rf"of the original, or rebuild it with `glam tokenizer train {re.escape(run)}/config\.yaml --output "
        rf"{re.escape(path)}` \(the run's data, seed and vocabulary\), which writes it only if it is the same; "
        rf"glam checks it against the sha256 in {re.escape(run)}/tokenizer\.json"
    )
    commands = {
        "generate": ["generate", "--checkpoint", run, "--prompt", "The", "--max-tokens", "4"],
        "eval": ["eval", "--checkpoint", run, "--tasks", "copa", "--data-root", str(tmp_path)],
        "perplexity": ["perplexity", "--checkpoint", run, str(tmp_path / "text.txt")],
        "upcycle": ["upcycle", "--from", run, "--run-dir", str(tmp_path / "up"), "moe.num_experts=4"],
    }
    for name, args in commands.items():
        result = cli(glam(*args), cache)
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert expected.fullmatch(one_error_line(result.stderr)), (name, result.stderr[-2000:])
        assert result.stdout == "", name
    assert not (tmp_path / "up").exists()

    from glam.checkpoint import load_for_inference  # what glam serve and the export load a run with
    from glam.errors import DataError

    with pytest.raises(DataError, match="is not the tokenizer this run was trained with"):
        load_for_inference(run)
    # resuming the training run with it is refused the same way
    result = cli(train_command(os.path.join(run, "config.yaml"), run, "train.steps=4", *FAST), cache)
    assert result.returncode == 2 and expected.fullmatch(one_error_line(result.stderr)), result.stderr[-3000:]


def test_a_lost_tokenizer_is_rebuilt_only_as_the_original(setup, tmp_path):
    folder, config, cache, trained = setup
    run = str(shutil.copytree(trained, tmp_path / "run"))
    path = os.path.join(run, "tokenizer.model")
    original = open(path, "rb").read()
    os.remove(path)
    generate = glam("generate", "--checkpoint", run, "--prompt", "The", "--max-tokens", "4")
    result = cli(generate, cache)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {path} is missing; put back a copy of the original, or rebuild it with `")
    advised = re.search(r"`(glam tokenizer train [^`]+)`", line).group(1)
    assert advised == f"glam tokenizer train {run}/config.yaml --output {path}"

    # the same command with other data is not written where the run's tokenizer belongs
    result = cli(glam(*advised.split()[1:], "data.seed=7"), cache)
    assert result.returncode == 2 and not os.path.exists(path)
    assert one_error_line(result.stderr).startswith("error: the tokenizer trained here (sha256 ")

    result = cli(glam(*advised.split()[1:]), cache)  # the advice, followed to the letter
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"its sha256 matches {run}/tokenizer.json: it is the run's own tokenizer")
    assert open(path, "rb").read() == original
    result = cli(generate, cache)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-3000:]


# A start that fails before its first checkpoint ---------------------------------------------------


def test_a_failed_start_does_not_block_the_corrected_command(setup, tmp_path):
    """moe.router_z_loss=1e30 stops at step 3 naming that knob; the corrected command, with other data
    as well, then starts afresh in the same run directory instead of being refused."""
    folder, config, cache, _ = setup
    run = str(tmp_path / "run")
    bad = cli(train_command(config, run, OWN_TOKENIZER, "moe.router_z_loss=1e30", "checkpoint.every=5", *FAST), cache)
    assert bad.returncode == 2
    line = one_error_line(bad.stderr)
    assert line.startswith("error: step 3: 3 consecutive steps with a non-finite loss, gradient or update ")
    assert re.search(
        r"stopping \(no checkpoint was written\)\. The router_z_loss term is [0-9.e+]+ \(moe\.router_z_loss=1e\+30 x "
        r"[0-9.e+]+\) against a cross-entropy of [0-9.]+: lower moe\.router_z_loss \(usually 1e-3, ST-MoE's value\)$",
        line,
    ), line
    assert not any(n.isdigit() for n in os.listdir(os.path.join(run, "checkpoints")))  # config.yaml, tokenizer, ...

    good = cli(train_command(config, run, OWN_TOKENIZER, "data.seed=3", "train.steps=2", *FAST), cache)
    assert good.returncode == 0, good.stderr[-3000:]
    assert (
        f"{run} has no checkpoint yet (an earlier start stopped before its first one): starting afresh" in good.stdout
    )
    assert [r["step"] for r in train_records(run)] == [1, 2]  # the failed start's records are gone
    assert "router_z_loss" not in train_records(run)[0]
    assert json.loads(open(os.path.join(run, "tokenizer.json")).read())["data.seed"] == 3
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2"]


# Faults while writing the run ---------------------------------------------------------------------

INJECT = """
import errno, os, sys
from glam.cli.main import main
what = sys.argv.pop(1)

def fail(code, path):
    raise OSError(code, os.strerror(code), path)

if what == "metrics":  # the disk fills while the second record is appended (step 4, before its checkpoint)
    import glam.train.metrics as m
    real_init = m.MetricsWriter.__init__
    class Full:
        def __init__(self, f): self.f, self.n = f, 0
        def write(self, text):
            self.n += 1
            if self.n == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)
        def __getattr__(self, name): return getattr(self.f, name)
    def init(self, *a, **k):
        real_init(self, *a, **k)
        if self._file is not None:
            self._file = Full(self._file)
    m.MetricsWriter.__init__ = init
elif what == "tensorboard":  # the run directory turns read-only under TensorBoard's second flush (step 4)
    from tensorboardX.event_file_writer import EventsWriter
    real_flush, calls = EventsWriter.flush, []
    def flush(self):
        calls.append(1)
        if len(calls) == 2:
            fail(errno.EROFS, None)
        return real_flush(self)
    EventsWriter.flush = flush
else:  # "config.yaml" or "train.lock": that file cannot be created
    real_open, real_replace = os.open, os.replace
    def os_open(path, *a, **k):
        if str(path).endswith(what): fail(errno.EROFS, str(path))
        return real_open(path, *a, **k)
    def replace(src, dst, *a, **k):
        if str(dst).endswith(what): fail(errno.ENOSPC, str(dst))
        return real_replace(src, dst, *a, **k)
    os.open, os.replace = os_open, replace
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("what", ["metrics", "tensorboard", "config.yaml", "train.lock"])
def test_a_failed_write_of_the_run_is_one_line(setup, tmp_path, what):
    folder, config, cache, trained = setup
    run = str(shutil.copytree(trained, tmp_path / "run"))
    argv = [sys.executable, "-c", INJECT, what, *train_command(config, run, OWN_TOKENIZER, "train.steps=6", *FAST)[3:]]
    result = cli(argv, cache)
    assert result.returncode == 2  # as a checkpoint that cannot be written
    line = one_error_line(result.stderr)
    fix, intact, run_re = (
        "re-run the same command to resume",
        re.escape("the checkpoints (2) are intact"),
        re.escape(run),
    )
    full = rf"\(.* free there\); {intact}; free some space and {fix}"
    read_only = rf"{intact}; make {run_re} writable again \(check its mount, owner and mode\) and {fix}"
    expected = {
        "metrics": rf"no space left on device writing {run_re}/metrics\.jsonl {full}",
        "tensorboard": rf"cannot write {run_re}/tb: the file system is read-only; {read_only}",
        "config.yaml": rf"no space left on device writing {run_re}/config\.yaml {full}",
        "train.lock": rf"cannot write {run_re}/train\.lock: the file system is read-only; {read_only}",
    }[what]
    assert re.fullmatch("error: " + expected, line), line
    result = cli(train_command(config, run, OWN_TOKENIZER, "train.steps=3", *FAST), cache)  # and it resumes
    assert result.returncode == 0 and "resumed from checkpoint 2" in result.stdout, result.stderr[-3000:]


# metrics.jsonl -----------------------------------------------------------------------------------


def test_metrics_deleted_or_cut_during_a_run_are_written_back_or_reported(tmp_path):
    from glam.errors import GLaMWarning
    from glam.train.metrics import METRICS_FILE, MetricsWriter, read_metrics

    path = tmp_path / METRICS_FILE
    writer = MetricsWriter(str(tmp_path))
    records = [{"kind": "train", "step": s, "loss": 5.0 - s} for s in range(1, 7)]
    for r in records[:3]:
        writer.write(r)
    path.unlink()  # deleted while the run writes
    with pytest.warns(GLaMWarning) as caught:
        writer.write(records[3])
    assert [str(w.message) for w in caught] == [
        f"{path} was deleted while the run was writing it; wrote it back from the copy this run still had open "
        "(3 records, none lost)"
    ]
    assert read_metrics(str(tmp_path)) == records[:4]
    size = path.stat().st_size
    os.truncate(path, 0)  # cut short in place: those bytes are gone
    with pytest.warns(GLaMWarning) as caught:
        writer.write(records[4])
    assert [str(w.message) for w in caught] == [
        f"{path} was cut short while the run was writing it (0 of {size} bytes left): the records of steps 1-4 "
        "(and any before this run started) are gone from it, so `glam plot` will not show them; the TensorBoard "
        f"events in {tmp_path}/tb still have this run's values"
    ]
    writer.write(records[5])
    writer.close()
    assert read_metrics(str(tmp_path)) == records[4:]


def test_write_failures_name_the_file_and_the_fix(tmp_path):
    """The one-line messages of ``write_failure`` (the CLI cases above inject ENOSPC and EROFS)."""
    import errno

    from glam.checkpoint.run_dir import write_failure

    run = tmp_path / "run"
    (run / "checkpoints" / "6").mkdir(parents=True)
    (run / "checkpoints" / "8.orbax-checkpoint-tmp").mkdir()  # not a finished checkpoint
    denied = PermissionError(errno.EACCES, "Permission denied", str(run / "config.yaml"))
    assert write_failure(denied, str(run)) == (
        f"{run}/config.yaml: permission denied; the checkpoints (6) are intact; give this user access to it "
        "(check its owner and mode) and re-run the same command to resume"
    )
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")  # a write to an open file names no file
    assert re.fullmatch(
        rf"no space left on device writing {re.escape(str(run))} \(.* free there\); the checkpoints \(6\) are "
        r"intact; free some space and re-run the same command to resume",
        write_failure(quota, str(run)),
    )
    assert write_failure(OSError(errno.EIO, "Input/output error"), str(run)) is None  # not the user's to fix
