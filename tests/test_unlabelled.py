"""Unlabelled videos: a folder with no class folders and no split files is listed, validated, pretrained on,
embedded, evaluated without labels, indexed, searched and registered; the stages that only measure against
classes skip with one line saying what works instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from slic.cli import main
from slic.config import ManifestConfig
from slic.data.datasets import DatasetError, build_manifest, has_labels
from slic.data.validate import validate_manifest
from tests.conftest import ROOT

TINY = {"manifest": {"workers": 1}, "extract": {"short_side": 32, "workers": 1},
        "pretrain": {"epochs": 2, "size": 16, "batch_size": 8, "hidden_dim": 32, "workers": 0, "cluster_interval": 1,
                     "eval_interval": 1, "frame_cache_mb": 64},
        "embed": {"clips": 2, "workers": 0},
        "linear_probe": {"epochs": 1, "milestones": [1], "size": 16, "batch_size": 8, "workers": 0},
        "finetune": {"epochs": 1, "milestones": [1], "size": 16, "batch_size": 8, "workers": 0}}


@pytest.fixture(scope="module")
def archive(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set's videos renamed into nested folders that say nothing of their class (no split files)."""
    root = tmp_path_factory.mktemp("archive")
    for number, video in enumerate(sorted(tiny_dataset.rglob("*.avi"))):
        folder = root / f"day{number % 3}" / ("deeper" if number % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, folder / f"clip{number:02d}.avi")
    (root / "day0" / "notes.txt").write_text("not a video")
    (root / ".cache").mkdir()
    shutil.copy(next(tiny_dataset.rglob("*.avi")), root / ".cache" / "hidden.avi")
    return root


def test_manifest_lists_every_video_at_any_depth_without_classes(archive: Path) -> None:
    table = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1))
    assert len(table) == 24 and set(table["split"]) == {"train"}  # no carve: nothing to validate on, all train
    assert set(table["label"]) == {-1} and set(table["class"]) == {""} and not has_labels(table)
    assert "day1/deeper/clip01" in set(table["video_id"]) and not table["video_id"].str.contains("hidden").any()
    assert validate_manifest(table, min_frames=32, labelled=False).success
    refused = validate_manifest(table, min_frames=32, labelled=True)  # as if labels were promised: none there
    assert not refused.success and any("label" in f.line() for f in refused.failures)
    empty = archive.parent / "empty_archive"
    empty.mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match="no videos with extensions"):
        build_manifest(ManifestConfig(root=str(empty), layout="unlabelled"))


def run(workspace: Path, *args: str) -> int:
    return main(["--params", str(workspace / "params.yaml"), *args])


def test_pretrain_index_and_search_on_unlabelled_videos(archive: Path, tiny_dataset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["manifest"].update(root=str(archive), layout="unlabelled", splits_dir="")
    params["eval_sets"] = {"labelled": {"root": str(tiny_dataset), "layout": "synthetic",  # evaluated elsewhere
                                        "classify": True}}
    for section, values in TINY.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "add_to_index").mkdir()  # as in a checkout: the index stage's folder of added videos, empty

    for stage in ("manifest", "validate", "extract", "pretrain", "embed", "index"):
        assert run(tmp_path, stage) == 0, stage
    validated = pd.read_csv(tmp_path / "data/manifests/validated.csv", keep_default_na=False)
    assert len(validated) == 24 and set(validated["split"]) == {"train"}
    twins = json.loads((tmp_path / "reports/extract.json").read_text())["near_twins"]
    assert (twins["scope"], twins["videos"]) == ("archive", 24)  # no split: twins of other files, not test vs train
    pairs = pd.read_csv(tmp_path / twins["pairs_file"], keep_default_na=False)  # every pair, beside the shards
    assert twins["pairs_file"] == "reports/near_twins.csv" and set(pairs["video_id"]) <= set(validated["video_id"])
    assert twins["with_twin"] / 2 <= len(pairs) <= twins["with_twin"]  # each pair once, both its videos counted
    pretrain = json.loads((tmp_path / "reports/pretrain.json").read_text())
    assert pretrain["labelled"] is False and pretrain["best_val_recall_at_1"] is None
    assert pretrain["best_epoch"] == 2 and pretrain["cluster_rounds"] == 2
    assert "cluster_ami_last" not in pretrain and "no labels" in pretrain["checkpoint_choice"]
    assert pretrain["short_run_note"].endswith("set pretrain.epochs: 104")  # 24 videos: 3 steps of 8 an epoch
    history = json.loads((tmp_path / "data/models/pretrain/history.json").read_text())
    assert [h["cluster_n_clusters"] > 0 for h in history] == [True, True]  # slic clustered every epoch
    assert not any("val_recall_at_1" in h or "cluster_ami" in h for h in history)  # nothing measured on classes
    index = json.loads((tmp_path / "reports/index.json").read_text())
    assert index["vectors"] == 24

    capsys.readouterr()
    query = archive / "day1" / "deeper" / "clip01.avi"
    assert run(tmp_path, "search", str(query), "-k", "3", "--json") == 0
    answer = json.loads(capsys.readouterr().out)["queries"][0]
    assert answer["results"][0]["path"].endswith("day1/deeper/clip01.avi")  # itself first
    # Near 1, not 1: the index holds the JPEG shards' embedding, the query is decoded from the file itself.
    assert answer["results"][0]["similarity"] == pytest.approx(1.0, abs=0.01) and len(answer["results"]) == 3
    # A video the user labelled (spread_labels' table) shows their class among the hits, marked as theirs; the
    # others, unlabelled, have none (before, every hit read `-`, labelled or not).
    own = validated.loc[validated["path"].str.endswith("day1/deeper/clip01.avi"), "video_id"].item()
    other = validated.loc[validated["video_id"] != own, "video_id"].iloc[0]
    table = tmp_path / "reports/spread_labels.csv"
    pd.DataFrame([[own, "jump", "given"], [other, "run", "given"]],
                 columns=["video_id", "class", "source"]).to_csv(table, index=False)
    assert run(tmp_path, "search", str(query), "-k", "3", "--json") == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert (hits[0]["class"], hits[0]["labelled"]) == ("jump", True)
    assert all(hit["class"] in (None, "run") and hit.get("labelled", False) == (hit["class"] is not None)
               for hit in hits[1:])
    table.unlink()

    # evaluate has no recall to measure: each video queries the others, and the report says what needs no labels.
    capsys.readouterr()
    assert run(tmp_path, "evaluate") == 0
    said = capsys.readouterr()
    assert "no class labels, so no recall" in said.out
    retrieval = json.loads((tmp_path / "reports/retrieval.json").read_text())
    alike = retrieval["mean_pairwise_cosine"] >= 0.5  # 2 epochs on 24 videos may not have trained yet
    assert ("warning" in retrieval) == alike == ("evaluate: warning: the videos' embeddings are nearly" in said.err)
    assert retrieval["labelled"] is False and (retrieval["queries"], retrieval["gallery"]) == (24, 24)
    assert not any(key.startswith("recall@") for key in retrieval)
    cosines = [retrieval[f"neighbour_cosine@{k}"] for k in (1, 5, 10, 20)]
    assert cosines == sorted(cosines, reverse=True) and "neighbour_cosine@50" not in retrieval  # 23 others
    assert 1.0 <= retrieval["effective_rank"] <= retrieval["embedding_dim"]
    assert (tmp_path / "reports/retrieval_recall.csv").read_text() == "k,recall\n"
    page = (tmp_path / "reports/retrieval.html").read_text()
    assert "<title>Nearest neighbours (videos without classes)</title>" in page
    assert page.count('class="video query"') == 12 and page.count('class="video neighbour"') == 12 * 5
    assert "hit" not in page.split("</style>")[1]  # no hit or miss without classes

    # The archive grouped by the encoder: every video in the table, its groups' most typical videos first.
    assert run(tmp_path, "clusters") == 0
    clusters = json.loads((tmp_path / "reports/clusters.json").read_text())
    assert clusters["labelled"] is False and clusters["videos"] == 24 and "ami" not in clusters
    table = pd.read_csv(tmp_path / "reports/clusters.csv", keep_default_na=False)
    assert table["path"].map(lambda path: str(archive) in path).all() and (table["class"] == "").all()
    assert (table.groupby("group")["rank_in_group"].min() == 0).all()

    # The encoder learnt without labels, evaluated on a labelled set it never saw (the transfer protocol),
    # after evaluate wrote its label-free report (dvc repro runs transfer@NAME after evaluate).
    assert run(tmp_path, "eval-data", "labelled") == 0 and run(tmp_path, "transfer", "labelled") == 0
    transfer = json.loads((tmp_path / "reports/transfer/labelled/retrieval.json").read_text())
    assert transfer["mode"] == "slic" and transfer["in_domain_recall@1"] is None  # no in-domain number without labels
    assert transfer["pretrained"]["queries"] == 6 and transfer["pretrained"]["gallery"] == 18
    # The archive is the labelled set's videos renamed: every test video was trained on, and the stage says so.
    twins = transfer["pretraining_twins"]
    assert (twins["queries"], twins["with_twin"]) == (6, 6) and twins["examples"][0]["cosine"] == pytest.approx(1.0)
    assert "6 of 6 test videos (100%) look nearly the same as a video the encoder trained on" in transfer["advice"][0]
    assert transfer["advice"][0].endswith("every pair: reports/transfer/labelled/pretraining_twins.csv")
    pairs = pd.read_csv(tmp_path / twins["pairs_file"], keep_default_na=False)  # each with both files, to act on
    assert len(pairs) == 6 and all(Path(path).is_file() for path in [*pairs["path"], *pairs["twin_path"]])
    assert all(str(archive) in path for path in pairs["twin_path"])  # the archive's file, the one trained on
    assert not any(str(archive) in path for path in pairs["path"])  # the eval set's own file
    assert 0.0 <= transfer["pretrained"]["recall@1"] <= 1.0 and "recall@1" in transfer["random_init"]
    page = (tmp_path / "reports/transfer/labelled/retrieval.html").read_text()
    assert "<title>Transfer report: eval set labelled</title>" in page and "never trained on these videos" in page
    assert page.count('class="baseline"') == len(params["evaluate"]["ks"])  # random_init beside every recall@k
    # ... and classified there: the paper finetunes its UCF101 encoder on HMDB51 (its Kinetics one on UCF101).
    assert run(tmp_path, "classify", "labelled") == 0
    classify = json.loads((tmp_path / "reports/transfer/labelled/classify.json").read_text())
    assert classify["videos"] == {"train": 12, "val": 6, "test": 6}  # one of the 3 train groups carved into val
    splits = pd.read_csv(classify["splits_table"], keep_default_na=False)
    numbers = splits["group"].str.rsplit("/", n=1).str[-1]
    assert not set(numbers[splits["split"] == "val"]) & set(numbers[splits["split"] == "train"])  # by whole group
    assert classify["linear_probe"]["pretrained_from"] == "data/models/pretrain/best.pt"
    assert set(classify["finetune"]) == {"pretrained", "scratch"} and classify["chance_top1"] == pytest.approx(33.33)
    assert classify["finetune_gain_over_scratch_points"] == pytest.approx(
        classify["finetune"]["pretrained"]["top1"] - classify["finetune"]["scratch"]["top1"], abs=0.01)
    assert (tmp_path / "data/classify/labelled/finetune/scratch/best.pt").is_file()
    import mlflow

    runs = mlflow.search_runs(experiment_names=["slic"], output_format="list")
    parent = next(r for r in runs if r.info.run_name.startswith("classify labelled slic"))
    children = {(r.info.run_name, r.data.tags["slic.stage"], r.data.tags["slic.classifier"]) for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {(f"classify@labelled/{name}", "classify@labelled", name)  # apart from the main stages' runs
                        for name in ("linear_probe", "finetune/pretrained", "finetune/scratch")}, children
    assert parent.data.metrics["finetune_pretrained_top1"] == classify["finetune"]["pretrained"]["top1"]
    assert parent.inputs.dataset_inputs[0].dataset.source  # the eval set's split table, as the run's input
    trained_by = torch.load(tmp_path / "data/models/pretrain/best.pt", map_location="cpu",
                            weights_only=False)["mlflow_run_id"]
    transferred = next(r for r in runs if r.data.tags.get("slic.stage") == "transfer@labelled")
    for measured in (parent, transferred):  # both name the encoder pretrained on the archive
        assert measured.data.tags["slic.encoder_run_id"] == trained_by and measured.data.params["encoder.mode"] == "slic"

    # The stages that only measure against classes skip, say so, and leave their folders' contents alone.
    (tmp_path / "data/models/linear_probe").mkdir(parents=True)
    (tmp_path / "data/models/linear_probe/kept.pt").write_bytes(b"an earlier run's checkpoint")
    capsys.readouterr()
    for stage, folder in (("ablation", "ablation"), ("ablation-flow", "ablation_flow"),
                          ("linear-probe", "linear_probe"), ("finetune", "finetune")):
        assert run(tmp_path, stage) == 0, stage
        out = capsys.readouterr().out.strip().splitlines()
        assert out == [f"{stage}: skipped: {out[0].split(': skipped: ')[1]}"] and "eval_sets" in out[0], out
        report = json.loads((tmp_path / f"reports/{folder}.json").read_text())
        assert report["skipped"] is True and "has no class labels" in report["reason"] and "machine" not in report
        assert json.loads((tmp_path / f"data/models/{folder}/skipped.json").read_text())["reason"] == report["reason"]
    assert (tmp_path / "data/models/linear_probe/kept.pt").read_bytes() == b"an earlier run's checkpoint"

    # promote registers the encoder; with no champion it becomes one, a later one cannot be compared and waits.
    from slic import registry

    assert run(tmp_path, "promote") == 0
    first = json.loads((tmp_path / "reports/promotion.json").read_text())
    assert (first["decision"], first["compared_on"]) == ("promoted", "no labels")
    assert "metric_value" not in first and "without class labels" in first["reason"]
    assert run(tmp_path, "promote") == 0  # the same best.pt again: the champion's own weights
    again = json.loads((tmp_path / "reports/promotion.json").read_text())
    assert (again["decision"], again["version"], again["new_version"]) == ("already champion", first["version"], False)
    best = tmp_path / "data/models/pretrain/best.pt"  # other weights: the same ones in other bytes will do
    torch.save({**torch.load(best, map_location="cpu", weights_only=False), "copied": True}, best)
    assert run(tmp_path, "promote") == 0
    second = json.loads((tmp_path / "reports/promotion.json").read_text())
    assert (second["decision"], second["alias_version"]) == ("not compared", first["version"])
    assert "set_registered_model_alias" in second["reason"]
    assert registry.alias_version("slic-encoder", "champion").version == first["version"]
    # Labelled by the user, retrained on the labels, compared on the random checks it never trained on.
    classes = [video.parent.name for video in sorted(tiny_dataset.rglob("*.avi"))]
    rows = [f"day{n % 3}/{'deeper/' if n % 2 else ''}clip{n:02d},{name},{'' if n % 2 else 'yes'}\n"
            for n, name in enumerate(classes)]
    (tmp_path / "labels/train").mkdir(parents=True)
    (tmp_path / "labels/train/given.csv").write_text("video_id,class,check\n" + "".join(rows))
    params["pretrain"]["mode"] = "labels"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run(tmp_path, "pretrain") == 0 and run(tmp_path, "promote") == 0
    retrained = json.loads((tmp_path / "reports/promotion.json").read_text())
    assert (retrained["compared_on"], retrained["labels_held_out"], retrained["labels_gallery"]) == (
        "your labels", 12, 24)
    assert retrained["decision"] == ("promoted" if retrained["candidate_labels_recall_at_1"] > retrained[
        "champion_labels_recall_at_1"] else "rejected")
    assert registry.alias_version("slic-encoder", "champion").version == retrained["alias_version"]
    capsys.readouterr()
    assert run(tmp_path, "embed-video", "--out", str(tmp_path / "v.npy"), str(query)) == 0  # the champion serves

    params["pretrain"].update(mode="oracle", out="data/models/oracle")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run(tmp_path, "pretrain") == 2
    assert "pretrain.mode oracle trains on the true classes" in capsys.readouterr().err


def test_a_stage_that_skipped_drops_its_record_once_the_videos_have_classes(
        tiny_manifest: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """skipped.json says why a folder holds no new result; on a labelled manifest the stage runs (here it then
    stops at the missing checkpoint) and that record goes, what else the folder held stays."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    manifest = tmp_path / params["extract"]["manifest"]
    manifest.parent.mkdir(parents=True)
    tiny_manifest.to_csv(manifest, index=False)
    folder = tmp_path / params["linear_probe"]["out"]
    folder.mkdir(parents=True)
    (folder / "skipped.json").write_text("{}")
    (folder / "kept.pt").write_bytes(b"an earlier run's checkpoint")
    assert run(tmp_path, "linear-probe") == 2
    assert "best.pt" in capsys.readouterr().err  # it ran, as a labelled stage: no checkpoint yet
    assert not (folder / "skipped.json").exists() and (folder / "kept.pt").is_file()
