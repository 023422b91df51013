"""One end-to-end run on real servers: `prefect server` + `mlflow server` on 127.0.0.1, a process work
pool, `prefect deploy`, a deployment run picked up by a real worker; then outputs, artifacts, MLflow
runs and the registry alias are checked, and the champion embeds a real video from the server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from flows.pipeline import artifact_key, dvc_stages
from tests.conftest import ROOT, SHARED_VIDEOS, stop_group
from tests.flows.conftest import make_checkout

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server and a real MLflow server (SQLite + served artifacts), each in its own group."""
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
           "PREFECT_WORKER_QUERY_SECONDS": "2"}  # a worker picks a run up within 2 s, not 10
    started: list[subprocess.Popen] = []
    try:
        for name, command, health in (
                ("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                 f"http://127.0.0.1:{prefect_port}/api/health"),
                ("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                            "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                            "--artifacts-destination", str(root / "mlartifacts")],
                 f"http://127.0.0.1:{mlflow_port}/health")):
            log = root / f"{name}.log"
            started.append(subprocess.Popen(command, env=env, cwd=root, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                            start_new_session=True))
            wait_healthy(health, started[-1], log)
        yield env
    finally:
        for process in started:
            stop_group(process)


def cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_deployment_with_worker(env: dict[str, str], repo: Path, *params: str) -> tuple[UUID, float, float]:
    """`prefect deployment run`, then a worker until the flow run ends: (id, run time, wall seconds from the request)."""
    requested = time.monotonic()
    out = cli(env, repo, "deployment", "run", "slic-pipeline/local", *params)
    flow_run_id = UUID(next(line.split()[-1] for line in out.splitlines() if "UUID" in line))
    log = repo.parent / f"worker-{flow_run_id}.log"
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "slic-process"], cwd=repo.parent,
                              env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state = wait_for_flow_run(env, flow_run_id, worker, log)
    finally:
        stop_group(worker)
    assert state.type.value == "COMPLETED", f"{state}:\n{log.read_text()[-5000:]}"
    return flow_run_id, state.seconds, time.monotonic() - requested


def wait_for_flow_run(env: dict[str, str], flow_run_id: UUID, worker: subprocess.Popen, log: Path):
    from types import SimpleNamespace

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert worker.poll() is None, log.read_text()[-5000:]
        flow_run = api(env, f"/flow_runs/{flow_run_id}")
        if flow_run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            from prefect.client.schemas.objects import StateType

            return SimpleNamespace(type=StateType(flow_run["state"]["type"]), message=flow_run["state"]["message"],
                                   seconds=flow_run["total_run_time"])
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not end:\n{log.read_text()[-5000:]}")


def api(env: dict[str, str], path: str, body: dict | None = None) -> dict | list:
    """One call of the Prefect REST API (GET, or POST with a JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(env["PREFECT_API_URL"] + path, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_deployment_run_on_a_process_pool_with_real_servers(servers: dict[str, str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_checkout(tmp_path / "checkout", with_flows=True)
    shutil.copy(ROOT / "infra/kubernetes-gpu-job-template.json", tmp_path / "k8s.json")
    env = {**servers, "SLIC_CHECKOUT": str(repo)}
    cli(env, repo, "work-pool", "create", "slic-process", "--type", "process")
    cli(env, repo, "work-pool", "create", "slic-docker-gpu", "--type", "docker")
    cli(env, repo, "work-pool", "create", "slic-k8s-gpu", "--type", "kubernetes", "--base-job-template",
        str(repo.parent / "k8s.json"))
    cli(env, repo, "deploy", "--all")  # every deployment of prefect.yaml, as `make deploy` does
    deployment = api(env, "/deployments/name/slic-pipeline/local")
    assert deployment["work_pool_name"] == "slic-process" and deployment["parameters"]["repo"] == str(repo)
    docker = api(env, "/deployments/name/slic-pipeline/docker-gpu")["job_variables"]
    assert docker["container_create_kwargs"]["device_requests"][0]["capabilities"] == [["gpu"]]
    assert docker["volumes"] == [f"{repo}:/work/slic"]
    assert api(env, "/deployments/name/slic-pipeline/kubernetes-gpu")["job_variables"]["gpu_count"] == 1
    scheduled = api(env, "/deployments/name/slic-pipeline/index-new-videos")  # its cron schedule, deployed paused
    assert scheduled["parameters"]["stages"] == ["index"]
    assert [(s["schedule"]["cron"], s["active"]) for s in scheduled["schedules"]] == [("*/15 * * * *", False)]
    pool = api(env, "/work_pools/slic-k8s-gpu")["base_job_template"]
    assert "gpu_count" in pool["variables"]["properties"]

    flow_run_id, seconds, wall = run_deployment_with_worker(env, repo)
    print(f"\nlocal deployment run, every stage on tiny data: {seconds:.1f} s run time (Prefect), {wall:.1f} s "
          "from `prefect deployment run` to Completed, worker start included")
    for out in ("data/embeddings/embeddings.npz", "reports/retrieval.json", "reports/ablation.json",
                "reports/promotion.json", "data/models/pretrain/best.pt"):
        assert (repo / out).is_file(), out
    promotion = json.loads((repo / "reports/promotion.json").read_text())
    assert promotion["decision"] == "promoted" and promotion["alias_version"] == "1"

    artifacts = {a["key"]: a for a in api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}})}
    stages = dvc_stages(repo)  # every stage ran, an eval set's as their own (transfer@synthetic_unseen)
    assert {"synth", "pretrain", "evaluate", "promote", "ablation", "transfer@synthetic_unseen"} <= set(stages)
    for stage in stages:
        report, mlflow_link = artifacts[artifact_key(stage, "report")], artifacts[artifact_key(stage, "mlflow")]
        assert report["type"] == "markdown" and mlflow_link["type"] == "markdown"
        assert servers["MLFLOW_TRACKING_URI"] in mlflow_link["data"]  # a link to the server's UI
    assert "| extracted | 24 |" in artifacts["extract-report"]["data"]

    from mlflow import MlflowClient

    client = MlflowClient(servers["MLFLOW_TRACKING_URI"], registry_uri=servers["MLFLOW_TRACKING_URI"])
    parents = client.search_runs([client.get_experiment_by_name("slic").experiment_id],
                                 f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    nested = client.search_runs([parents[0].info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["slic.stage"] for r in nested) == sorted(stages)
    pretrain = next(r for r in nested if r.data.tags["slic.stage"] == "pretrain")
    assert {f.path for f in client.list_artifacts(pretrain.info.run_id, "plots")} == {"plots/training_curves.png"}
    champion = client.get_model_version_by_alias("slic-encoder", "champion")
    assert str(champion.version) == "1" and champion.tags["metric"] == "best_val_recall_at_1"

    videos = sorted(SHARED_VIDEOS.rglob("*.avi"))[:1] or sorted((repo / "data/raw/synthetic").rglob("*.avi"))[:1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", servers["MLFLOW_TRACKING_URI"])
    from slic.promote import embed_videos

    embedding = embed_videos(videos)  # models:/slic-encoder@champion, downloaded from the server
    assert embedding.shape == (1, 128) and np.isfinite(embedding).all()

    # GPU routing, exercised on the same pool: pretrain runs as a flow run of another deployment (the other
    # stages would only be read from DVC's cache again).
    second, _, _ = run_deployment_with_worker(env, repo, "--param", "gpu_deployment=slic-pipeline/local",
                                           "--param", 'gpu_stages=["pretrain"]', "--param", 'stages=["pretrain"]')
    children = api(env, "/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"is_null_": False}},
                                              "sort": "START_TIME_DESC"})
    child = next(r for r in children if r["parameters"].get("stages") == ["pretrain"])
    assert child["state"]["type"] == "COMPLETED" and child["deployment_id"] == deployment["id"]
    assert child["parameters"]["mlflow_parent_run_id"] != parent
    assert second != flow_run_id
