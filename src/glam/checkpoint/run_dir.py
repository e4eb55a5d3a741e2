"""The run directory around the checkpoints: its config file, whether it holds a run yet, and the one
line for a write into it that fails.

Layout (``glam.checkpoint.manager`` for the checkpoints themselves)::

    RUN/config.yaml             the resolved config, rewritten at every start (each checkpoint holds its own)
    RUN/tokenizer.model         the SentencePiece model the run trains with (tokenizer.json: made from what)
    RUN/train.lock              held by the one `glam train` working in RUN (glam.checkpoint.lock)
    RUN/checkpoints/<step>/     params/ and opt_state/ (Orbax arrays), meta/ and data/ (JSON)
    RUN/damaged-checkpoints/    checkpoints found unreadable, moved out of the step listing

A run directory without a finalised checkpoint (and none set aside as damaged) is not a run yet:
``run_started`` is false, and the next start replaces its config and tokenizer instead of refusing.
"""

from __future__ import annotations

import errno
import os
import shutil

import jax
import yaml

from glam.config import GLaMConfig, from_dict, read_config_mapping
from glam.errors import GLaMError

CONFIG_FILE = "config.yaml"
RUN_CONFIG = "the run directory's config file"  # names RUN/config.yaml in errors
DAMAGED_DIR = "damaged-checkpoints"  # unreadable checkpoints, moved out of checkpoints/ with their files

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


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


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


def config_differences(
    saved: dict, current: GLaMConfig, where: str = "in the run directory", now: str = "now"
) -> list[str]:
    """The fields (other than ``RESUMABLE_FIELDS``) on which ``saved`` and ``current`` differ."""
    a, b = _normalise(saved), _normalise(current.to_dict())
    keys = sorted(set(a) | set(b))

    def resumable(key: str) -> bool:
        return key == "name" or any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_FIELDS)

    return [f"{k}: {a.get(k)!r} {where}, {b.get(k)!r} {now}" for k in keys if a.get(k) != b.get(k) and not resumable(k)]


def read_config(run_dir: str) -> GLaMConfig:
    """The config saved in ``run_dir`` (the one its checkpoints were trained with)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise GLaMError(f"{path} does not exist; is {run_dir!r} a glam run directory (made by `glam train`)?")
    return from_dict(GLaMConfig, read_config_mapping(path, RUN_CONFIG))


def run_started(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run: a finalised checkpoint, or one set aside as damaged. A directory
    with neither (a start that failed before its first checkpoint) is not a run yet: its config.yaml
    and tokenizer bind nothing, and the next start replaces them."""
    folder = checkpoint_dir(run_dir)
    if os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder)):
        return True
    damaged = os.path.join(run_dir, DAMAGED_DIR)
    return os.path.isdir(damaged) and bool(os.listdir(damaged))


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def write_failure(exc: OSError, run_dir: str) -> str | None:
    """One line for a write into ``run_dir`` that failed for a reason the user must fix (a full disk,
    a read-only file system, a permission), naming the file, the checkpoints that are intact and the
    fix; None for any other error (a bug, which keeps its traceback)."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = exc.filename or run_dir
    folder = checkpoint_dir(run_dir)
    try:
        steps = sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []
        intact = (
            f"the checkpoints ({', '.join(map(str, steps))}) are intact" if steps else "no checkpoint was written yet"
        )
    except OSError:  # the checkpoint folder cannot be listed either
        intact = f"the checkpoints in {folder} were not touched"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f" ({size_text(shutil.disk_usage(os.path.dirname(os.path.abspath(where))).free)} free there)"
        except OSError:
            free = ""
        fix = "free some space and re-run the same command to resume"
        return f"no space left on device writing {where}{free}; {intact}; {fix}"
    fix = "re-run the same command to resume"
    if exc.errno == errno.EROFS:
        where_fix = f"make {run_dir} writable again (check its mount, owner and mode)"
        return f"cannot write {where}: the file system is read-only; {intact}; {where_fix} and {fix}"
    # a permission may be missing on a file read as well as written: say only what the system said
    return f"{where}: permission denied; {intact}; give this user access to it (check its owner and mode) and {fix}"


def check_run_dir(cfg: GLaMConfig, run_dir: str) -> None:
    """Refuse a run directory whose saved config differs from ``cfg`` in a non-resumable field."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isfile(path):
        diffs = config_differences(read_config_mapping(path, RUN_CONFIG), cfg)
        if diffs:
            raise GLaMError(
                f"run directory {run_dir!r} belongs to a different config ({'; '.join(diffs)}); "
                "train into a new --run-dir, or undo those overrides to resume this run"
            )


def check_checkpoint_config(cfg: GLaMConfig, checkpointer, step: int) -> None:
    """Refuse to resume checkpoint ``step`` with a config other than the one saved in it: the
    checkpoint knows the truth, also when ``config.yaml`` is missing or was edited."""
    stored = checkpointer.stored_config(step)
    diffs = config_differences(stored, cfg, f"in checkpoint {step}") if stored is not None else []
    if diffs:
        raise GLaMError(
            f"run directory {checkpointer.run_dir!r} belongs to a different config ({'; '.join(diffs)}); "
            "train into a new --run-dir, or undo those overrides to resume this run"
        )


def prepare_run_dir(cfg: GLaMConfig, run_dir: str) -> None:
    """Create ``run_dir`` and (re)write ``config.yaml`` with ``cfg``: at every start, so a resumed run's
    file shows the resumable fields it now runs with (``train.steps``, ...). It checks nothing: the
    caller runs :func:`check_run_dir` first, before anything is written (glam.train.loop.start_run)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CONFIG_FILE)
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
        os.replace(tmp, path)
