"""MLflow, and only here: where runs go, one run per stage, metrics, artifacts.

Embedded default: a SQLite store `mlflow.db` and an artifact folder `mlartifacts/` in the working
directory (both ignored by git), so a fresh clone tracks with nothing to start. Setting
MLFLOW_TRACKING_URI points every stage at a shared server instead.
"""

from __future__ import annotations

import os
import time
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
    if tracking_uri().startswith("sqlite:///"):  # artifacts beside the database, wherever it is opened from
        location = (Path(tracking_uri().removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
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


# --- Registry: the encoder as a pyfunc model, versions, the champion alias -----------------------

@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its number, tags and the run that logged it."""

    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None


def _client() -> Any:
    """An MlflowClient on the tracking URI (which also holds the registry); unreachable: one line."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def log_encoder(checkpoint: str | Path, *, embedding_dim: int, name: str = "encoder") -> str:
    """Log a checkpoint as a pyfunc model (state_dict + config, loaded by slic.serving) in the open run.

    Returns the model URI. Input: a DataFrame with a `path` column of video files; output: one
    embedding row per video.
    """
    from importlib.metadata import version

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    signature = infer_signature(pd.DataFrame({"path": ["video.avi"]}), np.zeros((1, embedding_dim), np.float32))
    requirements = [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "av", "numpy", "pandas")]
    info = mlflow.pyfunc.log_model(name=name, loader_module="slic.serving", data_path=str(checkpoint),
                                   signature=signature, pip_requirements=requirements)
    return info.model_uri


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version of registered model `name` that holds `alias`, or None (no model or no alias)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        found = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise TrackingError(f"MLflow at {tracking_uri()}: {exc}".splitlines()[0]) from exc
    return ModelVersion(name, str(found.version), dict(found.tags), found.run_id)


def register_version(model_uri: str, name: str, tags: Mapping[str, Any]) -> ModelVersion:
    """Register `model_uri` as a new version of `name` (created if needed) with `tags`."""
    import mlflow

    _client()
    found = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return ModelVersion(name, str(found.version), {k: str(v) for k, v in tags.items()}, found.run_id)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` of registered model `name` at `version`."""
    _client().set_registered_model_alias(name, alias, version)


def load_model(model_uri: str) -> Any:
    """Load a pyfunc model, e.g. models:/slic-encoder@champion."""
    import mlflow

    _client()
    return mlflow.pyfunc.load_model(model_uri)


# --- Pipeline runs: one parent per flow run, one nested run per stage ---------------------------

def start_pipeline_run(name: str, tags: Mapping[str, Any], experiment: str = EXPERIMENT) -> str:
    """Create (not activate) a parent run for a pipeline run; stages nest under its id."""
    import mlflow

    client = _client()
    mlflow.set_tracking_uri(tracking_uri())
    run = client.create_run(_experiment_id(experiment), run_name=name,
                            tags={"slic.stage": "pipeline", **{k: str(v) for k, v in tags.items()}})
    return run.info.run_id


def end_pipeline_run(run_id: str, *, failed: bool = False) -> None:
    """Mark a parent run finished or failed."""
    _client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def stage_runs(parent_run_id: str) -> dict[str, str]:
    """{stage: run id} of the runs nested directly under a parent run (latest per stage)."""
    client = _client()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])
    return {run.data.tags.get("slic.stage", run.info.run_name): run.info.run_id for run in runs}


def record_stage(stage: str, report: Mapping[str, Any], parent_run_id: str, *, cached: bool) -> str:
    """A nested run for a stage that logs no run itself (or that DVC skipped): its report's numbers."""
    import mlflow

    client = _client()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run = client.create_run(experiment_id, run_name=stage, tags={
        "slic.stage": stage, "mlflow.parentRunId": parent_run_id, "slic.cached": str(cached).lower()})
    numbers = {k.replace("@", "_at_"): float(v) for k, v in report.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        mlflow.set_tracking_uri(tracking_uri())
        client.log_batch(run.info.run_id, metrics=[
            mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in numbers.items()])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_link(run_id: str) -> str:
    """A browser link to a run: on the tracking server, or on `mlflow ui` (SLIC_MLFLOW_UI_URL) for a local store."""
    uri = tracking_uri()
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("SLIC_MLFLOW_UI_URL",
                                                                               "http://127.0.0.1:5000")
    experiment_id = _client().get_run(run_id).info.experiment_id
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
