"""infra/ and prefect.yaml, checked by parsing (no Docker in CI) and by the Prefect workers' own classes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

INFRA = ROOT / "infra"


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def test_compose_starts_the_shared_services_on_localhost_with_credentials_from_env() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "minio", "minio-bucket", "mlflow", "prefect-server", "prefect-worker"}
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["BIND_ADDRESS"] == "127.0.0.1"
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert len(published) == 5  # postgres, minio api + console, mlflow, prefect
    for port in published:
        assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port
    for name, service in services.items():
        assert service["env_file"] == [".env"], name
    text = (INFRA / "compose.yaml").read_text()
    for value in ("change-me-postgres", "change-me-minio"):
        assert value not in text  # secrets live only in infra/.env
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert used <= set(example), f"variables missing from .env.example: {used - set(example)}"
    mlflow = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql+psycopg2://" in mlflow and "@postgres:5432/${POSTGRES_DB}" in mlflow
    assert "--artifacts-destination s3://${MLFLOW_BUCKET}/" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["mlflow"]["depends_on"]["minio-bucket"] == {"condition": "service_completed_successfully"}
    assert "mc mb --ignore-existing slic/$${MLFLOW_BUCKET}" in services["minio-bucket"]["entrypoint"][-1]
    assert "@postgres:5432/prefect" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "CREATE DATABASE prefect" in (INFRA / "postgres-init.sql").read_text()
    assert services["prefect-worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert compose()["networks"]["slic"]["name"] == "slic"  # the network docker-gpu flow runs join


def test_env_file_is_ignored_and_only_the_example_is_tracked() -> None:
    assert "/infra/.env" in (ROOT / ".gitignore").read_text().splitlines()
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT).returncode
    assert ignored == 0
    assert subprocess.run(["git", "check-ignore", "-q", "infra/.env.example"], cwd=ROOT).returncode == 1


def test_dockerfile_is_cuda_based_and_installs_the_gpu_extra() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+$", text, re.M) and "FROM ${CUDA_IMAGE}" in text
    assert "pip install --no-cache-dir '.[gpu,pools,services]'" in text
    extras = (ROOT / "pyproject.toml").read_text()
    for extra in ("gpu = ", "pools = ", "services = "):
        assert extra in extras


def test_deployments_cover_the_three_pools() -> None:
    found = deployments()
    assert {d["work_pool"]["name"] for d in found.values()} == {"slic-process", "slic-docker-gpu", "slic-k8s-gpu"}
    for deployment in found.values():
        assert deployment["entrypoint"] == "flows/pipeline.py:slic_pipeline"
    hybrid = found["local-with-docker-gpu"]["parameters"]
    assert hybrid["gpu_deployment"] == "slic-pipeline/docker-gpu" and hybrid["gpu_repo"] == "/work/slic"


def test_the_scheduled_index_deployment_runs_only_the_index_stage_and_starts_paused() -> None:
    """index-new-videos: dvc.yaml's `index` alone (a stage that exists), on a cron schedule created paused, so
    deploying never starts runs that nobody asked for."""
    from flows.pipeline import dvc_stages

    deployment = deployments()["index-new-videos"]
    assert deployment["parameters"]["stages"] == ["index"] and "index" in dvc_stages(ROOT)
    [schedule] = deployment["schedules"]
    assert schedule["active"] is False and len(schedule["cron"].split()) == 5
    assert "add_to_index" in yaml.safe_load((ROOT / "params.yaml").read_text())["index"]["add_videos"]


def test_docker_deployment_requests_every_gpu(prefect_api: None) -> None:
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    variables = json.loads(json.dumps(deployments()["docker-gpu"]["work_pool"]["job_variables"])
                           .replace("{{ $SLIC_CHECKOUT }}", "/srv/slic"))  # what `prefect deploy` fills in
    config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
        DockerWorker.get_default_base_job_template(), variables))
    assert config.container_create_kwargs["device_requests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    assert config.volumes == ["/srv/slic:/work/slic"] and config.networks == ["slic"]
    assert config.env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


@pytest.mark.parametrize("gpus", [1, 4])
def test_kubernetes_job_template_requests_nvidia_gpus(prefect_api: None, gpus: int) -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((INFRA / "kubernetes-gpu-job-template.json").read_text())
    values = {**deployments()["kubernetes-gpu"]["work_pool"]["job_variables"], "gpu_count": gpus}
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "prefect-job")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus  # the variable is referenced, not dropped
    assert container["image"] == "slic:latest"
    assert pod["volumes"] == [{"name": "checkout", "persistentVolumeClaim": {"claimName": "slic-checkout"}}]
    assert container["volumeMounts"] == [{"name": "checkout", "mountPath": "/work/slic"}]
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_makefile_has_service_targets() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "services-up: infra/.env\n\t$(COMPOSE) up -d --build --wait" in text
    assert "services-down:\n\t$(COMPOSE) down" in text
    assert "COMPOSE := docker compose --env-file infra/.env -f infra/compose.yaml" in text
