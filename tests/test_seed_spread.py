"""Recall over seeds from the evaluate runs of a real MLflow store (slic.seed_spread), and its line in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slic.seed_spread import seed_spread, spread_line
from slic.summary import summary_lines


def _evaluate_run(client: object, experiment: str, seed: int, recall: float, *, epochs: int = 24,
                  fingerprint: str = "data-a", status: str = "FINISHED") -> str:
    """An evaluate run as the stage logs it: the encoder's settings as params, its data as a tag, recall_at_1."""
    run = client.create_run(experiment, run_name=f"evaluate seed {seed}", tags={  # type: ignore[attr-defined]
        "slic.stage": "evaluate", "slic.encoder_data_fingerprint": fingerprint})
    for key, value in {"encoder.seed": seed, "encoder.epochs": epochs, "encoder.mode": "slic",
                       "gallery_split": "train"}.items():
        client.log_param(run.info.run_id, key, str(value))  # type: ignore[attr-defined]
    client.log_metric(run.info.run_id, "recall_at_1", recall)  # type: ignore[attr-defined]
    client.set_terminated(run.info.run_id, status=status)  # type: ignore[attr-defined]
    return run.info.run_id


def test_the_spread_takes_the_latest_run_of_each_seed_of_the_same_settings_and_data(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("slic", artifact_location=(tmp_path / "art").as_uri())
    _evaluate_run(client, experiment, 8, 0.50)  # seed 8 evaluated twice: the later run counts
    _evaluate_run(client, experiment, 8, 0.62)
    _evaluate_run(client, experiment, 9, 0.90, epochs=48)  # other settings: another configuration
    _evaluate_run(client, experiment, 9, 0.91, fingerprint="data-b")  # other data
    _evaluate_run(client, experiment, 9, 0.95, status="FAILED")  # not finished
    current = _evaluate_run(client, experiment, 7, 0.66)
    spread = seed_spread(uri, current)
    assert spread is not None
    assert spread["seeds"] == ["7", "8"] and spread["recall@1"] == pytest.approx({"7": 66.0, "8": 62.0})
    assert spread["mean"] == pytest.approx(64.0) and spread["std"] == pytest.approx(2 ** 0.5 * 2)
    assert spread_line(spread).startswith("recall@1 over seeds 7, 8: 64.0 ± 2.8 (66.0 / 62.0; MLflow's evaluate")
    lonely = _evaluate_run(client, experiment, 7, 0.5, epochs=96)  # no other seed of its settings
    assert seed_spread(uri, lonely) is None
    assert seed_spread(f"sqlite:///{tmp_path / 'none.db'}", current) is None and not (tmp_path / "none.db").exists()
    assert seed_spread(uri, "0" * 32) is None  # a run the store does not hold (another checkout's report)

    reports = tmp_path / "reports"  # the summary prints it under the retrieval line
    reports.mkdir()
    retrieval = json.loads((Path(__file__).resolve().parents[1] / "reports" / "retrieval.json").read_text())
    (reports / "retrieval.json").write_text(json.dumps(retrieval | {"mlflow_run_id": current}))
    lines = summary_lines(reports, uri)
    assert [what for what, _ in lines[:2]] == ["retrieval", "retrieval"]
    assert lines[1][1].startswith("recall@1 over seeds 7, 8: 64.0 ± 2.8")
    assert [what for what, _ in summary_lines(reports, "")] == ["retrieval"]



def test_a_server_that_does_not_answer_is_asked_once_not_retried_for_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`slic summary` with MLFLOW_TRACKING_URI naming a stopped server: before, MLflow's client retried for 4 minutes
    (the summary test's checkout took that long); now one health request decides, and no client is made."""
    import socket

    import mlflow

    made: list[object] = []  # the clients made (the spread's broad except would swallow a raise here)
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *args, **kwargs: made.append(args) or None)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert seed_spread(f"http://127.0.0.1:{port}", "0" * 32) is None
    assert made == []
