"""Checkpoints end to end, in real `glam train` processes: exact resume, atomicity, config mismatch, loading.

20 steps straight and 10 steps + a new process resuming to 20 must log identical losses at every
step (parameters, optimizer state, step, RNG and data position all come back).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from small_runs import run_train, small_run_config, subprocess_env, train_command, train_records

from glam.data.packing import rows_from_tokens

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_resume")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    config = small_run_config(str(folder))
    cache = str(folder / "jax_cache")
    straight = run_train(config, str(folder / "straight"), "train.steps=20", cache_dir=cache)
    return folder, config, cache, straight


def test_resume_in_a_new_process_is_exact(setup):
    folder, config, cache, straight = setup
    run_dir = str(folder / "resumed")
    first = run_train(config, run_dir, "train.steps=10", cache_dir=cache)
    assert [r["step"] for r in first] == list(range(1, 11))
    both = run_train(config, run_dir, "train.steps=20", cache_dir=cache)
    assert [r["step"] for r in both] == list(range(1, 21))  # the second process appended steps 11..20
    np.testing.assert_array_equal([r["loss"] for r in both], [r["loss"] for r in straight])
    np.testing.assert_array_equal([r["grad_norm"] for r in both], [r["grad_norm"] for r in straight])
    assert straight[-1]["loss"] < straight[0]["loss"] - 1.0
    checkpoints = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert checkpoints == ["15", "20"]  # checkpoint.keep = 2


def test_half_written_checkpoint_is_never_loaded(setup):
    from glam.checkpoint import Checkpointer

    folder, *_ = setup
    ckpt_dir = folder / "straight" / "checkpoints"
    # What a crash mid-save leaves: Orbax's temporary folder, never renamed to its step.
    (ckpt_dir / "25.orbax-checkpoint-tmp-1234").mkdir()
    (ckpt_dir / "25.orbax-checkpoint-tmp-1234" / "params").mkdir()
    checkpointer = Checkpointer(str(folder / "straight"))
    assert checkpointer.latest_step() == 20
    checkpointer.close()


def test_a_run_dir_of_another_config_is_refused(setup):
    folder, config, cache, _ = setup
    cmd = train_command(config, str(folder / "straight"), "train.steps=21", "model.num_heads=2", "optim.lr_scale=0.1")
    result = subprocess.run(cmd, env=subprocess_env(1, cache), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: run directory")
    assert "model.num_heads: 4 in the run directory, 2 now" in message
    assert "optim.lr_scale" in message and "new --run-dir" in message
    assert len(train_records(str(folder / "straight"))) == 20  # nothing was trained


def test_load_for_inference(setup):
    from glam.checkpoint import load_for_inference
    from glam.model.losses import loss_fn

    folder, *_ = setup
    cfg, params, tokenizer = load_for_inference(str(folder / "straight"))
    assert cfg.model.d_model == 64 and cfg.train.steps == 20
    ids = tokenizer.encode("Return a new dictionary")
    assert tokenizer.decode(ids) == "Return a new dictionary"
    batch = rows_from_tokens(np.asarray([ids]))
    loss, _ = loss_fn(cfg, params, batch, train=False)
    assert np.isfinite(float(loss)) and float(loss) < np.log(cfg.model.vocab_size)
    _, earlier, _ = load_for_inference(str(folder / "straight"), step=15)
    assert not np.array_equal(earlier["embed"]["embedding"], params["embed"]["embedding"])


def test_plot_writes_loss_curves_and_expert_load(setup):
    from glam.train.plots import plot_run

    folder, *_ = setup
    paths = plot_run(str(folder / "straight"))
    assert [os.path.basename(p) for p in paths] == ["loss.png", "expert_load.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
