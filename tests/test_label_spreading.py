"""Stage `spread_labels` (slic.label_spreading): a user's classes for a few videos spread to every grouped video,
the accuracy estimated from those labels, and the videos to label next; on real frame shards of the tiny set with
embeddings built so that the classes are known (tests/test_archive_clusters.py's project)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slic.label_spreading import (Archive, GivenLabels, SpreadError, checked_accuracy, finer_groups, label_next,
                                  leave_one_out_accuracy, name_by_nearest, random_checks, read_given_labels)
from slic.retrieval import normalize_rows
from tests.conftest import run_stage_in
from tests.test_archive_clusters import _stage, separated

pytest.importorskip("faiss")


def archive_of(vectors: np.ndarray, groups: np.ndarray, *, paths: list[str] | None = None) -> Archive:
    """An Archive of `vectors` with ids v0, v1, ... and the first video of each group as its most typical."""
    n = len(vectors)
    rank = np.zeros(n, dtype=int)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        rank[members] = np.arange(len(members))
    empty = np.full(n, "", dtype=object)
    return Archive(ids=np.array([f"v{i}" for i in range(n)]), unit=normalize_rows(vectors).astype(np.float64),
                   group=groups, rank=rank, split=np.full(n, "train", dtype=object), manifest_class=empty,
                   path=np.array(paths if paths else [f"videos/v{i}.mp4" for i in range(n)], dtype=object),
                   start_s=empty, end_s=empty)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_given_labels_by_id_or_by_path_with_empty_classes_skipped(tmp_path: Path) -> None:
    x, truth = separated(classes=2, per_class=3)
    archive = archive_of(x, truth, paths=["a/one.mp4", "a/one.mp4", "a/two.mp4", "b/x.mp4", "b/y.mp4", "b/z.mp4"])
    by_id = read_given_labels(write(tmp_path / "ids.csv", "\ufeffVideo_ID,Class\nv0,run\nv4,jump\nv5,\n\n"), archive)
    assert by_id.index.tolist() == [0, 4] and by_id.label.tolist() == [1, 0] and by_id.names == ["jump", "run"]
    assert by_id.rows_without_class == 1 and by_id.passed_over.tolist() == [5]  # v5 left empty: passed over
    # A path labels every segment of its file (rows 0 and 1 share a.mp4), in any spelling of the same file; here
    # from a spreadsheet that writes ';' between cells.
    by_path = read_given_labels(write(tmp_path / "paths.csv", "path;class\n./a/one.mp4;run\nb/z.mp4;jump\n"), archive)
    assert by_path.index.tolist() == [0, 1, 5] and [by_path.names[c] for c in by_path.label] == ["run", "run", "jump"]


def test_a_relative_path_names_the_one_file_whose_path_it_ends(tmp_path: Path) -> None:
    """The audit: `trip 2023/day1/clip_034.avi` (its folders under manifest.root) was refused, the archive's paths
    being absolute. It names the one file it ends; one ending two files' paths is refused, naming both."""
    x, truth = separated(classes=2, per_class=3)
    root = "/archive/videos"
    archive = archive_of(x, truth, paths=[f"{root}/trip 2023/day1/clip_034.avi", f"{root}/trip 2023/day2/clip_034.avi",
                                          f"{root}/a.mp4", f"{root}/b/x.mp4", f"{root}/b/y.mp4", f"{root}/b/z.mp4"])
    given = read_given_labels(write(tmp_path / "rel.csv", "path,class\ntrip 2023/day1/clip_034.avi,run\n"
                                                          "b/y.mp4,jump\n./b/z.mp4,jump\n"), archive)
    assert given.index.tolist() == [0, 4, 5] and [given.names[c] for c in given.label] == ["run", "jump", "jump"]
    with pytest.raises(SpreadError, match=r"amb\.csv:2: path 'clip_034\.avi' ends the paths of 2 videos \(e\.g\. "
                                          r"/archive/videos/trip 2023/day1/clip_034\.avi and .*day2.*\); give more"):
        read_given_labels(write(tmp_path / "amb.csv", "path,class\nclip_034.avi,run\n"), archive)


@pytest.mark.parametrize("content, said", [
    ("video,label\nv0,run\n", r"bad\.csv: the header needs a class column and a video_id \(or path\) column, got "
                              r"video,label"),
    ("video_id,class\nv0,run\nv9,jump\n", r"bad\.csv:3: video_id 'v9' is not among the 6 grouped videos"),
    ("video_id,class\nv0,run\nv1,jump\nv0,jump\n", r"bad\.csv:4: v0 is given class 'jump' here and 'run' on line 2"),
    ("video_id,class\nv0,run\nv1,run\n", r"bad\.csv: every labelled video is 'run': spreading needs at least two"),
    ("video_id,class\nv0,Run\nv1,jump\nv2,run\n", r"bad\.csv:4: class 'run' differs from 'Run' \(line 2\) only in case"),
])
def test_bad_given_labels_name_the_file_line_and_fix(tmp_path: Path, content: str, said: str) -> None:
    x, truth = separated(classes=2, per_class=3)
    with pytest.raises(SpreadError, match=said):
        read_given_labels(write(tmp_path / "bad.csv", content), archive_of(x, truth))


def test_every_video_takes_the_class_of_its_most_similar_labelled_video_and_says_which() -> None:
    x, truth = separated(classes=3, per_class=8)
    unit = normalize_rows(x).astype(np.float64)
    named = name_by_nearest(unit, np.array([3, 9, 20, 21]), np.array([0, 1, 2, 2]), 3, block=5)  # blocks of rows
    assert (named.label == truth).all()
    assert named.source[:8].tolist() == [3] * 8 and named.source[8:16].tolist() == [9] * 8
    assert named.similarity[3] == pytest.approx(1.0) and named.source[20] == 20  # a labelled video finds itself
    assert set(named.source[16:].tolist()) == {20, 21} and (named.margin > 0.5).all()  # the classes lie apart
    # A video halfway between two labelled videos of different classes: a margin of 0, and the other as runner-up.
    unit = normalize_rows(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)).astype(np.float64)
    halfway = name_by_nearest(unit, np.array([0, 1]), np.array([0, 1]), 2)
    assert halfway.margin[2] == pytest.approx(0.0) and {halfway.label[2], halfway.runner_up[2]} == {0, 1}


def test_leave_one_out_accuracy_names_each_labelled_video_from_the_others_and_waits_for_enough() -> None:
    x, truth = separated(classes=3, per_class=8)
    unit = normalize_rows(x).astype(np.float64)
    everyone = GivenLabels(index=np.arange(24), label=truth, names=["a", "b", "c"], rows_without_class=0)
    assert leave_one_out_accuracy(unit, everyone) == 1.0
    # Video 7 (class a's farthest, nobody's nearest) mislabelled: it and nothing else is named wrongly.
    wrong = GivenLabels(index=np.arange(24), label=np.where(np.arange(24) == 7, 1, truth), names=["a", "b", "c"],
                        rows_without_class=0)
    assert leave_one_out_accuracy(unit, wrong) == pytest.approx(23 / 24)
    assert leave_one_out_accuracy(unit, wrong, counted=np.arange(24) != 7) == 1.0  # video 7 not counted
    assert leave_one_out_accuracy(unit, everyone, counted=np.arange(24) < 9) is None  # 9 counted: too few
    once = GivenLabels(index=np.array([0, 8, 16, 1, 9, 2, 10, 3, 11, 4, 12]), label=np.array([0, 1, 2] + [0, 1] * 4),
                       names=["a", "b", "c"], rows_without_class=0)  # class c labelled once: not counted
    assert leave_one_out_accuracy(unit, once) == 1.0
    few = GivenLabels(index=np.array([0, 8, 16, 1, 9]), label=np.array([0, 1, 2, 0, 1]), names=["a", "b", "c"],
                      rows_without_class=0)
    assert leave_one_out_accuracy(unit, few) is None


def test_random_checks_are_named_by_the_other_labels_with_a_wilson_interval(tmp_path: Path) -> None:
    x, truth = separated(classes=3, per_class=8)
    unit = normalize_rows(x).astype(np.float64)
    check = np.zeros(24, dtype=bool)
    check[[5, 13, 20]] = True  # one check per class, each named rightly by its class's other labels
    given = GivenLabels(index=np.arange(24), label=np.where(np.arange(24) == 6, 1, truth), names=["a", "b", "c"],
                        rows_without_class=0, check=check)  # video 6 mislabelled: not a check, changes nothing
    measured = checked_accuracy(unit, given)
    assert (measured["checks"], measured["right"], measured["share"]) == (3, 3, 1.0)
    assert measured["interval"] == pytest.approx([0.4385, 1.0], abs=1e-4)  # Wilson, 3 of 3
    alone = GivenLabels(index=np.array([0, 8, 16, 1]), label=np.array([0, 1, 2, 1]), names=["a", "b", "c"],
                        rows_without_class=0, check=np.array([False, False, False, True]))  # a wrong check
    assert checked_accuracy(unit, alone)["right"] == 0
    assert checked_accuracy(unit, GivenLabels(np.arange(3), truth[:3], ["a", "b", "c"], 0)) is None  # no column
    # The check column of a given file: marked rows are checks, in any usual spelling.
    archive = archive_of(x, truth)
    labels = read_given_labels(write(tmp_path / "g.csv", "video_id,class,check\nv0,a,\nv8,b,Yes\nv16,c,x\n"),
                               archive)
    assert labels.check.tolist() == [False, True, True]
    picks = random_checks(archive, {0, 8, 16}, 5, seed=3)
    assert len({i for i, _ in picks}) == 5 and not {i for i, _ in picks} & {0, 8, 16}
    assert picks == random_checks(archive, {0, 8, 16}, 5, seed=3) and "a random check" in picks[0][1]


def test_a_random_check_does_not_reach_its_group_so_its_groups_typical_video_is_still_suggested() -> None:
    x, truth = separated(classes=3, per_class=4)
    archive = archive_of(x, truth)  # groups 0, 1, 2: their most typical videos are 0, 4, 8
    picks = label_next(archive, np.array([0]), None, 3, exclude={0, 5})  # 5: a check in group 1
    assert [i for i, _ in picks] == [4, 8]


def test_a_video_passed_over_is_not_suggested_again_and_its_group_offers_its_next_typical_video(
        tmp_path: Path) -> None:
    """The audit: a row left without a class (a video of none of the user's classes) came back first in every next
    list. Passed over, it is not suggested again, and its group offers its next most typical video instead."""
    x, truth = separated(classes=3, per_class=4)
    archive = archive_of(x, truth)  # groups 0, 1, 2: their most typical videos are 0, 4, 8
    given = read_given_labels(write(tmp_path / "given.csv", "video_id,class\nv0,run\nv4,\nv8,jump\n"), archive)
    picks = label_next(archive, given.index, None, 3, passed_over=set(given.passed_over.tolist()))
    assert [i for i, _ in picks] == [5]
    assert picks[0][1] == "the most typical video you have not passed over of group 1, where no video is labelled"
    margin = np.linspace(0.0, 1.0, 12)  # v4 would be the least sure after the groups
    picks = label_next(archive, given.index, margin, 4, passed_over={4, 5})
    assert 4 not in [i for i, _ in picks] and 5 not in [i for i, _ in picks] and picks[0][0] == 6


def test_label_next_starts_with_groups_no_label_reaches_then_the_least_sure() -> None:
    x, truth = separated(classes=3, per_class=4)
    archive = archive_of(x, truth)  # groups 0, 1, 2: their most typical videos are 0, 4, 8
    assert [i for i, _ in label_next(archive, np.zeros(0, dtype=int), None, 2)] == [0, 4]
    margin = np.array([0.9, 0.1, 0.5, 0.05, 0.8, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    picks = label_next(archive, np.array([0, 3, 4]), margin, 4)  # groups 0 and 1 labelled; 3 is least sure but given
    assert [i for i, _ in picks] == [8, 1, 5, 2]
    assert "group 2, where no video is labelled" in picks[0][1] and "0.10 apart" in picks[1][1]


def test_after_labels_the_next_are_the_typical_videos_of_finer_groups_no_label_reaches() -> None:
    x, truth = separated(classes=4, per_class=6)
    archive = archive_of(x, np.zeros(24, dtype=int))  # one coarse group: the finer ones must find the classes
    groups, rank = finer_groups(archive, np.array([0]), 3)  # one label, three more: four groups, the classes
    assert sorted(np.bincount(groups).tolist()) == [6, 6, 6, 6]
    assert all(len(set(truth[groups == g])) == 1 for g in range(4))
    picks = label_next(archive, np.array([0]), np.ones(24), 3, (groups, rank))
    assert sorted(truth[[i for i, _ in picks]].tolist()) == [1, 2, 3]  # one of each class not labelled yet
    assert all(rank[i] == 0 and "a group of similar videos" in why for i, why in picks)


def _spread_stage(tiny_manifest: Any, root: Path, given: str | None) -> dict[str, Any]:
    """`slic spread-labels` after `slic clusters` in the clusters tests' project, with labels/given.csv = `given`."""
    assert _stage(tiny_manifest, root)["code"] == 0
    if given is not None:
        (root / "labels").mkdir()
        write(root / "labels/given.csv", given)
    result = run_stage_in(root, "spread-labels")
    if result["code"] == 0:
        result["report"] = json.loads((root / "reports/spread_labels.json").read_text())
        for name in ("spread_labels", "label_next"):
            with (root / f"reports/{name}.csv").open(newline="") as handle:
                result[name] = list(csv.DictReader(handle))
        result["page"] = (root / "reports/label_next.html").read_text()
    return result


def test_stage_without_labels_lists_each_groups_most_typical_video_to_label(tiny_manifest: Any,
                                                                            tmp_path: Path) -> None:
    result = _spread_stage(tiny_manifest, tmp_path, None)
    assert result["code"] == 0, result["stderr"]
    with (tmp_path / "reports/clusters.csv").open(newline="") as handle:
        typical = [row["video_id"] for row in csv.DictReader(handle) if row["rank_in_group"] == "0"]
    assert [row["video_id"] for row in result["label_next"]] == typical
    assert all(row["class"] == "" for row in result["label_next"])
    assert result["report"]["given"] == 0 and "no labels in labels/given.csv yet" in result["stdout"]
    assert {row["class"] for row in result["spread_labels"]} == {""} and len(result["spread_labels"]) == 24
    assert result["page"].count('class="video member"') == 3 and "no video is labelled yet" in result["page"]
    assert result["runs"] == [r for r in result["runs"] if r.data.tags["slic.stage"] == "clusters"]  # no new run


def test_stage_spreads_the_given_classes_to_every_video_and_logs_a_run(tiny_manifest: Any, tmp_path: Path) -> None:
    with_class = {}
    result = _spread_stage(tiny_manifest, tmp_path, None)
    for row in result["label_next"]:  # the user names the suggested videos' classes, and two more of the first
        with_class[row["video_id"]] = row["video_id"].split("/")[0]
    extra = [r["video_id"] for r in result["spread_labels"]][:12]
    with_class.update({video: video.split("/")[0] for video in extra})
    (tmp_path / "labels/given.csv").parent.mkdir(exist_ok=True)
    write(tmp_path / "labels/given.csv", "video_id,class\n" + "".join(f"{v},{c}\n" for v, c in with_class.items()))
    result = run_stage_in(tmp_path, "spread-labels")
    assert result["code"] == 0, result["stderr"]
    report = json.loads((tmp_path / "reports/spread_labels.json").read_text())
    with (tmp_path / "reports/spread_labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert report["given"] == len(with_class) and report["classes"] == 3
    assert report["agreement_with_manifest"] == 1.0 and report["videos_with_manifest_class"] == 24 - len(with_class)
    assert report["leave_one_out_accuracy"] == 1.0
    assert all(row["class"] == row["video_id"].split("/")[0] for row in rows)
    assert {row["video_id"] for row in rows if row["source"] == "given"} == set(with_class)
    named = [row for row in rows if row["source"] == "nearest"]
    assert named and all(row["like"] in with_class and row["like"].split("/")[0] == row["class"] for row in named)
    assert sum(report["per_class"][c]["given"] + report["per_class"][c]["named"] for c in report["per_class"]) == 24
    run = next(r for r in result["runs"] if r.data.tags["slic.stage"] == "spread_labels")
    assert run.data.metrics["given"] == len(with_class) and run.data.metrics["agreement_with_manifest"] == 1.0
    assert "100% of the labelled videos are named rightly from the others" in result["stdout"]
    # An encoder trained on some of these labels (pretrain.mode labels; embed keeps them as trained_on): those are
    # left out of the leave-one-out share, and with too few others left it is not given, and the stage says why.
    embeddings = tmp_path / "data/embeddings/embeddings.npz"
    stored = dict(np.load(embeddings))
    first_stdout = ""
    for trained, estimate in ((len(with_class) - 10, 1.0), (len(with_class) - 9, None)):  # 10 counted: enough
        np.savez(embeddings, **stored, trained_on=np.array(sorted(with_class)[:trained]))
        result = run_stage_in(tmp_path, "spread-labels")
        assert result["code"] == 0, result["stderr"]
        first_stdout = first_stdout if estimate is None else result["stdout"]
        report = json.loads((tmp_path / "reports/spread_labels.json").read_text())
        assert (report["labels_trained_on"], report["leave_one_out_accuracy"]) == (trained, estimate)
    assert f"the encoder did not train on (it trained on {len(with_class) - 10})" in first_stdout
    assert f"the encoder trained on {trained} of your {len(with_class)} labels (pretrain.mode labels)" in report["note"]
    assert f"the encoder trained on {trained} of them" in (tmp_path / "reports/label_next.html").read_text()


def test_stage_with_checks_lists_random_ones_and_measures_them_once_labelled(tiny_manifest: Any,
                                                                          tmp_path: Path) -> None:
    assert _stage(tiny_manifest, tmp_path, params="spread_labels:\n  suggest: 5\n  checks: 2\n")["code"] == 0
    result = run_stage_in(tmp_path, "spread-labels")
    assert result["code"] == 0, result["stderr"]
    with (tmp_path / "reports/label_next.csv").open(newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert [row["check"] for row in listed] == ["", "", "", "yes", "yes"]  # 3 groups' typical videos, 2 drawn
    (tmp_path / "labels").mkdir()
    write(tmp_path / "labels/given.csv", "video_id,class,check\n" + "".join(
        f"{row['video_id']},{row['video_id'].split('/')[0]},{row['check']}\n" for row in listed))
    result = run_stage_in(tmp_path, "spread-labels")
    assert result["code"] == 0, result["stderr"]
    report = json.loads((tmp_path / "reports/spread_labels.json").read_text())
    assert report["checked"]["checks"] == 2 and report["checked"]["share"] == 1.0  # separated classes
    assert "the other labels name 2 of 2 random checks rightly (100%, 95% interval" in result["stdout"]
    run = next(r for r in result["runs"] if r.data.tags["slic.stage"] == "spread_labels")
    assert run.data.metrics["checked_share"] == 1.0 and run.data.metrics["checks"] == 2


def test_stage_names_a_bad_row_and_a_missing_clusters_table(tiny_manifest: Any, tmp_path: Path) -> None:
    result = _spread_stage(tiny_manifest, tmp_path, "video_id,class\nnot/a_video,run\n")
    assert result["code"] == 2
    assert "labels/given.csv:2: video_id 'not/a_video' is not among the 24 grouped videos" in result["stderr"]
    params = tmp_path / "params.yaml"  # a given file outside labels/: DVC does not watch it, and the stage says so
    params.write_text(params.read_text() + "spread_labels:\n  given: elsewhere/given.csv\n")
    result = run_stage_in(tmp_path, "spread-labels")
    assert result["code"] == 0, result["stderr"]
    assert ("note: spread_labels.given elsewhere/given.csv is outside labels/, the folder dvc.yaml watches: after "
            "editing it run `dvc repro --single-item --force spread_labels`") in result["stdout"]
    (tmp_path / "reports/clusters.csv").unlink()
    result = run_stage_in(tmp_path, "spread-labels")
    assert result["code"] == 2 and "reports/clusters.csv not found: the clusters stage writes it" in result["stderr"]


def test_embeddings_from_another_run_are_refused_naming_both_files(tmp_path: Path) -> None:
    from slic.label_spreading import labelled_vectors, load_archive

    embeddings = tmp_path / "embeddings.npz"
    np.savez(embeddings, video_id=np.array(["v0", "v1"]), embedding=np.eye(2, dtype=np.float32))
    clusters = write(tmp_path / "clusters.csv", "video_id,group,rank_in_group\nv0,0,0\nv7,0,1\n")
    with pytest.raises(SpreadError, match=r"clusters\.csv names 1 videos .*embeddings\.npz lacks \(e\.g\. v7\): the "
                                          r"two are from different runs; run `dvc repro clusters`"):
        load_archive(embeddings, clusters)
    table = write(tmp_path / "spread.csv", "video_id,class,source\nv1,run,given\nv9,jump,given\nv0,run,nearest\n")
    with pytest.raises(SpreadError, match=r"spread\.csv names 1 videos .*embeddings\.npz lacks \(e\.g\. v9\)"):
        labelled_vectors(table, embeddings)
    good = write(tmp_path / "good.csv", "video_id,class,source\nv1,run,given\nv0,jump,given\n")
    labelled = labelled_vectors(good, embeddings)
    assert labelled.ids.tolist() == ["v1", "v0"] and labelled.unit[0].tolist() == [0.0, 1.0]  # rows in table order
