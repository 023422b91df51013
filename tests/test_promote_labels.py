"""Promotion where the videos have no classes: the candidate and the champion compared on the user's labels that
neither trained on (slic.promote_labels), on real shards of the tiny set and a real registry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from slic.config import PretrainConfig, PromoteConfig
from slic.data.clips import VideoShard
from slic.labels_table import LabelsError
from slic.promote import promote
from slic.promote_labels import MIN_HELD_OUT, compare_on_labels, held_out_hits, sign_test_p
from slic.serving import VideoEncoder
from tests.test_pretrain import workspace  # noqa: F401 (the module's fixture: the tiny set's manifest and shards)
from tests.test_promote import store, version_tags  # noqa: F401 (a fresh registry in tmp_path)

ENCODER = PretrainConfig(backbone="r3d_18_narrow", hidden_dim=16, out_dim=8, size=16, clip_len=8)
MANIFEST = "data/manifests/validated.csv"  # in the workspace, with its shards under data/frames


def checkpoint_of(path: Path, seed: int, trained_labels: dict[str, int] | None = None) -> Path:
    """An untrained encoder saved as pretrain saves one, with the given labels it says it trained on."""
    from slic.pretrain import TrainState, build_encoder, save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = replace(ENCODER, seed=seed)
    torch.manual_seed(seed)
    save_checkpoint(path, build_encoder(cfg), None, TrainState(), cfg, "unlabelled-archive",
                    trained_labels=trained_labels)
    return path


def write_labels(path: Path, table: pd.DataFrame, *, by_path: int = 0) -> Path:
    """The true classes of `table`'s videos as a user's labels CSV; its first `by_path` rows name their file."""
    rows = [("", p, c) if k < by_path else (v, "", c)
            for k, (v, p, c) in enumerate(zip(table["video_id"], table["path"], table["class"]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("video_id,path,class\n" + "".join(f"{v},{p},{c}\n" for v, p, c in rows))
    return path


def test_a_candidate_whose_embeddings_are_all_alike_never_takes_the_alias_from_one_whose_are_not() -> None:
    """The audit: a 2-epoch encoder evaluate called collapsed (mean pairwise cosine 0.54) took the alias on 5
    labelled videos against 4 (p = 1). Alike against a trained champion (<= 0.08 on ucf101_6; untrained 0.97): vetoed;
    both alike, or neither: recall@1 decides."""
    from slic.promote import alike_veto

    said = alike_veto(0.542, 0.312)
    assert said.startswith("the candidate's embeddings of them are nearly all alike (mean pairwise cosine 0.542 >= "
                           "0.5; the champion's 0.312)") and "pretrain.epochs" in said
    assert alike_veto(0.97, 0.96) == "" and alike_veto(0.05, 0.97) == "" and alike_veto(0.05, 0.03) == ""
    assert alike_veto(None, 0.1) == ""


def test_the_sign_test_weighs_only_the_videos_one_encoder_names_rightly() -> None:
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) == 1.0
    assert sign_test_p(7, 4) == pytest.approx(0.5488, abs=1e-4)  # 2 x P(X <= 4), X ~ Bin(11, 1/2)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024) and sign_test_p(0, 10) == sign_test_p(10, 0)
    assert sign_test_p(6, 0) == pytest.approx(0.03125)  # six in a row: the fewest that pass 0.05


def test_held_out_hits_ask_each_query_for_its_nearest_labelled_video_outside_its_recording(
        monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = np.array([[1, 0], [1, 0.01], [0.9, 0.15], [0, 1], [0.2, 1]], dtype=np.float32)
    shards = [VideoShard(f"v{i}", f"v{i}.shard", 20, label, "train") for i, label in enumerate([0, 0, 1, 1, 1])]
    monkeypatch.setattr("slic.promote_labels.centre_embeddings",
                        lambda encoder, videos: vectors[[int(v.video_id[1:]) for v in videos]])
    encoder = object()  # embeds as `vectors` say
    queries = np.array([True, False, False, True, False])
    # v0's nearest other video is v1, of its class, but of its own recording: left out, v2 (another class) is next.
    assert held_out_hits(encoder, shards, queries, np.array(["a", "a", "b", "c", "d"])).tolist() == [False, True]
    assert held_out_hits(encoder, shards, queries, None).tolist() == [True, True]  # each its own recording: v1


def test_both_encoders_are_judged_on_the_labelled_videos_neither_trained_on(workspace: Path,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    table = pd.read_csv(workspace / MANIFEST, dtype={"video_id": str}, keep_default_na=False)
    ids = table["video_id"].tolist()
    candidate = VideoEncoder(checkpoint_of(tmp_path / "candidate.pt", 1, {v: 0 for v in ids[:6]}))
    champion = VideoEncoder(checkpoint_of(tmp_path / "champion.pt", 2, {v: 0 for v in ids[4:8]}))
    labels = write_labels(tmp_path / "given.csv", table, by_path=2)
    found = compare_on_labels(labels, candidate, champion, workspace / MANIFEST, workspace / "data/frames")
    assert (found.held_out, found.labelled, found.classes, found.why_not) == (len(ids) - 8, len(ids), 3, "")
    from slic.promote_labels import labelled_shards

    shards, names = labelled_shards(labels, workspace / MANIFEST, workspace / "data/frames", clip_len=8, frame_step=2)
    assert [v.video_id for v in shards] == sorted(ids) and sorted(set(names)) == sorted(set(table["class"]))
    assert all(names[v.label] == c for v, c in zip(shards, table.set_index("video_id").loc[sorted(ids), "class"]))
    queries = np.array([v.video_id not in set(ids[:8]) for v in shards])
    groups = table.set_index("video_id").loc[[v.video_id for v in shards], "group"].to_numpy()
    assert len(set(groups)) == len(shards) // 2  # two clips a group: a query's sibling clip is never its answer
    ours, theirs = (held_out_hits(encoder, shards, queries, groups) for encoder in (candidate, champion))
    assert (found.candidate, found.champion) == (ours.mean(), theirs.mean())
    assert (found.only_candidate, found.only_champion) == ((ours & ~theirs).sum(), (theirs & ~ours).sum())

    few = write_labels(tmp_path / "few.csv", table.iloc[:MIN_HELD_OUT + 3])  # 13 labelled, 8 of them trained on
    short = compare_on_labels(few, candidate, champion, workspace / MANIFEST, workspace / "data/frames")
    assert short.candidate is None and (short.held_out, short.labelled) == (MIN_HELD_OUT - 5, MIN_HELD_OUT + 3)
    assert f"5 of the 13 labelled videos of {few}" in short.why_not and "spread_labels.checks" in short.why_not
    bad = tmp_path / "bad.csv"
    bad.write_text("video_id,class\nno/such_video,Run\n")
    with pytest.raises(LabelsError, match=rf"{bad}:2: video_id 'no/such_video' is not among the"):
        compare_on_labels(bad, candidate, champion, workspace / MANIFEST, workspace / "data/frames")


def promoted(folder: Path, checkpoint: Path, labels: Path, workspace: Path) -> dict[str, Any]:  # noqa: F811
    """`promote` of `checkpoint` as a candidate trained on videos without classes."""
    report = folder / "pretrain.json"
    report.write_text(json.dumps({"labelled": False, "best_val_recall_at_1": None, "mlflow_run_id": "run"}))
    return promote(PromoteConfig(checkpoint=str(checkpoint), labels=str(labels)), report,
                   manifest=workspace / MANIFEST, frames_dir=workspace / "data/frames")


def test_without_classes_the_alias_moves_only_when_the_candidate_names_your_held_out_videos_better(
        workspace: Path, store: Path) -> None:  # noqa: F811
    from mlflow import MlflowClient

    from slic.registry import alias_version
    from slic.tracking import tracking_uri

    table = pd.read_csv(workspace / MANIFEST, dtype={"video_id": str}, keep_default_na=False)
    labels = store / "labels/train/given.csv"
    first = promoted(store, checkpoint_of(store / "a/best.pt", 1), labels, workspace)
    assert (first["decision"], first["compared_on"]) == ("promoted", "no labels")

    candidate = checkpoint_of(store / "b/best.pt", 2, {v: 0 for v in table["video_id"][:5]})
    waiting = promoted(store, candidate, labels, workspace)  # no labels yet: nothing to compare on
    assert (waiting["decision"], waiting["alias_version"]) == ("not compared", "1")
    assert f"there is no {labels} (promote.labels)" in waiting["reason"]
    assert f"cp labels/given.csv {labels}" in waiting["reason"] and "set_registered_model_alias" in waiting["reason"]

    labels.parent.mkdir(parents=True)
    labels.write_text("video_id,class\nno/such_video,Run\n")  # a bad file stops before anything is registered
    with pytest.raises(LabelsError, match=rf"{labels}:2: video_id 'no/such_video'"):
        promoted(store, candidate, labels, workspace)
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    assert len(client.search_model_versions("name='slic-encoder'")) == 2
    write_labels(labels, table)
    judged = promoted(store, candidate, labels, workspace)
    ours, theirs = judged["candidate_labels_recall_at_1"], judged["champion_labels_recall_at_1"]
    assert (judged["compared_on"], judged["labels_held_out"], judged["labels_gallery"]) == (
        "your labels", len(table) - 5, len(table))
    assert judged["promoted"] == (ours > theirs) and judged["decision"] == ("promoted" if ours > theirs else "rejected")
    assert alias_version("slic-encoder", "champion").version == judged["alias_version"]
    assert (f"on the {len(table) - 5} labelled videos of {labels} whose labels neither encoder trained on"
            in judged["reason"])
    lead = judged["labels_only_candidate_right"] - judged["labels_only_champion_right"]
    assert lead == round((ours - theirs) * (len(table) - 5))  # the lead is the videos only one names rightly
    assert (f"the candidate names {judged['labels_only_candidate_right']} of them rightly that the champion does "
            f"not, the champion {judged['labels_only_champion_right']} (sign test p = ") in judged["reason"]
    assert judged["labels_sign_test_p"] == sign_test_p(judged["labels_only_candidate_right"],
                                                       judged["labels_only_champion_right"])
    # both untrained: their embeddings alike, so recall decides (the veto is for a collapsed candidate alone)
    assert min(judged["candidate_labels_mean_pairwise_cosine"], judged["champion_labels_mean_pairwise_cosine"]) >= 0.5
    assert "nearly all alike" not in judged["reason"]
    tags = version_tags("slic-encoder", judged["version"])
    assert float(tags["candidate_labels_recall_at_1"]) == ours and tags["compared_on"] == "your labels"
    run = MlflowClient(tracking_uri()).get_run(judged["mlflow_run_id"])
    assert run.data.metrics["champion_labels_recall_at_1"] == theirs
    assert run.data.metrics["labels_held_out"] == len(table) - 5
    logged = MlflowClient(tracking_uri()).download_artifacts(judged["mlflow_run_id"], "labels", str(store / "got"))
    assert (Path(logged) / "given.csv").read_text() == labels.read_text()

    # The same weights, waiting and then judged, stayed one version: judged again on it, not registered again.
    assert (judged["version"], judged["new_version"], waiting["version"]) == ("2", False, "2")
    # The champion's own bytes again: nothing to compare, nothing registered, its tags untouched.
    champion = candidate if judged["promoted"] else store / "a/best.pt"
    before = version_tags("slic-encoder", judged["alias_version"])
    again = promoted(store, champion, labels, workspace)
    assert (again["decision"], again["new_version"], again["alias_version"]) == (
        "already champion", False, judged["alias_version"])
    assert "holds the champion's own weights" in again["reason"]
    assert len(client.search_model_versions("name='slic-encoder'")) == 2
    assert version_tags("slic-encoder", judged["alias_version"]) == before

    # The champion's weights in other bytes are a new version, judged: the same numbers, a tie, and a tie keeps the
    # alias where it is.
    twin = store / "twin/best.pt"
    twin.parent.mkdir()
    torch.save({**torch.load(champion, map_location="cpu", weights_only=False), "copied_from": str(champion)}, twin)
    tie = promoted(store, twin, labels, workspace)
    assert tie["candidate_labels_recall_at_1"] == tie["champion_labels_recall_at_1"]
    assert tie["labels_only_candidate_right"] == tie["labels_only_champion_right"] == 0
    assert tie["labels_sign_test_p"] == 1.0
    assert (tie["decision"], tie["version"], tie["alias_version"]) == ("rejected", "3", judged["alias_version"])

    # Judged again without the labels: the version's labels tags go with the judgement they belonged to.
    labels.unlink()
    rejudged = promoted(store, twin, labels, workspace)
    assert (rejudged["decision"], rejudged["version"], rejudged["new_version"]) == ("not compared", "3", False)
    tags = version_tags("slic-encoder", "3")
    assert tags["decision"] == "not compared" and tags["compared_on"] == "no labels"
    assert not [key for key in tags if key.startswith("labels_") or key.endswith("_labels_recall_at_1")]
