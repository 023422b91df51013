"""The model registry: the encoder logged as a pyfunc model, its versions, and the alias that names the champion.

The registry lives in the tracking store (`slic.mlflow_store`); `slic.promote` decides, this module records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slic.mlflow_store import TrackingError, client as _client, tracking_uri


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its number, tags and the run that logged it."""

    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None


def log_encoder(checkpoint: str | Path, *, embedding_dim: int, example_video: str | Path | None,
                name: str = "encoder") -> str:
    """Log a checkpoint as a pyfunc model (state_dict + config, loaded by slic.serving) in the open run.

    Returns the model URI. Input: a DataFrame with a `path` column of video files; output: one
    embedding row per video. `example_video`, a real video file, is the input example: MLflow serves
    the logged model on it once, so a model that cannot embed a video is caught at logging time.
    """
    from importlib.metadata import version

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    # Declared, not inferred: a string column of paths in, a float32 (videos, embedding_dim) array out.
    signature = ModelSignature(inputs=Schema([ColSpec("string", "path")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embedding_dim))]))
    example = pd.DataFrame({"path": [str(example_video)]}) if example_video is not None else None
    requirements = [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "av", "numpy", "pandas")]
    info = mlflow.pyfunc.log_model(name=name, loader_module="slic.serving", data_path=str(checkpoint),
                                   signature=signature, input_example=example, pip_requirements=requirements)
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


MODEL_DESCRIPTION = (
    "SLIC video encoder, registered by `slic promote`. Input: a DataFrame with a `path` column of video files; "
    "output: one embedding row per video, alike videos near in cosine similarity. `@champion` is the version "
    "promote judged best, and each version's description says why it was or was not promoted.\n\n"
    "- load: `mlflow.pyfunc.load_model('models:/{name}@champion').predict(pd.DataFrame({{'path': [...]}}))`\n"
    "- search the index with it: `slic search clip.mp4 --model models:/{name}@champion`\n"
    "- serve it: `mlflow models serve -m models:/{name}@champion --env-manager local`")


def register_version(model_uri: str, name: str, tags: Mapping[str, Any], description: str = "") -> ModelVersion:
    """Register `model_uri` as a new version of `name` (created if needed) with `tags`, and `description`: what the
    registry UI shows first on the version's page. A new model gets MODEL_DESCRIPTION (how to use it)."""
    import mlflow

    client = _client()
    found = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    if description:
        client.update_model_version(name, found.version, description=description)
    if not client.get_registered_model(name).description:  # set once; a description written in the UI stays
        client.update_registered_model(name, description=MODEL_DESCRIPTION.format(name=name))
    return ModelVersion(name, str(found.version), {k: str(v) for k, v in tags.items()}, found.run_id)


def version_tagged(name: str, key: str, value: str) -> ModelVersion | None:
    """The newest version of registered model `name` whose tag `key` is `value`, or None (no model, or none so
    tagged). Filtered here rather than in the store's query, so every tracking store answers alike."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client().search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise TrackingError(f"MLflow at {tracking_uri()}: {exc}".splitlines()[0]) from exc
    tagged = [v for v in found if dict(v.tags).get(key) == value]
    newest = max(tagged, key=lambda v: int(v.version), default=None)
    return None if newest is None else ModelVersion(name, str(newest.version), dict(newest.tags), newest.run_id)


def retag_version(name: str, version: str, tags: Mapping[str, Any], drop: Iterable[str] = (),
                  description: str = "") -> None:
    """Set `tags` (and `description`, when given) on an existing version of `name` and delete the tags named in
    `drop` (a judgement replaced)."""
    client = _client()
    if description:
        client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    for key in drop:
        client.delete_model_version_tag(name, version, key)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` of registered model `name` at `version`."""
    _client().set_registered_model_alias(name, alias, version)


def load_model(model_uri: str) -> Any:
    """Load a pyfunc model, e.g. models:/slic-encoder@champion."""
    import mlflow

    _client()
    return mlflow.pyfunc.load_model(model_uri)
