"""One training step: ``train_step(state, batch) -> (state, metrics)``, jitted with shardings and donation.

- Gradient accumulation: the global batch [B, S] is split into ``train.grad_accum`` micro-batches
  [B/A, S] that a ``lax.scan`` runs in turn; the gradient is the mean of the micro-batch gradients.
- Precision: fp32 weights; activations in ``model.activation_dtype`` (bf16 in the paper, §5).
- Stability (paper §5): when the gradient norm, the loss or the update is not finite, the update is skipped:
  parameters and optimizer state are returned unchanged (bit for bit) and ``skipped_steps`` grows.
- Randomness: step t uses ``fold_in(state.rng, t)``; micro-batch a folds in a as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from glam.config import GLaMConfig
from glam.data.packing import BATCH_KEYS
from glam.data.pipeline import process_slice
from glam.model.losses import loss_fn
from glam.model.moe.balance import with_bias_updates
from glam.sharding.rules import activate, constrain, logical_to_spec
from glam.train.optimizer import learning_rate_schedule, make_optimizer
from glam.train.state import TrainState, state_shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Every batch array [B, S] is split over the data axis along B."""
    return NamedSharding(mesh, logical_to_spec(("act_batch", None), mesh))


def split_micro_batches(batch: dict, accum: int) -> dict:
    """[B, S] → [A, B/A, S]; micro-batch a takes rows a, a + A, a + 2A, … so each keeps B's sharding."""

    def split(x):
        B = x.shape[0]
        x = x.reshape(B // accum, accum, *x.shape[1:]).swapaxes(0, 1)  # [A, B/A, S]
        return constrain(x, (None, "act_batch", None))

    return jax.tree.map(split, batch)


def accumulate_gradients(cfg: GLaMConfig, params: dict, batch: dict, rng: jax.Array) -> tuple[dict, dict]:
    """Mean gradient and metrics over ``train.grad_accum`` micro-batches (one scan iteration each)."""
    accum = cfg.train.grad_accum
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, cfg, train=True), argnums=0, has_aux=True)
    if accum == 1:
        (_, metrics), grads = grad_fn(params, batch, rng=rng)
        return grads, metrics

    def body(grad_sum, xs):
        micro, index = xs
        (_, metrics), grads = grad_fn(params, micro, rng=jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, grad_sum, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    grad_sum, stacked = jax.lax.scan(body, zeros, (split_micro_batches(batch, accum), jnp.arange(accum)))
    grads = jax.tree.map(lambda g: g / accum, grad_sum)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), stacked)
    metrics["tokens"] = jnp.sum(stacked["tokens"])
    return grads, metrics


def _train_step(cfg: GLaMConfig, mesh: Mesh, optimizer: optax.GradientTransformation, state: TrainState, batch: dict):
    with activate(mesh):  # the body runs at trace time: activation constraints apply to this mesh
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl="threefry2x32"), state.step)
        grads, metrics = accumulate_gradients(cfg, state.params, batch, rng)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = with_bias_updates(cfg, updates, metrics["moe"])  # moe.balance=bias: not the optimizer's
        # Finite gradients can still make a non-finite update (an infinite learning rate): skip those too.
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.tree.norm(updates))
        params = optax.apply_updates(state.params, updates)
        if cfg.train.skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
            skipped = state.skipped_steps + (~finite).astype(jnp.int32)
        else:
            skipped = state.skipped_steps
    lr = learning_rate_schedule(cfg)(state.step - state.skipped_steps)  # updates applied before this one
    metrics = {**metrics, "grad_norm": grad_norm, "lr": lr, "finite": finite, "skipped_steps": skipped}
    return TrainState(state.step + 1, params, opt_state, state.rng, skipped), metrics


def make_train_step(cfg: GLaMConfig, mesh: Mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted step for ``mesh``: the state is donated, the batch arrives split over ``data``."""
    shardings = state_shardings(cfg, mesh)
    batch_sh = {k: batch_sharding(mesh) for k in BATCH_KEYS}
    step = functools.partial(_train_step, cfg, mesh, make_optimizer(cfg))
    return jax.jit(step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None), donate_argnums=0)


def _eval_loss(cfg: GLaMConfig, mesh: Mesh, params: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
    with activate(mesh):
        _, metrics = loss_fn(cfg, params, batch, train=False)
    return metrics["ce_loss"] * metrics["tokens"], metrics["tokens"]


def make_eval_step(cfg: GLaMConfig, mesh: Mesh) -> Callable[[dict, dict], tuple[jax.Array, jax.Array]]:
    """Jitted held-out evaluation: (sum of token cross-entropies, number of target tokens)."""
    batch_sh = {k: batch_sharding(mesh) for k in BATCH_KEYS}
    params_sh = state_shardings(cfg, mesh).params
    return jax.jit(functools.partial(_eval_loss, cfg, mesh), in_shardings=(params_sh, batch_sh))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """A global host batch (every process holds all of it: held-out sets, tests) → global arrays
    split over ``data``; each process feeds only its own rows [p·B/P, (p+1)·B/P)."""
    return shard_local_batch(process_slice(batch, jax.process_index(), jax.process_count()), mesh)


def shard_local_batch(local: dict, mesh: Mesh) -> dict:
    """This process's rows of a global batch ([B/P, S] arrays, as the training pipeline builds them,
    see ``glam.data.pipeline``) → global arrays [B, S] split over ``data``. Process p's rows are
    global rows [p·B/P, (p+1)·B/P), which live on its own devices because the mesh lists devices
    process by process."""
    sharding = batch_sharding(mesh)
    rows = local["inputs"].shape[0] * jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(sharding, local[k], (rows, *local[k].shape[1:])) for k in BATCH_KEYS
    }
