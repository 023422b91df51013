"""Great Expectations catches each kind of bad manifest and names the videos."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from slic.data.validate import coverage_table, validate_manifest, with_derived_columns


def test_valid_manifest_passes_and_builds_data_docs(tiny_manifest: pd.DataFrame, tmp_path: Path) -> None:
    report = validate_manifest(tiny_manifest, min_frames=32, data_docs=tmp_path / "docs")
    assert report.success, report.summary()
    assert report.statistics["evaluated_expectations"] >= 20
    assert report.statistics["usable_videos"] == 24
    assert (tmp_path / "docs" / "index.html").is_file()


def test_each_problem_is_reported_with_examples(tiny_manifest: pd.DataFrame) -> None:
    bad = tiny_manifest.copy()
    ids = bad["video_id"]
    # 1. a test-group clip moved into train: its group now crosses the train/test line
    bad.loc[ids == "Rise/v_Rise_g01_c02", "split"] = "train"
    # 2. a short video that was not excluded
    bad.loc[ids == "Rise/v_Rise_g03_c01", "frames"] = 12
    # 3. a file that no longer exists
    bad.loc[ids == "Fall/v_Fall_g04_c02", "path"] = "/nowhere/v.avi"
    # 4. a label outside the class index
    bad.loc[ids == "Rise/v_Rise_g04_c01", "label"] = 7
    # 5. a class with no validation video
    bad = bad[~((bad["class"] == "Slide") & (bad["split"] == "val"))]
    report = validate_manifest(bad, min_frames=32)
    assert not report.success
    found = {(f.expectation, f.column): f for f in report.failures}
    crossing = found[("expect_column_values_to_be_in_set", "group_crosses_test")]
    assert crossing.unexpected_count == 2  # both clips of Rise/g01 sit in a crossing group
    assert any("Rise/v_Rise_g01_c02" in str(e) for e in crossing.examples)
    assert found[("expect_column_values_to_be_between", "extracted_frames")].examples == [
        "Rise/v_Rise_g03_c01 (extracted_frames=12)"]  # at native frames (extract.fps 0), what the manifest says
    assert "Fall/v_Fall_g04_c02" in str(found[("expect_column_values_to_be_in_set", "file_exists")].examples)
    assert "Rise/v_Rise_g04_c01 (label=7)" in found[("expect_column_values_to_be_between", "label")].examples
    assert found[("expect_column_values_to_be_between", "videos")].examples == ["Slide in val (videos=0)"]
    summary = report.summary()
    assert summary.startswith("manifest invalid: 5 of")
    assert "Rise/v_Rise_g03_c01" in summary
    # each failure says what to do about it, next to its examples
    assert "each group is on one side" in crossing.hint and "put them back" in found[
        ("expect_column_values_to_be_in_set", "file_exists")].hint
    coverage = found[("expect_column_values_to_be_between", "videos")]
    assert "add videos to those classes" in coverage.hint and "manifest.min_frames" in coverage.hint
    assert summary.count("\n  what to do: ") == 5 and f"(videos=0)\n  what to do: {coverage.hint}" in summary


def test_excluded_short_videos_pass(tiny_manifest: pd.DataFrame) -> None:
    table = tiny_manifest.copy()
    table.loc[0, ["frames", "excluded"]] = [5, "too short: 5 frames < 32"]
    assert validate_manifest(table, min_frames=32).success


def test_a_video_excluded_as_missing_passes(tiny_manifest: pd.DataFrame) -> None:
    """manifest.on_missing: exclude (Kinetics, where takedowns are normal) keeps the gone file as an excluded row:
    its absence is the reason it is excluded, not a fault of the table. A used row whose file is gone still fails."""
    table = tiny_manifest.copy()
    table.loc[0, ["path", "frames", "excluded"]] = ["/nowhere/v.avi", 0, "missing file"]
    assert validate_manifest(table, min_frames=32).success
    table.loc[1, "path"] = "/nowhere/w.avi"
    report = validate_manifest(table, min_frames=32)
    failure = {(f.expectation, f.column): f for f in report.failures}[("expect_column_values_to_be_in_set",
                                                                      "file_exists")]
    assert failure.unexpected_count == 1 and table.loc[1, "video_id"] in str(failure.examples)


def test_derived_tables() -> None:
    table = pd.DataFrame({"path": [__file__, "/missing"], "group": ["a/g1", "a/g1"], "split": ["train", "test"],
                          "class": ["a", "a"], "excluded": ["", ""], "frames": [100, 40], "fps": [50.0, 25.0]})
    derived = with_derived_columns(table)
    assert derived["file_exists"].tolist() == [True, False]
    assert derived["group_crosses_test"].tolist() == [True, True]
    assert derived["extracted_frames"].tolist() == [100, 40]
    assert with_derived_columns(table, target_fps=25.0)["extracted_frames"].tolist() == [50, 40]
    coverage = coverage_table(table).set_index("split")["videos"].to_dict()
    assert coverage == {"train": 1, "val": 0, "test": 1}


def frame_index(manifest: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """An index.csv as extract writes it for every video of `manifest`, each shard a file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for video_id in manifest["video_id"]:
        (folder / f"{video_id.replace('/', '_')}.shard").write_bytes(b"shard")
    return pd.DataFrame({"video_id": manifest["video_id"], "shard": [f"{v.replace('/', '_')}.shard"
                                                                     for v in manifest["video_id"]],
                         "frames": 40})


def test_the_frame_index_is_checked_before_anything_trains(tiny_manifest: pd.DataFrame, tmp_path: Path) -> None:
    from slic.data.validate import validate_frames

    usable = tiny_manifest[tiny_manifest["excluded"] == ""]
    index = frame_index(usable, tmp_path)
    report = validate_frames(usable, index, tmp_path)
    assert report.success and report.warnings == [] and report.statistics["extracted_videos"] == len(usable)
    assert report.summary() == "frame index valid: 4 expectations met"

    # a video that could not be decoded is left out by name; the stages go on while every class keeps a video
    failed = usable["video_id"].iloc[0]
    report = validate_frames(usable, index[index["video_id"] != failed], tmp_path)
    assert report.success and [w.column for w in report.warnings] == ["extracted"]
    assert report.warnings[0].examples == [f"{failed} (extracted=False)"] and "re-encode" in report.warnings[0].hint

    # every test video of a class failed: stopped, naming the class and the split
    rise_test = set(usable[(usable["class"] == "Rise") & (usable["split"] == "test")]["video_id"])
    report = validate_frames(usable, index[~index["video_id"].isin(rise_test)], tmp_path)
    assert not report.success
    [coverage] = report.failures
    assert coverage.examples == ["Rise in test (videos=0)"] and "could not be decoded" in coverage.hint
    assert "Rise in test" in report.summary() and f"{len(rise_test)} row(s)" in report.summary()  # the warning

    # a shard gone from the folder, and a video listed twice
    (tmp_path / index["shard"].iloc[1]).unlink()
    report = validate_frames(usable, pd.concat([index, index.iloc[[2]]]), tmp_path)
    assert {f.column for f in report.failures} == {"shard_exists", "video_id"}
    assert report.summary().startswith("frame index invalid: 2 of 4 expectations failed")


def test_extract_stops_when_a_class_has_no_decodable_video_left_and_keeps_its_shards(tmp_path: Path) -> None:
    import os
    import shutil

    import numpy as np
    import yaml

    from slic.cli import main
    from slic.data.video import write_video
    from tests.conftest import damaged_video

    corrupted = damaged_video(tmp_path / "corrupted.mp4")  # probes fine, fails to decode
    rng = np.random.default_rng(0)
    for name in ("wave", "jump"):
        (tmp_path / "videos" / name).mkdir(parents=True)
    for i in range(5):
        write_video(tmp_path / "videos" / "wave" / f"w{i}.avi", rng.integers(0, 255, (40, 32, 32, 3), np.uint8),
                    fps=10)
        shutil.copy(corrupted, tmp_path / "videos" / "jump" / f"j{i}.mp4")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "manifest": {"root": "videos", "layout": "folder", "workers": 1, "val_fraction": 0.2},
        "validate": {"data_docs": "docs"}, "extract": {"short_side": 16, "workers": 1}}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["manifest"]) == 0 and main(["validate"]) == 0  # nothing wrong shows before decoding
        assert main(["extract"]) == 1
    finally:
        os.chdir(cwd)
    import json

    report = json.loads((tmp_path / "reports" / "extract.json").read_text())
    assert len(report["failed"]) == 5 and not report["validation"]["success"]
    assert sorted(e for f in report["validation"]["failures"] for e in f["examples"]) == [
        "jump in test (videos=0)", "jump in train (videos=0)", "jump in val (videos=0)"]
    assert len(list((tmp_path / "data" / "frames").rglob("*.shard"))) == 5  # the good ones, kept for the rerun


def test_the_frame_report_runs_the_suite_only_when_the_index_differs_from_the_manifest(
        tiny_manifest: pd.DataFrame, tmp_path: Path) -> None:
    from slic.data.frames import INDEX_NAME
    from slic.data.validate import frames_report

    usable = tiny_manifest[tiny_manifest["excluded"] == ""]
    index = frame_index(usable, tmp_path)
    index.to_csv(tmp_path / INDEX_NAME, index=False)
    complete = frames_report(usable, tmp_path)
    assert complete["success"] and complete["evaluated_expectations"] == 0  # nothing to find: no suite started
    assert complete["summary"] == f"frame index complete: all {len(usable)} listed videos extracted, each shard on disk"
    index.iloc[1:].to_csv(tmp_path / INDEX_NAME, index=False)  # one video failed to decode
    partial = frames_report(usable, tmp_path)
    assert partial["success"] and partial["evaluated_expectations"] == 4
    assert [w["column"] for w in partial["warnings"]] == ["extracted"]
    (tmp_path / index["shard"].iloc[2]).unlink()  # a listed shard gone: the suite runs and stops it
    index.to_csv(tmp_path / INDEX_NAME, index=False)
    assert [f["column"] for f in frames_report(usable, tmp_path)["failures"]] == ["shard_exists"]
