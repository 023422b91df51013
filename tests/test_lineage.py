"""Lineage: content fingerprints decide resumes and promotions; MLflow runs say what data they saw.

One tiny workspace (manifest, validated table) with two extractions of the same videos: `data/frames`
(short side 24) and `data/frames_b` (short side 32): the same ids, other pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from slic.cli import main
from tests.test_pretrain import finish

TINY_PRETRAIN = {"backbone": "r3d_18_narrow", "hidden_dim": 32, "out_dim": 16, "clip_len": 8, "frame_step": 2,
                 "size": 16, "batch_size": 4, "epochs": 2, "cluster_interval": 2, "eval_interval": 1, "workers": 0,
                 "seed": 5}


def write_params(workspace: Path, name: str, **sections: dict) -> str:
    """A params file in `workspace`: the workspace's params.yaml with `sections` merged in; returns its name."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values}
    (workspace / name).write_text(yaml.safe_dump(params))
    return name


@pytest.fixture(scope="module")
def workspace(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest, validated table, frames at short side 24 (data/frames) and 32 (data/frames_b)."""
    root = tmp_path_factory.mktemp("lineage")
    params = {"manifest": {"root": str(tiny_dataset), "workers": 1}, "validate": {"data_docs": "docs"},
              "extract": {"short_side": 24, "workers": 1}, "pretrain": TINY_PRETRAIN,
              "embed": {"workers": 0, "clips": 2}, "evaluate": {"html_queries": 2, "html_k": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "add_to_index").mkdir()  # as in a checkout: the index stage's folder of added videos, empty
    other = write_params(root, "params-b.yaml", extract={"out": "data/frames_b", "short_side": 32})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for args in (["manifest"], ["validate"], ["extract"], ["--params", other, "extract"]):
            assert main(args) == 0
    finally:
        os.chdir(cwd)
    return root


def slic(workspace: Path, params: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    env.pop("SLIC_PARENT_RUN_ID", None)
    return subprocess.Popen([sys.executable, "-m", "slic.cli", "--params", params, *args], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def client(workspace: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def runs_of(workspace: Path, out: str) -> list:
    """Every MLflow pretrain run (any status) that trained into `out`."""
    mlflow = client(workspace)
    experiment = mlflow.get_experiment_by_name("slic")
    return mlflow.search_runs([experiment.experiment_id], f"params.out = '{out}'")


def fingerprint_of(workspace: Path, frames: str) -> str:
    """pretrain's content fingerprint of the workspace's train and val videos in `frames`."""
    from slic.data.clips import load_videos
    from slic.pretrain import data_fingerprint

    manifest, frames_dir = workspace / "data/manifests/validated.csv", workspace / frames
    step = TINY_PRETRAIN["frame_step"]
    train = load_videos(manifest, frames_dir, splits=["train"], min_frames=2 * TINY_PRETRAIN["clip_len"],
                        frame_step=step)
    val = load_videos(manifest, frames_dir, splits=["val"], min_frames=TINY_PRETRAIN["clip_len"], frame_step=step)
    return data_fingerprint(train, val, frames_dir=frames_dir)


@pytest.fixture(scope="module")
def trained(workspace: Path) -> Path:
    """A 2-epoch pretrain on data/frames into data/models/lineage (reports/pretrain.json of that run)."""
    finish(slic(workspace, write_params(workspace, "params-lineage.yaml", pretrain={"out": "data/models/lineage"}),
                "pretrain"))
    return workspace / "data/models/lineage"


def test_new_pixels_with_the_same_ids_train_from_scratch(workspace: Path, trained: Path) -> None:
    first = json.loads((workspace / "reports/pretrain.json").read_text())
    data_a, data_b = fingerprint_of(workspace, "data/frames"), fingerprint_of(workspace, "data/frames_b")
    assert data_a != data_b  # same video ids, frame counts, labels and splits; other pixels
    assert checkpoint(trained / "best.pt")["fingerprint"]["data"] == data_a

    params = write_params(workspace, "params-lineage.yaml", pretrain={"out": "data/models/lineage"})
    finish(slic(workspace, params, "pretrain"))  # nothing changed: resumes (past its last epoch)
    unchanged = json.loads((workspace / "reports/pretrain.json").read_text())
    assert unchanged["resumed_from_epoch"] == 2 and unchanged["mlflow_run_id"] == first["mlflow_run_id"]
    # its training time is the run's, not this call's near nothing (the summary said "0 s" after a labels copy)
    assert unchanged["seconds"] >= first["seconds"] - 1.0 and unchanged["seconds_this_call"] < first["seconds"]

    regenerated = write_params(workspace, "params-lineage-b.yaml", pretrain={"out": "data/models/lineage"},
                               extract={"out": "data/frames_b"})
    output = finish(slic(workspace, regenerated, "pretrain"))
    fresh = json.loads((workspace / "reports/pretrain.json").read_text())
    assert fresh["resumed_from_epoch"] == 0 and "starting afresh" in output and data_a in output
    assert fresh["mlflow_run_id"] != first["mlflow_run_id"]  # another training: another run
    assert checkpoint(trained / "last.pt")["fingerprint"]["data"] == data_b
    assert checkpoint(trained / "best.pt")["fingerprint"]["data"] == data_b


def test_killed_pretrain_resumes_its_own_mlflow_run(workspace: Path) -> None:
    # Enough epochs that the kill lands mid-training even when this process is starved of CPU for a while (with
    # 4 tiny epochs a busy 2-core CI machine once saw the training finish before the first poll).
    epochs = 16
    params = write_params(workspace, "params-killed.yaml", pretrain={"out": "data/models/killed", "epochs": epochs})
    last = workspace / "data/models/killed/last.pt"
    process = slic(workspace, params, "pretrain")
    while process.poll() is None:
        try:
            if checkpoint(last)["state"]["epoch"] >= 1:
                break
        except (OSError, RuntimeError, EOFError, KeyError):
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epoch_at_kill = checkpoint(last)["state"]["epoch"]
    assert process.returncode == -signal.SIGKILL and 1 <= epoch_at_kill < epochs
    [killed] = runs_of(workspace, "data/models/killed")
    assert killed.info.status == "RUNNING"  # nothing could mark it: the process died at once
    assert checkpoint(last)["mlflow_run_id"] == killed.info.run_id

    finish(slic(workspace, params, "pretrain"))
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert report["resumed_from_epoch"] >= epoch_at_kill
    [run] = runs_of(workspace, "data/models/killed")  # one run: the resumed process continued it
    assert run.info.run_id == killed.info.run_id == report["mlflow_run_id"]
    dataset = Path(yaml.safe_load((workspace / "params.yaml").read_text())["manifest"]["root"]).name
    assert run.info.status == "FINISHED" and run.info.run_name == f"pretrain slic r3d_18_narrow 16px seed 5 {dataset}"
    assert run.data.tags["slic.resumes"] == "1"
    for key in ("loss", "val_recall_at_1", "clips_per_s"):
        steps = [m.step for m in client(workspace).get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), key  # every epoch, each once
    data = checkpoint(workspace / "data/models/killed/best.pt")["fingerprint"]["data"]
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.digest, dataset.dataset.name) == (data, "validated.csv train+val")
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    assert run.data.tags["slic.data_fingerprint"] == data == fingerprint_of(workspace, "data/frames")


def test_embed_and_evaluate_runs_name_the_model_and_log_their_data(workspace: Path, trained: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from slic.data.frames import content_fingerprint, content_hashes

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "seed5")  # as `dvc exp run -n seed5` tells its stages
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abcd")
    params = write_params(workspace, "params-embed.yaml", embed={"checkpoint": "data/models/lineage/best.pt"})
    for stage in ("embed", "evaluate", "index"):
        monkeypatch.setenv("DVC_STAGE", stage)
        assert main(["--params", params, stage]) == 0
    mlflow = client(workspace)
    experiment = mlflow.get_experiment_by_name("slic").experiment_id
    trained_by = checkpoint(trained / "best.pt")["mlflow_run_id"]
    [pretrain_run] = [r for r in runs_of(workspace, "data/models/lineage") if r.info.run_id == trained_by]
    root = yaml.safe_load((workspace / "params.yaml").read_text())["manifest"]["root"]
    for stage, name, context, splits in (("embed", "embed slic r3d_18_narrow 16px 2 clips", "inference",
                                          "train+val+test"),
                                         ("evaluate", "evaluate slic r3d_18_narrow 16px test vs train",
                                          "evaluation", "test+train")):
        run = mlflow.search_runs([experiment], f"tags.`slic.stage` = '{stage}'", order_by=["start_time DESC"])[0]
        # the seed and the dataset: runs of two seeds or datasets no longer share a name
        assert run.info.run_name == f"{name} seed 5 {Path(root).name}" and run.info.status == "FINISHED"
        assert (run.data.tags["slic.data.root"], run.data.tags["slic.data.layout"]) == (root, "synthetic")
        assert run.data.tags["slic.params_sha256"] == hashlib.sha256((workspace / params).read_bytes()).hexdigest()
        [dataset] = run.inputs.dataset_inputs
        assert dataset.dataset.name == f"validated.csv {splits}"
        assert dataset.dataset.digest == run.data.tags["slic.data_fingerprint"]
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == context
        # the encoder: the pretrain run that wrote the checkpoint, its settings as params, a link in the description
        tags, params_logged = run.data.tags, run.data.params
        assert tags["slic.encoder_run_id"] == trained_by
        assert tags["slic.encoder_checkpoint"] == "data/models/lineage/best.pt"
        assert tags["slic.encoder_data_fingerprint"] == checkpoint(trained / "best.pt")["fingerprint"]["data"]
        assert tags["slic.encoder_epoch"] == str(checkpoint(trained / "best.pt")["state"]["best_epoch"])
        assert params_logged["encoder.seed"] == "5" and params_logged["encoder.backbone"] == "r3d_18_narrow"
        assert params_logged["encoder.mode"] == "slic" and params_logged["encoder.epochs"] == "2"
        assert not {"encoder.workers", "encoder.out", "encoder.device"} & set(params_logged)  # machine-only left out
        assert (f"[{pretrain_run.info.run_name}](#/experiments/{experiment}/runs/{trained_by})"
                in tags["mlflow.note.content"])
        assert (tags["dvc.exp_name"], tags["dvc.exp_baseline_rev"], tags["dvc.stage"]) == ("seed5", "0123abcd", stage)

    meta = json.loads((workspace / "data/index/index.json").read_text())
    assert meta["data_fingerprint"] == checkpoint(trained / "best.pt")["fingerprint"]["data"]
    rows = json.loads((workspace / "reports/index.json").read_text())
    gallery = [line.split(",")[1] for line in (workspace / "data/index/rows.csv").read_text().splitlines()[1:]]
    expected = content_fingerprint(content_hashes(workspace / "data/frames", gallery))
    assert meta["gallery_fingerprint"] == rows["gallery_fingerprint"] == expected
    assert meta["gallery_fingerprint_of"] == "frames"


def test_runs_whose_process_died_are_marked_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import psutil
    from mlflow import MlflowClient

    from slic.tracking import stage_run, tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    with stage_run("embed", {}) as first:  # creates the store and the experiment
        experiment = first.experiment_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(dead.pid).create_time() if dead.poll() is None else 0.0
    dead.wait()
    me = psutil.Process()
    host = socket.gethostname()
    mlflow = MlflowClient(tracking_uri())
    runs = {}
    for label, tags in {"dead": {"slic.host": host, "slic.pid": str(dead.pid), "slic.pid_started": f"{started:.2f}"},
                        "alive": {"slic.host": host, "slic.pid": str(me.pid),
                                  "slic.pid_started": f"{me.create_time():.2f}"},
                        "elsewhere": {"slic.host": host + "-other", "slic.pid": str(dead.pid)},
                        "no_tags": {}}.items():
        runs[label] = mlflow.create_run(experiment, tags={"slic.stage": "embed", **tags}).info.run_id
    other_stage = mlflow.create_run(experiment, tags={"slic.stage": "evaluate", "slic.host": host,
                                                      "slic.pid": str(dead.pid)}).info.run_id
    with stage_run("embed", {}, name="embed again"):
        pass
    status = {label: mlflow.get_run(run_id).info.status for label, run_id in runs.items()}
    assert status == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "no_tags": "RUNNING"}
    assert f"process {dead.pid} on {host} was gone" in mlflow.get_run(runs["dead"]).data.tags["slic.killed"]
    assert mlflow.get_run(other_stage).info.status == "RUNNING"  # another stage's runs: its own next run decides

    with pytest.raises(KeyboardInterrupt), stage_run("embed", {}) as interrupted:
        raise KeyboardInterrupt
    with pytest.raises(ValueError), stage_run("embed", {}) as failed:
        raise ValueError("boom")
    assert mlflow.get_run(interrupted.run_id).info.status == "KILLED"
    assert mlflow.get_run(failed.run_id).info.status == "FAILED"


def test_flow_shards_record_their_content_hash(workspace: Path, tmp_path: Path) -> None:
    import pandas as pd

    from slic.data.flow import flow_all
    from slic.data.frames import ShardReader, read_index, shard_path
    from slic.tvl1 import TVL1Params

    manifest = pd.read_csv(workspace / "data/manifests/validated.csv", dtype={"video_id": str})
    manifest = manifest[manifest["split"] == "train"].head(2)
    args = dict(frames_dir=workspace / "data/frames", out_dir=tmp_path / "flow", splits=("train",), method="torch",
                device="cpu", bound=20.0, quality=95, params=TVL1Params(nscales=1, warps=1, inner_iterations=2),
                batch_pairs=64, workers=1)
    first = flow_all(manifest, **args)
    index = read_index(tmp_path / "flow")
    assert len(index) == 2 and first["computed"] == 2
    for video_id, recorded in zip(index["video_id"], index["sha256"]):
        assert recorded == ShardReader.open(shard_path(tmp_path / "flow", video_id)).header["content_sha256"]
    again = flow_all(manifest, **args)
    assert again["reused"] == 2 and read_index(tmp_path / "flow")["sha256"].tolist() == index["sha256"].tolist()
    assert again["content_fingerprint"] == first["content_fingerprint"]


def test_the_flow_view_is_part_of_the_fingerprint(workspace: Path, tmp_path: Path) -> None:
    from slic.data.clips import FlowView, load_videos
    from slic.data.frames import ShardReader, shard_path, write_shard
    from slic.pretrain import data_fingerprint

    frames = workspace / "data/frames"
    train = load_videos(workspace / "data/manifests/validated.csv", frames, splits=["train"])[:2]
    for v in train:  # stand-in flow shards: only their bytes matter here
        write_shard(shard_path(tmp_path / "flow", v.video_id), ShardReader.open(v.shard).read_jpegs(0, 2), {})
    rgb = data_fingerprint(train, frames_dir=frames)
    with_flow = data_fingerprint(train, frames_dir=frames, flow=FlowView(flow_dir=str(tmp_path / "flow"), p=0.25))
    other_p = data_fingerprint(train, frames_dir=frames, flow=FlowView(flow_dir=str(tmp_path / "flow"), p=0.5))
    assert len({rgb, with_flow, other_p}) == 3
    write_shard(shard_path(tmp_path / "flow", train[0].video_id), ShardReader.open(train[1].shard).read_jpegs(0, 2), {})
    assert data_fingerprint(train, frames_dir=frames, flow=FlowView(flow_dir=str(tmp_path / "flow"), p=0.25)) != with_flow


def test_a_labelled_candidate_meets_a_champion_trained_without_labels_on_its_own_split(
        workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion came from an unlabelled archive (no metric_value); the labelled candidate's validation
    split judges both, and the champion's missing metric is recorded as none."""
    import json

    from slic.config import PretrainConfig, PromoteConfig
    from slic.promote import promote
    from tests.test_promote import make_candidate

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    manifest, frames = workspace / "data/manifests/validated.csv", workspace / "data/frames"
    encoder = PretrainConfig(**{k: v for k, v in TINY_PRETRAIN.items() if k != "epochs"})
    archive, archive_report = make_candidate(tmp_path / "archive", 0.0, 1, data="an-unlabelled-archive", cfg=encoder)
    archive_report.write_text(json.dumps({"labelled": False, "best_val_recall_at_1": None}))
    first = promote(PromoteConfig(checkpoint=str(archive)), archive_report)
    assert (first["decision"], first["compared_on"]) == ("promoted", "no labels") and "metric_value" not in first

    candidate, report = make_candidate(tmp_path / "candidate", 0.4, 2, data=fingerprint_of(workspace, "data/frames"),
                                       cfg=encoder)
    result = promote(PromoteConfig(checkpoint=str(candidate)), report, manifest=manifest, frames_dir=frames)
    assert result["compared_on"] == "candidate validation split" and result["champion_metric"] == "none"
    wins = result["candidate_val_recall_at_1"] > result["champion_val_recall_at_1"]
    assert result["decision"] == ("promoted" if wins else "rejected")
    assert result["alias_version"] == (result["version"] if wins else first["version"])


def test_promotion_compares_models_validated_on_other_data_on_the_candidates_split(
        workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slic.config import PretrainConfig, PromoteConfig
    from slic.promote import PromoteError, promote, validation_recall_of, validation_split
    from slic.serving import VideoEncoder
    from tests.test_promote import make_candidate, version_tags

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    manifest, frames_a, frames_b = (workspace / "data/manifests/validated.csv", workspace / "data/frames",
                                    workspace / "data/frames_b")
    data_a, data_b = fingerprint_of(workspace, "data/frames"), fingerprint_of(workspace, "data/frames_b")
    encoder = PretrainConfig(**{k: v for k, v in TINY_PRETRAIN.items() if k != "epochs"})
    train_b, val_b = validation_split({"clip_len": encoder.clip_len, "frame_step": encoder.frame_step}, manifest,
                                      frames_b)

    def recall_on_b(path: Path) -> float:
        return validation_recall_of(VideoEncoder(path), train_b, val_b)

    champion, champion_report = make_candidate(tmp_path / "champion", 0.9, 1, data=data_a, cfg=encoder)
    champion_on_b = recall_on_b(champion)
    for seed in range(2, 14):  # a candidate better on B than the champion, though its recorded value is lower
        candidate, candidate_report = make_candidate(tmp_path / f"candidate{seed}", 0.1, seed, data=data_b,
                                                     cfg=encoder)
        candidate_on_b = recall_on_b(candidate)
        if candidate_on_b > champion_on_b:
            break
    else:
        pytest.fail(f"no untrained encoder beats the champion's {champion_on_b} on B; widen the seeds")

    first = promote(PromoteConfig(checkpoint=str(champion)), champion_report, manifest=manifest, frames_dir=frames_a)
    assert (first["decision"], first["data_fingerprint"], first["compared_on"]) == ("promoted", data_a, "no champion")

    # Compared on their recorded numbers (0.1 against 0.9) the champion would stay; on B the candidate wins.
    result = promote(PromoteConfig(checkpoint=str(candidate)), candidate_report, manifest=manifest,
                     frames_dir=frames_b)
    assert (result["decision"], result["alias_version"]) == ("promoted", result["version"])
    assert result["compared_on"] == "candidate validation split"
    assert (result["data_fingerprint"], result["champion_data_fingerprint"]) == (data_b, data_a)
    assert (result["metric_value"], result["champion_metric"]) == (0.1, 0.9)
    assert (result["candidate_val_recall_at_1"], result["champion_val_recall_at_1"]) == (candidate_on_b,
                                                                                         champion_on_b)
    assert "validated on other data" in result["reason"]
    tags = version_tags("slic-encoder", result["version"])
    assert (tags["data_fingerprint"], tags["champion_data_fingerprint"]) == (data_b, data_a)
    assert float(tags["champion_val_recall_at_1"]) == champion_on_b
    assert float(tags["candidate_val_recall_at_1"]) == candidate_on_b
    assert version_tags("slic-encoder", first["version"])["data_fingerprint"] == data_a

    # The same data: the recorded numbers are comparable and decide, nothing is re-evaluated.
    again, again_report = make_candidate(tmp_path / "again", 0.05, 40, data=data_b, cfg=encoder)
    same = promote(PromoteConfig(checkpoint=str(again)), again_report, manifest=manifest, frames_dir=frames_b)
    assert (same["compared_on"], same["decision"], same["champion_metric"]) == ("same data", "rejected", 0.1)
    assert "candidate_val_recall_at_1" not in same

    # A candidate whose fingerprint is not what the frames on disk hold cannot be judged on them.
    stale, stale_report = make_candidate(tmp_path / "stale", 0.5, 41, data=data_a, cfg=encoder)
    with pytest.raises(PromoteError, match=f"content fingerprint {data_a}, but .* hold {data_b}; re-run `dvc repro"):
        promote(PromoteConfig(checkpoint=str(stale)), stale_report, manifest=manifest, frames_dir=frames_b)


def test_a_checkpoint_not_resumed_says_which_settings_or_data_differ() -> None:
    from slic.config import PretrainConfig
    from slic.pretrain import _what_changed, fingerprint

    base = PretrainConfig()
    was, now = fingerprint(base, "aaaa"), fingerprint(PretrainConfig(frame_step=1, lr=0.002), "aaaa")
    assert _what_changed(was, now) == "other settings: frame_step 2 (now 1), lr 0.001 (now 0.002)"
    assert _what_changed(was, fingerprint(base, "bbbb")) == "other data (content fingerprint aaaa, now bbbb)"


def test_a_checkpoint_from_before_a_new_setting_resumes_only_at_its_default() -> None:
    """Upgrading slic mid-run keeps the checkpoint when the new setting is left at its default."""
    from slic.config import PretrainConfig
    from slic.pretrain import _what_changed, fingerprint, same_fingerprint

    now = fingerprint(PretrainConfig(), "aaaa")
    older = {k: v for k, v in now.items() if k != "cluster_start_epoch"}  # written before the setting existed
    assert same_fingerprint(older, now)
    assert not same_fingerprint(older, fingerprint(PretrainConfig(cluster_start_epoch=4), "aaaa"))
    assert not same_fingerprint(older, fingerprint(PretrainConfig(), "bbbb"))  # other data
    assert not same_fingerprint({**now, "removed_setting": 1}, now)
    assert not same_fingerprint({**now, "lr": 0.5}, now)
    # The warning names only what really differs, not the setting added at its default.
    assert _what_changed(older, fingerprint(PretrainConfig(lr=0.002), "aaaa")) == "other settings: lr 0.001 (now 0.002)"


def test_a_manifest_logged_as_a_run_input_raises_no_warning_and_keeps_its_integer_columns(workspace: Path) -> None:
    """make run printed MLflow's integer-column hint at every stage that logs its data; the record keeps the types."""
    import warnings

    from slic.tracking import manifest_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = manifest_dataset(workspace / "data/manifests/validated.csv", "0123456789abcdef", ("train",))
        entity = dataset._to_mlflow_entity()
    columns = {c["name"]: c["type"] for c in json.loads(entity.schema)["mlflow_colspec"]}
    assert columns["label"] == columns["frames"] == "long" and columns["video_id"] == "string"


def test_a_run_in_a_git_checkout_records_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's run page shows `mlflow.source.git.commit` as the source's version: the code a result came from."""
    from slic.stage_run import dvc_tags, git_tags

    monkeypatch.chdir(tmp_path)
    assert git_tags() == {}  # not a checkout
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}
    subprocess.run(["git", "init", "-q"], check=True)
    assert git_tags() == {}  # a checkout without a commit yet
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "first"], check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_tags() == {"mlflow.source.git.commit": head}
    monkeypatch.chdir(tmp_path.parent)  # the flow names its checkout, wherever it runs from
    assert git_tags(tmp_path) == {"mlflow.source.git.commit": head} and git_tags() == {}
    for name in ("DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    assert dvc_tags() == {}  # `slic evaluate` by hand: no DVC stage to name
