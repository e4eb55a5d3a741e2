"""Checkpoints of a run directory through Orbax's ``CheckpointManager``.

Layout of a run directory::

    RUN/config.yaml             the resolved config (written once; a resumed run must match it)
    RUN/tokenizer.model         the SentencePiece model the run trains with
    RUN/checkpoints/<step>/     params/ and opt_state/ (Orbax arrays), meta/ and data/ (JSON)

Each checkpoint holds the parameters, the optimizer state, the step, the RNG, the skipped-step count
(``meta``) and the data pipeline state (``data``), so re-running ``glam train`` on the same run
directory continues exactly where it stopped. Orbax writes a step into a temporary folder and
renames it when complete (with a commit marker where the file system cannot rename atomically); the
manager lists finalised steps only, so a half-written checkpoint is never restored.

Arrays are restored against target shardings (``abstract_state(cfg, mesh)``), so a checkpoint
saved on one mesh restores onto another. In a multi-process job every process calls ``save`` and
``restore``; Orbax writes each array shard once from the process that owns it.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml

from glam.config import GLaMConfig, from_dict
from glam.errors import GLaMError
from glam.train.state import TrainState

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.model"
ITEMS = ("params", "opt_state", "meta", "data")

# Fields that may change when a run resumes: how long and how often, not what is trained.
RESUMABLE_FIELDS = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.peak_flops",
    "train.rollback",
    "train.spike_factor",
    "train.max_nonfinite_streak",
    "train.max_rollbacks",
    "checkpoint.",
    "mesh.",
    "eval.",
    "model.remat",
    "model.scan_layers",
)


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), "checkpoints")


class Checkpointer:
    """Save and restore the train state and the data pipeline state of one run directory."""

    def __init__(self, run_dir: str, keep: int = 3, *, writer: bool = False):
        # The training run (``writer``) removes the temporary folders a killed process left behind;
        # readers (inference, evaluation) must not: they may be those of a run writing right now.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=writer)
        self.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict, cfg: GLaMConfig) -> None:
        """Write the state at ``state.step`` (asynchronously; ``wait`` blocks until it is on disk)."""
        meta = {
            "step": int(state.step),
            "skipped_steps": int(state.skipped_steps),
            "rng": np.asarray(jax.device_get(state.rng)).tolist(),
            "config": cfg.to_dict(),
        }
        self.manager.save(
            int(state.step),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.JsonSave(meta),
                data=ocp.args.JsonSave(data_state),
            ),
        )

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """(state, data pipeline state) at ``step`` (default: the latest), placed as ``target`` says."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise GLaMError("no finished checkpoint to restore; train first (or use a run directory that has one)")
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params),
            opt_state=ocp.args.StandardRestore(target.opt_state),
            meta=ocp.args.JsonRestore(),
            data=ocp.args.JsonRestore(),
        )
        out = self._restore(step, args)
        meta = out.meta
        scalar = lambda value, like: jax.device_put(np.asarray(value, like.dtype), like.sharding)  # noqa: E731
        state = TrainState(
            step=scalar(meta["step"], target.step),
            params=out.params,
            opt_state=out.opt_state,
            rng=scalar(meta["rng"], target.rng),
            skipped_steps=scalar(meta["skipped_steps"], target.skipped_steps),
        )
        return state, out.data

    def restore_params(self, target: dict, step: int | None = None) -> tuple[int, dict]:
        """(step, parameters) only: what inference needs, without the optimizer state."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise GLaMError("the run directory has no finished checkpoint; train first")
        if step not in self.all_steps():
            raise GLaMError(f"no checkpoint at step {step}; the run directory has steps {self.all_steps()}")
        out = self._restore(step, ocp.args.Composite(params=ocp.args.StandardRestore(target)))
        return step, out.params

    def _restore(self, step: int, args: ocp.args.Composite):
        """``manager.restore``, with a damaged checkpoint (files truncated or deleted after it was
        finalised) reported as one line naming it and the way out, instead of a TensorStore traceback."""
        _quiet_closed_event_loop()
        try:
            return self.manager.restore(step, args=args)
        except Exception as exc:  # Orbax/TensorStore raise ValueError, KeyError, FileNotFoundError, Exception
            folder = os.path.join(self.manager.directory, str(step))
            earlier = [s for s in self.all_steps() if s < step]
            way_out = f"the run resumes from step {max(earlier)}" if earlier else "the run starts over"
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise GLaMError(
                f"checkpoint {folder} is damaged or incomplete ({type(exc).__name__}: {detail}); delete that "
                f"folder ({way_out}), or load another step (glam generate --step)"
            ) from None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _quiet_closed_event_loop() -> None:
    """When a restore fails, TensorStore still completes the reads in flight and each callback finds
    Orbax's event loop closed: dozens of tracebacks of noise around the one error line. Drop those
    (the hook in place handles every other unraisable exception)."""
    previous = sys.unraisablehook
    if getattr(previous, "glam_quiet", False):
        return

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    hook.glam_quiet = True
    sys.unraisablehook = hook


# --------------------------------------------------------------------------------------------
# The run directory's config
# --------------------------------------------------------------------------------------------


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _normalise(values: dict) -> dict:
    """Round-trip through YAML so tuples and lists compare equal."""
    return _flatten(yaml.safe_load(yaml.safe_dump(values, sort_keys=False)))


def config_differences(saved: dict, current: GLaMConfig) -> list[str]:
    """The fields (other than ``RESUMABLE_FIELDS``) on which ``saved`` and ``current`` differ."""
    a, b = _normalise(saved), _normalise(current.to_dict())
    keys = sorted(set(a) | set(b))

    def resumable(key: str) -> bool:
        return key == "name" or any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_FIELDS)

    return [
        f"{k}: {a.get(k)!r} in the run directory, {b.get(k)!r} now"
        for k in keys
        if a.get(k) != b.get(k) and not resumable(k)
    ]


def read_config(run_dir: str) -> GLaMConfig:
    """The config saved in ``run_dir`` (the one its checkpoints were trained with)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise GLaMError(f"{path} does not exist; is {run_dir!r} a glam run directory (made by `glam train`)?")
    with open(path, encoding="utf-8") as f:
        return from_dict(GLaMConfig, yaml.safe_load(f) or {})


def check_run_dir(cfg: GLaMConfig, run_dir: str) -> None:
    """Refuse a run directory whose saved config differs from ``cfg`` in a non-resumable field."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f) or {}
        diffs = config_differences(saved, cfg)
        if diffs:
            raise GLaMError(
                f"run directory {run_dir!r} belongs to a different config ({'; '.join(diffs)}); "
                "train into a new --run-dir, or undo those overrides to resume this run"
            )


def prepare_run_dir(cfg: GLaMConfig, run_dir: str) -> None:
    """Create ``run_dir`` and write the config, or check that an existing one was trained with ``cfg``."""
    check_run_dir(cfg, run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CONFIG_FILE)
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
        os.replace(tmp, path)
