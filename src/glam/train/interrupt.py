"""Ctrl-C and SIGTERM during training: save a checkpoint at the next step boundary, then stop.

Preemptible machines send SIGTERM shortly before they go; a user presses Ctrl-C. Either way the
steps since the last checkpoint should not be lost. While ``with StopSignals() as stop:`` is active,
the first SIGINT or SIGTERM only sets ``stop.signum`` (and says so on stderr); the training loop
checks ``stop.requested`` at each step boundary, saves a checkpoint and returns, and the command
exits with status 128 + signal number (130 for Ctrl-C). A second signal exits at once, without
saving (the run then resumes from its last checkpoint, like after a crash).

In a multi-process job the processes must stop after the same step, because saving a checkpoint is
a collective: ``requested`` then combines every process's flag (one small all-gather), and only at
the steps ``sync`` marks (log steps, which every process reaches together).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
import numpy as np

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Catch the first SIGINT/SIGTERM for the ``with`` block (only in the main thread, where Python
    delivers signals); outside it, the usual handlers apply."""

    def __init__(self, log=lambda message: print(message, file=sys.stderr, flush=True)):
        self.signum: int | None = None
        self.log = log
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self.log(f"{signal.Signals(signum).name} again: stopping now, without saving")
            os._exit(128 + signum)
        self.signum = signum
        self.log(
            f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
            "(send it again to stop at once, without saving)"
        )

    def requested(self, sync: bool) -> bool:
        """Whether to stop after this step. ``sync``: all processes are at this step together."""
        if jax.process_count() == 1:
            return self.signum is not None
        if not sync:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
        if np.any(flags) and self.signum is None:  # another process got it
            self.signum = signal.SIGTERM
        return bool(np.any(flags))


def exit_status(summary: dict) -> int:
    """The status of a ``glam train``: 0, or 128 + the signal's number when one stopped the run."""
    name = summary.get("interrupted")
    return 128 + signal.Signals[name].value if name else 0
