"""The training loop: ``train(cfg, run_dir) -> summary``, used by ``glam train``, ``glam demo`` and the tests.

One process per host runs the same loop (SPMD). Per step: each process's data pipeline builds and
feeds only its own rows of the global batch, and the jitted step updates the donated state. The host only
waits for the device at log steps (``train.log_every``), held-out evaluations (``train.eval_every``)
and checkpoints (``checkpoint.every``); everything else is dispatched asynchronously.

Re-running on the same run directory resumes from its latest checkpoint: parameters, optimizer state,
step, RNG and data pipeline state (every process's reading shards, gathered into one JSON at each
save: ``gather_data_state``), so the continued run equals an uninterrupted one step for step.
With ``train.rollback`` a loss spike or a streak of non-finite steps restores the last checkpoint
and trains on from the batches after the offending window (paper §5); without it, a streak of
``train.max_nonfinite_streak`` skipped updates stops the run (every later update would be skipped too).

Run safety (docs/robustness.md, "Run safety"): one trainer per run directory (``RunLock``); every
check runs before anything is written into the run directory; an unreadable newest checkpoint is
moved aside and the previous one restored; a failed save stops the run at the next step boundary;
the first SIGINT/SIGTERM saves a checkpoint and stops (``StopSignals``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from glam.checkpoint.lock import RunLock
from glam.checkpoint.manager import (
    CONFIG_FILE,
    Checkpointer,
    check_checkpoint_config,
    check_run_dir,
    prepare_run_dir,
    run_started,
    write_failure,
)
from glam.config import GLaMConfig
from glam.data.pipeline import DataPipeline, build_pipeline, merge_states, save_run_tokenizer
from glam.errors import GLaMError
from glam.model.flops import model_size
from glam.sharding.mesh import initialize_distributed, make_mesh
from glam.train.interrupt import StopSignals
from glam.train.metrics import MetricsWriter, Progress, measure_peak_flops, summarize, trim_metrics
from glam.train.rollback import SpikeGuard
from glam.train.state import TrainState, abstract_state, create_train_state
from glam.train.step import make_eval_step, make_train_step, shard_batch, shard_local_batch


@dataclasses.dataclass
class Run:
    """Everything one training run holds besides the train state."""

    cfg: GLaMConfig
    mesh: jax.sharding.Mesh
    pipeline: DataPipeline
    checkpointer: Checkpointer
    writer: MetricsWriter
    progress: Progress
    heldout: dict  # source name → list of global batches

    def save(self, state: TrainState) -> None:
        self.checkpointer.save(state, gather_data_state(self.pipeline), self.cfg)

    def restore(self, step: int | None = None) -> tuple[TrainState, dict]:
        return self.checkpointer.restore(abstract_state(self.cfg, self.mesh), step)

    def close(self) -> None:
        """Wait for the last save and close the writers (all of them, also when one fails)."""
        try:
            self.checkpointer.close()
        finally:
            self.progress.close()
            self.writer.close()
            self.pipeline.close()


def gather_data_state(pipeline: DataPipeline) -> dict:
    """The data state of every process's reading shards, as one JSON object on every process (the
    checkpoint's ``data`` item): each process holds only its own shards' cursors."""
    state = pipeline.state_dict()
    if jax.process_count() == 1:
        return merge_states([state])
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)]))).ravel()
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    every = np.asarray(multihost_utils.process_allgather(padded))
    return merge_states([json.loads(bytes(row[:n]).decode()) for row, n in zip(every, sizes)])


def start_run(cfg: GLaMConfig, run_dir: str) -> tuple[Run, TrainState]:
    """Join the job, build the mesh and the data, and restore the latest checkpoint or initialise."""
    if cfg.mesh.num_processes > 1:  # CPU hosts need a collectives backend; accelerators ignore this
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    initialize_distributed(cfg.mesh)
    mesh = make_mesh(cfg)
    main = jax.process_index() == 0
    # Bad input (another run's directory, a missing or empty source, a tokenizer that does not fit the
    # model or was made from other data) is reported before anything is written into the run directory.
    # A directory without a checkpoint (a start that failed before its first one) is not a run yet: its
    # config.yaml and tokenizer are replaced, so the corrected command goes on.
    started = run_started(run_dir)
    if started:
        check_run_dir(cfg, run_dir)
    elif main and os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        print(
            f"{run_dir} has no checkpoint yet (an earlier start stopped before its first one): starting afresh",
            flush=True,
        )
    # A tokenizer it trains stays in memory until saved below; each process builds only its own rows.
    pipeline = build_pipeline(
        cfg, run_dir, process_index=jax.process_index(), process_count=jax.process_count(), started=started
    )
    heldout = {
        s.name: [shard_batch(b, mesh) for b in pipeline.heldout_batches(s.name, cfg.train.eval_batches)]
        for s in pipeline.sources
    }
    checkpointer = Checkpointer(run_dir, cfg.checkpoint.keep, writer=True)

    def read(step: int) -> tuple[TrainState, dict]:
        check_checkpoint_config(cfg, checkpointer, step)  # the checkpoint's own config, not config.yaml
        return checkpointer.restore(abstract_state(cfg, mesh), step)

    log = (lambda message: print(message, flush=True)) if main else (lambda message: None)
    try:
        latest, restored = checkpointer.newest_readable(read, checkpointer.all_steps(), log)
    except BaseException:
        checkpointer.close()
        pipeline.close()
        raise
    if restored is None:
        state = create_train_state(cfg, mesh)
    else:
        state, data_state = restored
        pipeline.load_state_dict(data_state)
        log(f"resumed from checkpoint {latest} in {run_dir}")
    prepare_run_dir(cfg, run_dir)  # checked above; (re)written at every start, once the state is in hand
    if main:
        save_run_tokenizer(cfg, pipeline.tokenizer, run_dir)
        dropped = trim_metrics(run_dir, latest or 0)  # records a killed process wrote after its last checkpoint
        if dropped:
            log(f"{run_dir}/metrics.jsonl: dropped {dropped} damaged line{'s' * (dropped > 1)} (not JSON records)")
    writer = MetricsWriter(run_dir, enabled=main)
    progress = Progress(cfg.train.steps, latest or 0, enabled=main)
    return Run(cfg, mesh, pipeline, checkpointer, writer, progress, heldout), state


def evaluate(run: Run, eval_step, params: dict, step: int) -> dict:
    """Held-out loss per source (token-weighted mean over ``train.eval_batches`` batches)."""
    record: dict = {"kind": "eval", "step": step}
    losses = []
    for name, batches in run.heldout.items():
        sums = [eval_step(params, b) for b in batches]
        total, tokens = (float(sum(jax.device_get(x[i]) for x in sums)) for i in (0, 1))
        if tokens > 0:
            record[f"heldout/{name}"] = total / tokens
            losses.append(total / tokens)
    record["heldout/mean"] = float(np.mean(losses)) if losses else float("nan")
    return record


def roll_back(run: Run, reason: str, step: int, rollbacks: int) -> tuple[TrainState, int]:
    """Restore the last checkpoint; the data pipeline stays put, so the offending batches are skipped."""
    latest = run.checkpointer.latest_step()
    if rollbacks >= run.cfg.train.max_rollbacks or latest is None:
        why = "no checkpoint to go back to" if latest is None else f"already rolled back {rollbacks} times"
        raise GLaMError(
            f"{reason} at step {step}, and {why}; lower optim.lr_scale, or raise train.max_rollbacks / "
            "save more often (checkpoint.every)"
        )
    state, _ = run.restore(latest)
    if jax.process_index() == 0:
        print(f"step {step}: {reason}; rolled back to step {latest}, skipping batches {latest + 1}..{step}", flush=True)
    return state, latest


def stop_nonfinite(run: Run, reason: str, step: int, record: dict | None = None) -> None:
    """A streak of skipped updates without rollback: every further step would be skipped too."""
    latest = run.checkpointer.latest_step()
    last = f"the last checkpoint is step {latest}" if latest is not None else "no checkpoint was written"
    knob = loss_knob(run.cfg, record or {})
    fix = (
        f"{knob}"
        if knob
        else "Lower optim.lr_scale, or set train.rollback=true to go back to the last checkpoint and skip these batches"
    )
    raise GLaMError(
        f"step {step}: {reason} (train.max_nonfinite_streak={run.cfg.train.max_nonfinite_streak}), so those "
        f"updates were skipped; stopping ({last}). {fix}"
    )


# The weighted loss terms a config sets: (knob, weight, the record's unweighted term, its usual value).
def _loss_terms(cfg: GLaMConfig) -> list[tuple[str, float, str, str]]:
    return [
        ("moe.router_z_loss", cfg.moe.router_z_loss, "router_z_loss", "1e-3, ST-MoE's value"),
        ("moe.aux_loss_weight", cfg.moe.aux_loss_weight, "aux_loss", "0.01, GLaM's value"),
        ("train.z_loss_weight", cfg.train.z_loss_weight, "z_loss", "1e-4"),
    ]


def loss_knob(cfg: GLaMConfig, record: dict) -> str | None:
    """Advice naming the loss weight whose term swamps the loss (not finite, or over 1000 while the
    cross-entropy is finite), or None when no weight stands out."""
    ce = record.get("ce_loss")
    if not isinstance(ce, float) or not np.isfinite(ce):
        return None
    for knob, weight, key, usual in _loss_terms(cfg):
        value = record.get(key)
        if not weight or not isinstance(value, float):
            continue
        term = weight * value
        if not np.isfinite(term) or abs(term) > 1e3:
            return (
                f"The {key} term is {term:.3g} ({knob}={weight:g} x {value:.3g}) against a cross-entropy of "
                f"{ce:.3g}: lower {knob} (usually {usual})"
            )
    return None


@contextlib.contextmanager
def write_faults(run_dir: str):
    """A write of the run (lock, config, tokenizer, metrics, TensorBoard) that fails on a full disk or a
    read-only run directory: one GLaMError line (exit 2, as a failed checkpoint save), not a traceback."""
    try:
        yield
    except OSError as exc:
        message = write_failure(exc, run_dir)
        if message is None:
            raise
        raise GLaMError(message) from None


def train(cfg: GLaMConfig, run_dir: str) -> dict:
    """Train ``cfg`` in ``run_dir`` up to ``train.steps`` (resuming if it has checkpoints); returns a summary.

    The run directory is locked for the whole run (``glam.checkpoint.lock``; process 0 of a job). A
    first SIGINT/SIGTERM saves a checkpoint after the current step and returns early, with the
    signal's name in ``summary["interrupted"]`` (``glam.train.interrupt``).
    """
    with write_faults(run_dir), RunLock(run_dir, enabled=cfg.mesh.process_id == 0):
        run, state = start_run(cfg, run_dir)
        try:
            with StopSignals() as stop:
                summary = train_loop(run, state, stop)
        except BaseException:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                run.close()
            raise
        run.close()  # waits for the last asynchronous save
    if stop.name and jax.process_index() == 0:
        print(
            f"stopped by {stop.name} after step {summary['step']}: checkpoint {summary['step']} is saved in "
            f"{run_dir}; re-run the same command to resume",
            file=sys.stderr,
            flush=True,
        )
    return {"run_dir": run_dir, "is_main": jax.process_index() == 0, **summary}


def train_loop(run: Run, state: TrainState, stop: StopSignals) -> dict:
    """Steps from ``state.step`` to ``train.steps`` (see ``train``); returns the summary's numbers."""
    cfg, t, progress = run.cfg, run.cfg.train, run.progress
    train_step, eval_step = make_train_step(cfg, run.mesh), make_eval_step(cfg, run.mesh)
    step = start = int(state.step)
    flops_per_token = model_size(cfg).flops_per_token_train
    peak = t.peak_flops or measure_peak_flops()
    guard, rollbacks, window, last, last_eval = SpikeGuard(t), 0, [], {}, {}
    if start == 0 and t.steps > 0:
        last_eval = evaluate(run, eval_step, state.params, 0)
        run.writer.write(last_eval)
    clock, timed_steps, compile_seconds = time.perf_counter(), 0, 0.0
    while step < t.steps:
        state, metrics = train_step(state, shard_local_batch(run.pipeline.next_batch(), run.mesh))
        step += 1
        window.append(metrics)
        if step == start + 1:  # the first step compiles: time it apart from the throughput
            jax.block_until_ready(metrics)
            compile_seconds, clock = time.perf_counter() - clock, time.perf_counter()
        else:
            timed_steps += 1
        at_checkpoint = step % cfg.checkpoint.every == 0 or step == t.steps
        at_log = step % t.log_every == 0 or at_checkpoint
        if at_log:
            host = jax.device_get(window)
            seconds = time.perf_counter() - clock
            last = summarize(host, seconds, timed_steps, t.batch_size * t.seq_len, flops_per_token, peak, run.mesh.size)
            last.update(kind="train", step=step)
            run.writer.write(last)
            progress.update(step, last)
            window, clock, timed_steps = [], time.perf_counter(), 0
            reason = guard.check(np.array([h["loss"] for h in host]), np.array([h["finite"] for h in host]))
            if reason and t.rollback:
                state, to_step = roll_back(run, reason, step, rollbacks)
                rollbacks += 1
                record = {"kind": "rollback", "step": step, "to_step": to_step, "reason": reason}
                run.writer.write({**record, "rollbacks": rollbacks})
                step = to_step
                guard.reset_streak()
                continue
            if reason and guard.streak >= t.max_nonfinite_streak:
                stop_nonfinite(run, reason, step, last)
            if reason and jax.process_index() == 0:
                print(f"step {step}: {reason} (train.rollback is off: continuing)", flush=True)
        if step % t.eval_every == 0 or step == t.steps:
            last_eval = evaluate(run, eval_step, state.params, step)
            run.writer.write(last_eval)
            progress.update(step, last_eval)
        if at_checkpoint:
            run.save(state)
        run.checkpointer.check()  # a failed save stops the run here, not some steps later
        if stop.requested(sync=at_log):
            if not at_checkpoint:
                run.save(state)
            run.checkpointer.wait()
            break
    return {
        "start_step": start,
        "step": step,
        "interrupted": stop.name,
        "loss": last.get("loss"),
        "heldout": {k: v for k, v in last_eval.items() if k.startswith("heldout/")},
        "skipped_steps": int(jax.device_get(state.skipped_steps)),
        "rollbacks": rollbacks,
        "compile_seconds": compile_seconds,
        "tokens_per_sec": last.get("tokens_per_sec"),
    }
