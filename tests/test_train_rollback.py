"""The rollback detector (paper §5): loss spikes against a running mean, and non-finite streaks."""

from __future__ import annotations

import numpy as np

from glam.config import TrainConfig
from glam.train.rollback import SpikeGuard


def window(*losses: float) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(losses, np.float32)
    return values, np.isfinite(values)


def test_a_spike_after_warmup_is_reported_and_not_averaged_in():
    guard = SpikeGuard(TrainConfig(spike_factor=2.0))
    for loss in (6.0, 5.0, 4.0, 4.0):
        assert guard.check(*window(loss, loss)) is None
    mean = guard.running_mean
    reason = guard.check(*window(4.0, 20.0))  # window mean 12.0 > 2 x running mean 5.54
    assert reason is not None and reason.startswith("loss spike")
    assert guard.running_mean == mean
    assert guard.check(*window(4.2)) is None


def test_early_high_losses_are_not_spikes():
    guard = SpikeGuard(TrainConfig(spike_factor=1.5))
    assert guard.check(*window(3.0)) is None
    assert guard.check(*window(9.0)) is None  # still warming up


def test_nonfinite_streak_spans_windows_and_resets_on_a_finite_step():
    guard = SpikeGuard(TrainConfig(max_nonfinite_streak=3))
    assert guard.check(*window(5.0, np.nan)) is None
    assert guard.check(*window(np.nan, 5.0)) is None  # streak 2, then reset
    assert guard.check(*window(np.nan, np.nan)) is None
    reason = guard.check(*window(np.nan))
    assert reason == "3 consecutive steps with a non-finite loss, gradient or update"
