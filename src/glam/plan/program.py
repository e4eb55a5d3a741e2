"""Compile the training step ahead of time for a mesh, and read its memory and shardings.

The step (forward, backward, optimizer update: exactly what ``glam train`` runs) is lowered and
compiled for a mesh of simulated CPU devices from abstract shapes only: no weights are allocated and
nothing runs. XLA's memory analysis gives the per-device bytes of arguments (parameters, optimizer
state, batch), outputs and temporaries.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

from glam.config import GLaMConfig

GIB = 1024**3


class CompiledStep(NamedTuple):
    cfg: GLaMConfig  # with the mesh set
    compiled: object  # jax.stages.Compiled
    state: object  # abstract TrainState (ShapeDtypeStructs with shardings)
    mesh: object
    seconds: float


def ensure_cpu_devices(n: int) -> None:
    """Ask for ``n`` simulated CPU devices; only possible before JAX starts its backend."""
    try:
        jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices or 1))
    except RuntimeError:
        pass  # backend already started: abstract_mesh() reports a clear error if too few devices
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def compile_train_step(cfg: GLaMConfig, data: int, model: int) -> CompiledStep:
    from glam.sharding.mesh import abstract_mesh, validate_mesh
    from glam.train.state import abstract_state
    from glam.train.step import BATCH_KEYS, batch_sharding, make_train_step

    cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=data, model=model))
    validate_mesh(cfg, data, model)
    mesh = abstract_mesh(data, model, cfg)
    t0 = time.perf_counter()
    state = abstract_state(cfg, mesh)
    B, S = cfg.train.batch_size, cfg.train.seq_len
    dtypes = {"loss_weights": jnp.float32}
    bsh = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((B, S), dtypes.get(k, jnp.int32), sharding=bsh) for k in BATCH_KEYS}
    compiled = make_train_step(cfg, mesh).lower(state, batch).compile()
    return CompiledStep(cfg, compiled, state, mesh, time.perf_counter() - t0)


def memory_report(compiled) -> dict:
    mem = compiled.memory_analysis()
    args, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    total = args + out - alias + temp + code  # donated state: outputs alias the arguments
    return {
        "argument_bytes": args,
        "output_bytes": out,
        "alias_bytes": alias,
        "temp_bytes": temp,
        "code_bytes": code,
        "total_bytes_per_device": total,
        "total_gib_per_device": total / GIB,
    }


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def parameter_shardings(state) -> dict[str, str]:
    """Every parameter's path → its PartitionSpec, read from the state (no path is assumed)."""
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    return {_path(p): str(x.sharding.spec) for p, x in leaves}


def parameter_layouts(state, mesh) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(global shape, shards per dim) of every parameter, for recognising weights in the HLO."""
    out = []
    for x in jax.tree.leaves(state.params):
        spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
        shards = []
        for axes in spec:
            names = () if axes is None else (axes,) if isinstance(axes, str) else axes
            shards.append(math.prod(mesh.shape[n] for n in names))
        out.append((tuple(x.shape), tuple(shards)))
    return out
