"""Sparse upcycling: a trained dense run → a MoE run that computes the same function, then trains on."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from small_runs import run_train, small_run_config

from glam.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_upcycle")]
IN_PROCESS = ("mesh.data=4", "mesh.model=2")  # the 8 simulated devices of conftest


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upcycle")
    config = small_run_config(str(folder), moe={"num_experts": 0})
    run_train(config, str(folder / "dense"), "train.steps=6", cache_dir=str(folder / "cache"))
    return folder, str(folder / "dense")


def test_upcycled_model_computes_the_dense_function_and_trains(dense, capsys):
    from glam.checkpoint import load_for_inference
    from glam.data.pipeline import build_pipeline
    from glam.model.losses import loss_fn

    folder, source = dense
    new = str(folder / "moe")
    args = ["upcycle", "--from", source, "--run-dir", new, "moe.num_experts=4", "moe.eval_no_drop=true", *IN_PROCESS]
    assert main(args) == 0
    assert f"next: glam train {new}/config.yaml --run-dir {new}" in capsys.readouterr().out
    dense_cfg, dense_params, _ = load_for_inference(source)
    cfg, params, _ = load_for_inference(new)
    assert cfg.moe.num_experts == 4 and cfg.model.expert_activation == "geglu"
    with open(os.path.join(new, "upcycled_from.json"), encoding="utf-8") as f:
        assert json.load(f) == {
            "from": source,
            "source_step": 6,
            "num_experts": 4,
            "overrides": args[5:],
            "start_step": 0,
        }
    w_in = params["blocks"]["moe_layer"]["ffn"]["w_in"]
    np.testing.assert_array_equal(w_in[:, 3], dense_params["blocks"]["moe_layer"]["ffn"]["w_in"])  # expert = copy
    batch = build_pipeline(dense_cfg, source).heldout_batches(dense_cfg.data.sources[0].name, 1)[0]
    _, ours = loss_fn(cfg, params, batch, train=False)
    _, theirs = loss_fn(dense_cfg, dense_params, batch, train=False)
    assert float(ours["ce_loss"]) == pytest.approx(float(theirs["ce_loss"]), abs=1e-5)
    records = run_train(
        os.path.join(new, "config.yaml"), new, "train.steps=4", devices=8, cache_dir=str(folder / "cache")
    )
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in records)


def test_continue_goes_on_at_the_source_step_and_data_position(dense):
    from glam.checkpoint.manager import Checkpointer

    folder, source = dense
    new = str(folder / "moe-continued")
    args = ["upcycle", "--continue", "--from", source, "--run-dir", new, "moe.num_experts=4", *IN_PROCESS]
    assert main([*args[:-2], "train.steps=6", *IN_PROCESS]) == 2  # train.steps must count the dense steps too
    assert main([*args, "train.steps=8"]) == 0
    theirs, ours = Checkpointer(source), Checkpointer(new)
    try:
        assert ours.all_steps() == [6] and theirs.latest_step() == 6
        assert ours.restore_json(6, "data") == theirs.restore_json(6, "data")
    finally:
        theirs.close(), ours.close()
    records = run_train(os.path.join(new, "config.yaml"), new, devices=8, cache_dir=str(folder / "cache"))
    assert [r["step"] for r in records] == [7, 8]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "say how many experts the upcycled model has, e.g. moe.num_experts=8"),
        (["moe.num_experts=4", "model.d_model=32"], "model.d_model=32, but the dense source has 64"),
        (["moe.num_experts=4", "model.expert_activation=relu"], "they must be geglu"),
        (
            ["moe.num_experts=0"],
            "moe.num_experts=0: upcycling makes a MoE model from the dense one, so give it experts, e.g. "
            "moe.num_experts=8",
        ),
    ],
)
def test_incompatible_requests_fail_in_one_line(dense, tmp_path, capsys, overrides, message):
    _, source = dense
    assert main(["upcycle", "--from", source, "--run-dir", str(tmp_path / "x"), *overrides, *IN_PROCESS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "x" / "checkpoints")


def test_a_moe_source_is_refused():
    from glam.config import resolve
    from glam.errors import ConfigError
    from glam.train.upcycle import upcycle_config

    with pytest.raises(ConfigError, match="the source is a MoE model .8 experts.; upcycle a dense run"):
        upcycle_config(resolve("tiny", []), ["moe.num_experts=4"])
    assert upcycle_config(resolve("tiny-dense", []), ["moe.num_experts=4"]).model.expert_activation == "geglu"


def test_experts_that_do_not_fit_in_memory_are_refused_before_allocating(dense, tmp_path, capsys):
    """Issue 28: moe.num_experts=10000 tried to allocate 9 GB and died with a 58-line RESOURCE_EXHAUSTED."""
    from glam.config import resolve
    from glam.train.upcycle import memory_needed, upcycle_config

    _, source = dense
    new = tmp_path / "huge"
    capsys.readouterr()
    assert main(["upcycle", "--from", source, "--run-dir", str(new), "moe.num_experts=1000000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    dense_cfg = resolve(os.path.join(source, "config.yaml"), [])
    need = memory_needed(upcycle_config(dense_cfg, ["moe.num_experts=1000000"]), dense_cfg) / 2**30
    assert len(err) == 1 and re.fullmatch(
        rf"error: upcycling to moe.num_experts=1000000 needs about {need:.2f} GiB \(the dense parameters, "
        r"the MoE parameters twice and the optimizer state\), but this host has [0-9.]+ GiB free; choose fewer "
        rf"experts, or a larger mesh \(check one first with `glam plan {re.escape(source)}/config.yaml "
        r"moe.num_experts=1000000 --mesh DATAxMODEL`\)",
        err[0],
    ), err
    assert need > 500 and not new.exists()


def test_a_source_in_training_or_a_target_inside_it_is_refused(dense, tmp_path, capsys):
    from glam.checkpoint.lock import RunLock

    _, source = dense
    with RunLock(source):  # as a live `glam train` on the source holds it
        assert main(["upcycle", "--from", source, "--run-dir", str(tmp_path / "a"), "moe.num_experts=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        rf"error: run directory '{re.escape(source)}' is in use by another glam train \(pid {os.getpid()} on host "
        r"'[^']+', since [0-9: -]+\); upcycle it once that training has stopped \(Ctrl-C saves a checkpoint\), "
        r"so the step read is a finished one",
        err[0],
    ), err
    inside = os.path.join(source, "moe")
    assert main(["upcycle", "--from", source, "--run-dir", inside, "moe.num_experts=4"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --run-dir {inside!r} is inside the source run {source!r}; upcycle into a directory of its own "
        "(e.g. beside it), so neither run's files mix with the other's"
    )
    assert not os.path.exists(inside) and not os.path.exists(tmp_path / "a")
    assert not os.path.exists(os.path.join(source, "train.lock"))


def test_a_failed_upcycle_leaves_nothing_behind(dense, tmp_path, capsys, monkeypatch):
    import glam.train.upcycle as upcycle_module
    from glam.errors import GLaMError

    def fails(*args):
        raise GLaMError("simulated failure while copying the experts")

    _, source = dense
    monkeypatch.setattr(upcycle_module, "upcycle_params", fails)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    for target in (tmp_path / "new", existing):
        args = ["upcycle", "--from", source, "--run-dir", str(target), "moe.num_experts=4", *IN_PROCESS]
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == "error: simulated failure while copying the experts"
    assert not (tmp_path / "new").exists()  # no config.yaml for `glam train` to start from scratch with
    assert sorted(os.listdir(existing)) == ["notes.txt"]
