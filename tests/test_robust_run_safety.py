"""Run safety: the ways a run directory could lose or corrupt work, each shown not to.

Real ``glam train`` / ``glam generate`` processes (through the CLI, as a user runs them) where the
failure lives in the command path: a second trainer on a locked run directory, Ctrl-C, a full disk
during a save (``OSError(ENOSPC)`` injected into Orbax's background write), a run whose updates are all
skipped, an unreadable checkpoint in a fresh process. In-process tests for the rest: a config that
does not match a checkpoint, a stale lock, a stale tokenizer, damaged metrics lines, JSON without NaN.

The processes share one compilation cache, so only the first of them compiles the training step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_runs import small_run_config, subprocess_env, train_command, train_records

from glam.cli.main import main
from glam.train.metrics import METRICS_FILE, load_metrics, read_metrics, trim_metrics

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("robust_run_safety")]

SIZES = {"d_model": 32, "num_heads": 2, "head_dim": 16, "ffn_dim": 64, "max_seq_len": 64}
FAST = ("train.peak_flops=1e9", "train.eval_every=1000")  # no matmul probe, no held-out evaluation
IN_PROCESS = ("mesh.data=4", "mesh.model=2")  # the 8 simulated devices of conftest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, config, compilation cache, a run directory trained to step 4 with checkpoints 2 and 4)."""
    folder = tmp_path_factory.mktemp("run_safety")
    config = small_run_config(
        str(folder), model=SIZES, train={"batch_size": 4, "seq_len": 32}, checkpoint={"every": 2, "keep": 3}
    )
    cache = str(folder / "jax_cache")
    trained = str(folder / "trained")
    result = cli(train_command(config, trained, "train.steps=4", *FAST), cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, config, cache, trained


def cli(argv: list[str], cache: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=subprocess_env(1, cache), capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str) -> str:
    """The stderr of a failed command: one ``error:`` line at the end, no traceback, no logged noise."""
    for noise in ("Traceback", "Task exception was never retrieved", "Exception ignored", "ERROR:absl"):
        assert noise not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]), stderr[-3000:]
    return errors[0]


def copy_run(trained: str, to: Path) -> Path:
    shutil.copytree(trained, to)
    return to


def truncate_arrays(run: Path, step: int) -> None:
    """What a disk error or a careless copy leaves: the array data of a finalised checkpoint cut in half."""
    data = [p for p in (run / "checkpoints" / str(step) / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        os.truncate(p, p.stat().st_size // 2)


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as JavaScript, jq and RFC 8259 do."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))


# One trainer per run directory; Ctrl-C saves -----------------------------------------------------


def test_second_trainer_is_refused_and_ctrl_c_saves_a_checkpoint(setup):
    folder, config, cache, _ = setup
    run = str(folder / "locked")
    log = open(folder / "first.log", "w")  # noqa: SIM115  (closed below)
    first = subprocess.Popen(
        train_command(config, run, "train.steps=100000", "checkpoint.every=1000", *FAST),
        env=subprocess_env(1, cache),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while len(train_records(run)) < 3:  # it holds the lock and is training
            assert first.poll() is None and time.monotonic() < deadline, (folder / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        second = cli(train_command(config, run, "train.steps=100000", "checkpoint.every=1000", *FAST), cache)
        assert second.returncode == 2
        line = one_error_line(second.stderr)
        assert line.startswith(
            f"error: run directory '{run}' is in use by another glam train (pid {first.pid} on host "
            f"'{socket.gethostname()}', since "
        )
        assert line.endswith("wait for it to finish or stop it, or train into another --run-dir")
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130  # 128 + SIGINT
    finally:
        first.kill()
        log.close()
    output = (folder / "first.log").read_text()
    assert "SIGINT: saving a checkpoint after this step, then stopping" in output
    (stopped,) = [line for line in output.splitlines() if line.startswith("stopped by SIGINT after step ")]
    step = int(stopped.split()[5].rstrip(":"))
    resume = "re-run the same command to resume"
    assert stopped == f"stopped by SIGINT after step {step}: checkpoint {step} is saved in {run}; {resume}"
    assert step >= 3 and os.listdir(os.path.join(run, "checkpoints")) == [str(step)]  # not one of checkpoint.every
    assert [r["step"] for r in train_records(run)] == list(range(1, step + 1))
    assert not os.path.exists(os.path.join(run, "train.lock"))  # released


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from glam.checkpoint.lock import RunLock
    from glam.errors import GLaMError

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": gone.pid, "host": host, "started": 0}))
    messages: list[str] = []
    with RunLock(str(tmp_path), log=messages.append):
        assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    assert messages == [
        f"taking over the lock of a glam train that is no longer running (pid {gone.pid} on host '{host}', since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(0))})"
    ]
    assert not (tmp_path / "train.lock").exists()
    # A lock left by a process that still runs, or by another host (which cannot be checked): refused.
    for owner, why in ((os.getppid(), "it is still running"), (1, "it cannot be checked from host")):
        other = host if why.startswith("it is") else "elsewhere"
        (tmp_path / "train.lock").write_text(json.dumps({"pid": owner, "host": other, "started": 0}))
        with pytest.raises(GLaMError, match=f"in use by another glam train \\(pid {owner} on host '{other}'.*{why}"):
            RunLock(str(tmp_path)).acquire()
    # A run that fails before writing anything leaves no run directory behind.
    with pytest.raises(RuntimeError), RunLock(str(tmp_path / "new")):
        raise RuntimeError("a check failed")
    assert not (tmp_path / "new").exists()


# A failed save stops the run ----------------------------------------------------------------------

INJECT_ENOSPC = """
import errno, sys
import orbax.checkpoint as ocp
from glam.cli.main import main

real = ocp.handlers.JsonCheckpointHandler._save_fn

async def disk_full(self, item, directory):  # runs in Orbax's background save thread
    if "checkpoints/4." in str(directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await real(self, item, directory)

ocp.handlers.JsonCheckpointHandler._save_fn = disk_full
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_during_a_save_stops_the_run_in_one_line(setup):
    folder, config, cache, _ = setup
    run = str(folder / "full")
    argv = [sys.executable, "-c", INJECT_ENOSPC, *train_command(config, run, "train.steps=10", *FAST)[3:]]
    result = cli(argv, cache)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    where = os.path.join(run, "checkpoints")
    assert line.startswith(f"error: no space left on device writing checkpoint 4 to {where} (it needs about ")
    assert line.endswith(
        "free there); the earlier checkpoints (2) are intact; free some space and re-run the same command to resume"
    )
    # Only checkpoint 2 is finalised. The failed save's temporary folder is removed when the save fails;
    # writes still in flight may leave part of it, which the next run removes before it starts.
    assert [n for n in os.listdir(where) if not n.endswith(".orbax-checkpoint-tmp")] == ["2"]
    resumed = cli(train_command(config, run, "train.steps=5", *FAST), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 2" in resumed.stdout
    assert sorted(os.listdir(where)) == ["2", "4", "5"]  # no temporary folder left
    assert max(r["step"] for r in train_records(run)) <= 6  # it never went past the next save


# Non-finite runs -----------------------------------------------------------------------------------

INJECT_NAN = """
import sys
import jax
import glam.train.loop as loop
from glam.cli.main import main

real = loop.make_train_step

def make_train_step(cfg, mesh):
    step, calls = real(cfg, mesh), []

    def poisoned(state, batch):  # from step 3 on every parameter is NaN: every update is skipped
        calls.append(1)
        if len(calls) == 3:
            state = state._replace(params=jax.tree.map(lambda p: p * float("nan"), state.params))
        return step(state, batch)

    return poisoned

loop.make_train_step = make_train_step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("every, stop_step", [(4, 4), (100, 5)], ids=["at-a-checkpoint", "streak"])
def test_all_updates_skipped_stops_the_run_and_writes_no_nan_checkpoint(setup, every, stop_step):
    folder, config, cache, _ = setup
    run = str(folder / f"nan{every}")
    overrides = ("train.steps=20", f"checkpoint.every={every}", *FAST)
    argv = [sys.executable, "-c", INJECT_NAN, *train_command(config, run, *overrides)[3:]]
    result = cli(argv, cache)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    if every == 4:  # step 4 is a checkpoint step, but its parameters are NaN: not written
        assert line == (
            "error: the parameters at step 4 are not finite (NaN or Inf), so checkpoint 4 is not written; no "
            "earlier checkpoint was written. Lower optim.lr_scale, keep train.skip_nonfinite=true, or set "
            "train.rollback=true"
        )
    else:  # steps 3, 4, 5 skipped: train.max_nonfinite_streak=3
        assert line == (
            "error: step 5: 3 consecutive steps with a non-finite loss, gradient or update "
            "(train.max_nonfinite_streak=3), so those updates were skipped; stopping (no checkpoint was written). "
            "Lower optim.lr_scale, or set train.rollback=true to go back to the last checkpoint and skip these batches"
        )
    assert not os.listdir(os.path.join(run, "checkpoints"))
    with open(os.path.join(run, METRICS_FILE)) as f:
        records = [strict_json(line) for line in f]  # NaN losses are written as null
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, stop_step + 1))
    assert all(isinstance(r["loss"], float) for r in train[:2]) and all(r["loss"] is None for r in train[2:])
    assert train[-1]["skipped_steps"] == stop_step - 2


def test_nonfinite_values_never_reach_json_or_a_checkpoint(tmp_path):
    from glam import jsonsafe
    from glam.checkpoint.manager import Checkpointer
    from glam.config import GLaMConfig, resolve
    from glam.errors import GLaMError
    from glam.train.state import TrainState

    assert jsonsafe.dumps({"loss": float("nan"), "x": [np.float32("inf"), 1.5]}) == '{"loss": null, "x": [null, 1.5]}'
    with pytest.raises(GLaMError, match=r"^optim\.lr_scale: got 'inf'; give a finite number"):
        resolve("tiny", ["optim.lr_scale=inf"])
    scalar = jnp.zeros((), jnp.int32)
    state = TrainState(scalar + 7, {"w": jnp.array([1.0, jnp.nan])}, {}, jnp.zeros((2,), jnp.uint32), scalar)
    checkpointer = Checkpointer(str(tmp_path), writer=True)
    with pytest.raises(GLaMError, match="^the parameters at step 7 are not finite"):
        checkpointer.save(state, {}, GLaMConfig())
    checkpointer.close()
    assert os.listdir(tmp_path / "checkpoints") == []


# Checkpoints: a config mismatch is not damage; damage is worked around ------------------------------


@pytest.mark.parametrize("change", ["removed", "edited"])
def test_config_mismatch_names_the_fields_from_the_checkpoint(capsys, setup, tmp_path, change):
    folder, config, _, trained = setup
    run = copy_run(trained, tmp_path / "run")
    saved = run / "config.yaml"
    if change == "removed":
        saved.unlink()
    else:  # the copy agrees with the command, the checkpoint does not
        saved.write_text(saved.read_text().replace("d_model: 32", "d_model: 64"))
    capsys.readouterr()
    code = main(["train", config, "model.d_model=64", "train.steps=6", *IN_PROCESS, "--run-dir", str(run)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: run directory '{run}' belongs to a different config (model.d_model: 32 in checkpoint 4, 64 now); "
        "train into a new --run-dir, or undo those overrides to resume this run"
    )
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]


def test_inference_loads_with_the_checkpoints_own_config(setup, tmp_path):
    from glam.checkpoint import Checkpointer, load_for_inference
    from glam.errors import GLaMError
    from glam.model.init import abstract_params

    _, _, _, trained = setup
    run = copy_run(trained, tmp_path / "run")
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("d_model: 32", "d_model: 64"))
    notes: list[str] = []
    cfg, params, _ = load_for_inference(str(run), log=notes.append)
    shapes = lambda tree: [x.shape for x in jax.tree.leaves(tree)]  # noqa: E731
    assert cfg.model.d_model == 32 and shapes(params) == shapes(abstract_params(cfg))
    assert notes == [
        f"{saved} disagrees with checkpoint 4 (model.d_model: 64 in config.yaml, 32 in the checkpoint); "
        "using the checkpoint's config"
    ]
    saved.unlink()
    cfg, _, _ = load_for_inference(str(run), step=2, log=notes.append)
    assert cfg.model.d_model == 32 and len(notes) == 1
    # Arrays of another shape than the checkpoint's: an intact checkpoint, a config mismatch.
    other = abstract_params(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=64)))
    checkpointer = Checkpointer(str(run))
    with pytest.raises(GLaMError, match=r"checkpoints/4 is intact but was trained with another model config \("):
        checkpointer.restore_params(other, 4)
    checkpointer.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no noise around the note
def test_deleted_array_files_make_a_checkpoint_unreadable(setup, tmp_path):
    from glam.checkpoint import load_for_inference

    _, _, _, trained = setup
    run = copy_run(trained, tmp_path / "run")
    for p in (run / "checkpoints" / "4" / "params").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.unlink()
    notes: list[str] = []
    load_for_inference(str(run), log=notes.append)
    (note,) = notes
    assert note.startswith(f"checkpoint {run / 'checkpoints' / '4'} is unreadable (")
    assert note.endswith("; using the previous checkpoint")
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]  # a reader moves nothing


def test_unreadable_checkpoint_through_the_cli_in_fresh_processes(setup, tmp_path):
    folder, config, cache, trained = setup
    run = copy_run(trained, tmp_path / "run")
    truncate_arrays(run, 4)
    folder4 = run / "checkpoints" / "4"
    # Inference without --step: the newest readable checkpoint, with one note.
    generate = [sys.executable, "-m", "glam.cli.main", "generate", "--checkpoint", str(run), "--prompt", "Return"]
    result = cli([*generate, "--max-tokens", "2"], cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
    (note,) = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]  # [stop reason]
    assert note.startswith(f"note: checkpoint {folder4} is unreadable (")
    assert note.endswith("; using the previous checkpoint")
    # That step asked for by name: one line, and the way out; never "delete".
    result = cli([*generate, "--max-tokens", "2", "--step", "4"], cache)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: checkpoint {folder4} is unreadable (") and "delete" not in line
    assert line.endswith("; load another step (the run directory also has [2])")
    # Training resumes from the previous checkpoint and keeps the unreadable one aside.
    result = cli(train_command(config, str(run), "train.steps=6", *FAST), cache)
    assert result.returncode == 0, result.stderr[-3000:]
    aside = run / "damaged-checkpoints" / "4"
    assert f"checkpoint {folder4} is unreadable (" in result.stdout
    assert (
        f"; moved it to {aside} and going back to the previous checkpoint\nresumed from checkpoint 2 in"
        in result.stdout
    )
    assert sorted(os.listdir(aside)) == sorted(os.listdir(run / "checkpoints" / "2"))
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6"]
    assert [r["step"] for r in train_records(str(run))] == list(range(1, 7))


# The run's tokenizer --------------------------------------------------------------------------------


def test_a_failed_first_run_leaves_no_tokenizer(capsys, setup, tmp_path, monkeypatch):
    import glam.data.pipeline as pipeline
    from glam.data.errors import DataError

    folder, config, _, _ = setup

    def check_fails(self, cfg, tokenizer, *args, **kwargs):  # any data check that comes after the tokenizer
        raise DataError(f"simulated check of a pipeline with a {tokenizer.vocab_size}-piece tokenizer fails")

    monkeypatch.setattr(pipeline.DataPipeline, "__init__", check_fails)
    run = tmp_path / "first"
    capsys.readouterr()
    assert main(["train", config, "data.tokenizer=", *IN_PROCESS, "--run-dir", str(run)]) == 2
    assert capsys.readouterr().err.startswith("error: simulated check of a pipeline with a ")
    assert not run.exists()  # no tokenizer.model (and no run directory) for the next run to pick up


def test_tokenizer_made_from_other_data_is_detected(capsys, setup, tmp_path):
    from glam.config import resolve
    from glam.data.pipeline import save_run_tokenizer, tokenizer_record
    from glam.data.tokenizer import Tokenizer

    folder, config, _, _ = setup
    run = tmp_path / "run"
    run.mkdir()  # a run directory whose first run trained its tokenizer with data.seed=0
    before = resolve(config, ["data.tokenizer=", "data.seed=0", *IN_PROCESS])
    tokenizer = Tokenizer(str(folder / "tokenizer.model"))
    save_run_tokenizer(before, tokenizer, str(run))
    assert sorted(os.listdir(run)) == ["tokenizer.json", "tokenizer.model"]  # written atomically: no *.tmp
    sha = hashlib.sha256(tokenizer.model_proto).hexdigest()
    assert json.loads((run / "tokenizer.json").read_text()) == {**tokenizer_record(before), "sha256": sha}
    (run / "checkpoints" / "4").mkdir(parents=True)  # a checkpoint uses it (without one it would be replaced)
    capsys.readouterr()
    assert main(["train", config, "data.tokenizer=", "data.seed=1", *IN_PROCESS, "--run-dir", str(run)]) == 2
    path = run / "tokenizer.model"
    assert capsys.readouterr().err.strip() == (
        f"error: {path} was made from other data than this config (data.seed: 0 then, 1 now); train into a new "
        "--run-dir, or undo those overrides to resume this run"
    )


# metrics.jsonl -----------------------------------------------------------------------------------


def test_damaged_metrics_lines_are_skipped_counted_and_trimmed(capsys, tmp_path):
    good = [{"kind": "train", "step": s, "loss": 5.0 - s} for s in (1, 2, 3)]
    lines = [json.dumps(good[0]), '{"kind": "train", "st', json.dumps(good[1]), "[1, 2]", json.dumps(good[2])]
    raw = "\n".join(lines).encode() + b"\n\xff\xfe garbage\n" + b'{"kind": "train", "step": 4, "lo'  # torn tail
    (tmp_path / METRICS_FILE).write_bytes(raw)
    assert load_metrics(str(tmp_path)) == (good, 4)
    capsys.readouterr()
    assert main(["plot", str(tmp_path)]) == 0  # glam plot reads past them
    out, err = capsys.readouterr()
    assert err == f"note: skipped 4 damaged lines of {tmp_path}/metrics.jsonl\n"
    assert out.splitlines() == [str(tmp_path / "plots" / "loss.png")]
    assert trim_metrics(str(tmp_path), 2) == 3  # resuming from step 2: the torn tail is not counted
    assert (tmp_path / METRICS_FILE).read_text() == "".join(json.dumps(r) + "\n" for r in good[:2])
    assert read_metrics(str(tmp_path)) == good[:2]


def test_perplexity_of_an_empty_file_is_valid_json(capsys, setup, tmp_path):
    _, _, _, trained = setup
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    capsys.readouterr()
    assert main(["perplexity", "--checkpoint", trained, str(empty), "--json", str(tmp_path / "out.json")]) == 0
    printed = strict_json(capsys.readouterr().out)
    assert printed == strict_json((tmp_path / "out.json").read_text())
    assert printed["total"]["tokens"] == 0 and printed["total"]["perplexity"] is None
