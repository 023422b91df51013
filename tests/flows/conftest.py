"""Fixtures for the flow tests: a Prefect home and server per session, tiny checkouts to run stages in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_pipeline import TINY

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="slic-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Flows in this process report to a temporary Prefect server (Prefect's test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_checkout(path: Path, *, with_flows: bool = False, **params: dict) -> Path:
    """A git + DVC repository with the real dvc.yaml, slic's code deps and TINY params (plus `params`)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", path)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "slic", path / "slic", ignore=ignore)
    shutil.copytree(ROOT / "presets", path / "presets")  # evaluate's paper preset
    shutil.copytree(ROOT / "add_to_index", path / "add_to_index")  # the index stage's folder of added videos
    shutil.copytree(ROOT / "labels", path / "labels")  # the spread_labels stage's folder of given labels
    if with_flows:
        shutil.copytree(ROOT / "flows", path / "flows", ignore=ignore)
        shutil.copy(ROOT / "prefect.yaml", path)
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, overrides in {**TINY, **params}.items():
        values[section].update(overrides)
    (path / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=env)
    return path


def set_params(repo: Path, section: str, **values: object) -> None:
    """Change values of one params.yaml section of a checkout."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def mlflow_client(repo: Path):
    """An MlflowClient on a checkout's SQLite store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
