"""Load a trained model from a run directory for inference and evaluation: config, parameters, tokenizer."""

from __future__ import annotations

import os
import shutil

import jax
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from glam.checkpoint.manager import TOKENIZER_FILE, Checkpointer, read_config
from glam.config import GLaMConfig
from glam.data.tokenizer import Tokenizer
from glam.errors import GLaMError
from glam.model.init import abstract_params, param_shardings
from glam.sharding.rules import active_mesh


def save_tokenizer(cfg: GLaMConfig, run_dir: str) -> None:
    """Copy ``data.tokenizer`` into the run directory, so the run directory alone can be served."""
    target = os.path.join(run_dir, TOKENIZER_FILE)
    if cfg.data.tokenizer and not os.path.isfile(target) and jax.process_index() == 0:
        shutil.copyfile(cfg.data.tokenizer, target + ".tmp")
        os.replace(target + ".tmp", target)


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
    run_dir: str, step: int | None = None, mesh: Mesh | None = None
) -> tuple[GLaMConfig, dict, Tokenizer]:
    """(config, parameters, tokenizer) of the checkpoint at ``step`` (default: the latest) in ``run_dir``.

    Parameters are restored onto ``mesh`` if given, else the mesh active through
    ``glam.sharding.rules.activate``, else the default device; the optimizer state is not read.
    """
    cfg = read_config(run_dir)
    tokenizer = Tokenizer(os.path.join(run_dir, TOKENIZER_FILE))
    if tokenizer.vocab_size > cfg.model.vocab_size:  # its ids would index past the embedding table
        raise GLaMError(
            f"{tokenizer.path} has {tokenizer.vocab_size} pieces but the checkpoint's model.vocab_size is "
            f"{cfg.model.vocab_size}; put back the tokenizer the run was trained with"
        )
    checkpointer = Checkpointer(run_dir)
    try:
        _, params = checkpointer.restore_params(_target(cfg, mesh or active_mesh()), step)
    finally:
        checkpointer.close()
    return cfg, params, tokenizer
