"""The time left that a training loop's epoch line gives."""

from __future__ import annotations

import pytest

from slic import progress
from slic.progress import EpochClock, eta


def test_the_time_left_is_the_mean_pace_of_the_epochs_run_here_times_those_left() -> None:
    assert eta(30.0, 3, 597) == "1:39:30"  # 10 s an epoch, 597 left
    assert eta(7.5, 5, 4) == "0:00:06"
    assert eta(12.0, 4, 0) == "0:00:00"  # the last epoch
    assert eta(0.0, 0, 10) == "0:00:00"  # resumed at the end: nothing run, nothing to estimate from


def test_what_the_first_epoch_pays_once_is_not_charged_to_every_epoch_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled run's first epoch takes 60 s, the others 5: after two epochs the 598 left take 50 minutes, not
    5 h 4 min as the mean pace would say."""
    assert eta(65.0, 2, 598, first=60.0) == "0:49:50"
    assert eta(65.0, 2, 598) == "5:23:55"
    assert eta(60.0, 1, 599, first=60.0) == "9:59:00"  # one epoch run: it is all there is to go on
    now = iter([100.0, 160.0, 165.0, 170.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(now))
    clock = EpochClock()
    assert [clock.epoch_done(left) for left in (599, 598, 597)] == ["9:59:00", "0:49:50", "0:49:45"]
