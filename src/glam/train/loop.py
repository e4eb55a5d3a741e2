"""The training loop: ``train(cfg, run_dir) -> summary``, used by ``glam train``, ``glam demo`` and the tests.

One process per host runs the same loop (SPMD). Per step: the data pipeline hands out the global
batch, each process feeds its own rows, and the jitted step updates the donated state. The host only
waits for the device at log steps (``train.log_every``), held-out evaluations (``train.eval_every``)
and checkpoints (``checkpoint.every``); everything else is dispatched asynchronously.

Re-running on the same run directory resumes from its latest checkpoint: parameters, optimizer state,
step, RNG and data pipeline state, so the continued run equals an uninterrupted one step for step.
With ``train.rollback`` a loss spike or a streak of non-finite steps restores the last checkpoint
and trains on from the batches after the offending window (paper §5).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from glam.checkpoint.inference import save_tokenizer
from glam.checkpoint.manager import Checkpointer, check_run_dir, prepare_run_dir
from glam.config import GLaMConfig
from glam.data.pipeline import DataPipeline, build_pipeline
from glam.errors import GLaMError
from glam.model.flops import model_size
from glam.sharding.mesh import initialize_distributed, make_mesh
from glam.train.metrics import MetricsWriter, Progress, measure_peak_flops, summarize, trim_metrics
from glam.train.rollback import SpikeGuard
from glam.train.state import TrainState, abstract_state, create_train_state
from glam.train.step import make_eval_step, make_train_step, shard_batch


@dataclasses.dataclass
class Run:
    """Everything one training run holds besides the train state."""

    cfg: GLaMConfig
    mesh: jax.sharding.Mesh
    pipeline: DataPipeline
    checkpointer: Checkpointer
    writer: MetricsWriter
    heldout: dict  # source name → list of global batches

    def save(self, state: TrainState) -> None:
        self.checkpointer.save(state, self.pipeline.state_dict(), self.cfg)

    def restore(self, step: int | None = None) -> tuple[TrainState, dict]:
        return self.checkpointer.restore(abstract_state(self.cfg, self.mesh), step)


def start_run(cfg: GLaMConfig, run_dir: str) -> tuple[Run, TrainState]:
    """Join the job, build the mesh and the data, and restore the latest checkpoint or initialise."""
    if cfg.mesh.num_processes > 1:  # CPU hosts need a collectives backend; accelerators ignore this
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    initialize_distributed(cfg.mesh)
    mesh = make_mesh(cfg)
    # Bad input (another run's directory, a missing or empty source, a tokenizer that does not fit the
    # model, a damaged checkpoint) is reported before anything is written into the run directory.
    check_run_dir(cfg, run_dir)
    pipeline = build_pipeline(cfg, run_dir)  # trains a tokenizer into run_dir if data.tokenizer is unset
    heldout = {
        s.name: [shard_batch(b, mesh) for b in pipeline.heldout_batches(s.name, cfg.train.eval_batches)]
        for s in pipeline.sources
    }
    checkpointer = Checkpointer(run_dir, cfg.checkpoint.keep, writer=True)
    latest = checkpointer.latest_step()
    if latest is None:
        state = create_train_state(cfg, mesh)
    else:
        state, data_state = checkpointer.restore(abstract_state(cfg, mesh), latest)
        pipeline.load_state_dict(data_state)
        if jax.process_index() == 0:
            print(f"resumed from checkpoint {latest} in {run_dir}", flush=True)
    prepare_run_dir(cfg, run_dir)  # the config is (re)written once the state is in hand
    save_tokenizer(cfg, run_dir)
    if jax.process_index() == 0:
        trim_metrics(run_dir, latest or 0)  # records a killed process wrote after its last checkpoint
    writer = MetricsWriter(run_dir, enabled=jax.process_index() == 0)
    return Run(cfg, mesh, pipeline, checkpointer, writer, heldout), state


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


def train(cfg: GLaMConfig, run_dir: str) -> dict:
    """Train ``cfg`` in ``run_dir`` up to ``train.steps`` (resuming if it has checkpoints); returns a summary."""
    t = cfg.train
    run, state = start_run(cfg, run_dir)
    train_step, eval_step = make_train_step(cfg, run.mesh), make_eval_step(cfg, run.mesh)
    step = start = int(state.step)
    flops_per_token = model_size(cfg).flops_per_token_train
    peak = t.peak_flops or measure_peak_flops()
    progress = Progress(t.steps, start, enabled=jax.process_index() == 0)
    guard, rollbacks, window, last, last_eval = SpikeGuard(t), 0, [], {}, {}
    if start == 0 and t.steps > 0:
        last_eval = evaluate(run, eval_step, state.params, 0)
        run.writer.write(last_eval)
    clock, timed_steps, compile_seconds = time.perf_counter(), 0, 0.0
    while step < t.steps:
        state, metrics = train_step(state, shard_batch(run.pipeline.next_batch(), run.mesh))
        step += 1
        window.append(metrics)
        if step == start + 1:  # the first step compiles: time it apart from the throughput
            jax.block_until_ready(metrics)
            compile_seconds, clock = time.perf_counter() - clock, time.perf_counter()
        else:
            timed_steps += 1
        at_checkpoint = step % cfg.checkpoint.every == 0 or step == t.steps
        if step % t.log_every == 0 or at_checkpoint:
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
                record = {
                    "kind": "rollback",
                    "step": step,
                    "to_step": to_step,
                    "reason": reason,
                    "rollbacks": rollbacks,
                }
                run.writer.write(record)
                step = to_step
                guard.reset_streak()
                continue
            if reason and jax.process_index() == 0:
                print(f"step {step}: {reason} (train.rollback is off: continuing)", flush=True)
        if step % t.eval_every == 0 or step == t.steps:
            last_eval = evaluate(run, eval_step, state.params, step)
            run.writer.write(last_eval)
            progress.update(step, last_eval)
        if at_checkpoint:
            run.save(state)
    run.checkpointer.close()  # waits for the last asynchronous save
    progress.close()
    run.writer.close()
    run.pipeline.close()
    return {
        "run_dir": run_dir,
        "is_main": jax.process_index() == 0,
        "start_step": start,
        "step": step,
        "loss": last.get("loss"),
        "heldout": {k: v for k, v in last_eval.items() if k.startswith("heldout/")},
        "skipped_steps": int(jax.device_get(state.skipped_steps)),
        "rollbacks": rollbacks,
        "compile_seconds": compile_seconds,
        "tokens_per_sec": last.get("tokens_per_sec"),
    }
