"""Sharded and multi-process training on simulated CPU devices, in real `glam train` processes.

- One process with 8 devices on a 4 (data) × 2 (model) mesh follows the single-device run.
- A checkpoint written on the 4 × 2 mesh resumes on a single device.
- Two processes (``jax.distributed`` over 127.0.0.1, gloo CPU collectives, 4 devices each) form one
  8-device 4 × 2 mesh, each building and feeding only its half of the global batch (one of the
  ``data.shards=2`` reading shards), and follow the single-device run, which packs both shards.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from small_runs import run_train, small_run_config, subprocess_env, train_command, train_records

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_multihost")]

STEPS = 5
MESH_4X2 = ("mesh.data=4", "mesh.model=2")
RTOL = 2e-4  # fp32 sums in another order on another mesh


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The single-device reference: 7 steps, with checkpoints at 5 and 7."""
    folder = tmp_path_factory.mktemp("multihost")
    # Two reading shards everywhere: the global batch depends on data.shards, not on the process count.
    config = small_run_config(str(folder), train={"eval_every": 100}, data={"shards": 2})
    cache = str(folder / "jax_cache")
    single = run_train(config, str(folder / "single"), "train.steps=7", cache_dir=cache)
    return folder, config, cache, single


def losses(records: list[dict], upto: int = STEPS) -> np.ndarray:
    return np.array([r["loss"] for r in records if r["step"] <= upto])


def test_4x2_mesh_follows_single_device_and_restores_on_one_device(setup):
    folder, config, cache, single = setup
    run_dir = str(folder / "mesh4x2")
    sharded = run_train(config, run_dir, f"train.steps={STEPS}", *MESH_4X2, devices=8, cache_dir=cache)
    assert [r["step"] for r in sharded] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(losses(sharded), losses(single), rtol=RTOL)
    assert losses(single)[-1] < losses(single)[0]
    # The checkpoint at step 5, written by 8 devices, continues on one device (mesh 1 x 1): the same
    # trajectory, up to the drift that five sharded steps accumulated.
    resumed = run_train(config, run_dir, "train.steps=7", "mesh.data=1", "mesh.model=1", devices=1, cache_dir=cache)
    assert [r["step"] for r in resumed] == list(range(1, 8))
    np.testing.assert_allclose(losses(resumed, 7)[STEPS:], losses(single, 7)[STEPS:], rtol=5 * RTOL)


def data_state(run_dir: str, step: int) -> dict:
    """The data pipeline state saved in checkpoint ``step`` (Orbax's JSON item)."""
    return json.loads((Path(run_dir) / "checkpoints" / str(step) / "data" / "metadata").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_global_mesh(setup):
    folder, config, cache, single = setup
    run_dir = str(folder / "two_hosts")
    shutil.rmtree(run_dir, ignore_errors=True)
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            train_command(
                config,
                run_dir,
                f"train.steps={STEPS}",
                *MESH_4X2,
                f"mesh.coordinator_address={address}",  # overrides apply in order: the address first
                "mesh.num_processes=2",
                f"mesh.process_id={pid}",
            ),
            env=subprocess_env(4, cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    records = train_records(run_dir)  # written by process 0 only: one record per step
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(losses(records), losses(single), rtol=RTOL)
    assert '"is_main": true' not in outputs[1][0]  # process 1 prints no summary
    assert sorted(p.name for p in (folder / "two_hosts" / "checkpoints").iterdir()) == ["5"]
    # Each process packed only its own shard (k ≡ shard mod 2 of each source's documents), and the two
    # together read exactly the documents and offsets the single process read: every row once.
    two, one = data_state(run_dir, STEPS), data_state(str(folder / "single"), STEPS)
    assert two["packed_by"] == {"0": [0], "1": [1]} and one["packed_by"] == {"0": [0], "1": [0]}
    assert two["streams"] == one["streams"] and two["shards"] == 2
