"""What MLflow runs say of themselves: the dataset and params file a stage read, the seed and dataset in its name,
an eval set's classifiers apart from the main stages', the pipeline run's stale reports, the experiment's kind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

GIT_ENV = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite MLflow store in `tmp_path`, the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    return tmp_path


def write_params(folder: Path, root: str, seed: int) -> Path:
    """The repository's params.yaml with manifest.root and pretrain.seed changed."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["manifest"]["root"], params["pretrain"]["seed"] = root, seed
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def client():
    from mlflow import MlflowClient

    from slic.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def test_a_dataset_is_named_by_its_folder_or_the_one_above_a_generic_name() -> None:
    from slic.stage_run import dataset_label

    assert dataset_label("data/raw/synthetic") == "synthetic"
    assert dataset_label("../shared/real/ucf101_6/videos") == "ucf101_6"
    assert dataset_label("/datasets/UCF101/videos/") == "UCF101"
    assert dataset_label("/archive/2024/clips") == "2024"
    assert dataset_label("videos") == "videos"  # nothing above it to name


def test_the_params_file_is_fingerprinted_and_said_uncommitted_when_it_differs_from_head(tmp_path: Path) -> None:
    """A run's `mlflow.source.git.commit` is the commit; a params.yaml edited since (a preset) is not the commit's."""
    import hashlib

    from slic.stage_run import params_tags

    params = tmp_path / "params.yaml"
    params.write_text("pretrain: {seed: 7}\n")
    digest = hashlib.sha256(params.read_bytes()).hexdigest()
    assert params_tags(params) == {"slic.params_sha256": digest}  # not a checkout: nothing to compare with
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-q", "-m", "params")
    assert params_tags(params) == {"slic.params_sha256": digest, "slic.params_uncommitted": "false"}
    params.write_text("pretrain: {seed: 8}\n")  # `slic preset ...` or `dvc exp run -S pretrain.seed=8`
    assert params_tags(params)["slic.params_uncommitted"] == "true"
    assert params_tags(params)["slic.params_sha256"] == hashlib.sha256(b"pretrain: {seed: 8}\n").hexdigest()
    other = tmp_path / "params-real.yaml"  # `slic --params params-real.yaml`, a file git does not track
    other.write_text("pretrain: {seed: 7}\n")
    assert params_tags(other)["slic.params_uncommitted"] == "true"


def test_a_stage_run_names_its_seed_and_dataset_and_tags_the_data_and_params_it_read(store: Path) -> None:
    from slic.config import load
    from slic.finetune_stages import nested_run
    from slic.tracking import run_context, stage_run, using_run_context

    params = write_params(store, "../shared/real/ucf101_6/videos", 8)
    config = load(params)
    with using_run_context(run_context(config, params)):
        with stage_run("pretrain", {}, name="pretrain slic r3d_18_tiny 32px") as pretrain:
            pass
        with stage_run("finetune", {}, name="finetune slic r3d_18_tiny 32px") as finetune:
            with nested_run(finetune, "finetune/pretrained", {}) as child:
                pass
    with stage_run("evaluate", {}, name="evaluate by hand") as outside:  # the context ends with the stage
        pass
    with using_run_context(run_context(config, params, "synthetic_unseen")):  # an eval set's stage reads that set
        with stage_run("transfer@synthetic_unseen", {}, name="transfer synthetic_unseen") as transfer:
            pass
    runs = {run: client().get_run(run.run_id) for run in (pretrain, child, outside, transfer)}
    assert runs[pretrain].info.run_name == "pretrain slic r3d_18_tiny 32px seed 8 ucf101_6"
    tags = runs[pretrain].data.tags
    assert (tags["slic.data.root"], tags["slic.data.layout"], tags["slic.data.split"], tags["slic.seed"]) == (
        "../shared/real/ucf101_6/videos", config.manifest.layout, str(config.manifest.split), "8")
    assert "slic.params_uncommitted" not in tags  # not a git checkout
    import hashlib

    assert tags["slic.params_sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()
    assert runs[child].info.run_name == "finetune/pretrained"  # a nested run's parent names the seed and data
    assert runs[child].data.tags["slic.data.root"] == "../shared/real/ucf101_6/videos"
    assert runs[outside].info.run_name == "evaluate by hand" and "slic.data.root" not in runs[outside].data.tags
    eval_set = config.eval_sets["synthetic_unseen"]
    assert runs[transfer].data.tags["slic.data.root"] == eval_set.root
    assert runs[transfer].info.run_name == "transfer synthetic_unseen seed 8 ucf101_6"  # the encoder's seed and data
    found = client().search_runs([pretrain.experiment_id], "tags.`slic.data.root` = '../shared/real/ucf101_6/videos'")
    assert {run.info.run_id for run in found} == {pretrain.run_id, finetune.run_id, child.run_id}


def test_an_eval_sets_classifiers_are_named_and_staged_by_the_set(store: Path) -> None:
    """Filtering `tags.slic.stage = 'linear_probe'` finds the main stage's probe only, not an eval set's."""
    from slic.finetune_stages import nested_run
    from slic.tracking import stage_run

    with stage_run("classify@synthetic_unseen", {}, name="classify synthetic_unseen") as classify:
        for classifier in ("linear_probe", "finetune/pretrained"):
            with nested_run(classify, classifier, {}, "classify@synthetic_unseen"):
                pass
    with stage_run("linear_probe", {}, name="linear_probe slic") as probe:
        pass
    experiment = [probe.experiment_id]
    nested = client().search_runs(experiment, f"tags.mlflow.parentRunId = '{classify.run_id}'")
    assert {(run.info.run_name, run.data.tags["slic.stage"], run.data.tags["slic.classifier"]) for run in nested} == {
        ("classify@synthetic_unseen/linear_probe", "classify@synthetic_unseen", "linear_probe"),
        ("classify@synthetic_unseen/finetune/pretrained", "classify@synthetic_unseen", "finetune/pretrained")}
    probes = client().search_runs(experiment, "tags.`slic.stage` = 'linear_probe'")
    assert [run.info.run_id for run in probes] == [probe.run_id]
    assert nested_run(None, "linear_probe", {}, "classify@x").__enter__() is None  # another rank logs nothing


def test_the_pipeline_run_names_its_data_and_the_stale_reports_it_left_out(store: Path) -> None:
    from slic import tracking

    write_params(store, "data/raw/synthetic", 7)
    git(store, "init", "-q")
    git(store, "add", "params.yaml")
    git(store, "commit", "-q", "-m", "params")
    write_params(store, "data/raw/synthetic", 8)  # `dvc exp run -S pretrain.seed=8`: not committed
    context = tracking.checkout_context(store)
    parent = tracking.start_pipeline_run("pipeline", {}, context=context)
    record = tracking.record_stage("eval_data@synthetic_unseen", {"videos": 3}, parent, cached=True,
                                   context=tracking.checkout_context(store, "eval_data@synthetic_unseen"))
    tracking.end_pipeline_run(parent, description="made", metrics={"clusters.ami": 0.5},
                              stale=["linear_probe.json", "retrieval.json"])
    run = client().get_run(parent)
    assert run.info.run_name == "pipeline seed 8 synthetic" and run.info.status == "FINISHED"
    assert run.data.tags["slic.params_uncommitted"] == "true" and run.data.tags["slic.seed"] == "8"
    assert run.data.tags["slic.data.root"] == "data/raw/synthetic"
    assert run.data.tags["slic.stale_reports"] == "linear_probe.json,retrieval.json"
    assert run.data.metrics == {"clusters.ami": 0.5}
    recorded = client().get_run(record)
    assert recorded.info.run_name == "eval_data@synthetic_unseen seed 8 synthetic"
    assert recorded.data.tags["slic.data.root"] == "data/raw/synthetic_transfer"  # the eval set's videos
    (store / "params.yaml").write_text("pretrain: {seed: -1}\n")  # a broken params.yaml: no context, no failure
    assert tracking.checkout_context(store) == tracking.RunContext()


def test_the_left_out_reports_are_said_in_the_description_and_the_flow_run_where_to_see_it() -> None:
    from flows.pipeline import flow_run_line, left_out_note

    assert left_out_note([]) == ""
    assert "reports/retrieval.json, reports/linear_probe.json" in left_out_note(["retrieval.json", "linear_probe.json"])
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):  # a temporary server: gone after
        assert flow_run_line("1234", "witty-fox") == "Prefect flow run witty-fox (1234): prefect flow-run inspect 1234"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert flow_run_line("1234").endswith("inspect 1234 or http://127.0.0.1:4200/runs/flow-run/1234")


def test_the_experiment_opens_on_its_training_runs_in_mlflow_3s_ui(store: Path) -> None:
    """MLflow 3 shows an experiment without `mlflow.experimentKind` as GenAI ("Traces 0 ... No data available")."""
    from slic.tracking import stage_run

    with stage_run("embed", {}) as run:  # creates the experiment
        pass
    assert client().get_experiment(run.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client().create_experiment("older")  # one made before: marked when a stage next uses it
    chosen = client().create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("older", "chosen"):
        with stage_run("embed", {}, experiment=name):
            pass
    assert client().get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client().get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"  # the user's choice
