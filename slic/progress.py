"""How long a training loop has left, for its per-epoch log line: a run of hours (the paper's 600 epochs) says
when it will end."""

from __future__ import annotations

import time


def eta(elapsed: float, done: int, left: int, first: float | None = None) -> str:
    """'h:mm:ss' left for `left` more epochs at the mean pace of the `done` epochs that took `elapsed` seconds
    (clustering rounds and validations included, so the pace is the run's, not one step's). `first`, the seconds
    of the first of them, is left out of the pace once a second epoch has run: it holds what a process pays once
    (the loader's workers starting, cuDNN's autotuning, torch.compile), which would otherwise be charged to every
    epoch left."""
    if first is not None and done >= 2:
        pace = (elapsed - first) / (done - 1)
    else:
        pace = elapsed / max(done, 1)
    seconds = round(max(pace, 0.0) * max(left, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochClock:
    """The time left after each epoch of one process's training loop (`eta`, its first epoch kept apart)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.done = 0
        self.first: float | None = None

    def epoch_done(self, left: int) -> str:
        """Count an epoch as done now; 'h:mm:ss' for the `left` epochs still to run."""
        elapsed = time.perf_counter() - self.started
        self.done += 1
        if self.first is None:
            self.first = elapsed
        return eta(elapsed, self.done, left, self.first)
