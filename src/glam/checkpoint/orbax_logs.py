"""Orbax's logging when a save or a restore fails, held to one line.

Orbax logs a failed background save or read with its traceback (hundreds of lines) and then raises
the error where ``Checkpointer`` waits, which reports it as one line; asyncio and Python's unraisable
hook then report the writes and reads that were abandoned. ``quiet_orbax_failures`` installs, once
per process, the filters that hold those back (``glam.checkpoint.manager`` calls it).
"""

from __future__ import annotations

import logging
import sys
import warnings


def first_line(exc: BaseException) -> str:
    """``Type: the first line of the message`` (at most 200 characters)."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


class OrbaxFailures(logging.Filter):
    """Orbax logs a failed background save or read with its traceback (hundreds of lines), then
    raises the error where the Checkpointer waits, which reports it as one line. Those records are
    held back; the last one's first line is kept for the message."""

    last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and "orbax" in record.pathname:
            OrbaxFailures.last = first_line(record.exc_info[1])
            return False
        return True


class _OrbaxTaskNoise(logging.Filter):
    """asyncio's "Task (or _GatheringFuture) exception was never retrieved" for Orbax's write tasks:
    after one write of a save failed (and was reported), the others fail too once the temporary
    folder is removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exception was never retrieved" not in message:
            return True
        if "orbax" in message:
            return False
        # a bare Future's repr does not name Orbax ("Future exception was never retrieved"): its traceback does
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


def quiet_orbax_failures() -> None:
    """Install, once per process, the filters that keep a failed save or restore to one line:
    Orbax's logged tracebacks (``OrbaxFailures``), and the reads TensorStore still completes after
    a restore failed, each of which finds Orbax's event loop closed or its coroutine abandoned."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, OrbaxFailures) for f in absl.filters):
        absl.addFilter(OrbaxFailures())
    # ...and the write coroutines a failed save abandoned, which Python reports at exit.
    warnings.filterwarnings("ignore", r"coroutine '[^']*serializ[^']*' was never awaited", RuntimeWarning)
    tasks = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxTaskNoise) for f in tasks.filters):
        tasks.addFilter(_OrbaxTaskNoise())
    previous = sys.unraisablehook
    if getattr(previous, "glam_quiet", False):
        return

    def hook(unraisable) -> None:
        exc, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        if code is not None and "orbax" in code.co_filename:
            return
        previous(unraisable)

    hook.glam_quiet = True
    sys.unraisablehook = hook
