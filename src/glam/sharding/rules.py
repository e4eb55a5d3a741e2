"""The one table from logical axis names to mesh axes (reference doc §4).

Every parameter carries a tuple of logical names (``nnx.Param(..., axes=(...))``) and activations
are constrained with logical names at block boundaries and around MoE dispatch/combine. This table
is the only place that says which mesh axis each name lives on: the paper's 2D scheme, with the two
mesh axes ``data`` and ``model``.

Weights:   expert [P, E, M, F] → (None, data, None, model); dense FFN [M, F] → (data, model);
           attention [M, N, K] → (data, model, None); embedding [V, M] → (model, data).
Activations: [B, S, M] → (data, None, model); dispatched expert inputs [E, G, C, M] → (data, ...).

With more data shards than experts (paper: "one expert spans N/E devices") the mesh's data axis is
factored into ``data`` (E shards, one per expert group) × ``data_inner`` (the devices one expert
spans): batch-like dimensions use both, the expert axis uses ``data``, and each expert's hidden F
is split over ``data_inner`` × ``model``. When there are at least as many experts as data shards,
``data_inner`` has size 1 and drops out of every spec.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical name → mesh axis (None = replicated). Each name appears once.
DATA = ("data", "data_inner")  # the full data-parallel extent

LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "layers": None,  # the stacked pair axis P: unsharded, so expert e sits on the same devices in every layer
    "vocab": "model",
    "embed": DATA,  # d_model of dense weights (attention, dense FFN, embedding)
    "heads": "model",
    "head_dim": None,
    "mlp": "model",  # ffn hidden F of dense weights
    "expert_mlp": ("data_inner", "model"),  # ffn hidden F of expert weights
    "expert": "data",
    "expert_embed": None,  # d_model of expert weights (E already takes `data`)
    "router_embed": None,
    "router_expert": None,  # the router W_g [M, E] is replicated (reference doc §2)
    "rel_buckets": None,
    "norm": None,
    # activations
    "act_batch": DATA,
    "act_length": None,
    "act_embed": "model",
    "act_heads": "model",
    "act_mlp": "model",
    "act_vocab": "model",
    "act_group": DATA,  # routing groups G: each data shard routes its own tokens
    "act_expert": "data",  # dispatched [E, G, C, M]: the all-to-all moves tokens to their expert's devices
    "act_group_inner": "data_inner",  # after the all-to-all, groups stay split over an expert's devices
}

_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("glam_mesh", default=None)


def logical_to_spec(axes: Sequence[str | None], mesh: Mesh | None = None) -> PartitionSpec:
    """Logical names → a PartitionSpec over mesh axes (size-1 mesh axes are dropped)."""
    out = []
    for name in axes:
        if name is None:
            out.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in glam.sharding.rules.LOGICAL_RULES")
        axis = LOGICAL_RULES[name]
        names = () if axis is None else (axis,) if isinstance(axis, str) else axis
        if mesh is not None:
            names = tuple(n for n in names if mesh.shape.get(n, 1) > 1)
        else:
            names = tuple(n for n in names if n != "data_inner")
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*out)


def param_spec(axes: Sequence[str | None], ndim: int, mesh: Mesh | None = None) -> PartitionSpec:
    """Spec for a parameter of rank ``ndim`` whose metadata names its trailing ``len(axes)`` dims.

    Stacked (scanned) parameters have a leading pair axis P that the per-layer module does not
    know about; it is the unsharded ``layers`` axis.
    """
    lead = ("layers",) * (ndim - len(axes))
    return logical_to_spec(lead + tuple(axes), mesh)


@contextlib.contextmanager
def activate(mesh: Mesh | None):
    """Within this context, :func:`constrain` pins activations to ``mesh``."""
    token = _ACTIVE_MESH.set(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE_MESH.reset(token)


def active_mesh() -> Mesh | None:
    return _ACTIVE_MESH.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`activate`."""
    mesh = _ACTIVE_MESH.get()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, mesh)))
