"""Parameters as plain pytrees: shapes without allocation, logical axes, and born-sharded init.

The NNX module tree (``GLaM``) defines the parameters; training, checkpointing and sharding work on
its pure-dict state. ``bind`` turns a pure dict back into a module for the forward pass.
Initialisation follows "eval_shape → shardings → jitted init with output shardings", so full
parameters never sit on one device (style principle 9).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from glam.config import GLaMConfig
from glam.model.transformer import GLaM, PairBlock
from glam.sharding.rules import param_spec


@functools.lru_cache(maxsize=32)
def skeleton(cfg: GLaMConfig):
    """(graphdef, abstract nnx.State) of the model, computed once per config without allocating."""
    abstract = nnx.eval_shape(lambda: GLaM(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def _variables(cfg: GLaMConfig):
    _, state = skeleton(cfg)
    return state


def abstract_params(cfg: GLaMConfig) -> dict:
    """Pure dict of ``jax.ShapeDtypeStruct``: every parameter's real shape, nothing allocated."""
    return _variables(cfg).to_pure_dict()


def param_axes(cfg: GLaMConfig) -> dict:
    """Pure dict of each parameter's logical axis names (including the leading pair axis)."""
    state = _variables(cfg)

    def names(v):
        axes = v.get_metadata()["axes"]
        return ("layers",) * (v.get_value().ndim - len(axes)) + tuple(axes)

    return jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()


def param_specs(cfg: GLaMConfig, mesh: Mesh | None = None) -> dict:
    state = _variables(cfg)
    specs = jax.tree.map(
        lambda v: param_spec(v.get_metadata()["axes"], v.get_value().ndim, mesh),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return specs.to_pure_dict()


def param_shardings(cfg: GLaMConfig, mesh: Mesh) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg, mesh))


def _init(cfg: GLaMConfig, key: jax.Array) -> dict:
    return nnx.state(GLaM(cfg, rngs=nnx.Rngs(key)), nnx.Param).to_pure_dict()


def init_params(cfg: GLaMConfig, key: jax.Array, mesh: Mesh | None = None) -> dict:
    """Initialise parameters, born sharded over ``mesh`` when one is given."""
    if mesh is None:
        return jax.jit(functools.partial(_init, cfg))(key)
    return jax.jit(functools.partial(_init, cfg), out_shardings=param_shardings(cfg, mesh))(key)


def bind(cfg: GLaMConfig, params: dict) -> GLaM:
    """A GLaM module whose parameters are ``params`` (a pure dict, possibly of tracers)."""
    graphdef, state = skeleton(cfg)
    state = jax.tree.map(lambda x: x, state)  # a fresh copy: the cached skeleton is never mutated
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


@functools.lru_cache(maxsize=32)
def pair_skeleton(cfg: GLaMConfig):
    """(graphdef, abstract nnx.State) of one pair-block (no leading pair axis), computed once per config."""
    abstract = nnx.eval_shape(lambda: PairBlock(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def bind_pairs(cfg: GLaMConfig, pairs) -> tuple[PairBlock, ...]:
    """One PairBlock per element of ``pairs``: pure dicts of one pair's parameters (``split_pairs``)."""
    graphdef, state = pair_skeleton(cfg)
    blocks = []
    for pair in pairs:
        fresh = jax.tree.map(lambda x: x, state)
        nnx.replace_by_pure_dict(fresh, pair)
        blocks.append(nnx.merge(graphdef, fresh))
    return tuple(blocks)
