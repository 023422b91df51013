"""Where MLflow runs go: the tracking URI, a fast failure when it is unreachable, the experiment and a client.

Embedded default: a SQLite store `mlflow.db` and an artifact folder `mlartifacts/` in the working
directory (both ignored by git), so a fresh clone tracks with nothing to start. Setting
MLFLOW_TRACKING_URI points every stage at a shared server instead. The registry lives in the same store.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
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


def client() -> Any:
    """An MlflowClient on the tracking URI (which also holds the registry); unreachable: one line."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI: open on its runs


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created (artifacts beside a SQLite store) when missing.

    It is marked a model-training experiment (`EXPERIMENT_KIND`, also on one made before that lacks a kind), so
    MLflow 3's UI opens it on its training runs, not on an empty GenAI traces overview.
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if not any(key in experiment.tags for key in EXPERIMENT_KIND):  # a kind the user chose in the UI stays
            for key, value in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:///"):  # artifacts beside the database, wherever it is opened from
        location = (Path(tracking_uri().removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
