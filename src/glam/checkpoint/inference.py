"""Load a trained model from a run directory for inference and evaluation: config, parameters, tokenizer."""

from __future__ import annotations

import os
import sys

import jax
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from glam.checkpoint.manager import (
    CONFIG_FILE,
    Checkpointer,
    DamagedCheckpoint,
    checkpoint_dir,
    config_differences,
    read_config,
)
from glam.config import GLaMConfig, from_dict
from glam.data.run_tokenizer import load_run_tokenizer
from glam.data.tokenizer import Tokenizer
from glam.errors import GLaMError
from glam.model.init import abstract_params, param_shardings
from glam.sharding.rules import active_mesh


def _target(cfg: GLaMConfig, mesh: Mesh | None) -> dict:
    if mesh is None:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), abstract_params(cfg))
    else:
        shardings = param_shardings(cfg, mesh)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_params(cfg),
        shardings,
        is_leaf=lambda x: isinstance(x, NamedSharding | SingleDeviceSharding),
    )


def load_for_inference(
    run_dir: str, step: int | None = None, mesh: Mesh | None = None, *, log=None
) -> tuple[GLaMConfig, dict, Tokenizer]:
    """(config, parameters, tokenizer) of the checkpoint at ``step`` (default: the latest) in ``run_dir``.

    The tokenizer is the run's own: ``glam.data.pipeline.load_run_tokenizer`` refuses a missing one, or
    one that is not the file ``RUN/tokenizer.json`` records (its sha256), in one line saying how to get
    the original back. The config is the one saved in the checkpoint itself (``RUN/config.yaml`` is a copy that may be
    missing or edited; a copy that disagrees is named in a note). Without ``step``, an unreadable
    newest checkpoint is skipped, with a note, for the newest one that reads. Notes go to ``log``
    (default: one line on stderr). Parameters are restored onto ``mesh`` if given, else the mesh
    active through ``glam.sharding.rules.activate``, else the default device; the optimizer state is
    not read.
    """
    log = log or (lambda message: print(f"note: {message}", file=sys.stderr, flush=True))
    if not os.path.isdir(checkpoint_dir(run_dir)):
        raise GLaMError(f"{run_dir!r} has no checkpoints; is it a glam run directory (made by `glam train`)?")
    checkpointer = Checkpointer(run_dir)
    tokenizer = None
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise GLaMError(f"{run_dir!r} has no finished checkpoint; train first")
        if step is not None and step not in steps:
            raise GLaMError(f"no checkpoint at step {step}; the run directory has steps {steps}")

        def read(s: int) -> tuple[GLaMConfig, dict]:
            nonlocal tokenizer
            cfg = _checkpoint_config(checkpointer, s, run_dir, log)
            # the run's own tokenizer (tokenizer.json's checksum), checked before any array is read
            tokenizer = load_run_tokenizer(run_dir, cfg)
            return cfg, checkpointer.restore_params(_target(cfg, mesh or active_mesh()), s)[1]

        if step is None:
            step, loaded = checkpointer.newest_readable(read, steps, log)
            if loaded is None:
                raise GLaMError(f"no checkpoint of {run_dir!r} is readable (steps {steps}); see the notes above")
            cfg, params = loaded
        else:
            try:
                cfg, params = read(step)
            except DamagedCheckpoint as exc:
                others = [s for s in steps if s != step]
                raise GLaMError(f"{exc}; load another step (the run directory also has {others})") from None
    finally:
        checkpointer.close()
    return cfg, params, tokenizer


def _checkpoint_config(checkpointer: Checkpointer, step: int, run_dir: str, log) -> GLaMConfig:
    """The config saved in checkpoint ``step`` (``RUN/config.yaml`` for a checkpoint without one)."""
    stored = checkpointer.stored_config(step)
    if stored is None:
        return read_config(run_dir)
    cfg = from_dict(GLaMConfig, stored)
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isfile(path):
        try:
            diffs = config_differences(read_config(run_dir).to_dict(), cfg, "in config.yaml", "in the checkpoint")
        except GLaMError:  # an unreadable copy: the checkpoint's own config is all that is needed
            diffs = ["it does not parse"]
        if diffs:
            log(f"{path} disagrees with checkpoint {step} ({'; '.join(diffs)}); using the checkpoint's config")
    return cfg
