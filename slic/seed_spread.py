"""Recall over training seeds from the runs MLflow already holds: one run's recall is one draw.

`dvc exp run -S pretrain.seed=N evaluate` (docs/experiments.md) leaves one `evaluate` run per seed in the store, each
recording its encoder's settings as params `encoder.<key>` and the data it trained on as the tag
`slic.encoder_data_fingerprint` (`slic.encoder_lineage`). The evaluate runs that share all of these but the seed, and
were evaluated alike (the evaluate stage's own params), are the same configuration drawn with other seeds: their
recall@1 gives the mean and spread that `slic summary` prints beside the current run's, so a researcher gets the
figure without a bench script.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SEED_PARAM = "encoder.seed"
METRIC = "recall_at_1"


def configuration(run: Any) -> tuple[tuple[str, str], ...] | None:
    """What an evaluate run measured, but for the seed: its params (the encoder's settings and the evaluate stage's)
    and the encoder's data fingerprint; None for a run that names no encoder seed."""
    params: Mapping[str, str] = run.data.params
    if SEED_PARAM not in params:
        return None
    kept = {key: value for key, value in params.items() if key != SEED_PARAM}
    kept["slic.encoder_data_fingerprint"] = run.data.tags.get("slic.encoder_data_fingerprint", "")
    return tuple(sorted(kept.items()))


def spread_over_seeds(runs: list[Any], current_run_id: str) -> dict[str, Any] | None:
    """{seeds, recall@1 per seed, mean, std} over the finished evaluate `runs` of the current run's configuration,
    the latest run of each seed (the current run for its own); None with fewer than two seeds or an unknown run."""
    current = next((run for run in runs if run.info.run_id == current_run_id), None)
    wanted = configuration(current) if current is not None else None
    if wanted is None:
        return None
    latest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda run: (run.info.start_time or 0, run.info.end_time or 0)):
        if run.info.status == "FINISHED" and METRIC in run.data.metrics and configuration(run) == wanted:
            latest[run.data.params[SEED_PARAM]] = run
    latest[current.data.params[SEED_PARAM]] = current
    if len(latest) < 2 or any(METRIC not in run.data.metrics for run in latest.values()):
        return None
    seeds = sorted(latest, key=lambda seed: (len(seed), seed))
    values = [100 * float(latest[seed].data.metrics[METRIC]) for seed in seeds]
    return {"seeds": seeds, "recall@1": dict(zip(seeds, values)), "mean": statistics.mean(values),
            "std": statistics.stdev(values)}


def seed_spread(tracking_uri: str, current_run_id: str) -> dict[str, Any] | None:
    """`spread_over_seeds` of the evaluate runs in the store at `tracking_uri`; None when the store is absent (a
    SQLite file that does not exist is not created; a server that does not answer is asked once, not through
    MLflow's minutes of retries), unreadable, or holds fewer than two seeds of the run."""
    from slic.mlflow_store import TrackingError, check_reachable

    if not current_run_id or not tracking_uri:
        return None
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return None
    try:
        check_reachable(tracking_uri, timeout=2.0)
    except TrackingError:
        return None
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_run(current_run_id).info.experiment_id
        runs = client.search_runs([experiment], "tags.`slic.stage` = 'evaluate'", max_results=1000)
    except Exception:  # noqa: BLE001 - no such run or store (another checkout's report): nothing to add
        return None
    return spread_over_seeds(list(runs), current_run_id)


def spread_line(spread: Mapping[str, Any]) -> str:
    """'recall@1 over seeds 7, 8, 9: 64.4 ± 0.9 (65.3 / 63.9 / 63.9)' for `spread_over_seeds`."""
    per_seed = " / ".join(f"{spread['recall@1'][seed]:.1f}" for seed in spread["seeds"])
    return (f"recall@1 over seeds {', '.join(spread['seeds'])}: {spread['mean']:.1f} ± {spread['std']:.1f} "
            f"({per_seed}; MLflow's evaluate runs of these settings and data, the latest of each seed)")
