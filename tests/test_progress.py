"""The time left that a training loop's epoch line gives."""

from __future__ import annotations

from slic.progress import eta


def test_the_time_left_is_the_mean_pace_of_the_epochs_run_here_times_those_left() -> None:
    assert eta(30.0, 3, 597) == "1:39:30"  # 10 s an epoch, 597 left
    assert eta(7.5, 5, 4) == "0:00:06"
    assert eta(12.0, 4, 0) == "0:00:00"  # the last epoch
    assert eta(0.0, 0, 10) == "0:00:00"  # resumed at the end: nothing run, nothing to estimate from
