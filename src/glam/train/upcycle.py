"""Sparse upcycling (Komatsuzaki et al. 2022): a GLaM model started from a trained dense checkpoint.

``glam upcycle --from DENSE_RUN --run-dir NEW_RUN moe.num_experts=8 [overrides]`` writes NEW_RUN with
a step-0 checkpoint; ``glam train NEW_RUN/config.yaml --run-dir NEW_RUN`` then trains it like any run.

What is copied: embeddings, every norm, every attention layer, and the dense FFN layers (odd
layers). Each MoE layer (even layers; every layer with ``moe.layers=all``) gets E copies of the
dense FFN of the same layer as its experts — which needs experts of the dense FFN's form, so the config gets
``model.expert_activation=geglu`` — and a freshly initialised router (from ``train.seed``). The
optimizer state starts fresh. By default the new run starts at step 0 (the learning-rate schedule's
warm-up again) with the data from its beginning; ``continue_source=True`` (``--continue``) instead
starts it at the source's step with the source's data state, so the schedule and the data stream go on
where the dense run stopped, as Komatsuzaki et al. continue training (``train.steps`` must then exceed
the source's step: it counts the dense steps too).

Property (tested): with identical experts, every token's gates sum to 1 (top-k renormalised), so a
layer that drops nothing computes exactly the dense FFN, and the upcycled model's loss equals the
dense model's — at evaluation with ``moe.eval_no_drop=true``, and in training wherever no expert
overflows its capacity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp

from glam.config import GLaMConfig, apply_overrides
from glam.errors import ConfigError, GLaMError

UPCYCLED_FILE = "upcycled_from.json"
# model fields the upcycled model must share with its source (the parameters are copied)
KEPT_MODEL_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "head_dim", "ffn_dim", "rel_buckets")


def upcycle_config(dense: GLaMConfig, overrides: list[str]) -> GLaMConfig:
    """The MoE config: the source's, with ``overrides`` (``moe.num_experts`` required) and gated experts."""
    if dense.is_moe:
        raise ConfigError(
            f"the source is a MoE model ({dense.moe.num_experts} experts); upcycle a dense run (moe.num_experts=0)"
        )
    if not any(o.split("=", 1)[0].strip() == "moe.num_experts" for o in overrides):
        raise ConfigError("say how many experts the upcycled model has, e.g. moe.num_experts=8")
    cfg = apply_overrides(dense, [*overrides])
    if cfg.model.expert_activation != "geglu":
        if any(o.split("=", 1)[0].strip() == "model.expert_activation" for o in overrides):
            raise ConfigError(
                f"model.expert_activation={cfg.model.expert_activation}: upcycled experts copy the dense "
                "gated-GELU FFN, so they must be geglu; leave model.expert_activation out"
            )
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, expert_activation="geglu"))
    for name in KEPT_MODEL_FIELDS:
        if getattr(cfg.model, name) != getattr(dense.model, name):
            raise ConfigError(
                f"model.{name}={getattr(cfg.model, name)}, but the dense source has {getattr(dense.model, name)}: "
                f"upcycling copies its parameters, so leave model.{name} out"
            )
    if cfg.moe.expert_dim not in (0, cfg.model.ffn_dim):
        raise ConfigError(
            f"moe.expert_dim={cfg.moe.expert_dim}: each expert is a copy of the dense FFN, of width "
            f"model.ffn_dim={cfg.model.ffn_dim}; leave moe.expert_dim out"
        )
    if not cfg.is_moe:
        raise ConfigError(
            f"moe.num_experts={cfg.moe.num_experts}: upcycling makes a MoE model from the dense one, so give it "
            "experts, e.g. moe.num_experts=8"
        )
    if cfg.moe.shared_experts:
        raise ConfigError("moe.shared_experts with upcycling is not supported (the dense FFN would count twice)")
    return cfg


def upcycle_params(dense_cfg: GLaMConfig, dense_params: dict, cfg: GLaMConfig, fresh_params: dict) -> dict:
    """The upcycled parameters: ``fresh_params`` (an initialised MoE model: its router is kept) with
    everything else taken from the dense model, the experts as copies of the dense FFN."""
    from glam.model.moe.layer import moe_ffn_paths

    dense_leaves = {
        jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(dense_params)
    }
    E = cfg.moe.num_experts
    moe_ffns = tuple("".join(f"[{k!r}]" for k in path) for path in moe_ffn_paths(cfg.moe))  # "['blocks'][...]"

    def take(path, fresh):
        key = jax.tree_util.keystr(path)
        if key.endswith("['w_router']") or key.endswith("['router_bias']"):  # a fresh router
            return fresh
        source = dense_leaves.get(key)
        if source is None:
            raise GLaMError(f"upcycle: the dense checkpoint has no parameter {key}; is it a glam dense run?")
        if key.startswith(moe_ffns):  # [P, ...] → [P, E, ...]: every expert a copy of the dense FFN
            source = jnp.broadcast_to(source[:, None], (source.shape[0], E, *source.shape[1:]))
        if source.shape != fresh.shape:
            raise GLaMError(f"upcycle: {key} has shape {source.shape} in the dense model, {fresh.shape} here")
        return jax.device_put(jnp.asarray(source, fresh.dtype), fresh.sharding)

    return jax.tree_util.tree_map_with_path(take, fresh_params)


def source_position(from_run: str, step: int) -> dict:
    """The data pipeline state of the source run's checkpoint ``step``."""
    from glam.checkpoint.manager import Checkpointer

    checkpointer = Checkpointer(from_run)
    try:
        return checkpointer.restore_json(step, "data")
    finally:
        checkpointer.close()


def check_target(from_run: str, run_dir: str) -> None:
    """Refuse a new run directory inside the source run (or the source itself), or one that is a run."""
    from glam.checkpoint.manager import run_started

    source, target = os.path.realpath(from_run), os.path.realpath(run_dir)
    if target == source or target.startswith(source + os.sep):
        raise GLaMError(
            f"--run-dir {run_dir!r} is inside the source run {from_run!r}; upcycle into a directory of its own "
            "(e.g. beside it), so neither run's files mix with the other's"
        )
    if run_started(run_dir):
        raise GLaMError(f"{run_dir!r} already holds checkpoints; upcycle into a new --run-dir")


def memory_needed(cfg: GLaMConfig, dense_cfg: GLaMConfig) -> int:
    """Bytes upcycling holds at its peak: the dense parameters, the MoE parameters twice (initialised,
    then copied from the dense FFN) and the optimizer state; from shapes alone (nothing allocated)."""
    from glam.model.init import abstract_params
    from glam.train.optimizer import make_optimizer

    def size(tree) -> int:
        return sum(int(math.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))

    params = abstract_params(cfg)
    return size(abstract_params(dense_cfg)) + 2 * size(params) + size(jax.eval_shape(make_optimizer(cfg).init, params))


def memory_free() -> tuple[int | None, str, bool]:
    """(bytes free, where, whether per device): an accelerator's free memory, or the host's available
    memory, which the simulated CPU devices all share."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.device_kind} {device.id}", True
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024, "this host", False
    except (OSError, KeyError, ValueError):
        return None, "this host", False


def check_memory(cfg: GLaMConfig, dense_cfg: GLaMConfig, from_run: str, overrides: list[str]) -> None:
    """Refuse, before allocating anything, an upcycled model that does not fit in memory: per device on
    accelerators (the state is split over mesh.data x mesh.model), in all on the host."""
    free, where, per_device = memory_free()
    need = memory_needed(cfg, dense_cfg) / (max(1, cfg.mesh.data * cfg.mesh.model) if per_device else 1)
    if free is not None and need > free:
        raise GLaMError(
            f"upcycling to moe.num_experts={cfg.moe.num_experts} needs about {need / 2**30:.2f} GiB"
            f"{' per device' if per_device else ''} (the dense parameters, the MoE parameters twice and the "
            f"optimizer state), but {where} has {free / 2**30:.2f} GiB free; choose fewer experts, or a larger mesh "
            f"(check one first with `glam plan {from_run}/config.yaml {' '.join(overrides)} --mesh DATAxMODEL`)"
        )


def _source_config(from_run: str, step: int) -> GLaMConfig:
    from glam.checkpoint.manager import Checkpointer, read_config
    from glam.config import from_dict

    checkpointer = Checkpointer(from_run)
    try:
        stored = checkpointer.stored_config(step)
    finally:
        checkpointer.close()
    return read_config(from_run) if stored is None else from_dict(GLaMConfig, stored)


def upcycle(from_run: str, run_dir: str, overrides: list[str], *, continue_source: bool = False) -> dict:
    """Write ``run_dir`` with the first checkpoint of the upcycled model (step 0, or the source's step
    with ``continue_source``); returns a summary.

    Checked before anything is read or allocated: the source is a dense glam run that no ``glam
    train`` is writing (its lock is held while it is read), the new directory is not inside it, the
    experts' number and the memory they need. A failure before the new checkpoint is written removes
    what it wrote, so the run directory never holds a config without its upcycled checkpoint.
    """
    from glam.checkpoint import load_for_inference
    from glam.checkpoint.lock import RunLock
    from glam.checkpoint.manager import Checkpointer, checkpoint_dir
    from glam.data.run_tokenizer import TOKENIZER_FILE, load_run_tokenizer

    if not os.path.isdir(checkpoint_dir(from_run)):
        raise GLaMError(f"{from_run!r} has no checkpoints; is it a glam run directory (made by `glam train`)?")
    check_target(from_run, run_dir)
    busy = "upcycle it once that training has stopped (Ctrl-C saves a checkpoint), so the step read is a finished one"
    with RunLock(from_run, busy_advice=busy):
        checkpointer = Checkpointer(from_run)
        try:
            steps = checkpointer.all_steps()
        finally:
            checkpointer.close()
        if not steps:
            raise GLaMError(f"{from_run!r} has no finished checkpoint; train it first")
        source_step = steps[-1]
        dense_cfg = _source_config(from_run, source_step)
        load_run_tokenizer(from_run, dense_cfg)  # the source's own tokenizer, which the new run will use
        cfg = upcycle_config(dense_cfg, overrides)
        tokenizer = os.path.join(from_run, TOKENIZER_FILE)  # the source's own, so its ids mean the same
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=tokenizer))
        start_step = source_step if continue_source else 0
        if start_step and cfg.train.steps <= start_step:
            raise ConfigError(
                f"train.steps={cfg.train.steps}, but the upcycled run continues from the source's step {start_step}; "
                f"train.steps counts the dense steps too: set train.steps={start_step} + the steps to train"
            )
        check_memory(cfg, dense_cfg, from_run, overrides)
        loaded_cfg, dense_params, _ = load_for_inference(from_run, step=source_step)
        data_state = source_position(from_run, source_step) if continue_source else None
    record = {
        "from": os.path.abspath(from_run),
        "source_step": source_step,
        "num_experts": cfg.moe.num_experts,
        "overrides": list(overrides),
        "start_step": start_step,
    }
    _write_first_checkpoint(cfg, loaded_cfg, dense_params, run_dir, start_step, data_state, record)
    return {"run_dir": run_dir, "config": os.path.join(run_dir, "config.yaml"), **record}


def _write_first_checkpoint(
    cfg: GLaMConfig, dense_cfg: GLaMConfig, dense_params: dict, run_dir: str, start_step, data_state, record
) -> None:
    """Build the upcycled state and save it as the new run's first checkpoint, with its record; on a
    failure, remove what this wrote into ``run_dir``."""
    from glam.checkpoint.lock import RunLock
    from glam.train.loop import start_run
    from glam.train.optimizer import make_optimizer
    from glam.train.state import state_shardings

    with RunLock(run_dir, enabled=cfg.mesh.process_id == 0):
        before = set(os.listdir(run_dir))  # taken while holding the lock: no trainer writes here now
        try:
            run, fresh = start_run(cfg, run_dir)
            try:
                params = upcycle_params(dense_cfg, dense_params, cfg, fresh.params)
                init = jax.jit(make_optimizer(cfg).init, out_shardings=state_shardings(cfg, run.mesh).opt_state)
                state = fresh._replace(params=params, opt_state=init(params))
                if data_state is not None:
                    step = jax.device_put(jnp.asarray(start_step, state.step.dtype), state.step.sharding)
                    state = state._replace(step=step)
                    run.pipeline.load_state_dict(data_state)
                run.save(state)
            finally:
                run.close()
            if jax.process_index() == 0:
                with open(os.path.join(run_dir, UPCYCLED_FILE), "w", encoding="utf-8") as f:
                    json.dump(record, f, indent=1)
        except BaseException:
            if jax.process_index() == 0:
                _remove_new_files(run_dir, before)
            raise


# what start_run and upcycle write into a run directory
_WRITTEN = ("config.yaml", "tokenizer.model", "tokenizer.json", "tb", "metrics.jsonl", "checkpoints", UPCYCLED_FILE)


def _remove_new_files(run_dir: str, before: set[str]) -> None:
    """Remove what a failed upcycle wrote into ``run_dir`` (the lock removes the directory if it made it)."""
    for name in (set(os.listdir(run_dir)) - before) & set(_WRITTEN):
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
