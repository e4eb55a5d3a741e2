"""Crash safety and determinism of real `glam train` processes.

One run directory is trained to ``STEPS`` steps by a chain of processes, each killed with SIGKILL at a
chosen moment — during start-up, right after a metrics record, while Orbax writes a checkpoint
(its ``<step>.orbax-checkpoint-tmp`` folder exists), just after a checkpoint is finalised — and then
restarted on the same run directory. Every restart must resume from the last finalised checkpoint
(it says so on stdout), and the finished run's ``metrics.jsonl`` must equal an uninterrupted run's,
record for record, apart from the timing fields.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
from small_runs import run_train, small_run_config, subprocess_env, train_command

from glam.train.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("robust_crash")]

STEPS = 64  # long enough that the run is still going at every kill point, however fast the machine
TIMING_FIELDS = ("tokens_per_sec", "mfu")
TMP_MARK = ".orbax-checkpoint-tmp"
# checkpoint.every=2: 32 checkpoints to crash into; peak_flops set so start-up skips the matmul probe.
OVERRIDES = (f"train.steps={STEPS}", "train.peak_flops=1e9")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash")
    config = small_run_config(
        str(folder),
        model={"d_model": 32, "num_heads": 2, "head_dim": 16, "ffn_dim": 64},
        train={"batch_size": 4, "seq_len": 32, "eval_every": 4},
        checkpoint={"every": 2, "keep": 2},
    )
    cache = str(folder / "jax_cache")
    run_train(config, str(folder / "reference"), *OVERRIDES, cache_dir=cache)
    return folder, config, cache, without_timing(read_metrics(str(folder / "reference")))


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@dataclass
class Snapshot:
    """What a watcher sees in a run directory at one moment."""

    finalised: frozenset[int]  # checkpoint steps Orbax has renamed into place
    writing: frozenset[str]  # temporary folders of checkpoints being written
    records: int  # lines in metrics.jsonl
    has_config: bool

    @classmethod
    def of(cls, run_dir: str) -> Snapshot:
        folder = os.path.join(run_dir, "checkpoints")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        metrics = os.path.join(run_dir, "metrics.jsonl")
        try:
            with open(metrics, "rb") as f:
                records = f.read().count(b"\n")
        except FileNotFoundError:
            records = 0
        return cls(
            finalised=frozenset(int(n) for n in names if n.isdigit()),
            writing=frozenset(n for n in names if TMP_MARK in n),
            records=records,
            has_config=os.path.isfile(os.path.join(run_dir, "config.yaml")),
        )


# When to kill, counting events seen while the process runs:
#   "after"     `delay` seconds after launch (importing, building data, restoring);
#   "config"    once config.yaml exists;
#   "record"    once a metrics record is appended (+ delay);
#   "writing"   once a checkpoint temporary folder appears (+ delay: deeper into the write);
#   "written"   once a checkpoint is finalised;
#   "writing2"  once a second checkpoint temporary folder appears (the first one is finalised).
KILLS = (
    ("after", 0.5), ("config", 0), ("record", 0), ("writing", 0), ("writing", 0.02), ("written", 0),
    ("record", 0), ("writing2", 0), ("after", 1.5), ("writing", 0), ("written", 0), ("writing", 0.05),
    ("record", 0.01), ("writing2", 0.01), ("writing", 0), ("written", 0), ("after", 2.5), ("writing", 0.01),
    ("writing2", 0), ("record", 0), ("writing", 0.03), ("written", 0),
)  # fmt: skip


class Watcher:
    """Counts what appears in a run directory between polls (a leftover that is cleaned up and
    written again counts when it reappears)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.last = Snapshot.of(run_dir)
        self.records = self.writes = self.finalised = 0

    def poll(self) -> Snapshot:
        now = Snapshot.of(self.run_dir)
        self.records += now.records > self.last.records
        self.writes += len(now.writing - self.last.writing)
        self.finalised += len(now.finalised - self.last.finalised)
        self.last = now
        return now

    def happened(self, kind: str) -> bool:
        return {
            "config": self.last.has_config,
            "record": self.records >= 1,
            "writing": self.writes >= 1,
            "written": self.finalised >= 1,
            "writing2": self.writes >= 2,
            "never": False,
        }[kind]


@dataclass
class Attempt:
    start: Snapshot  # the run directory as the process started
    killed: bool
    partial_left: bool  # a checkpoint temporary folder was on disk when the process died
    stdout: str


def attempt(config: str, run_dir: str, cache: str, kind: str, delay: float) -> Attempt:
    """Start `glam train` on ``run_dir`` and SIGKILL it when ``kind`` happens (+ ``delay``)."""
    start = Snapshot.of(run_dir)
    watcher = Watcher(run_dir)
    log = os.path.join(os.path.dirname(run_dir), "attempt.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            train_command(config, run_dir, *OVERRIDES), env=subprocess_env(1, cache), stdout=out, stderr=out
        )
        launched = time.perf_counter()
        while proc.poll() is None:
            if kind == "after":
                hit = time.perf_counter() - launched >= delay
            else:
                watcher.poll()
                hit = watcher.happened(kind)
                if hit and delay:
                    time.sleep(delay)
            if hit:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        code = proc.wait(timeout=300)
    with open(log) as f:
        stdout = f.read()
    if code not in (0, -signal.SIGKILL):
        raise AssertionError(f"glam train failed on its own ({code}):\n{stdout[-3000:]}")
    return Attempt(start, code == -signal.SIGKILL, bool(Snapshot.of(run_dir).writing), stdout)


def test_sigkill_anywhere_resumes_from_the_last_complete_checkpoint(setup):
    folder, config, cache, reference = setup
    run_dir = str(folder / "crashed")
    attempts = [attempt(config, run_dir, cache, kind, delay) for kind, delay in KILLS]
    final = attempt(config, run_dir, cache, "never", 0)  # runs to the end
    attempts.append(final)

    print(
        f"{sum(a.killed for a in attempts)} kills, {sum(a.partial_left for a in attempts)} left a partial checkpoint, "
        f"{sum('resumed from' in a.stdout for a in attempts)} resumed from a checkpoint"
    )
    assert sum(a.killed for a in attempts) >= 20
    assert not final.killed
    # Kills that left a half-written checkpoint behind; the next process must not restore it.
    assert sum(a.partial_left for a in attempts) >= 5
    for a in attempts:
        resumed = re.findall(r"resumed from checkpoint (\d+)", a.stdout)
        if a.start.finalised and (resumed or not a.killed):
            # It restored the newest finalised checkpoint it found — never a temporary folder.
            assert resumed == [str(max(a.start.finalised))], a.stdout[-2000:]
    assert without_timing(read_metrics(run_dir)) == reference
    assert [r["step"] for r in reference if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert sorted(Snapshot.of(run_dir).finalised) == [STEPS - 2, STEPS]
    assert not Snapshot.of(run_dir).writing  # leftover temporary folders were cleaned up


def test_same_seed_and_config_give_identical_metrics(setup):
    folder, config, cache, reference = setup
    run_train(config, str(folder / "again"), *OVERRIDES, cache_dir=cache)
    again = without_timing(read_metrics(str(folder / "again")))
    assert again == reference
    assert len(reference) == STEPS + STEPS // 4 + 1  # train records per step; held-out evals at 0, 4, ..., STEPS
