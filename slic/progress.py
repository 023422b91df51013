"""How long a training loop has left, for its per-epoch log line: a run of hours (the paper's 600 epochs) says
when it will end."""

from __future__ import annotations


def eta(elapsed: float, done: int, left: int) -> str:
    """'h:mm:ss' left for `left` more epochs at the mean pace of the `done` epochs that took `elapsed` seconds
    (clustering rounds and validations included, so the pace is the run's, not one step's)."""
    seconds = round(elapsed / max(done, 1) * max(left, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
