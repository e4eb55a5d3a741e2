"""Sparse upcycling (Komatsuzaki et al. 2022): a GLaM model started from a trained dense checkpoint.

``glam upcycle --from DENSE_RUN --run-dir NEW_RUN moe.num_experts=8 [overrides]`` writes NEW_RUN with
a step-0 checkpoint; ``glam train NEW_RUN/config.yaml --run-dir NEW_RUN`` then trains it like any run.

What is copied: embeddings, every norm, every attention layer, and the dense FFN layers (odd
layers). Each MoE layer (even layers) gets E copies of the dense FFN of the same layer as its
experts — which needs experts of the dense FFN's form, so the config gets
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

import dataclasses
import json
import os

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
    if cfg.moe.shared_experts:
        raise ConfigError("moe.shared_experts with upcycling is not supported (the dense FFN would count twice)")
    return cfg


def upcycle_params(dense_cfg: GLaMConfig, dense_params: dict, cfg: GLaMConfig, fresh_params: dict) -> dict:
    """The upcycled parameters: ``fresh_params`` (an initialised MoE model: its router is kept) with
    everything else taken from the dense model, the experts as copies of the dense FFN."""
    dense_leaves = {
        jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(dense_params)
    }
    E = cfg.moe.num_experts

    def take(path, fresh):
        key = jax.tree_util.keystr(path)
        if key.endswith("['w_router']") or key.endswith("['router_bias']"):  # a fresh router
            return fresh
        source = dense_leaves.get(key)
        if source is None:
            raise GLaMError(f"upcycle: the dense checkpoint has no parameter {key}; is it a glam dense run?")
        if "['moe_layer']['ffn']" in key:  # [P, ...] → [P, E, ...]: every expert a copy of the dense FFN
            source = jnp.broadcast_to(source[:, None], (source.shape[0], E, *source.shape[1:]))
        if source.shape != fresh.shape:
            raise GLaMError(f"upcycle: {key} has shape {source.shape} in the dense model, {fresh.shape} here")
        return jax.device_put(jnp.asarray(source, fresh.dtype), fresh.sharding)

    return jax.tree_util.tree_map_with_path(take, fresh_params)


def source_position(from_run: str) -> tuple[int, dict]:
    """(step, data pipeline state) of the source run's latest checkpoint."""
    from glam.checkpoint.manager import Checkpointer

    checkpointer = Checkpointer(from_run)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise GLaMError(f"{from_run!r} has no finished checkpoint; train it first")
        return step, checkpointer.restore_json(step, "data")
    finally:
        checkpointer.close()


def upcycle(from_run: str, run_dir: str, overrides: list[str], *, continue_source: bool = False) -> dict:
    """Write ``run_dir`` with the first checkpoint of the upcycled model (step 0, or the source's step
    with ``continue_source``); returns a summary."""
    from glam.checkpoint import load_for_inference
    from glam.checkpoint.lock import RunLock
    from glam.checkpoint.manager import checkpoint_dir
    from glam.data.pipeline import TOKENIZER_FILE
    from glam.train.loop import start_run
    from glam.train.optimizer import make_optimizer
    from glam.train.state import state_shardings

    if os.path.isdir(checkpoint_dir(run_dir)) and os.listdir(checkpoint_dir(run_dir)):
        raise GLaMError(f"{run_dir!r} already holds checkpoints; upcycle into a new --run-dir")
    dense_cfg, dense_params, _ = load_for_inference(from_run)
    cfg = upcycle_config(dense_cfg, overrides)
    tokenizer = os.path.join(from_run, TOKENIZER_FILE)  # the source's own, so its ids mean the same
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=tokenizer))
    start_step, data_state = source_position(from_run) if continue_source else (0, None)
    if start_step and cfg.train.steps <= start_step:
        raise ConfigError(
            f"train.steps={cfg.train.steps}, but the upcycled run continues from the source's step {start_step}; "
            f"train.steps counts the dense steps too: set train.steps={start_step} + the steps to train"
        )
    with RunLock(run_dir, enabled=cfg.mesh.process_id == 0):
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
    record = {
        "from": os.path.abspath(from_run),
        "num_experts": cfg.moe.num_experts,
        "overrides": list(overrides),
        "start_step": start_step,
    }
    if jax.process_index() == 0:
        with open(os.path.join(run_dir, UPCYCLED_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
    return {"run_dir": run_dir, "config": os.path.join(run_dir, "config.yaml"), **record}
