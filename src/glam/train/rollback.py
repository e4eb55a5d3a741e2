"""Loss-spike and non-finite-streak detection for rollback (paper §5).

The paper skips updates whose gradients are not finite (done in the step) and, when NaN/Inf or a
large loss spike still happens, restarts from an earlier healthy checkpoint and skips the data
batches that preceded the problem ("the different batch order after restart helps"). This module
only decides; the loop restores the last checkpoint and keeps the data pipeline where it is, so the
offending window of batches is never trained on.

A spike is a logged window loss above ``train.spike_factor`` × the running mean of the previous
healthy windows (an exponential moving average that starts after ``WARMUP_RECORDS`` records). A
streak is ``train.max_nonfinite_streak`` consecutive steps whose update was skipped (a non-finite loss,
gradient or update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from glam.config import TrainConfig

WARMUP_RECORDS = 3
EMA_DECAY = 0.9


@dataclass
class SpikeGuard:
    """Running state of the detector; ``check`` returns why to roll back, or None."""

    train: TrainConfig
    running_mean: float = math.nan
    records: int = 0
    streak: int = 0

    def check(self, losses: np.ndarray, finite: np.ndarray) -> str | None:
        """Judge one window of per-step ``losses`` and ``finite`` flags (host arrays, one per step)."""
        for ok in finite:
            self.streak = 0 if ok else self.streak + 1
            if self.streak >= self.train.max_nonfinite_streak:
                return f"{self.streak} consecutive steps with a non-finite loss, gradient or update"
        healthy = losses[finite]
        if healthy.size == 0:
            return None
        loss = float(np.mean(healthy))
        if self.records >= WARMUP_RECORDS and loss > self.train.spike_factor * self.running_mean:
            return f"loss spike: {loss:.3f} > {self.train.spike_factor} x running mean {self.running_mean:.3f}"
        self.running_mean = loss if self.records == 0 else EMA_DECAY * self.running_mean + (1 - EMA_DECAY) * loss
        self.records += 1
        return None

    def reset_streak(self) -> None:
        self.streak = 0
