"""Every layout becomes the same manifest; bad layouts stop with one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.config import ManifestConfig
from slic.data.datasets import (COLUMNS, DatasetError, build_manifest, carve_validation, header_delimiter,
                                read_table, unwatched_splits_advice)
from slic.data.video import write_video
from tests.conftest import damaged_video


def make_video(path: Path, frames: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    write_video(path, rng.integers(0, 255, size=(frames, 24, 32, 3), dtype=np.uint8), codec="mpeg4")
    return path


def config(root: Path, layout: str, **overrides: object) -> ManifestConfig:
    return ManifestConfig(root=str(root), layout=layout, workers=1, **overrides)


def test_ucf101_layout_manifest(tiny_manifest: pd.DataFrame, tiny_dataset: Path) -> None:
    table = tiny_manifest
    assert list(table.columns) == COLUMNS
    assert len(table) == 24 and (table["excluded"] == "").all()
    assert set(table["split"]) == {"train", "val", "test"}
    assert table.loc[table["video_id"] == "Rise/v_Rise_g02_c01", ["class", "label", "group", "frames"]].values.tolist() \
        == [["Rise", 1, "Rise/g02", 32]]
    assert set(table.loc[table["split"] == "test", "group"].str[-3:]) == {"g01"}  # split 1 holds out g01
    # Validation is carved by whole groups from train, one group per class here.
    sides = table[table["split"] != "test"].groupby("group")["split"].nunique()
    assert (sides == 1).all()
    assert (table[table["split"] == "val"].groupby("class")["group"].nunique() == 1).all()
    assert all(Path(p).is_file() and Path(p).is_relative_to(tiny_dataset) for p in table["path"])


def test_val_split_is_seeded_and_by_group() -> None:
    table = pd.DataFrame({"class": ["a"] * 12, "group": [f"a/g{i // 2}" for i in range(12)],
                          "split": ["train"] * 12, "excluded": [""] * 12})
    first = carve_validation(table, 0.34, seed=1, by_group=True)
    assert first.equals(carve_validation(table, 0.34, seed=1, by_group=True))
    val_groups = set(table.loc[first == "val", "group"])
    assert len(val_groups) == 2 and (first[table["group"].isin(val_groups)] == "val").all()
    by_video = carve_validation(table, 0.25, seed=1, by_group=False)
    assert (by_video == "val").sum() == 3


def test_split_two_holds_out_other_groups(tiny_dataset: Path) -> None:
    table = build_manifest(config(tiny_dataset, "ucf101", split=2, val_fraction=0.0))
    assert set(table.loc[table["split"] == "test", "group"].str[-3:]) == {"g02"}
    assert set(table["split"]) == {"train", "test"}


def test_hmdb51_layout(tmp_path: Path) -> None:
    root, splits = tmp_path / "videos", tmp_path / "splits"
    splits.mkdir()
    for name in ("brush_hair", "cartwheel"):
        lines = []
        for i, kind in enumerate("1122101"):
            video = f"{name}_clip({i})!.avi"
            make_video(root / name / video)
            lines.append(f"{video} {kind} ")
        (splits / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    table = build_manifest(config(root, "hmdb51", splits_dir=str(splits), val_fraction=0.25))
    assert sorted(table["class"].unique()) == ["brush_hair", "cartwheel"]
    assert table.groupby("class")["label"].first().to_dict() == {"brush_hair": 0, "cartwheel": 1}
    counts = table.groupby("split").size().to_dict()
    assert counts == {"test": 4, "train": 6, "unused": 2, "val": 2}
    assert (table["frames"] == 40).all()
    listing = splits / "cartwheel_test_split1.txt"  # one line twice: the same file, not a link to it
    listing.write_text(listing.read_text() + "cartwheel_clip(0)!.avi 1\n")
    again = build_manifest(config(root, "hmdb51", splits_dir=str(splits), val_fraction=0.25))
    assert sorted(again["excluded"].unique()) == ["", "the same file as cartwheel/cartwheel_clip(0)! (its path listed "
                                                      "twice): listed once"]


def test_hmdb51_val_takes_whole_source_films(tmp_path: Path) -> None:
    """HMDB51 cuts several clips of a class from one film (April_09_brush_hair_..._0 to _2); its splits keep a film
    on one side, and the val carve now does too (per video, 75-82% of the val clips of splits 1-3 had a clip of
    their film and class in train: bench/hmdb51_carve.py)."""
    from slic.data.datasets import hmdb51_source

    assert hmdb51_source("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi") == "April_09"
    assert hmdb51_source("ride_bike", "Learn_How_To_Ride_A_Bike_at_Any_Age_ride_bike_f_cm_np1_ri_med_11.avi") == \
        "Learn_How_To_Ride_A_Bike_at_Any_Age"
    assert hmdb51_source("brush_hair", "brush_hair_tips_brush_hair_h_cm_np2_le_bad_3.avi") == "brush_hair_tips"
    assert hmdb51_source("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0.mp4") is None  # not HMDB51's naming
    assert hmdb51_source("cartwheel", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi") is None  # another class's clip
    root, splits = tmp_path / "videos", tmp_path / "splits"
    splits.mkdir()
    for name in ("brush_hair", "cartwheel"):
        lines = []
        for film in range(6):  # films 0-4 train (3 clips each), film 5 test
            for clip in range(3):
                video = f"{name.title()}_Film_{film}_{name}_u_nm_np1_ba_goo_{clip}.avi"  # films of one class
                make_video(root / name / video, frames=32)
                lines.append(f"{video} {2 if film == 5 else 1}")
        (splits / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    table = build_manifest(config(root, "hmdb51", splits_dir=str(splits), val_fraction=0.2))
    assert set(table["group"]) == {f"{name}/{name.title()}_Film_{film}" for name in ("brush_hair", "cartwheel")
                                   for film in range(6)}
    assert (table.groupby("group")["split"].nunique() == 1).all()  # a film's clips on one side of every split
    from slic.data.datasets import grouping_advice

    assert grouping_advice(table, str(root), "hmdb51", "") == ""  # every name HMDB51's own
    renamed = table.assign(path=table["path"].str.replace("Brush_Hair_Film_0_brush_hair_u_nm_np1_ba_goo_1.avi",
                                                          "clip 1.avi", regex=False))
    assert grouping_advice(renamed, str(root), "hmdb51", "") == (
        "1 of 36 videos are not named as HMDB51 names its clips (<film>_<class>_<4 tags>_<n>.avi, e.g. clip 1.avi): "
        "each counts as a film of its own, so val may hold a clip whose film's other clips train; keep HMDB51's file "
        "names to carve val by film")
    assert table.groupby(["class", "split"]).size().to_dict() == {
        ("brush_hair", "test"): 3, ("brush_hair", "train"): 12, ("brush_hair", "val"): 3,
        ("cartwheel", "test"): 3, ("cartwheel", "train"): 12, ("cartwheel", "val"): 3}


def test_kinetics_layout_reads_official_csv(tmp_path: Path) -> None:
    root = tmp_path / "k400"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for split, label, yid in [("train", "abseiling", "aaa"), ("train", "abseiling", "bbb"),
                              ("train", "air drumming", "ccc"), ("val", "abseiling", "ddd"),
                              ("val", "air drumming", "eee"), ("train", "air drumming", "fff")]:
        rows.append(f"{label},{yid},10,20,{split}")
        folder = root / ("train" if split == "train" else "val") / label
        make_video(folder / f"{yid}_000010_000020.mp4")
    (root / "train.csv").write_text("\n".join(r for r in rows if not r.endswith(",val")) + "\n")
    (root / "validate.csv").write_text("\n".join([rows[0]] + [r for r in rows if r.endswith(",val")]) + "\n")
    table = build_manifest(config(root, "kinetics", val_fraction=0.0))
    assert sorted(table["class"].unique()) == ["abseiling", "air drumming"]
    assert table.groupby("split").size().to_dict() == {"test": 2, "train": 4}
    assert (table["excluded"] == "").all()


def test_folder_layout_draws_a_seeded_test_split(tmp_path: Path) -> None:
    for cls in ("jump", "run"):
        for i in range(10):
            make_video(tmp_path / cls / f"{cls}{i}.mp4")
    (tmp_path / "notes.txt").write_text("not a class")
    first = build_manifest(config(tmp_path, "folder"))
    again = build_manifest(config(tmp_path, "folder"))
    assert first.equals(again)
    assert first.groupby(["class", "split"]).size().to_dict() == {
        ("jump", "test"): 3, ("jump", "train"): 6, ("jump", "val"): 1,
        ("run", "test"): 3, ("run", "train"): 6, ("run", "val"): 1}


@pytest.mark.parametrize("line, expected", [("path,class\n", ","), ("path;class\n", ";"), ("path\tclass\n", "\t"),
                                            ("path\n", ","), ("a;b,c\n", ","), ("a;b;c,d\n", ";")])
def test_the_header_names_the_delimiter(line: str, expected: str) -> None:
    assert header_delimiter(line) == expected


def test_rows_keep_their_line_numbers_and_quoted_cells_their_delimiters(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('\ufeffPath ; CLASS\n"a;b.mp4";run\n\n  ;  \n"two\nlines.mp4";jump\nc.mp4;walk\n',
                    encoding="utf-8")
    header, rows = read_table(path)
    assert header == ["path", "class"]
    assert rows == [(2, {"path": "a;b.mp4", "class": "run"}), (5, {"path": "two\nlines.mp4", "class": "jump"}),
                    (7, {"path": "c.mp4", "class": "walk"})]
    path.write_text("")
    assert read_table(path) == ([], [])


def write_labels(folder: Path, rows: list[list[str]], header: str = "path,class,split,group",
                 delimiter: str = ",") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [header.replace(",", delimiter), *(delimiter.join(row) for row in rows)]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


def test_csv_layout_with_the_ucf101_split_and_groups_makes_the_ucf101_manifest(
        tiny_manifest: pd.DataFrame, tiny_dataset: Path, tmp_path: Path) -> None:
    """A spreadsheet that says what UCF101's split files say (class, split and g number of every video) lists,
    splits and carves val exactly as the ucf101 layout does."""
    rows = [[str(Path(path).relative_to(tiny_dataset)), c, "test" if split == "test" else "train",
             group.split("/")[1]] for path, c, split, group in
            zip(tiny_manifest["path"], tiny_manifest["class"], tiny_manifest["split"], tiny_manifest["group"])]
    write_labels(tmp_path, rows)
    table = build_manifest(config(tiny_dataset, "csv", splits_dir=str(tmp_path)))
    assert table.drop(columns="label").equals(tiny_manifest.drop(columns="label"))
    write_labels(tmp_path, rows, delimiter=";")  # a spreadsheet saved where the comma is the decimal sign
    assert build_manifest(config(tiny_dataset, "csv", splits_dir=str(tmp_path))).equals(table)
    names = sorted(set(table["class"]))  # labels number the classes in sorted order (classInd.txt's is UCF101's)
    assert table["label"].tolist() == [names.index(c) for c in table["class"]]


def test_csv_layout_draws_test_when_no_row_has_a_split_and_keeps_a_given_val(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    rows = [[f"{cls}/{cls}{i}.mp4", cls] for cls in ("jump", "run") for i in range(10)]
    for path, _ in rows:
        make_video(videos / path)
    write_labels(videos, rows, header="Path,Class")  # header names in any case
    drawn = build_manifest(config(videos, "csv"))
    assert drawn.groupby(["class", "split"]).size().to_dict() == {
        ("jump", "test"): 3, ("jump", "train"): 6, ("jump", "val"): 1,
        ("run", "test"): 3, ("run", "train"): 6, ("run", "val"): 1}
    assert drawn["split"].tolist() == build_manifest(config(videos, "csv"))["split"].tolist()  # seeded
    given = [[path, c, ["train", "train", "val", "test", ""][i % 5]] for i, (path, c) in enumerate(rows)]
    write_labels(videos, given, header="path,class,split")
    table = build_manifest(config(videos, "csv")).set_index("video_id")
    assert table["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}  # '' trains; val as given
    assert table.loc["jump/jump2", "split"] == "val" and table.loc["jump/jump4", "split"] == "train"


def test_csv_layout_clips_of_one_group_stay_on_one_side(tmp_path: Path) -> None:
    rows = [[f"{cls}/clip{r}_{c}.mp4", cls, "", f"rec{r}"] for cls in ("jump", "run") for r in range(5)
            for c in range(3)]
    for path, *_ in rows:
        make_video(tmp_path / path)
    write_labels(tmp_path, rows)
    table = build_manifest(config(tmp_path, "csv", val_fraction=0.0))
    assert table.groupby("group")["split"].nunique().max() == 1 and set(table["split"]) == {"train", "test"}


@pytest.mark.parametrize(("content", "said"), [
    (None, r"labels\.csv: labels file not found; layout csv reads labels\.csv \(columns path, class"),
    ("video,label\na.mp4,run\n", r"labels\.csv:1: the header needs columns path and class .*found: video, label"),
    ("path,class\na.mp4,\n", r"labels\.csv:2: a row needs a path and a class, got path='a.mp4' class=''"),
    ("path,class,split\na.mp4,run,training\n", r"labels\.csv:2: split 'training' is not one of train, val, test, "
                                                 r"unused \(or empty\)"),
    ("path,class\na.mp4,run\n\na.mp4,jump\n", r"labels\.csv:4: a.mp4 is listed twice \(also on line 2\)"),
    ("path,class\n", r"labels\.csv: no rows below the header"),
])
def test_csv_layout_names_the_line_and_what_is_wrong(tmp_path: Path, content: str | None, said: str) -> None:
    if content is not None:
        (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DatasetError, match=said):
        build_manifest(config(tmp_path, "csv"))


def test_a_splits_dir_outside_the_root_is_named_with_how_to_rerun(tmp_path: Path) -> None:
    """dvc.yaml lists only the root: an edited labels.csv elsewhere leaves the manifest stale, so the stage says so."""
    root, lists = tmp_path / "videos", tmp_path / "lists"
    note = unwatched_splits_advice(str(root), "csv", str(lists))
    assert f"manifest.splits_dir {lists} is outside the root {root}" in note
    assert "dvc repro --single-item --force manifest`, then `dvc repro`" in note
    eval_note = unwatched_splits_advice(str(root), "hmdb51", str(lists), "eval_data@hmdb51",
                                        "eval_sets.hmdb51.splits_dir")
    assert eval_note.startswith("eval_sets.hmdb51.splits_dir") and "--force eval_data@hmdb51" in eval_note
    assert unwatched_splits_advice(str(root), "csv", "") == ""  # the root itself: watched
    assert unwatched_splits_advice(str(root), "csv", str(root / "splits")) == ""  # under the root: watched
    assert unwatched_splits_advice(str(root), "csv", str(root) + "/") == ""
    assert unwatched_splits_advice(str(root), "folder", str(lists)) == ""  # reads no split files
    assert unwatched_splits_advice(str(root), "ucf101", str(tmp_path / "videos_lists")) != ""  # a prefix is not under


def test_short_and_unreadable_videos_are_excluded_with_reasons(tmp_path: Path) -> None:
    make_video(tmp_path / "wave" / "long.avi", frames=40)
    make_video(tmp_path / "wave" / "short.avi", frames=20)
    make_video(tmp_path / "wave" / "photo.avi", frames=1)
    (tmp_path / "wave" / "broken.avi").write_bytes(b"\x00garbage" * 50)
    damaged_video(tmp_path / "wave" / "nothing.mp4", decodable=0)  # demuxes, no frame decodes
    table = build_manifest(config(tmp_path, "folder", val_fraction=0.0)).set_index("video_id")
    assert table.loc["wave/long", "excluded"] == ""
    assert table.loc["wave/short", "excluded"] == "too short: 20 frames < manifest.min_frames 32"
    assert table.loc["wave/photo", "excluded"] == "too short: 1 frame (a still image) < manifest.min_frames 32"
    assert table.loc["wave/broken", "excluded"].startswith("unreadable: ")
    assert table.loc["wave/nothing", "excluded"] == ("unreadable: none of its 48 packets could be decoded "
                                                     "(InvalidDataError: Invalid data found when processing input)")


def test_the_manifest_stage_stops_when_no_video_is_usable_and_keeps_the_reasons(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, it said `no usable video` and exited 0, and validate stopped the run one stage later."""
    from slic.cli import main

    root = tmp_path / "archive"
    make_video(root / "photo.avi", frames=1)
    (root / "empty.mp4").write_bytes(b"")
    (tmp_path / "params.yaml").write_text(f"manifest:\n  root: {root}\n  layout: unlabelled\n  workers: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["manifest"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"slic manifest: no usable video among the 2 found under {root} (layout unlabelled) "
                          "(unreadable 1, too short 1): check manifest.root and manifest.layout; reports/manifest.json")
    excluded = json.loads((tmp_path / "reports" / "manifest.json").read_text())["excluded"]
    assert [item["path"] for item in excluded] == [str(root / "empty.mp4"), str(root / "photo.avi")]


def test_two_files_that_differ_only_in_extension_are_two_videos(tmp_path: Path) -> None:
    """clip.mp4 and clip.avi gave one id, and validate then stopped the run naming neither file: each keeps its
    extension in its id now; every other id is as before."""
    make_video(tmp_path / "a" / "clip.avi")
    make_video(tmp_path / "a" / "clip.mp4")
    make_video(tmp_path / "a" / "other.avi")
    table = build_manifest(config(tmp_path, "unlabelled"))
    assert table["video_id"].tolist() == ["a/clip.avi", "a/clip.mp4", "a/other"]
    assert (table["excluded"] == "").all()


def test_missing_split_file_names_it(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"classInd\.txt: class index classInd\.txt not found.*splits_dir"):
        build_manifest(config(tiny_dataset, "ucf101", splits_dir=str(tmp_path)))
    shutil.copy(tiny_dataset / "classInd.txt", tmp_path)
    shutil.copy(tiny_dataset / "trainlist03.txt", tmp_path)
    with pytest.raises(DatasetError, match=rf"^{tmp_path}/testlist03\.txt: split file testlist03\.txt not found"):
        build_manifest(config(tiny_dataset, "ucf101", split=3, splits_dir=str(tmp_path)))
    with pytest.raises(DatasetError, match=r"no HMDB51 split files"):
        build_manifest(config(tiny_dataset, "hmdb51", splits_dir=str(tmp_path)))


def test_unknown_class_names_file_and_line(tiny_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    listing = root / "testlist01.txt"
    listing.write_text(listing.read_text() + "Dance/v_Dance_g01_c01.avi\n")
    with pytest.raises(DatasetError) as caught:
        build_manifest(config(root, "ucf101"))
    assert str(caught.value) == f"{listing}:7: class 'Dance' is not in classInd.txt"


def test_a_video_in_both_split_files_names_both_lines(tiny_dataset: Path, tmp_path: Path) -> None:
    """A train video copied into the test list leaks; before, the manifest called the second row 'a link to it'."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    train = (root / "trainlist01.txt").read_text().splitlines()
    listing = root / "testlist01.txt"
    listing.write_text(listing.read_text() + train[-1] + "\n")
    number = len(listing.read_text().splitlines())
    with pytest.raises(DatasetError) as caught:
        build_manifest(config(root, "ucf101"))
    assert str(caught.value) == (f"{listing}:{number}: {train[-1].split()[0]} is listed already, at "
                                 f"trainlist01.txt:{len(train)}: a video belongs to one split, once; remove one of "
                                 "the two lines")


def test_missing_listed_video_errors_or_is_excluded(tiny_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    gone = root / "Rise" / "v_Rise_g03_c01.avi"
    gone.unlink()
    with pytest.raises(DatasetError, match=f"1 listed video.*{gone}"):
        build_manifest(config(root, "ucf101"))
    table = build_manifest(config(root, "ucf101", on_missing="exclude")).set_index("video_id")
    assert table.loc["Rise/v_Rise_g03_c01", "excluded"] == "missing file"
    assert (table.drop("Rise/v_Rise_g03_c01")["excluded"] == "").all()


def test_links_empty_and_broken_files_are_listed_once_with_their_reason(tiny_dataset: Path, tmp_path: Path) -> None:
    """A folder of a user's videos: a symbolic and a hard link to one video, a link to nowhere and an empty file.
    The video is used once (twice, it would find itself in the gallery, or leak from train to test); the others are
    excluded saying why."""
    import os

    root = tmp_path / "archive"
    root.mkdir()
    videos = sorted(tiny_dataset.rglob("*.avi"))
    shutil.copy(videos[0], root / "walk.avi")
    shutil.copy(videos[1], root / "other.avi")
    (root / "b_link.avi").symlink_to(root / "walk.avi")
    os.link(root / "walk.avi", root / "z_hard.avi")
    (root / "gone.avi").symlink_to(root / "nowhere.avi")
    (root / "empty.avi").write_bytes(b"")
    (root / "folder.avi").mkdir()  # a folder with a video's name is not a video
    shutil.copy(videos[2], root / "camcorder.MTS")  # listed by default, whatever the case of its extension
    table = build_manifest(config(root, "unlabelled")).set_index("video_id")
    assert sorted(table.index) == ["b_link", "camcorder", "empty", "gone", "other", "walk", "z_hard"]
    assert table.loc["camcorder", "excluded"] == ""
    assert table.loc["b_link", "excluded"] == "the same file as walk (a link to it): listed once"
    assert table.loc["z_hard", "excluded"] == "the same file as walk (a link to it): listed once"
    assert table.loc["gone", "excluded"] == f"broken link: it points to {root / 'nowhere.avi'}, which does not exist"
    assert table.loc["empty", "excluded"] == "unreadable: empty file (0 bytes)"
    assert (table.loc[["walk", "other"], "excluded"] == "").all()


def test_the_manifest_stage_counts_what_it_does_not_print_and_advises_segments(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from slic.cli import main
    from slic.data.datasets import segment_advice, summary_line

    root = tmp_path / "archive"
    root.mkdir()
    for video in sorted(tiny_dataset.rglob("*.avi"))[:2]:
        shutil.copy(video, root / video.name)
    for number in range(12):
        (root / f"empty{number:02d}.avi").write_bytes(b"")
    (tmp_path / "params.yaml").write_text(f"manifest:\n  root: {root}\n  layout: unlabelled\n  workers: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["manifest"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"  excluded {root}/empty") == 10  # the file, with its extension: two ids alike told apart
    assert f"  excluded {root / 'empty00.avi'}: unreadable: empty file (0 bytes)\n" in out
    assert "  and 2 more excluded: reports/manifest.json lists each" in out
    excluded = json.loads((tmp_path / "reports" / "manifest.json").read_text())["excluded"]
    assert excluded[0] == {"video_id": "empty00", "path": str(root / "empty00.avi"),
                           "reason": "unreadable: empty file (0 bytes)"}
    assert "note:" not in out  # 2-second clips: nothing to advise
    summary = json.loads((tmp_path / "reports" / "manifest.json").read_text())["summary"]
    assert (summary["videos"], summary["files"]) == (2, 2) and f"manifest: {summary_line(summary)}\n" in out
    assert out.count("manifest: 2 usable videos (") == 1
    table = pd.DataFrame({"excluded": ["", "", "", "too short"], "duration": [30.0, 75.0, 660.0, 900.0]})
    advice = segment_advice(table, segment_seconds=0)
    assert advice.startswith("2 of 3 usable videos are longer than 60 s (the longest 11.0 min)")
    assert "manifest.segment_seconds" in advice
    assert segment_advice(table, segment_seconds=8) == ""  # already cut
    assert segment_advice(table[table["duration"] < 60], segment_seconds=0) == ""


def test_a_class_folders_test_share_is_drawn_from_its_usable_videos(tiny_dataset: Path, tmp_path: Path) -> None:
    """Layout folder: each class's 30% test share comes from the videos that can be used; drawn among unreadable
    ones too, a class could end with no test video and fail validation though it has enough."""
    root = tmp_path / "classes"
    videos = sorted(tiny_dataset.rglob("*.avi"))
    for name, first in (("a", 0), ("b", 4)):
        (root / name).mkdir(parents=True)
        for number, video in enumerate(videos[first:first + 4]):
            shutil.copy(video, root / name / f"v{number}.avi")
        for number in range(3):
            (root / name / f"broken{number}.avi").write_bytes(b"")
    for seed in range(8):
        table = build_manifest(config(root, "folder", seed=seed, val_fraction=0))
        usable = table[table["excluded"] == ""]
        assert usable.groupby("class")["split"].apply(lambda s: (s == "test").sum()).to_dict() == {"a": 1, "b": 1}
        assert (table.loc[table["excluded"] != "", "split"] == "train").all()


def test_the_collection_summary_counts_usable_videos_files_hours_and_frame_sizes() -> None:
    from slic.data.datasets import collection_summary, summary_line

    table = pd.DataFrame({"path": ["/a/long.mp4"] * 3 + ["/a/b.avi", "/a/c.avi"],
                          "duration": [600.0, 600.0, 600.0, 5.0, 7.0], "width": [640] * 3 + [320, 320],
                          "height": [360] * 3 + [240, 240], "fps": [25.0] * 3 + [29.97, 0.0],
                          "excluded": ["", "", "", "", "unreadable"]})
    summary = collection_summary(table)
    assert (summary["videos"], summary["files"], summary["hours"]) == (4, 2, 0.501)
    assert summary["duration_seconds"] == {"min": 5.0, "median": 600.0, "max": 600.0}
    assert summary["frame_sizes"] == {"640x360": 3, "320x240": 1} and summary["fps"] == {"25": 3, "29.97": 1}
    assert summary_line(summary) == ("4 usable videos from 2 files (30.1 min), 5.0-600.0 s (median 600.0 s); "
                                     "frame sizes 640x360 (3), 320x240 (1); fps 25 (3), 29.97 (1)")
    assert summary_line(collection_summary(table.assign(excluded="gone"))) == "no usable video"
    many = pd.DataFrame({"path": [f"/a/{i}.mp4" for i in range(7)], "duration": 5.0, "width": 320, "height": 240,
                         "fps": [25.0, 25.0, 30.0, 24.0, 10.0, 15.0, 15.0], "excluded": ""})
    assert summary_line(collection_summary(many)).endswith(  # the rates past the three shown are counted, not hidden
        "fps 25 (2), 15 (2), 30 (1), 2 other rates (2)")
    one = collection_summary(table.iloc[3:4])  # a folder of one video: singular, no spread of one duration
    assert summary_line(one) == "1 usable video (5.0 s); frame size 320x240 (1); fps 29.97 (1)"


def test_mixed_frame_rates_are_pointed_out_with_the_commonest_rate_to_resample_to() -> None:
    from slic.data.datasets import frame_rate_advice

    table = pd.DataFrame({"fps": [25.0, 25.0, 29.97, 60.0, 240.0, 0.0], "excluded": ["", "", "", "", "unreadable", ""]})
    advice = frame_rate_advice(table)  # 240 is excluded, 0 is no rate: 25 to 60 fps
    assert advice.startswith("frame rates range from 25 to 60 fps (most often 25: 2 of the 4 usable videos of a "
                             "constant rate)")
    assert "2.4x less time at 60 fps than at 25" in advice and advice.endswith("set extract.fps: 25 to resample "
                                                                               "every video to one rate when frames "
                                                                               "are extracted")
    assert frame_rate_advice(table[table["fps"] < 30]) == ""  # 25 and 29.97: within 1.5x, nothing to say
    assert frame_rate_advice(table, target_fps=30.0) == ""  # extract resamples them: nothing to do


def test_val_takes_the_same_group_numbers_in_every_class() -> None:
    # Groups of one number share their scene across classes in the synthetic set (and are one
    # source video per class in UCF101): val must hold out the number in every class.
    rows = [(c, f"{c}/g{g:02d}") for c in ("a", "b", "c") for g in range(1, 11) for _ in range(2)]
    table = pd.DataFrame({"class": [c for c, _ in rows], "group": [g for _, g in rows],
                          "split": ["train"] * len(rows), "excluded": [""] * len(rows)})
    split = carve_validation(table, 0.2, seed=4, by_group=True)
    numbers = table["group"].str[-3:]
    val_numbers = set(numbers[split == "val"])
    assert len(val_numbers) == 2
    assert set(numbers[split == "train"]).isdisjoint(val_numbers)
    assert (table[split == "val"].groupby("class").size() == 4).all()


def test_variable_rate_files_are_told_apart_by_their_duration_and_pointed_out() -> None:
    from slic.data.datasets import extracted_frame_counts, variable_rate_advice, variable_rate_rows

    # tree.avi: 68 pictures over 29.9 s at a stated 15 fps; a constant-rate one; an excluded one; one without a rate
    table = pd.DataFrame({"path": ["/v/tree.avi", "/v/walk.mp4", "/v/bad.mp4", "/v/odd.mkv"],
                          "frames": [68, 250, 0, 10], "fps": [15.0, 25.0, 0.0, 0.0],
                          "duration": [29.9335, 10.0, 0.0, 0.0], "excluded": ["", "", "unreadable", ""]})
    assert variable_rate_rows(table).tolist() == [True, False, False, False]
    assert variable_rate_advice(table) == (
        "1 usable video file(s) have a variable frame rate, e.g. tree.avi (68 frames over 29.9 s, 15 fps stated): "
        "native frames are not evenly spaced in time, so their clips span uneven times; set extract.fps (e.g. 25) "
        "to resample them by their timestamps")
    assert variable_rate_advice(table, target_fps=25.0) == ""  # resampled by time: nothing to do
    assert variable_rate_advice(table.iloc[1:]) == ""
    # at 25 fps the variable-rate file is resampled by its seconds, the others by their frames
    assert extracted_frame_counts(table, 25.0).tolist() == [748, 250, 0, 10]


def test_the_mixed_rate_note_counts_files_not_segments_and_leaves_variable_rate_files_out() -> None:
    from slic.data.datasets import frame_rate_advice

    table = pd.DataFrame({"path": ["/v/long.mp4"] * 5 + ["/v/a.mp4", "/v/b.mp4", "/v/tree.avi"],
                          "frames": [150] * 5 + [300, 300, 68], "fps": [15.0] * 5 + [30.0, 30.0, 14.9999],
                          "duration": [10.0] * 5 + [10.0, 10.0, 29.9335], "excluded": [""] * 8})
    assert frame_rate_advice(table).startswith("frame rates range from 15 to 30 fps (most often 30: 2 of the 3 usable "
                                               "videos of a constant rate)")  # tree.avi (variable) not among them
    assert frame_rate_advice(table[table["path"] != "/v/long.mp4"]) == ""  # 30 and a variable-rate file: one rate


def recordings_folder(root: Path, clips: int = 3) -> Path:
    """Two classes of six recordings each, every recording cut into `clips` clips named like UCF101's
    (<class>_r<R>_c<C>.mp4), as a user's folder of clips often is."""
    for cls in ("jump", "run"):
        for recording in range(6):
            for clip in range(1, clips + 1):
                make_video(root / cls / f"{cls}_r{recording}_c{clip:02d}.mp4")
    return root


def test_group_pattern_keeps_each_recordings_clips_on_one_side_of_every_split(tmp_path: Path) -> None:
    """Without a pattern a folder's split is per video, and a recording's clips land in train and test (retrieval
    then finds the recording's scene); with manifest.group_pattern every recording sits on one side."""
    root = recordings_folder(tmp_path / "videos")
    per_video = build_manifest(config(root, "folder"))
    recording = per_video["video_id"].str.extract(r"_(r\d)_", expand=False)
    sides = per_video.groupby([per_video["class"], recording])["split"].nunique()
    assert (sides > 1).any()  # the leak the pattern is for
    grouped = build_manifest(config(root, "folder", group_pattern=r"^(.*?)_c\d+\.\w+$"))
    assert grouped.equals(build_manifest(config(root, "folder", group_pattern=r"^(.*?)_c\d+\.\w+$")))  # seeded
    assert set(grouped["group"]) == {f"{cls}/{cls}_r{r}" for cls in ("jump", "run") for r in range(6)}
    assert (grouped.groupby("group")["split"].nunique() == 1).all()
    assert grouped.groupby(["class", "split"])["group"].nunique().to_dict() == {
        ("jump", "test"): 2, ("jump", "train"): 3, ("jump", "val"): 1,
        ("run", "test"): 2, ("run", "train"): 3, ("run", "val"): 1}
    # A recording number shared by the classes (as UCF101's g08 is one scene in every class) goes to one side in
    # both classes.
    shared = build_manifest(config(root, "folder", group_pattern=r"_(r\d+)_"))
    test_numbers = shared[shared["split"] == "test"].groupby("class")["group"].apply(
        lambda groups: sorted(g.split("/")[1] for g in set(groups)))
    assert test_numbers["jump"] == test_numbers["run"] and len(test_numbers["jump"]) == 2
    from slic.data.datasets import carves_by_group

    assert carves_by_group("folder", r"_(r\d+)_") and not carves_by_group("folder", "")


def test_group_pattern_is_checked_and_a_video_it_does_not_match_is_its_own_recording(tmp_path: Path) -> None:
    root = recordings_folder(tmp_path / "videos", clips=2)
    make_video(root / "jump" / "odd one.mp4")
    table = build_manifest(config(root, "folder", group_pattern=r"^(.*?)_c\d+\.\w+$")).set_index("video_id")
    assert table.loc["jump/odd one", "group"] == "jump/odd one"
    with pytest.raises(DatasetError, match=r"manifest.group_pattern = '_g\(\\d\+_': not a regular expression"):
        build_manifest(config(root, "folder", group_pattern=r"_g(\d+_"))
    with pytest.raises(DatasetError, match="applies to layouts folder and unlabelled only .layout is ucf101"):
        build_manifest(config(root, "ucf101", group_pattern="_g(\\d+)_"))
    with pytest.raises(DatasetError, match=r"manifest.group_pattern = '_g\(\\d\+\)_' matches none of the 25 videos' "
                                           r"paths under their class folders \(e.g. 'jump_r0_c01.mp4'\); fix it"):
        build_manifest(config(root, "folder", group_pattern=r"_g(\d+)_"))  # UCF101's pattern on other names


def test_an_unlabelled_folders_recordings_are_named_by_the_group_pattern_on_the_path_under_root(
        tmp_path: Path) -> None:
    """No classes and no split there: the recording only tells `slic search --per-recording` which files are one
    (here a trip's folder, or the part of a name before its clip number); unmatched files are recordings of their
    own, and the manifest stage says how many."""
    from slic.data.datasets import grouping_advice

    root = tmp_path / "archive"
    for name in ("beach/GX010001.mp4", "beach/GX020001.mp4", "hike/GX010002.mp4", "loose.mp4"):
        make_video(root / name)
    plain = build_manifest(config(root, "unlabelled"))
    assert plain["group"].tolist() == ["beach/GX010001", "beach/GX020001", "hike/GX010002", "loose"]
    by_folder = build_manifest(config(root, "unlabelled", group_pattern=r"^([^/]+)/"))
    assert by_folder["group"].tolist() == ["beach", "beach", "hike", "loose"]
    assert (by_folder["split"] == "train").all() and by_folder.drop(columns="group").equals(plain.drop(columns="group"))
    assert grouping_advice(by_folder, str(root), "unlabelled", r"^([^/]+)/") == (
        "1 of 4 usable videos do not match manifest.group_pattern '^([^/]+)/' (e.g. loose.mp4): each is a recording "
        "of its own")
    assert grouping_advice(plain, str(root), "unlabelled", "") == ""  # no pattern, no classes: nothing to say
    by_clip = build_manifest(config(root, "unlabelled", group_pattern=r"GX\d\d(\d{4})"))  # GoPro: chapter, file
    assert by_clip["group"].tolist() == ["0001", "0001", "0002", "loose"]
    with pytest.raises(DatasetError, match=r"matches none of the 4 videos' paths under manifest.root \(e.g. "
                                           r"'beach/GX010001.mp4'\); fix it, or set it to ''"):
        build_manifest(config(root, "unlabelled", group_pattern=r"_c(\d+)"))
    clips = recordings_folder(tmp_path / "clips")  # name families: the note suggests a pattern, as for a folder
    advice = grouping_advice(build_manifest(config(clips, "unlabelled")), str(clips), "unlabelled", "")
    assert advice.startswith("36 of 36 videos share their name with others but for a trailing number (e.g. "
                             "jump_r0_c01.mp4, jump_r0_c02.mp4; 12 such families): if each family is clips of one "
                             "recording, `slic search --other-recordings`")
    suggested = advice.split("manifest.group_pattern: '")[1].split("'")[0]
    grouped = build_manifest(config(clips, "unlabelled", group_pattern=suggested))
    assert grouped["group"].nunique() == 12 and grouping_advice(grouped, str(clips), "unlabelled", suggested) == ""


def test_what_a_group_pattern_made_of_the_folder_is_said_when_it_needs_saying(tmp_path: Path) -> None:
    """Videos the pattern does not match are recordings of their own, and a class it leaves with one recording
    gets no test video (validate then stops): the manifest stage's note says both, naming the key."""
    from slic.data.datasets import grouping_advice

    root = recordings_folder(tmp_path / "videos", clips=2)
    make_video(root / "jump" / "odd one.mp4")
    pattern = r"^(.*?)_c\d+\.\w+$"
    table = build_manifest(config(root, "folder", group_pattern=pattern))
    assert grouping_advice(table, str(root), "folder", pattern) == (
        f"1 of 25 usable videos do not match manifest.group_pattern '{pattern}' (e.g. odd one.mp4): each is a "
        "recording of its own")
    coarse = r"^(jump|run)_"  # one recording per class (and the odd one in jump)
    table = build_manifest(config(root, "folder", group_pattern=coarse))
    assert (table.loc[table["class"] == "run", "split"] == "train").all()
    assert grouping_advice(table, str(root), "folder", coarse, key="eval_sets.mine.group_pattern").endswith(
        "; class(es) run have a single recording under eval_sets.mine.group_pattern: all of it trains, so they get "
        "no test or val video")
    assert grouping_advice(table, str(root), "ucf101", coarse) == ""  # another layout: nothing said


def test_name_families_without_a_group_pattern_are_pointed_out_with_a_pattern_that_groups_them(tmp_path: Path) -> None:
    from slic.data.datasets import grouping_advice

    root = recordings_folder(tmp_path / "videos")
    table = build_manifest(config(root, "folder"))
    advice = grouping_advice(table, str(root), "folder", "")
    assert advice.startswith("36 of 36 videos share their name with others of their class but for a trailing number "
                             "(e.g. jump_r0_c01.mp4, jump_r0_c02.mp4; 12 such families)")
    suggested = advice.split("manifest.group_pattern: '")[1].split("'")[0]
    assert suggested == r"^(.*?)_c\d{1,3}\.\w+$"
    grouped = build_manifest(config(root, "folder", group_pattern=suggested))
    assert grouped["group"].nunique() == 12 and grouping_advice(grouped, str(root), "folder", suggested) == ""
    assert grouping_advice(table, str(root), "ucf101", "") == ""
    # No family: a camera's running numbers (IMG_1234 are other recordings), or one family that is the whole class.
    for names in (["IMG_0042", "IMG_0043", "DSC_0007", "beach"], ["GOPR0001", "GOPR0002", "x", "y"]):
        rows = pd.DataFrame({"class": "a", "path": [f"/v/a/{n}.mov" for n in names], "excluded": ""})
        assert grouping_advice(rows, "/v", "folder", "") == "", names
    for names in (["IMG_1234", "IMG_1240", "IMG_2001", "beach"], ["clip1", "clip2", "clip3", "clip4"]):
        rows = pd.DataFrame({"class": "a", "path": [f"/v/a/{n}.mov" for n in names], "excluded": ""})
        assert grouping_advice(rows, "/v", "folder", "") == "", names


def test_an_unlabelled_folders_families_are_counted_per_folder_and_the_pattern_spares_camera_names(
        tmp_path: Path) -> None:
    """The audit's phone folder: clip_NNN files in three folders and two phone videos IMG_0042, IMG_0043. The note
    counts a family per folder (3, as the pattern groups them, not 1 by name), names the recording the manifest will
    make, and its pattern leaves the phone videos recordings of their own (before, it made them one)."""
    from slic.data.datasets import grouping_advice

    root = tmp_path / "videos"
    names = ([f"clip_{i:03d}.mp4" for i in range(4)] + [f"phone/DCIM/clip_{i:03d}.mp4" for i in range(3)]
             + [f"backup/clip_{i:03d}.mp4" for i in range(3)] + ["phone/DCIM/IMG_0042.mp4", "phone/DCIM/IMG_0043.mp4"])
    for name in names:
        make_video(root / name)
    table = build_manifest(config(root, "unlabelled"))
    advice = grouping_advice(table, str(root), "unlabelled", "")
    assert advice.startswith("10 of 12 videos share their name with others but for a trailing number (e.g. "
                             "clip_000.mp4, clip_001.mp4; 3 such families)")
    suggested = advice.split("manifest.group_pattern: '")[1].split("'")[0]
    assert "(names clip_000.mp4's recording 'clip')" in advice
    grouped = build_manifest(config(root, "unlabelled", group_pattern=suggested)).set_index("path")
    assert grouped["group"].nunique() == 5  # the three families, and each phone video its own
    assert grouped.loc[str(root / "phone/DCIM/IMG_0042.mp4"), "group"] != grouped.loc[
        str(root / "phone/DCIM/IMG_0043.mp4"), "group"]
