"""Pretraining modes beyond the paper's: the oracle ceiling, batch-all mining, cluster purity in the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slic.data.clips import VideoShard
from slic.pretrain import TrainState, initial_labels, is_cluster_epoch
from tests.test_pretrain import pretrain_in_process, workspace  # noqa: F401 (the module's fixture)


def _videos(labels: list[int]) -> list[VideoShard]:
    return [VideoShard(f"v{i}", f"v{i}.shard", 40, label, "train") for i, label in enumerate(labels)]


def test_initial_labels_per_mode() -> None:
    train = _videos([2, 0, 2, 1])
    fresh, resumed = TrainState(), TrainState(epoch=3, labels=[5, 5, 6, 7])
    assert initial_labels("oracle", train, fresh).tolist() == [2, 0, 2, 1]
    assert initial_labels("oracle", train, resumed).tolist() == [2, 0, 2, 1]  # never the clusters
    assert initial_labels("intra_video", train, fresh).tolist() == [0, 1, 2, 3]
    assert initial_labels("slic", train, fresh).tolist() == [0, 1, 2, 3]
    assert initial_labels("slic", train, resumed).tolist() == [5, 5, 6, 7]


def test_given_labels_train_their_videos_together_and_every_other_video_alone() -> None:
    from slic.pretrain_state import given_labels_fingerprint

    train = _videos([2, 0, 2, 1, 1])
    given = {"v0": 1, "v3": 1, "v4": 0}  # a user's classes for three videos, none the manifest's
    labels = initial_labels("oracle", train, TrainState(), given)
    assert labels[[0, 3, 4]].tolist() == [1, 1, 0]
    assert len({int(labels[1]), int(labels[2])} - {0, 1}) == 2  # v1, v2: a label each, shared with nobody
    assert given_labels_fingerprint("abc", given) != given_labels_fingerprint("abc", {**given, "v4": 1})
    assert given_labels_fingerprint("abc", given) == given_labels_fingerprint("abc", dict(reversed(given.items())))


def test_cluster_epochs_per_mode_and_start() -> None:
    from dataclasses import replace

    from slic.config import PretrainConfig

    base = PretrainConfig(cluster_interval=2)
    rounds = {(mode, start): [e for e in range(8) if is_cluster_epoch(replace(base, mode=mode, cluster_start_epoch=start), e)]
              for mode in ("slic", "oracle", "intra_video", "random_init") for start in (0, 3)}
    assert rounds[("slic", 0)] == [0, 2, 4, 6]  # the paper: from epoch 0
    assert rounds[("slic", 3)] == [3, 5, 7]
    assert rounds[("oracle", 0)] == rounds[("oracle", 3)] == [0, 2, 4, 6]  # monitoring only, never delayed
    assert rounds[("intra_video", 0)] == rounds[("random_init", 3)] == []


def test_slic_trains_on_intra_video_positives_until_cluster_start(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    dataset, report = pretrain_in_process(workspace, monkeypatch, epochs=3, cluster_interval=1, cluster_start_epoch=1,
                                          out="data/models/late_start")
    assert report["cluster_rounds"] == 2  # before epochs 1 and 2, none before epoch 0
    n = len(dataset.videos)
    first = [(index, label, positive) for epoch, index, label, positive, *_ in dataset.served if epoch == 0]
    assert sorted(index for index, _, _ in first) == list(range(n))
    assert all(label == index == positive for index, label, positive in first)  # each video its own label
    later = {label for epoch, _, label, *_ in dataset.served if epoch == 2}
    assert len(later) < n  # FINCH merged videos from the first round on
    with pytest.raises(ValueError, match="cluster_start_epoch 3 leaves no clustering round in pretrain.epochs 3"):
        pretrain_in_process(workspace, monkeypatch, epochs=3, cluster_start_epoch=3, out="data/models/never")


def test_oracle_trains_on_true_classes_and_monitors_its_clusters(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    dataset, report = pretrain_in_process(workspace, monkeypatch, mode="oracle", objective="triplet",
                                          mining="batch_all",
                                          temporal_weight=0.0, epochs=2, cluster_interval=1,
                                          out="data/models/oracle")
    true = np.array([v.label for v in dataset.videos])
    assert dataset.labels.tolist() == true.tolist() and len(set(true)) == 3
    cross_video = [(index, positive) for _, index, _, positive, _, _ in dataset.served if positive != index]
    assert cross_video and all(true[index] == true[positive] for index, positive in cross_video)
    assert report["mode"] == "oracle" and report["mining"] == "batch_all" and report["cluster_rounds"] == 2
    assert -1.0 <= report["cluster_ami_first"] <= 1.0 and -1.0 <= report["cluster_ami_last"] <= 1.0
    # Without the temporal term the second anchor view is neither made nor fed to the network.
    anchor, positive, view, *_ = dataset[0]
    assert view.numel() == 0 and anchor.shape == positive.shape


def test_given_labels_pair_only_the_videos_given_one_class_and_validate_on_the_true_ones(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from slic.config_check import ConfigError
    from slic.data.clips import load_videos

    train = load_videos(workspace / "data/manifests/validated.csv",
                        workspace / "data/frames", splits=["train"])
    apart = [v.video_id for v in train if v.label != train[0].label][:1]
    given = {train[0].video_id: 0, apart[0]: 0}  # two videos of other true classes, given one class
    dataset, report = pretrain_in_process(workspace, monkeypatch, given, mode="oracle", epochs=2,
                                          out="data/models/given")
    ids = [v.video_id for v in dataset.videos]
    labels = dict(zip(ids, dataset.labels.tolist()))
    assert labels[train[0].video_id] == labels[apart[0]] and len(set(labels.values())) == len(ids) - 1
    cross_video = {(ids[index], ids[positive]) for _, index, _, positive, _, _ in dataset.served if positive != index}
    assert cross_video and cross_video <= {(train[0].video_id, apart[0]), (apart[0], train[0].video_id)}
    assert 0.0 <= report["best_val_recall_at_1"] <= 1.0  # measured against the manifest's classes
    with pytest.raises(ConfigError, match="mode oracle, not slic"):
        pretrain_in_process(workspace, monkeypatch, given, mode="slic", epochs=1, out="data/models/never_given")


def test_slic_report_has_first_and_last_cluster_ami(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from sklearn.metrics import adjusted_mutual_info_score

    dataset, report = pretrain_in_process(workspace, monkeypatch, epochs=3, cluster_interval=1, out="data/models/ami")
    assert report["cluster_rounds"] == 3
    true = [v.label for v in dataset.videos]
    # The last round's labels are what the dataset trained on in the last epoch: its AMI is the reported one.
    assert report["cluster_ami_last"] == pytest.approx(adjusted_mutual_info_score(true, dataset.labels))


def test_gpu_decode_trains_the_same_weights_on_the_cpu(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """pretrain.gpu_decode moves JPEG decoding and augmentation into the training step: on the CPU device
    (the same decoder) every clip, and so every weight, is what the loader-decoded run gets."""
    import torch

    pretrain_in_process(workspace, monkeypatch, epochs=2, cluster_interval=1, out="data/models/decoded")
    dataset, report = pretrain_in_process(workspace, monkeypatch, epochs=2, cluster_interval=1, gpu_decode=True,
                                          out="data/models/encoded")
    assert dataset.decode is False and report["final_steps"] > 0
    decoded, encoded = (torch.load(workspace / f"data/models/{name}/last.pt", map_location="cpu",
                                   weights_only=False)["model"] for name in ("decoded", "encoded"))
    assert all(torch.equal(decoded[k], encoded[k]) for k in decoded)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_labels_mode_trains_on_the_classes_of_train_videos_and_retrains_when_they_change(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    from slic.data.datasets import read_manifest

    table = read_manifest(workspace / "data/manifests/validated.csv")
    train = table[table["split"] == "train"].sort_values("video_id")
    first, other = train.iloc[0], train[train["label"] != train.iloc[0]["label"]].iloc[0]
    third = train[~train["video_id"].isin([first["video_id"], other["video_id"]])].iloc[0]
    val = table[table["split"] == "val"].iloc[0]
    # Two train videos of other true classes given one class (one by id, one by its file), a third another class,
    # a val video labelled too (never trained on), a row left empty.
    labels = _write(workspace / "labels/train/given.csv",
                    f"video_id,path,class\n{first['video_id']},,jump\n,{other['path']},jump\n"
                    f"{third['video_id']},,wave\n{val['video_id']},,wave\n,,\n")
    dataset, report = pretrain_in_process(workspace, monkeypatch, mode="labels", labels=str(labels), epochs=2,
                                          out="data/models/labels")
    trained = dict(zip([v.video_id for v in dataset.videos], dataset.labels.tolist()))
    assert trained[first["video_id"]] == trained[other["video_id"]] != trained[third["video_id"]]
    assert len(set(trained.values())) == len(trained) - 1  # every unlabelled train video alone
    assert val["video_id"] not in trained
    assert report["labelled_videos"] == 4 and report["labelled_train_videos"] == 3
    assert report["labelled_outside_train"] == 1 and report["label_classes"] == 2
    assert report["cluster_rounds"] == 1 and 0.0 <= report["best_val_recall_at_1"] <= 1.0  # the true classes
    # The labels trained on travel with the weights into the embeddings (spread_labels leaves them out of its
    # leave-one-out share).
    import torch

    from slic.config import EmbedConfig
    from slic.distributed import World
    from slic.embed import embed_dataset

    best = workspace / "data/models/labels/best.pt"
    saved = torch.load(best, map_location="cpu", weights_only=False)["trained_labels"]
    assert set(saved) == {first["video_id"], other["video_id"], third["video_id"]}
    assert saved[first["video_id"]] == saved[other["video_id"]] != saved[third["video_id"]]
    embed_dataset(EmbedConfig(checkpoint=str(best), out=str(workspace / "labels.npz"), workers=0, clips=2),
                  manifest=workspace / "data/manifests/validated.csv", frames_dir=workspace / "data/frames",
                  world=World(0, 1, 0, torch.device("cpu")))
    assert sorted(np.load(workspace / "labels.npz")["trained_on"]) == sorted(saved)

    _, again = pretrain_in_process(workspace, monkeypatch, mode="labels", labels=str(labels), epochs=3,
                                   out="data/models/labels")
    assert again["resumed_from_epoch"] == 2  # the same labels: training goes on
    # A random check added later is never trained on: the finished run stays (promote can now compare on it).
    taken = [first["video_id"], other["video_id"], third["video_id"]]
    fourth = train[~train["video_id"].isin(taken)].iloc[0]
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([rows[0] + ",check", *(row + "," for row in rows[1:]),
                                 f"{fourth['video_id']},,wave,yes"]) + "\n")
    _, checked = pretrain_in_process(workspace, monkeypatch, mode="labels", labels=str(labels), epochs=3,
                                     out="data/models/labels")
    assert (checked["resumed_from_epoch"], checked["checks_left_out"]) == (3, 1)
    labels.write_text(labels.read_text().replace(f"{third['video_id']},,wave", f"{third['video_id']},,jump")
                      .replace(f"{first['video_id']},,jump", f"{first['video_id']},,wave"))
    with caplog.at_level("WARNING", logger="slic.pretrain_state"):
        _, edited = pretrain_in_process(workspace, monkeypatch, mode="labels", labels=str(labels), epochs=3,
                                        out="data/models/labels")
    assert edited["resumed_from_epoch"] == 0  # other labels: trained again from scratch, saying why
    assert "was trained with other data or labels (content fingerprint" in caplog.text


def test_labels_mode_stops_on_labels_it_cannot_train_on(workspace: Path) -> None:  # noqa: F811
    from slic.data.datasets import read_manifest
    from slic.labels_table import LabelsError, read_training_labels

    manifest = workspace / "data/manifests/validated.csv"
    table = read_manifest(manifest)
    train = table[table["split"] == "train"]["video_id"].tolist()
    test = table[table["split"] == "test"]["video_id"].tolist()
    with pytest.raises(LabelsError, match=r"missing\.csv not found: .*cp labels/given\.csv labels/train/given\.csv"):
        read_training_labels(workspace / "missing.csv", manifest, train)
    only_test = _write(workspace / "only_test.csv", f"video_id,class\n{test[0]},a\n{test[1]},b\n{train[0]},a\n")
    with pytest.raises(LabelsError, match=r"only_test\.csv: 1 of its 3 labelled videos \(test 2, train 1\) are train "
                                          r"videos long enough to train, of 1 class\(es\)"):
        read_training_labels(only_test, manifest, train)
    unknown = _write(workspace / "unknown.csv", f"video_id,class\n{train[0]},a\nv_Nowhere_g01_c01,b\n")
    with pytest.raises(LabelsError, match=r"unknown\.csv:3: video_id 'v_Nowhere_g01_c01' is not among the 24 videos "
                                          r"of the manifest \(.*validated\.csv lists them"):
        read_training_labels(unknown, manifest, train)
    # Too short to train: read and counted, not trained on; nor is a random check (kept to measure the names).
    fine = _write(workspace / "fine.csv", f"video_id,class,check\n{train[0]},a,\n{train[1]},a,\n{train[2]},b,\n"
                                          f"{train[3]},b,yes\n")
    read = read_training_labels(fine, manifest, train[1:])
    assert read.by_video == {train[1]: 0, train[2]: 1} and read.names == ["a", "b"]
    assert (read.summary["labelled_too_short"], read.summary["checks_left_out"]) == (1, 1)
    assert read.summary["labelled_train_videos"] == 2


def test_labels_mode_stage_keeps_the_labels_with_its_mlflow_run_and_names_a_missing_file(
        workspace: Path) -> None:  # noqa: F811
    import json

    import mlflow

    from slic.data.datasets import read_manifest
    from tests.test_pretrain import finish, slic

    missing = slic(workspace, "pretrain", mode="labels", labels="labels/train/none.csv", out="data/models/no_labels")
    output, _ = missing.communicate(timeout=300)
    assert missing.returncode == 2, output
    assert "slic pretrain: error: labels/train/none.csv not found: pretrain.mode labels" in output
    assert not (workspace / "data/models/no_labels/last.pt").exists()
    train = read_manifest(workspace / "data/manifests/validated.csv").query("split == 'train'")
    _write(workspace / "labels/train/stage.csv",
           "video_id,class\n" + "".join(f"{v},{c}\n" for v, c in zip(train["video_id"][:6], train["class"][:6])))
    output = finish(slic(workspace, "pretrain", mode="labels", labels="labels/train/stage.csv", epochs=1,
                         out="data/models/stage_labels"))
    assert "pretrain (labels): trained on 6 labelled train videos of" in output
    assert "note: pretrain.labels" not in output  # inside labels/train/: watched, nothing to say
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert (report["mode"], report["labelled_train_videos"]) == ("labels", 6) and "watch_note" not in report
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    client = mlflow.tracking.MlflowClient()
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.params["labels"] == "labels/train/stage.csv" and run.data.metrics["labelled_train_videos"] == 6
    assert [a.path for a in client.list_artifacts(run.info.run_id, "labels")] == ["labels/stage.csv"]


def test_a_labels_file_outside_the_folder_dvc_watches_is_named_with_the_command_that_reruns_its_stage() -> None:
    from slic.cli import unwatched_note

    assert unwatched_note("promote.labels", "labels/train/given.csv", "labels/train", "promote") == ""
    assert unwatched_note("pretrain.labels", "labels/given.csv", "labels/train", "pretrain") == (
        "pretrain.labels labels/given.csv is outside labels/train/, the folder dvc.yaml watches: after editing it run "
        "`dvc repro --single-item --force pretrain`")
