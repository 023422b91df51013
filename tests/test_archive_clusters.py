"""Stage `clusters`: the embedded videos grouped by the encoder (slic.archive_clusters), on real frame shards of a
tiny synthetic dataset with embeddings built so that the groups, their order and their most typical videos are
known."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slic.archive_clusters import class_agreement, group_embeddings, largest_first, typicality
from slic.faiss_backend import l2_normalize
from tests.conftest import run_stage_in

pytest.importorskip("faiss")

DELETED = "Fall/v_Fall_g02_c01"  # its shard is removed: a placeholder on the page, the stage still runs


def test_largest_first_renumbers_by_size_and_ties_by_first_member() -> None:
    assert largest_first(np.array([2, 2, 0, 1, 1, 1, 5])).tolist() == [1, 1, 2, 0, 0, 0, 3]
    assert largest_first(np.array([3, 3, 1, 1])).tolist() == [0, 0, 1, 1]  # equal sizes: the first seen first


def test_typicality_ranks_members_by_cosine_to_their_groups_mean_direction() -> None:
    unit = l2_normalize(np.array([[1, 0.3], [1, 0], [1, -0.3], [1, 0.5], [0, 1], [0, 1]], dtype=np.float32))
    labels = np.array([0, 0, 0, 0, 1, 1])
    cosine, rank = typicality(unit, labels)
    # Group 0 lies at 16.7, 0, -16.7 and 26.6 degrees; its mean direction at 6.7: 0 nearest, -16.7 farthest.
    assert rank[:4].tolist() == [1, 0, 3, 2]
    assert rank[4:].tolist() == [0, 1] and cosine[4] == cosine[5] == pytest.approx(1.0)  # a tie: row order
    assert cosine[1] == pytest.approx(np.cos(np.arctan2(0.447, 3.81)), abs=1e-3)


def separated(classes: int = 3, per_class: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` points around each of `classes` orthogonal directions; the first of each class lies on it
    exactly and the others in opposite pairs around it, so the class's mean direction is the first point's."""
    basis = np.linalg.qr(np.random.default_rng(seed).normal(size=(32, 32)))[0]
    rows, truth = [], []
    for label in range(classes):
        rows.append(basis[label])
        for i in range(per_class - 1):
            sign = 1 if i % 2 == 0 else -1
            rows.append(basis[label] + sign * 0.05 * (1 + i // 2) * basis[classes + i // 2])
        truth += [label] * per_class
    return np.array(rows, dtype=np.float32), np.array(truth)


@pytest.mark.parametrize("method", ["finch", "kmeans"])
def test_groups_recover_separated_classes_with_the_centre_first(method: str) -> None:
    x, truth = separated()
    grouping = group_embeddings(x, method=method, groups=3)
    assert grouping.sizes.tolist() == [8, 8, 8]
    assert class_agreement(grouping.labels, truth.astype(str))["ami"] == pytest.approx(1.0)
    assert np.flatnonzero(grouping.rank == 0).tolist() == [0, 8, 16]  # each class's centre point
    if method == "finch":
        assert grouping.level_counts[grouping.level] >= 3 and grouping.level_counts[-1] == 1
    else:
        assert grouping.level_counts == () and grouping.level is None


def test_kmeans_asked_for_more_groups_than_videos_makes_one_per_video() -> None:
    x, _ = separated(per_class=2)
    grouping = group_embeddings(x, method="kmeans", groups=50)
    assert sorted(grouping.sizes.tolist()) == [1] * 6 and np.all(grouping.rank == 0)


def test_class_agreement_names_each_groups_majority_and_leaves_unclassed_videos_out() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    classes = np.array(["run", "run", "run", "jump", "jump", "jump", ""])
    agreement = class_agreement(labels, classes)
    assert agreement["majority"] == {0: ("run", 0.75), 1: ("jump", 1.0)}
    assert agreement["purity"] == pytest.approx(5 / 6) and agreement["videos_with_class"] == 6
    assert agreement["classes"] == 2 and 0 < agreement["ami"] < 1


def _stage(tiny_manifest: Any, root: Path, *, labelled: bool = True, params: str = "") -> dict[str, Any]:
    """`slic clusters` in a temporary project: frame shards of the tiny set (one deleted), embeddings from
    `separated` (the manifest's classes, or none), and its report, CSV, page, output and MLflow run."""
    from slic.data.frames import extract_all, shard_path

    (root / "data/manifests").mkdir(parents=True)
    manifest = tiny_manifest[tiny_manifest["excluded"] == ""].sort_values("label", kind="stable").reset_index(drop=True)
    manifest.to_csv(root / "data/manifests/validated.csv", index=False)
    extract_all(manifest, out_dir=root / "data/frames", short_side=48, quality=4, workers=1)
    shard_path(root / "data/frames", DELETED).unlink()
    per_class = int(manifest["label"].value_counts().iloc[0])
    assert (manifest["label"].value_counts() == per_class).all()
    x, truth = separated(classes=manifest["label"].nunique(), per_class=per_class)
    assert truth.tolist() == manifest["label"].tolist()
    (root / "data/embeddings").mkdir()
    np.savez(root / "data/embeddings/embeddings.npz", video_id=manifest["video_id"].to_numpy().astype(str),
             label=manifest["label"].to_numpy() if labelled else np.full(len(manifest), -1),
             class_name=manifest["class"].to_numpy().astype(str) if labelled else np.full(len(manifest), ""),
             split=manifest["split"].to_numpy().astype(str) if labelled else np.full(len(manifest), "train"),
             embedding=x)
    (root / "params.yaml").write_text(f"clusters:\n  groups: 3\n  html_members: 5\n{params}")
    result = run_stage_in(root, "clusters") | {"manifest": manifest}
    if result["code"] != 0:
        return result
    result["run"] = result["runs"][0]
    result["report"] = json.loads((root / "reports/clusters.json").read_text())
    with (root / "reports/clusters.csv").open(newline="") as handle:
        result["rows"] = list(csv.DictReader(handle))
    result["page"] = (root / "reports/clusters.html").read_text()
    return result


def test_stage_groups_the_classes_and_writes_table_page_and_mlflow_run(tiny_manifest: Any, tmp_path: Path) -> None:
    result = _stage(tiny_manifest, tmp_path)
    assert result["code"] == 0, result["stderr"]
    manifest, report, rows = result["manifest"], result["report"], result["rows"]
    assert (report["videos"], report["groups"], report["labelled"]) == (len(manifest), 3, True)
    assert report["ami"] == pytest.approx(1.0) and report["purity"] == 1.0
    assert report["finch_levels"][report["finch_level"]] >= 3 and report["stage_seconds"] > 0
    firsts = manifest.groupby("label")["video_id"].first().tolist()  # each class's centre point
    assert sorted(g["most_typical"] for g in report["largest_groups"]) == sorted(firsts)
    assert {g["majority_share"] for g in report["largest_groups"]} == {1.0}
    assert "AMI with the classes 1.000" in result["stdout"]
    assert "no frames for 1 thumbnails" in result["stderr"] and DELETED in result["stderr"]
    # The table: every video once, group by group, the most typical first, with its file.
    assert sorted(r["video_id"] for r in rows) == sorted(manifest["video_id"])
    assert [(int(r["group"]), int(r["rank_in_group"])) for r in rows] == [(g, i) for g in range(3) for i in range(8)]
    assert {r["video_id"] for r in rows if r["rank_in_group"] == "0"} == set(firsts)
    paths = dict(zip(manifest["video_id"], manifest["path"]))
    assert all(r["path"] == paths[r["video_id"]] and r["start_s"] == "" for r in rows)
    assert all(r["class"] == r["video_id"].split("/")[0] and r["group_size"] == "8" for r in rows)
    # The page: three groups of 5 shown, the rest counted, the missing shard a placeholder naming it.
    page = result["page"]
    assert len(re.findall(r'<section class="group"', page)) == 3
    assert page.count('class="video member"') == 15 and page.count("and 3 more in the table") == 3
    assert "Group 0: 8 videos, 100% " in page and 'data-key="ami"' in page  # numbered as the table's `group`
    assert "Group 3:" not in page and page.count(">rank 0<") == 3  # and its rank_in_group and "FINCH (the clustering" in page
    shown = {r["video_id"] for r in rows if int(r["rank_in_group"]) < 5}
    assert page.count('class="thumb missing"') == (DELETED in shown) and page.count('<img class="thumb"') == 15 - (
        DELETED in shown)
    # MLflow: the run, its metrics and both files.
    assert {"clusters.csv", "clusters.html"} <= result["artifacts"]
    metrics = result["run"].data.metrics
    assert metrics["groups"] == 3 and metrics["ami"] == pytest.approx(1.0)
    assert result["run"].data.tags["slic.stage"] == "clusters"


def test_stage_on_videos_without_classes_reports_no_agreement(tiny_manifest: Any, tmp_path: Path) -> None:
    result = _stage(tiny_manifest, tmp_path, labelled=False)
    assert result["code"] == 0, result["stderr"]
    report = result["report"]
    assert report["labelled"] is False and "ami" not in report and report["groups"] == 3
    assert all("majority_class" not in g for g in report["largest_groups"])
    assert "AMI" not in result["stdout"] and 'data-key="ami"' not in result["page"] and "note" not in report
    assert {r["class"] for r in result["rows"]} == {""} and "ami" not in result["run"].data.metrics


def test_more_groups_than_finch_can_make_says_why(tiny_manifest: Any, tmp_path: Path) -> None:
    result = _stage(tiny_manifest, tmp_path, params="  groups: 30\n")
    assert result["code"] == 0, result["stderr"]
    report = result["report"]
    assert report["groups"] == report["finch_levels"][0] < 24  # the first partition as it is
    assert report["note"] == (f"{report['groups']} groups, not the 30 of clusters.groups: FINCH's first partition "
                              "has only that many clusters (method: kmeans makes more)")
    assert f"clusters: {report['note']}" in result["stdout"] and f'<p id="note">{report["note"]}.</p>' in result["page"]
    kmeans = _stage(tiny_manifest, tmp_path / "k", params="  groups: 30\n  method: kmeans\n")
    assert kmeans["report"]["groups"] == 24 and "only that many videos" in kmeans["report"]["note"]


def test_nan_embeddings_name_the_videos_and_what_to_do(tmp_path: Path) -> None:
    from slic.archive_clusters import ClustersError, cluster_archive

    vectors = np.eye(4, dtype=np.float32)
    vectors[2, 1] = np.nan
    np.savez(tmp_path / "e.npz", video_id=np.array(["a", "b", "c", "d"]), label=np.full(4, -1),
             class_name=np.full(4, ""), split=np.full(4, "train"), embedding=vectors)
    with pytest.raises(ClustersError, match=r"e.npz: 1 of 4 videos have NaN or infinite embeddings \(e.g. c\): the "
                                            r"encoder diverged"):
        cluster_archive(tmp_path / "e.npz", manifest=tmp_path / "none.csv", frames_dir=tmp_path, method="finch",
                        groups=2, split="all", seed=7, table=tmp_path / "t.csv", page=tmp_path / "p.html",
                        html_groups=2, html_members=2)
    assert not (tmp_path / "t.csv").exists()  # nothing half-written


def test_a_split_without_videos_and_missing_embeddings_are_named(tiny_manifest: Any, tmp_path: Path) -> None:
    result = _stage(tiny_manifest, tmp_path / "a", labelled=False, params="  split: test\n")
    assert result["code"] == 2
    assert "clusters.split = test: no embedded video is in that split (splits found: train)" in result["stderr"]
    root = tmp_path / "b"
    root.mkdir()
    (root / "params.yaml").write_text("clusters:\n  groups: 3\n")
    said = run_stage_in(root, "clusters")
    assert said["code"] == 2
    assert "data/embeddings/embeddings.npz not found" in said["stderr"] and "dvc repro embed" in said["stderr"]
