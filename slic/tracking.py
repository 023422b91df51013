"""MLflow, and only here: where runs go, one run per stage, metrics, artifacts.

Embedded default: a SQLite store `mlflow.db` and an artifact folder `mlartifacts/` in the working
directory (both ignored by git), so a fresh clone tracks with nothing to start. Setting
MLFLOW_TRACKING_URI points every stage at a shared server instead.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPERIMENT = "slic"


class TrackingError(RuntimeError):
    """MLflow is unreachable or refused a request; the message names the URI."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For an HTTP(S) tracking server, fail fast with one line instead of MLflow's long retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or fix "
                            "MLFLOW_TRACKING_URI") from exc


@dataclass
class StageRun:
    """An open MLflow run for one stage: metrics per step, files as artifacts."""

    run_id: str
    experiment_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _experiment_id(name: str) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = Path("mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any], *, system_metrics: bool = False,
              experiment: str = EXPERIMENT) -> Iterator[StageRun]:
    """Open an MLflow run named after the stage with its params.

    Nested under the run that is open in this process (the ablation's per-mode runs), else under
    SLIC_PARENT_RUN_ID when a flow sets it.
    """
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = _experiment_id(experiment)
        active = mlflow.active_run()
        parent = active.info.run_id if active else os.environ.get("SLIC_PARENT_RUN_ID")
        tags = {"slic.stage": stage, **({"mlflow.parentRunId": parent} if parent else {})}
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags, nested=active is not None,
                               log_system_metrics=system_metrics)
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {uri} refused to start a run: {exc}".splitlines()[0]) from exc
    try:
        mlflow.log_params({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()})
        yield StageRun(run.info.run_id, experiment_id)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()  # a nested run is popped: its parent is the active run again
