"""The Prefect flow under Prefect's test harness: real `dvc repro` stages, artifacts, MLflow runs, retries."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from uuid import UUID

import pytest

from flows.pipeline import StageError, artifact_key, classify_failure, dvc_stages, report_markdown
from flows.pipeline import slic_pipeline as pipeline
from tests.flows.conftest import make_checkout, mlflow_client, set_params

STAGES = ["synth", "manifest", "validate", "extract", "flow", "pretrain", "embed", "evaluate", "promote"]


def flow_run_details(flow_run_id: UUID) -> tuple[dict[str, str], dict[str, int]]:
    """{artifact key: data} and {task run name: run count} of one flow run, read from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a.data for a in artifacts if a.key}, {t.name: t.run_count for t in tasks}


def nested_runs(repo: Path, parent: str) -> dict[str, object]:
    client = mlflow_client(repo)
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return {r.data.tags["slic.stage"]: r for r in runs}


def test_artifact_keys_and_markdown() -> None:
    assert artifact_key("Pretrain", "report") == "pretrain-report"
    assert artifact_key("ablation/intra_video", "mlflow") == "ablation-intra-video-mlflow"
    table = report_markdown("evaluate", {"recall@1": 0.51234, "splits": {"train": 3}, "failed": [1, 2]}, ran=False)
    assert "| recall@1 | 0.5123 |" in table and "| splits.train | 3 |" in table and "| failed | 2 item(s) |" in table
    assert "unchanged (DVC cache)" in table
    odd = report_markdown("manifest", {"root": "/videos/a|b", "summary": "two\nlines"}, ran=True)
    assert "| root | /videos/a\\|b |\n| summary | two lines |\n" in odd  # one row each: the table holds


def test_notes_and_exclusions_are_listed_in_the_artifact_and_the_notes_describe_the_mlflow_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the manifest stage advises (e.g. set manifest.group_pattern) is read where the user looks: the Prefect
    artifact lists it under the table, and the stage's MLflow run shows it as its description."""
    from slic import tracking

    note = "731 of 731 videos share their name with others of their class but for a trailing number"
    report = {"videos": 14, "advice": [note, "set extract.fps"],
              "excluded": [{"video_id": f"a/v{n}", "reason": "too short: 20 frames < 32"} for n in range(12)]}
    table = report_markdown("manifest", report, ran=True)
    assert "| advice | 2 item(s) |" in table and f"**Notes**\n\n- {note}\n- set extract.fps\n" in table
    assert "- a/v0: too short: 20 frames < 32\n" in table and "- a/v9: " in table and "- a/v10: " not in table
    extract = report_markdown("extract", {"failed": [{"video_id": "b/x", "path": "/v/x.mp4", "error": "cannot"}],
                                          "damaged": [{"video_id": "b/y", "path": "/v/y.mp4", "note": "1 of 50"}]},
                              ran=True)  # the files extract could not decode, or decoded past damaged packets
    assert "**Could not be decoded**\n\n- /v/x.mp4: cannot\n" in extract
    assert "**Decoded past damaged packets**\n\n- /v/y.mp4: 1 of 50\n" in extract
    groups = report_markdown("clusters", {"groups": 20, "largest_groups": [
        {"group": 0, "videos": 113, "most_typical": "PlayingPiano/v_PlayingPiano_g05_c01",
         "majority_class": "PlayingPiano", "majority_share": 0.5664}]}, ran=True)
    assert ("**Largest groups**\n\n- group 0, videos 113, most_typical PlayingPiano/v_PlayingPiano_g05_c01, "
            "majority_class PlayingPiano, majority_share 0.566\n") in groups
    assert table.endswith("- and 2 more in the report\n")
    next_up = report_markdown("spread_labels", {"given": 0, "label_next": [
        {"video_id": "Fall/v_Fall_g04_c03", "why": "the most typical video of group 0, where no video is labelled"}]},
        ran=True)
    assert "**Label next**\n\n- Fall/v_Fall_g04_c03: the most typical video of group 0, where no video" in next_up
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracking.start_pipeline_run("pipeline", {})
    run = mlflow_client(tmp_path).get_run(tracking.record_stage("manifest", report, parent, cached=False))
    assert run.data.tags["mlflow.note.content"] == f"- {note}\n- set extract.fps\n"
    assert run.data.metrics["videos"] == 14


def test_skipped_stage_markdown_says_why() -> None:
    table = report_markdown("finetune", {"skipped": True, "reason": "no class labels"}, ran=True)
    assert table.startswith("### finetune: skipped: no class labels")


def test_flow_on_unlabelled_videos_skips_what_needs_classes(prefect_api: None, tiny_dataset: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """linear_probe on videos without classes: the flow completes, the stage's artifact and MLflow run say why."""
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    archive = tmp_path / "archive"
    archive.mkdir()
    for number, video in enumerate(sorted(tiny_dataset.rglob("*.avi"))):
        shutil.copy(video, archive / f"clip{number:02d}.avi")
    repo = make_checkout(tmp_path / "repo", manifest={"root": str(archive), "layout": "unlabelled", "splits_dir": ""})
    stages = ["manifest", "validate", "extract", "flow", "pretrain", "linear_probe"]
    state = pipeline(repo=str(repo), stages=stages, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert "has no class labels" in result["stages"]["linear_probe"]["published"]["skipped"]
    artifacts, _ = flow_run_details(state.state_details.flow_run_id)
    assert "### linear_probe: skipped:" in artifacts["linear-probe-report"]
    run = nested_runs(repo, result["mlflow_parent_run_id"])["linear_probe"]
    assert "has no class labels" in run.data.tags["slic.skipped"]


def test_failures_are_classified_transient_or_not() -> None:
    refused = classify_failure("validate", "slic validate: manifest invalid: 1 of 29 expectations failed\n"
                               "ERROR: failed to reproduce 'validate': failed to run: slic validate, exited with 1", 255)
    assert not refused.transient and refused.exit_code == 1
    assert str(refused) == "stage 'validate' failed: slic validate: manifest invalid: 1 of 29 expectations failed"
    killed = classify_failure("pretrain", "ERROR: failed to reproduce 'pretrain': failed to run: slic pretrain, "
                              "exited with -9", 255)
    assert killed.transient and killed.exit_code == -9
    assert classify_failure("embed", "ERROR: Unable to acquire lock. Most likely another DVC process", 1).transient


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkout(tmp_path_factory.mktemp("flow-repo"))


def test_flow_runs_stages_publishes_artifacts_and_nests_mlflow_runs(prefect_api: None, checkout: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # tiny stages end within seconds
    state = pipeline(repo=str(checkout), stages=STAGES, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert list(result["stages"]) == STAGES and all(r["ran"] for r in result["stages"].values())
    assert (checkout / "data/embeddings/embeddings.npz").is_file()
    promotion = json.loads((checkout / "reports/promotion.json").read_text())
    assert promotion["decision"] == "promoted"

    artifacts, tasks = flow_run_details(state.state_details.flow_run_id)
    for stage in STAGES:
        assert f"{stage}-mlflow" in artifacts and f"### {stage}: ran" in artifacts[f"{stage}-report"]
    assert "| extracted | 24 |" in artifacts["extract-report"]
    assert tasks["validate"] == 1  # nothing failed, nothing retried

    parent = result["mlflow_parent_run_id"]
    assert result["stages"]["pretrain"]["published"]["mlflow_run_id"] in artifacts["pretrain-mlflow"]
    runs = nested_runs(checkout, parent)
    assert set(runs) == set(STAGES)  # one nested run per stage, the stages' own runs included
    assert mlflow_client(checkout).get_run(parent).info.status == "FINISHED"
    recall = json.loads((checkout / "reports/retrieval.json").read_text())["recall@1"]
    made = artifacts["pipeline-summary"]  # in the Prefect UI, and as the parent run's description in MLflow's
    assert f"| retrieval | test recall@1 {100 * recall:.1f}%" in made and "| registry | slic-encoder version 1" in made
    assert "[stale]" not in made  # every stage ran: nothing is an earlier run's
    parent_run = mlflow_client(checkout).get_run(parent)
    assert parent_run.data.tags["mlflow.note.content"] == made and "slic.stale_reports" not in parent_run.data.tags
    assert result["flow_run"]["id"] == str(state.state_details.flow_run_id)  # `slic pipeline` prints where to see it
    # which data and seed: in the name, and as tags that find one dataset's runs (the stages' own and the records)
    assert parent_run.info.run_name == f"pipeline seed 7 {Path(parent_run.data.tags['slic.data.root']).name}"
    assert {run.data.tags["slic.data.root"] for run in runs.values()} == {parent_run.data.tags["slic.data.root"]}
    # the runs table's row of this pipeline run: its headline numbers and every setting of params.yaml
    assert parent_run.data.metrics["evaluate.recall_at_1"] == pytest.approx(recall)
    best_val = json.loads((checkout / "reports/pretrain.json").read_text())["best_val_recall_at_1"]
    assert parent_run.data.metrics["pretrain.best_val_recall_at_1"] == pytest.approx(best_val)
    from slic.config import flat_settings, load

    assert parent_run.data.params == flat_settings(load(checkout / "params.yaml"))
    assert parent_run.data.params["pretrain.epochs"] == "2"
    pretrain = runs["pretrain"]
    assert pretrain.data.params["epochs"] == "2" and "val_recall_at_1" in pretrain.data.metrics
    assert pretrain.data.tags["dvc.stage"] == "pretrain"  # DVC ran it: the stage's name, from DVC's environment
    assert runs["evaluate"].data.tags["slic.encoder_run_id"] == pretrain.info.run_id  # evaluate names its encoder
    assert len(mlflow_client(checkout).get_metric_history(pretrain.info.run_id, "val_recall_at_1")) == 2
    assert any(k.startswith("system/") for k in pretrain.data.metrics)  # system metrics
    listed = {f.path for folder in ("plots", "checkpoints")
              for f in mlflow_client(checkout).list_artifacts(pretrain.info.run_id, folder)}
    assert {"plots/training_curves.png", "checkpoints/best.pt"} <= listed
    evaluate = {f.path for f in mlflow_client(checkout).list_artifacts(runs["evaluate"].info.run_id, "plots")}
    assert evaluate == {"plots/recall_at_k.png", "plots/embeddings_pca.png"}
    assert runs["extract"].data.metrics["extracted"] == 24 and runs["extract"].data.tags["slic.cached"] == "false"
    champion = mlflow_client(checkout).get_model_version_by_alias("slic-encoder", "champion")
    assert str(champion.version) == "1" and champion.tags["decision"] == "promoted"

    again = pipeline(repo=str(checkout), stages=STAGES, return_state=True)
    assert again.is_completed(), again.message
    assert not any(r["ran"] for r in again.result()["stages"].values())  # DVC cache: nothing re-runs
    artifacts, _ = flow_run_details(again.state_details.flow_run_id)
    assert "### pretrain: unchanged (DVC cache)" in artifacts["pretrain-report"]
    cached = nested_runs(checkout, again.result()["mlflow_parent_run_id"])
    assert set(cached) == set(STAGES) and cached["pretrain"].data.tags["slic.cached"] == "true"
    for stage in ("embed", "evaluate"):  # DVC skipped them: their records still name the encoder
        assert cached[stage].data.tags["slic.encoder_run_id"] == pretrain.info.run_id
        assert cached[stage].data.params["encoder.epochs"] == "2"
    assert "slic.encoder_run_id" not in cached["validate"].data.tags

    params = (checkout / "params.yaml").read_text()
    set_params(checkout, "evaluate", ks=[1, 5])
    try:  # a run of some stages after a setting of another changed: the summary marks that stage's line
        some = pipeline(repo=str(checkout), stages=["manifest"], return_state=True)
        assert some.is_completed(), some.message
        made = flow_run_details(some.state_details.flow_run_id)[0]["pipeline-summary"]
        assert "| retrieval | [stale] test recall@1" in made and "| encoder | mode " in made
        assert "params.yaml: evaluate (read by evaluate)" in made
        # the parent run logs the fresh reports' numbers only, and names the stale ones it left out
        stale_run = mlflow_client(checkout).get_run(some.result()["mlflow_parent_run_id"])
        assert "evaluate.recall_at_1" not in stale_run.data.metrics
        assert stale_run.data.metrics["pretrain.best_val_recall_at_1"] == pytest.approx(best_val)
        assert "retrieval.json" in stale_run.data.tags["slic.stale_reports"].split(",")
        assert "Left out of this run's metrics" in stale_run.data.tags["mlflow.note.content"]
    finally:
        (checkout / "params.yaml").write_text(params)


def test_failed_stage_is_named_not_retried_and_done_stages_stay_cached(prefect_api: None, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = make_checkout(tmp_path / "repo", manifest={"val_fraction": 0.0})  # no class has a val video
    state = pipeline(repo=str(repo), stages=["synth", "manifest", "validate"], return_state=True)
    assert state.is_failed()
    assert "stage 'validate' failed: slic validate: manifest invalid" in state.message
    with pytest.raises(StageError, match="stage 'validate' failed"):
        state.result()
    _, tasks = flow_run_details(state.state_details.flow_run_id)
    assert tasks["validate"] == 1  # refused input is not transient: no retry
    set_params(repo, "manifest", val_fraction=0.15)
    fixed = pipeline(repo=str(repo), stages=["synth", "manifest", "validate"], return_state=True)
    assert fixed.is_completed(), fixed.message
    ran = {stage: r["ran"] for stage, r in fixed.result()["stages"].items()}
    assert ran == {"synth": False, "manifest": True, "validate": True}  # synth stayed cached


def test_transient_failure_is_retried(prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = make_checkout(tmp_path / "repo")
    # A stage killed once (exit 137, as the OOM killer does), then fine: DVC fails, the task retries.
    (repo / "dvc.yaml").write_text(
        "stages:\n  flaky:\n    cmd: python -c \"import os, sys; os.path.exists('tried') or "
        "(open('tried', 'w').close(), sys.exit(137)); open('out.txt', 'w').write('ok')\"\n    outs:\n      - out.txt\n")
    state = pipeline(repo=str(repo), return_state=True)
    assert state.is_completed(), state.message
    assert (repo / "out.txt").read_text() == "ok"
    _, tasks = flow_run_details(state.state_details.flow_run_id)
    assert tasks["flaky"] == 2


def test_unreachable_mlflow_is_one_line_naming_the_uri(prefect_api: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    state = pipeline(repo=str(make_checkout(tmp_path / "repo")), stages=["synth"], return_state=True)
    assert state.is_failed()
    assert state.message.endswith(f"MLflow tracking server {uri} is unreachable ([Errno 111] Connection refused); "
                                  "start it or fix MLFLOW_TRACKING_URI")


def test_slic_pipeline_command_outside_a_checkout_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    from slic.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pipeline"]) == 2
    assert capsys.readouterr().err.strip() == (f"slic pipeline: error: {tmp_path}/flows/pipeline.py not found; "
                                               "run from the project checkout")


@pytest.mark.slow
def test_slic_pipeline_command_runs_the_flow(prefect_api: None, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import subprocess
    import sys

    from flows.pipeline import main

    repo = make_checkout(tmp_path / "repo", with_flows=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    result = subprocess.run([str(Path(sys.executable).parent / "slic"), "pipeline", "--stages", "synth,manifest"],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    *_, synth, manifest, where = result.stdout.splitlines()
    assert [synth, manifest] == ["synth: ran", "manifest: ran"]
    assert where.startswith("Prefect flow run ") and "prefect flow-run inspect " in where  # where to see it after
    assert json.loads((repo / "reports/manifest.json").read_text())["videos"] == 24
    # A misspelt stage, in this process (what the command runs after the checkout check): one line, exit 1.
    capsys.readouterr()
    assert main(["--repo", str(repo), "--stages", "synth,trian"]) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slic pipeline: ")]
    assert said == ["slic pipeline: Flow run encountered an exception: ValueError: unknown stage(s) trian; dvc.yaml "
                    f"has: {', '.join(dvc_stages(repo))}"]
