"""The train state: a small pytree that is born sharded, donated to every step and checkpointed whole.

``TrainState(step, params, opt_state, rng, skipped_steps)`` (defined in :mod:`glam.checkpoint.state`,
which glam.checkpoint may import without importing glam.train):

- ``step``: batches consumed so far (int32). A skipped (non-finite) batch still counts.
- ``params``: the model's pure-dict parameters, fp32 (paper §5: fp32 weights, bf16 activations).
- ``opt_state``: the Optax state of ``optim.name``.
- ``rng``: the base key (raw uint32 [2]); step ``t`` uses ``fold_in(rng, t)``, so the randomness of a
  step depends only on the seed and the step number, never on how the run was interrupted.
- ``skipped_steps``: updates skipped because the gradients were not finite (paper §5).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glam.checkpoint.state import TrainState
from glam.config import GLaMConfig
from glam.model.init import abstract_params, init_params, param_shardings
from glam.train.optimizer import make_optimizer


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@functools.lru_cache(maxsize=8)
def opt_state_shardings(cfg: GLaMConfig, mesh: Mesh):
    """Shardings of the optimizer state: what GSPMD derives from the parameter shardings.

    Factored statistics drop one axis of their parameter; compiling the init with sharded inputs lets
    the compiler pick their layout (e.g. v_row [P, E, M] of an expert weight stays split over E).
    """
    optimizer = make_optimizer(cfg)
    shapes = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_params(cfg),
        param_shardings(cfg, mesh),
    )
    compiled = jax.jit(optimizer.init).lower(shapes).compile()
    # Outputs that depend on no input (e.g. step counts) come back on one device: replicate them.
    return jax.tree.map(lambda s: s if isinstance(s, NamedSharding) else replicated(mesh), compiled.output_shardings)


def state_shardings(cfg: GLaMConfig, mesh: Mesh) -> TrainState:
    rep = replicated(mesh)
    return TrainState(rep, param_shardings(cfg, mesh), opt_state_shardings(cfg, mesh), rep, rep)


def abstract_state(cfg: GLaMConfig, mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs with the target shardings: the restore target for a checkpoint on ``mesh``."""
    optimizer = make_optimizer(cfg)
    params = abstract_params(cfg)
    shapes = TrainState(
        jax.ShapeDtypeStruct((), jnp.int32),
        params,
        jax.eval_shape(optimizer.init, params),
        jax.ShapeDtypeStruct((2,), jnp.uint32),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, state_shardings(cfg, mesh)
    )


def create_train_state(cfg: GLaMConfig, mesh: Mesh) -> TrainState:
    """A fresh state from ``train.seed``: parameters and optimizer state born sharded over ``mesh``."""
    root = jax.random.PRNGKey(cfg.train.seed)
    init_key, rng = jax.random.split(root)
    params = init_params(cfg, init_key, mesh)
    shardings = state_shardings(cfg, mesh)
    opt_state = jax.jit(make_optimizer(cfg).init, out_shardings=shardings.opt_state)(params)
    # Host values placed with a global sharding: valid in a multi-process job too (every process agrees).
    scalar = functools.partial(jax.device_put, device=replicated(mesh))
    zero = np.zeros((), np.int32)
    return TrainState(scalar(zero), params, opt_state, scalar(np.asarray(rng)), scalar(zero))
