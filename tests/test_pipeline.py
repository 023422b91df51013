"""End to end: `dvc repro` of the real dvc.yaml on a tiny synthetic set, in a temporary repo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TINY = {
    "synth": {"classes": 3, "groups": 4, "clips_per_group": 2, "frames": 32, "width": 64, "height": 48},
    "synth_transfer": {"classes": 2, "groups": 4, "clips_per_group": 2, "frames": 32, "width": 64, "height": 48},
    "manifest": {"workers": 2},
    "extract": {"short_side": 32},
    "pretrain": {"epochs": 2, "size": 16, "batch_size": 8, "hidden_dim": 32, "workers": 0, "cluster_interval": 1,
                 "eval_interval": 1},
    "embed": {"clips": 2, "workers": 0},
    "linear_probe": {"epochs": 1, "milestones": [1], "size": 16, "batch_size": 8, "workers": 0},
    "finetune": {"epochs": 1, "milestones": [1], "size": 16, "batch_size": 8, "workers": 0},
}
STAGES = ["synth", "synth_transfer", "manifest", "validate", "extract", "flow", "pretrain", "embed", "evaluate",
          "clusters", "spread_labels", "eval_data@synthetic_unseen", "transfer@synthetic_unseen", "classify@synthetic_unseen", "index", "promote", "ablation", "ablation_flow",
          "linear_probe", "finetune"]


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # No inherited MLflow store: the stages use the repo's own mlflow.db, a registry with no champion yet.
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran(result: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]


def recall_at_1_by_hand(embeddings: Path) -> float:
    """Share of test videos whose most cosine-similar train video has their class, recomputed with numpy."""
    data = np.load(embeddings)
    unit = data["embedding"] / np.linalg.norm(data["embedding"], axis=1, keepdims=True)
    test, train = data["split"] == "test", data["split"] == "train"
    nearest = (unit[test] @ unit[train].T).argmax(axis=1)
    return float((data["label"][train][nearest] == data["label"][test]).mean())


def downstream(repo: Path, stage: str) -> set[str]:
    """Every stage that depends, directly or not, on `stage`: the edges of `dvc dag --dot`, followed."""
    edges = [line.rstrip(";").split(" -> ") for line in dvc(repo, "dag", "--dot").stdout.splitlines() if " -> " in line]
    found, frontier = set(), {stage}
    while frontier:
        frontier = {b.strip('"') for a, b in edges if a.strip('"') in frontier} - found
        found |= frontier
    return found


def set_params(repo: Path, section: str, **values: object) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "slic", repo / "slic", ignore=shutil.ignore_patterns("__pycache__"))  # code deps
    shutil.copytree(ROOT / "presets", repo / "presets")  # evaluate's paper preset
    shutil.copytree(ROOT / "add_to_index", repo / "add_to_index")  # index's folder of added videos (README only)
    shutil.copytree(ROOT / "labels", repo / "labels")  # spread_labels' folder of given labels (README only)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    return repo


def test_repro_builds_every_output_then_is_a_no_op(repo: Path) -> None:
    first = dvc(repo, "repro")
    assert ran(first) == STAGES
    manifest = pd.read_csv(repo / "data/manifests/manifest.csv")
    assert len(manifest) == 24 and set(manifest["split"]) == {"train", "val", "test"}
    assert len(pd.read_csv(repo / "data/manifests/validated.csv")) == 24
    index = pd.read_csv(repo / "data/frames/index.csv")
    assert len(index) == 24 and (index["frames"] == 32).all() and (index["height"] == 32).all()
    assert len(list((repo / "data/frames").rglob("*.shard"))) == 24
    extract = json.loads((repo / "reports/extract.json").read_text())
    assert extract["failed"] == [] and extract["extracted"] == 24
    assert (extract["near_twins"]["queries"], extract["near_twins"]["with_twin"]) == (
        int((manifest["split"] == "test").sum()), 0)  # split by group: no test scene is a train scene
    assert (repo / "data/validation/docs/index.html").is_file()
    pretrain = json.loads((repo / "reports/pretrain.json").read_text())
    assert pretrain["mode"] == "slic" and pretrain["epochs"] == 2 and pretrain["mlflow_run_id"]
    assert pretrain["machine"]["cpu_count"] == os.cpu_count() and pretrain["machine"]["cpu_model"]
    assert (repo / "data/models/pretrain/best.pt").is_file() and (repo / "data/models/pretrain/last.pt").is_file()
    retrieval = json.loads((repo / "reports/retrieval.json").read_text())
    test_videos = int((manifest["split"] == "test").sum())
    assert retrieval["queries"] == test_videos and retrieval["gallery"] == int((manifest["split"] == "train").sum())
    assert [retrieval[f"recall@{k}"] for k in (1, 5, 10, 20, 50)] == sorted(retrieval[f"recall@{k}"]
                                                                          for k in (1, 5, 10, 20, 50))
    assert retrieval["recall@50"] == 1.0  # the gallery is smaller than 50: every class is found
    index_report = json.loads((repo / "reports/index.json").read_text())
    assert (index_report["kind"], index_report["vectors"]) == ("flat", retrieval["gallery"])
    rows = pd.read_csv(repo / "data/index/rows.csv")
    assert len(rows) == retrieval["gallery"] and rows["path"].map(lambda p: (repo / p).is_file()).all()
    assert "recall@1" in (repo / "reports/retrieval.html").read_text()  # evaluate's HTML report (tests/test_report.py)
    clusters = json.loads((repo / "reports/clusters.json").read_text())  # every video grouped (test_archive_clusters)
    assert clusters["videos"] == 24 and clusters["labelled"] and 1 <= clusters["groups"] <= 24
    assert len(pd.read_csv(repo / "reports/clusters.csv")) == 24 and (repo / "reports/clusters.html").is_file()
    next_up = pd.read_csv(repo / "reports/label_next.csv", keep_default_na=False)  # no labels yet: what to label
    assert len(next_up) == clusters["groups"] and set(next_up["class"]) == {""}
    assert json.loads((repo / "reports/spread_labels.json").read_text())["given"] == 0
    curve = pd.read_csv(repo / "reports/retrieval_recall.csv")
    assert curve["k"].tolist() == [1, 5, 10, 20, 50]
    ablation = json.loads((repo / "reports/ablation.json").read_text())
    assert set(ablation["modes"]) == {"slic", "intra_video", "random_init", "oracle"}
    assert ablation["modes"]["slic"]["recall@1"] == retrieval["recall@1"]  # the main run, not retrained
    assert ablation["modes"]["slic"]["trained_by"] == "pretrain stage"
    assert retrieval["recall@1"] == pytest.approx(recall_at_1_by_hand(repo / "data/embeddings/embeddings.npz"))
    for mode in ("intra_video", "random_init", "oracle"):
        assert (repo / f"data/models/ablation/{mode}/best.pt").is_file()
        row = ablation["modes"][mode]
        embeddings = repo / f"data/models/ablation/{mode}/embeddings.npz"
        assert row["recall@1"] == pytest.approx(recall_at_1_by_hand(embeddings))
        assert row["recall@50"] == 1.0
    flow = json.loads((repo / "reports/flow.json").read_text())  # flow.enabled false: pretrain reads no flow
    assert (flow["enabled"], flow["pairs_computed"]) == (False, 0) and not list((repo / "data/flow").rglob("*.shard"))
    ablation_flow = json.loads((repo / "reports/ablation_flow.json").read_text())
    assert ablation_flow["rgb"]["recall@1"] == retrieval["recall@1"]  # the main (RGB-only) run, not retrained
    assert ablation_flow["rgb_flow"]["trained_by"] == "ablation_flow stage"
    train_videos = int((manifest["split"] == "train").sum())
    computed = ablation_flow["flow_computed_here"]  # its own flow, at the clips' frame_step: half the pairs
    assert (computed["computed"], computed["frame_step"]) == (train_videos, 2)
    assert computed["pairs_computed"] == train_videos * ((32 - 1) // 2)
    assert len(list((repo / "data/models/ablation_flow/flow").rglob("*.shard"))) == train_videos
    assert (repo / "data/models/ablation_flow/rgb_flow/best.pt").is_file()
    promotion = json.loads((repo / "reports/promotion.json").read_text())
    assert (promotion["decision"], promotion["version"], promotion["champion_metric"]) == ("promoted", "1", "none")
    finetune = json.loads((repo / "reports/finetune.json").read_text())
    assert set(finetune) == {"pretrained", "scratch", "linear_probe"} and finetune["scratch"]["epochs"] == 1
    assert set(ablation["findings"]) >= {"slic_minus_random_init_points", "slic_minus_intra_video_points",
                                         "bars_met"}
    # The transfer set: 2 motions synth never shows (SpeedUp, SlowDown), 1 held-out group of 4 as test.
    data = json.loads((repo / "reports/transfer/synthetic_unseen/data.json").read_text())
    assert (data["usable_videos"], data["splits"], data["validation"]["success"]) == (16, {"test": 4, "train": 12}, True)
    transfer = json.loads((repo / "reports/transfer/synthetic_unseen/retrieval.json").read_text())
    assert set(transfer["pretrained"]["per_class"]) == {"SpeedUp", "SlowDown"} and transfer["mode"] == "slic"
    assert (transfer["pretrained"]["queries"], transfer["pretrained"]["gallery"]) == (4, 12)
    assert transfer["in_domain_recall@1"] == retrieval["recall@1"]
    assert transfer["gain_over_random_init_points"] == pytest.approx(
        100 * (transfer["pretrained"]["recall@1"] - transfer["random_init"]["recall@1"]), abs=0.01)
    assert transfer["pretrained"]["recall@1"] == pytest.approx(
        recall_at_1_by_hand(repo / "data/transfer/synthetic_unseen/pretrained.npz"))
    assert "SpeedUp" in (repo / "reports/transfer/synthetic_unseen/retrieval.html").read_text()
    classify = json.loads((repo / "reports/transfer/synthetic_unseen/classify.json").read_text())
    assert classify["enabled"] and classify["videos"] == {"train": 8, "val": 4, "test": 4}  # a train group carved
    assert classify["classes"] == 2 and set(classify["finetune"]) == {"pretrained", "scratch"}

    second = dvc(repo, "repro")
    assert ran(second) == []
    assert "Data and pipelines are up to date" in second.stdout


def test_changing_one_param_reruns_only_its_stages(repo: Path) -> None:
    dvc(repo, "repro")
    set_params(repo, "evaluate", ks=[1, 5, 10])
    assert ran(dvc(repo, "repro")) == ["evaluate", "transfer@synthetic_unseen", "ablation", "ablation_flow"]
    # A second eval set runs only its own two stages; a change to one set re-runs only that set's stages.
    set_params(repo, "eval_sets", seen={"root": "data/raw/synthetic", "layout": "synthetic", "split": 2})
    assert ran(dvc(repo, "repro")) == ["eval_data@seen", "transfer@seen", "classify@seen"]
    assert json.loads((repo / "reports/transfer/seen/classify.json").read_text())["enabled"] is False  # not asked
    seen = json.loads((repo / "reports/transfer/seen/retrieval.json").read_text())
    assert set(seen["pretrained"]["per_class"]) == {"Slide", "Rise", "Fall"}  # the training motions, split 2
    set_params(repo, "eval_sets", synthetic_unseen={**yaml.safe_load((repo / "params.yaml").read_text())[
        "eval_sets"]["synthetic_unseen"], "min_frames": 30})
    # Its shards are reused, identical, so transfer is not re-run; classify reads the whole section, re-runs
    # and resumes its finished checkpoints instead of training again.
    assert ran(dvc(repo, "repro")) == ["eval_data@synthetic_unseen", "classify@synthetic_unseen"]
    data = json.loads((repo / "reports/transfer/synthetic_unseen/data.json").read_text())
    assert (data["extract"]["extracted"], data["extract"]["reused"]) == (0, 16)
    classify = json.loads((repo / "reports/transfer/synthetic_unseen/classify.json").read_text())
    assert [classify["linear_probe"]["resumed_from_epoch"], classify["finetune"]["scratch"]["resumed_from_epoch"]] \
        == [1, 1]
    assert "recall@20" not in json.loads((repo / "reports/retrieval.json").read_text())
    # Labels for some videos (labels/given.csv, DVC watches the folder): only spread_labels runs, and names them all.
    with (repo / "reports/label_next.csv").open(newline="") as handle:
        suggested = [row["video_id"] for row in csv.DictReader(handle)]
    (repo / "labels/given.csv").write_text("video_id,class\n" + "".join(f"{v},{v.split('/')[0]}\n" for v in suggested))
    assert ran(dvc(repo, "repro")) == ["spread_labels"]
    named = pd.read_csv(repo / "reports/spread_labels.csv", keep_default_na=False)
    assert len(named) == 24 and set(named["source"]) == {"given", "nearest"} and (named["class"] != "").all()
    # Copied to labels/train/ (what pretrain.mode labels trains on, and promote compares encoders on where the videos
    # have no classes): pretrain, and only it of the stages before spread_labels, is out of date, and promote;
    # taken out again, nothing is.
    (repo / "labels/train/given.csv").write_text((repo / "labels/given.csv").read_text())
    stale = json.loads(dvc(repo, "status", "--json").stdout)
    assert {"changed deps": {"labels/train": "modified"}} in stale["pretrain"], stale["pretrain"]
    assert {"changed deps": {"labels/train": "modified"}} in stale["promote"], stale["promote"]
    assert set(stale) == {"pretrain", "spread_labels", "promote"}
    (repo / "labels/train/given.csv").unlink()
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    # Without the flow view nothing before ablation_flow waits for or depends on the flow settings.
    set_params(repo, "flow", warps=3)
    assert ran(dvc(repo, "repro")) == ["flow", "ablation_flow"]
    # A new extraction setting changes extract and nothing before it (a dry run lists only the stages whose
    # own inputs changed).
    set_params(repo, "extract", quality=6)  # the eval sets are extracted with the same settings
    assert ran(dvc(repo, "repro", "--dry")) == ["extract", "eval_data@synthetic_unseen", "eval_data@seen"]
    set_params(repo, "extract", quality=yaml.safe_load((ROOT / "params.yaml").read_text())["extract"]["quality"])
    # A new validation carve changes the manifest: extract reuses its shards, and what trains or measures on the
    # splits is out of date. Which stages those are is the DAG's answer (re-running them all would retrain every
    # model; the first test runs every stage).
    set_params(repo, "manifest", seed=11)
    assert ran(dvc(repo, "repro", "extract")) == ["manifest", "validate", "extract"]
    extract = json.loads((repo / "reports/extract.json").read_text())
    assert (extract["extracted"], extract["reused"]) == (0, 24)
    stale = json.loads(dvc(repo, "status", "--json").stdout)
    assert {"flow", "pretrain", "embed", "evaluate", "index", "promote", "linear_probe", "finetune"} <= set(stale)
    changed = {path for entry in stale["pretrain"] for path in entry.get("changed deps", {})}
    assert "data/manifests/validated.csv" in changed, stale["pretrain"]  # the new splits reach training
    later = {s for s in STAGES[STAGES.index("validate"):] if not s.startswith("eval_data@")}
    seen = {"transfer@seen", "classify@seen"}  # the eval sets' data does not depend on the training set
    assert downstream(repo, "manifest") == later | seen


def test_failed_validation_stops_repro_with_a_short_report(repo: Path) -> None:
    set_params(repo, "manifest", val_fraction=0.0)  # no class would have a validation video
    result = dvc(repo, "repro", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "manifest invalid: 1 of" in output
    assert "Slide in val (videos=0)" in output
    assert "Running stage 'extract'" not in output
    report = json.loads((repo / "reports/validate.json").read_text())
    assert report["success"] is False and report["failures"][0]["column"] == "videos"
    set_params(repo, "manifest", val_fraction=0.15)


def test_repro_on_unlabelled_videos_runs_to_the_end(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An archive without classes: `dvc repro` runs every stage (the transfer to a labelled eval set included,
    which reads evaluate's report) and the stages that only measure against classes record why they skipped."""
    archive = tmp_path / "archive"
    for number, video in enumerate(sorted(tiny_dataset.rglob("*.avi"))):
        (archive / f"day{number % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(video, archive / f"day{number % 2}" / f"clip{number:02d}.avi")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "slic", repo / "slic", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "presets", repo / "presets")  # evaluate's paper preset
    shutil.copytree(ROOT / "add_to_index", repo / "add_to_index")
    shutil.copytree(ROOT / "labels", repo / "labels")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["manifest"].update(root=str(archive), layout="unlabelled", splits_dir="")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")

    assert ran(dvc(repo, "repro")) == STAGES
    retrieval = json.loads((repo / "reports/retrieval.json").read_text())
    assert retrieval["labelled"] is False and retrieval["queries"] == 24
    transfer = json.loads((repo / "reports/transfer/synthetic_unseen/retrieval.json").read_text())
    assert transfer["in_domain_recall@1"] is None and 0 <= transfer["pretrained"]["recall@1"] <= 1
    for name in ("ablation", "ablation_flow", "linear_probe", "finetune"):
        assert json.loads((repo / f"reports/{name}.json").read_text())["skipped"] is True, name
    promotion = json.loads((repo / "reports/promotion.json").read_text())
    assert (promotion["decision"], promotion["compared_on"]) == ("promoted", "no labels")
    assert ran(dvc(repo, "repro")) == []

    # A video that arrives later, put into add_to_index/: only `index` runs (no retraining), and search finds it.
    newcomer = repo / "add_to_index/later/newcomer.avi"
    newcomer.parent.mkdir()
    shutil.copy(next(tiny_dataset.rglob("*.avi")), newcomer)
    checkpoint = (repo / "data/models/pretrain/best.pt").read_bytes()
    assert ran(dvc(repo, "repro")) == ["index"]
    assert (repo / "data/models/pretrain/best.pt").read_bytes() == checkpoint
    index = json.loads((repo / "reports/index.json").read_text())
    assert (index["added"], index["added_embedded_now"], index["vectors"]) == (1, 1, index["gallery_videos"] + 1)
    from slic.cli import main

    monkeypatch.chdir(repo)  # in this process: a subprocess would cost the suite seconds of imports
    capsys.readouterr()
    assert main(["search", "add_to_index/later/newcomer.avi", "--json", "-k", "1"]) == 0
    hit = json.loads(capsys.readouterr().out)["queries"][0]["results"][0]
    assert (hit["video_id"], hit["class"]) == ("added/later/newcomer.avi", None)
