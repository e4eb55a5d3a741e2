"""Checkpoints of a run directory through Orbax's ``CheckpointManager``: the checkpoint store.

The run directory's layout, its config file and the checks around it are in
``glam.checkpoint.run_dir`` (re-exported here); Orbax's log filters in ``glam.checkpoint.orbax_logs``.

Each checkpoint holds the parameters, the optimizer state, the step, the RNG, the skipped-step count
and the resolved config (``meta``) and the data pipeline state (``data``), so re-running ``glam
train`` on the same run directory continues exactly where it stopped. Orbax writes a step into a
temporary folder and renames it when complete (with a commit marker where the file system cannot
rename atomically); the manager lists finalised steps only, so a half-written checkpoint is never
restored.

What can go wrong, and what the user sees (one line each):

- arrays of another shape than the config makes: the checkpoint is intact and the config differs
  (named from the checkpoint's own config); it is never called damaged;
- a finalised checkpoint whose files were truncated or deleted: :class:`DamagedCheckpoint`; the
  training run moves it to ``RUN/damaged-checkpoints/`` and resumes from the previous one,
  inference loads the previous one (``newest_readable``);
- a failed save (a full disk): the run stops at the next step boundary (``check``) or where it waits
  for the save, naming the folder, the space needed and the checkpoints that are intact;
- parameters that are not finite are never written.

Arrays are restored against target shardings (``abstract_state(cfg, mesh)``), so a checkpoint
saved on one mesh restores onto another. In a multi-process job every process calls ``save`` and
``restore``; Orbax writes each array shard once from the process that owns it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from glam.checkpoint.orbax_logs import OrbaxFailures, first_line, quiet_orbax_failures
from glam.checkpoint.run_dir import (  # noqa: F401  (re-exported: glam.checkpoint.manager was their home)
    CONFIG_FILE,
    DAMAGED_DIR,
    RESUMABLE_FIELDS,
    RUN_CONFIG,
    WRITE_ERRNOS,
    check_checkpoint_config,
    check_run_dir,
    checkpoint_dir,
    config_differences,
    prepare_run_dir,
    read_config,
    run_started,
    size_text,
    write_failure,
)
from glam.checkpoint.state import TrainState
from glam.config import GLaMConfig
from glam.data.pipeline import TOKENIZER_FILE  # noqa: F401  (part of the run directory's layout)
from glam.errors import GLaMError

ITEMS = ("params", "opt_state", "meta", "data")  # two of arrays, two of JSON
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class DamagedCheckpoint(GLaMError):
    """A finalised checkpoint whose files cannot be read (truncated or deleted after it was written)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Checkpointer:
    """Save and restore the train state and the data pipeline state of one run directory."""

    def __init__(self, run_dir: str, keep: int = 3, *, writer: bool = False):
        # The training run (``writer``) removes the temporary folders a killed process left behind;
        # readers (inference, evaluation) must not: they may be those of a run writing right now.
        self.run_dir = os.path.abspath(run_dir)
        self.writer = writer
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=writer, cleanup_tmp_directories=writer)
        # Handlers named up front, so a reader can see a checkpoint's array metadata before restoring.
        arrays, jsons = ITEMS[:2], ITEMS[2:]
        handlers = {name: ocp.StandardCheckpointHandler() for name in arrays}
        handlers |= {name: ocp.JsonCheckpointHandler() for name in jsons}
        self.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_handlers=handlers)
        self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight
        self._failed: int | None = None  # the step of a failed save, whose partial folder goes at close
        quiet_orbax_failures()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def folder(self, step: int) -> str:
        return os.path.join(checkpoint_dir(self.run_dir), str(step))

    # Saving -------------------------------------------------------------------------------------

    def save(self, state: TrainState, data_state: dict, cfg: GLaMConfig) -> None:
        """Write the state at ``state.step`` (asynchronously: ``check`` and ``wait`` report a failure).

        Parameters that are not finite are never written: the last checkpoint stays the last good one.
        """
        step = int(state.step)
        if not all_finite(state.params):
            raise GLaMError(
                f"the parameters at step {step} are not finite (NaN or Inf), so checkpoint {step} is not "
                f"written; {self._intact()}. Lower optim.lr_scale, keep train.skip_nonfinite=true, or set "
                "train.rollback=true"
            )
        meta = {
            "step": step,
            "skipped_steps": int(state.skipped_steps),
            "rng": np.asarray(jax.device_get(state.rng)).tolist(),
            "config": cfg.to_dict(),
        }
        self.wait()  # the previous save first (Orbax would wait for it too), so a failure names its step
        self._pending = (step, nbytes(state.params) + nbytes(state.opt_state))
        with self._writing():
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(state.params),
                    opt_state=ocp.args.StandardSave(state.opt_state),
                    meta=ocp.args.JsonSave(meta),
                    data=ocp.args.JsonSave(data_state),
                ),
            )

    def check(self) -> None:
        """Raise if the save in flight has failed; return at once while it is still writing."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Block until the save in flight is on disk; a failed save raises one GLaMError line."""
        with self._writing():
            self.manager.wait_until_finished()
            # Orbax may log a failed finalisation instead of raising it: look (process 0 renames the folder).
            if self._pending and jax.process_index() == 0 and self._pending[0] not in self._steps_on_disk():
                raise RuntimeError(OrbaxFailures.last or "Orbax did not finalise it")
        self._pending = None

    def _steps_on_disk(self) -> list[int]:
        self.manager.reload()
        return self.all_steps()

    @contextlib.contextmanager
    def _writing(self):
        """Turn a failed write (raised at ``save`` or where it is waited for) into one line."""
        try:
            yield
        except Exception as exc:  # Orbax re-raises the background thread's OSError, ValueError, ...
            if self._pending is None:
                raise
            step, size = self._pending
            self._pending = None
            self._failed = step
            self._remove_partial(step)
            where, intact = checkpoint_dir(self.run_dir), self._intact()
            if _disk_full(exc):
                free = shutil.disk_usage(where).free
                raise GLaMError(
                    f"no space left on device writing checkpoint {step} to {where} (it needs about "
                    f"{size_text(size)}; {size_text(free)} free there); {intact}; free some space and re-run the "
                    "same command to resume"
                ) from None
            raise GLaMError(
                f"could not write checkpoint {step} to {where} ({first_line(exc)}); {intact}; fix that "
                "and re-run the same command to resume"
            ) from None

    def _intact(self) -> str:
        steps = self._steps_on_disk()
        if not steps:
            return "no earlier checkpoint was written"
        return f"the earlier checkpoints ({', '.join(map(str, steps))}) are intact"

    def _remove_partial(self, step: int) -> None:
        """Drop the failed save's temporary folder at once (on a full disk its space is needed)."""
        if jax.process_index() != 0:
            return
        folder = checkpoint_dir(self.run_dir)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.startswith(f"{step}{TMP_SUFFIX}"):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)

    # Restoring ----------------------------------------------------------------------------------

    def stored_config(self, step: int) -> dict | None:
        """The resolved config saved in checkpoint ``step`` (None if it predates that field)."""
        meta = self._restore(step, {}, ("meta",)).meta
        return meta.get("config")

    def restore_json(self, step: int, item: str) -> dict:
        """One JSON item of checkpoint ``step``: ``"data"`` (the data pipeline state) or ``"meta"``."""
        self.wait()
        return getattr(self._restore(step, {}, (item,)), item)

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """(state, data pipeline state) at ``step`` (default: the latest), placed as ``target`` says."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise GLaMError("no finished checkpoint to restore; train first (or use a run directory that has one)")
        out = self._restore(step, {"params": target.params, "opt_state": target.opt_state}, ("meta", "data"))
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
        return step, self._restore(step, {"params": target}).params

    def _restore(self, step: int, arrays: dict, json_items: tuple[str, ...] = ()):
        """``manager.restore`` of the named items. Arrays of another shape than stored are a config
        mismatch (the checkpoint is intact: GLaMError); any other failure means its files are damaged
        (:class:`DamagedCheckpoint`), reported as one line instead of a TensorStore traceback."""
        try:
            if "params" in arrays:
                self._check_shapes(step, arrays["params"])
            args = {k: ocp.args.StandardRestore(v) for k, v in arrays.items()}
            args |= {k: ocp.args.JsonRestore() for k in json_items}
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except GLaMError:
            raise
        except Exception as exc:  # Orbax/TensorStore raise ValueError, KeyError, FileNotFoundError, Exception
            raise DamagedCheckpoint(f"checkpoint {self.folder(step)} is unreadable ({first_line(exc)})", step) from None

    def _check_shapes(self, step: int, target: dict) -> None:
        stored = self.manager.item_metadata(step)["params"]
        stored = getattr(stored, "tree", stored)  # the nested dict of ArrayMetadata
        have = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
        want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(target)[0]}
        keys = sorted(set(have) | set(want))
        diffs = [f"params{k}: {have.get(k)} stored, {want.get(k)} now" for k in keys if have.get(k) != want.get(k)]
        if diffs:
            raise GLaMError(
                f"checkpoint {self.folder(step)} is intact but was trained with another model config "
                f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}); load it with the config "
                "saved in it (the run directory's config.yaml)"
            )

    def newest_readable(self, read, steps: list[int], log=print) -> tuple[int, object] | tuple[None, None]:
        """``(step, read(step))`` for the newest of ``steps`` that reads; each unreadable newer one is
        skipped with a one-line message, and the training run (``writer``) moves it out of the step
        listing (``RUN/damaged-checkpoints/``), keeping its files. ``(None, None)`` when none reads."""
        steps = sorted(steps, reverse=True)
        for i, step in enumerate(steps):
            try:
                return step, read(step)
            except DamagedCheckpoint as exc:
                earlier = i + 1 < len(steps)
                if self.writer:
                    then = "going back to the previous checkpoint" if earlier else "starting from step 0 (no other)"
                    log(f"{exc}; moved it to {self.set_aside(step)} and {then}")
                else:
                    log(f"{exc}; {'using the previous checkpoint' if earlier else 'there is no other'}")
        return None, None

    def set_aside(self, step: int) -> str:
        """Move checkpoint ``step`` to ``RUN/damaged-checkpoints/<step>`` (out of Orbax's listing)."""
        target = os.path.join(self.run_dir, DAMAGED_DIR, str(step))
        if jax.process_index() == 0:
            if os.path.exists(target):
                target += time.strftime("-%Y%m%d-%H%M%S")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(self.folder(step), target)
        self.manager.reload()
        return target

    def close(self) -> None:
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            finally:
                if self._failed is not None:  # writes in flight when the save failed may have recreated it
                    self._remove_partial(self._failed)


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree) -> bool:
    """Whether every float array of ``tree`` is free of NaN and Inf (one reduction on device)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return not leaves or bool(_all_finite(leaves))


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
