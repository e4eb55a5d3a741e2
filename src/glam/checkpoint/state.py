"""What a checkpoint holds: the train state, a small pytree ``TrainState(step, params, opt_state, rng,
skipped_steps)``.

It lives here, below both packages, so that glam.checkpoint (which saves and restores it) never
imports glam.train (which builds it, steps it and imports glam.checkpoint): the fields are described
in :mod:`glam.train.state`, with the functions that create it born sharded.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax


class TrainState(NamedTuple):
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array
    skipped_steps: jax.Array
