"""Near twins across the split: a test video that is a copy (or a sibling clip) of a train video is counted and
named; videos of other scenes are not; the extract stage's warning says what to do."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slic.data.frames import ShardReader, extract_all, shard_path, write_shard
from slic.data.twins import TWIN_COSINE, WARN_SHARE, frame_signature, near_twins, twins_warning


@pytest.fixture(scope="module")
def shards(tiny_manifest: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """The tiny synthetic set's shards (split by group: no test scene is a train scene) and its usable rows."""
    out = tmp_path_factory.mktemp("frames")
    usable = tiny_manifest[tiny_manifest["excluded"] == ""].copy()
    extract_all(usable, out_dir=out, short_side=32, quality=5, workers=1)
    return usable, out


def test_a_copy_across_the_split_is_a_twin_and_other_scenes_are_not(shards: tuple[pd.DataFrame, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    usable, frames = shards
    clean = near_twins(usable, frames)
    test_videos = int((usable["split"] == "test").sum())
    assert (clean["queries"], clean["with_twin"], clean["examples"]) == (test_videos, 0, [])
    assert twins_warning(clean, "set manifest.group_pattern") == ""
    # Two test videos become copies of train videos (a file listed twice under other names, a recording's clips).
    train = usable[usable["split"] == "train"]["video_id"].tolist()
    test = usable[usable["split"] == "test"]["video_id"].tolist()
    copied = frames.parent / "copied"
    shutil.copytree(frames, copied)
    for query, source in ((test[0], train[0]), (test[1], train[5])):
        shutil.copy(shard_path(frames, source), shard_path(copied, query))
    leaky = near_twins(usable, copied)
    assert (leaky["with_twin"], leaky["share"]) == (2, round(2 / test_videos, 4))
    assert {(e["query"], e["twin"]) for e in leaky["examples"]} == {(test[0], train[0]), (test[1], train[5])}
    assert all(e["cosine"] == pytest.approx(1.0, abs=1e-5) for e in leaky["examples"])
    from slic.data import twins

    monkeypatch.setattr(twins, "BLOCK_CELLS", 7)  # one query row a block (a big collection's blocks): same answer
    assert near_twins(usable, copied) == leaky
    monkeypatch.setattr(twins, "SIGNATURES_PER_TASK", 2)  # signatures in 2 worker processes: same answer
    assert near_twins(usable, copied, workers=2) == leaky
    assert 2 / test_videos >= WARN_SHARE
    line = twins_warning(leaky, "for a class folder set manifest.group_pattern")
    assert line.startswith(f"2 of {test_videos} test videos ({100 * 2 / test_videos:.0f}%) have a train video whose "
                           f"frames look nearly the same (e.g. ")
    assert line.endswith("so test recall measures them, not the encoder; for a class folder set "
                         "manifest.group_pattern")


def test_an_archives_twins_are_copies_across_recordings_and_a_recordings_own_clips_are_not(
        shards: tuple[pd.DataFrame, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unlabelled archive has no split: a video's twin is a near-identical video of another recording (a copy, or
    a clip of one recording that no group_pattern names), each pair named once; clips of one named recording are
    never each other's twins."""
    from slic.data.twins import archive_twins, archive_twins_warning

    usable, frames = shards
    archive = usable.assign(group=usable["video_id"], label=-1, split="train")  # each file its own recording
    ids = archive["video_id"].tolist()
    clean = archive_twins(archive, frames)
    assert (clean["scope"], clean["videos"], clean["with_twin"], clean["examples"]) == ("archive", len(ids), 0, [])
    assert archive_twins_warning(clean) == ""
    copied = tmp_path / "copied"
    shutil.copytree(frames, copied)
    shutil.copy(shard_path(frames, ids[0]), shard_path(copied, ids[7]))  # a copy under another name
    found = archive_twins(archive, copied, workers=2)
    assert (found["with_twin"], [(e["query"], e["twin"]) for e in found["examples"]]) == (2, [tuple(sorted(
        (ids[0], ids[7])))])  # both videos have a twin; the pair is named once
    line = archive_twins_warning(found)
    assert 2 / len(ids) >= WARN_SHARE and line.startswith(f"2 of {len(ids)} videos ") and "--other-recordings" in line
    named = archive.assign(group=["one"] * 8 + ids[8:])  # the copy's two videos named one recording: not twins
    assert archive_twins(named, copied)["with_twin"] == 0
    from slic.data import twins

    monkeypatch.setattr(twins, "BLOCK_CELLS", 7)  # one row a block, its recording masked in each: same answers
    assert archive_twins(archive, copied) == found and archive_twins(named, copied)["with_twin"] == 0


def test_an_eval_sets_test_videos_that_pretraining_trained_on_are_found(shards: tuple[pd.DataFrame, Path],
                                                                          tmp_path: Path) -> None:
    """The transfer protocol's leak: an eval set (its own shards) whose test videos the pretraining data holds too.
    Only the pretraining train and val videos count: its test videos were never trained on."""
    from slic.data.twins import pretraining_twins

    usable, frames = shards
    pretraining = usable[usable["split"] != "test"]
    evaluation = tmp_path / "eval"
    (evaluation / "x").mkdir(parents=True)
    names = ["x/a", "x/b", "x/c"]
    sources = [pretraining["video_id"].iloc[0], pretraining["video_id"].iloc[3],
               usable[usable["split"] == "test"]["video_id"].iloc[0]]  # the last one pretraining held out
    for name, source in zip(names, sources):
        shutil.copy(shard_path(frames, source), shard_path(evaluation, name))
    eval_rows = pd.DataFrame({"video_id": names, "split": "test"})
    found = pretraining_twins(eval_rows, evaluation, usable, frames)
    assert (found["queries"], found["with_twin"]) == (3, 2)
    assert {(e["query"], e["twin"]) for e in found["examples"]} == {("x/a", sources[0]), ("x/b", sources[1])}
    assert found["gallery_splits"] == ["pretraining train", "pretraining val"]


def test_the_signature_ignores_brightness_and_contrast_not_the_scene(shards: tuple[pd.DataFrame, Path]) -> None:
    """A brighter, flatter copy of a video is still its twin (frames are standardised); a video of another group's
    scene is not."""
    usable, frames = shards
    first = usable.iloc[0]
    number = usable["group"].str.rsplit("/", n=1).str[-1]
    other = usable[number != number.iloc[0]]["video_id"].iloc[0]  # another group number: another scene
    reader = ShardReader.open(shard_path(frames, first["video_id"]))
    flatter = []
    for jpeg in reader.read_jpegs(0, reader.frames):
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels * 0.6 + 60, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        flatter.append(buffer.getvalue())
    copy = frames.parent / "flatter.shard"
    write_shard(copy, flatter, dict(reader.header))
    signature = frame_signature(shard_path(frames, first["video_id"]))
    assert float(signature @ frame_signature(copy)) >= TWIN_COSINE
    assert float(signature @ frame_signature(shard_path(frames, other))) < TWIN_COSINE


def test_every_pair_is_written_to_a_csv_with_the_files_and_the_report_keeps_the_closest(
        shards: tuple[pd.DataFrame, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report holds only the closest pairs; the CSV holds every one with both files, so a user can remove the
    copies, and the warning names it. A clean run writes the header alone, not an earlier run's pairs."""
    from slic.data import twins
    from slic.data.twins import write_twin_pairs

    usable, frames = shards
    train = usable[usable["split"] == "train"]["video_id"].tolist()
    test = usable[usable["split"] == "test"]["video_id"].tolist()
    copied = tmp_path / "copied"
    shutil.copytree(frames, copied)
    for query, source in ((test[0], train[0]), (test[1], train[5]), (test[2], train[6])):
        shutil.copy(shard_path(frames, source), shard_path(copied, query))
    monkeypatch.setattr(twins, "EXAMPLES", 1)
    paths = {video: f"/videos/{video}.avi" for video in usable["video_id"]}
    report = write_twin_pairs(near_twins(usable, copied), tmp_path / "near_twins.csv", paths)
    assert "all_pairs" not in report and len(report["examples"]) == 1 and report["with_twin"] == 3
    listed = pd.read_csv(report["pairs_file"], keep_default_na=False)
    assert list(listed.columns) == ["video_id", "twin", "cosine", "path", "twin_path"]
    assert set(zip(listed["video_id"], listed["twin"])) == {(test[0], train[0]), (test[1], train[5]),
                                                           (test[2], train[6])}
    assert (listed["path"] == "/videos/" + listed["video_id"] + ".avi").all()
    assert (listed["twin_path"] == "/videos/" + listed["twin"] + ".avi").all()
    assert listed.iloc[0][["video_id", "twin"]].tolist() == [report["examples"][0]["query"],
                                                             report["examples"][0]["twin"]]  # closest first
    assert twins_warning(report, "advice").endswith(f"advice; every pair: {tmp_path / 'near_twins.csv'}")
    clean = write_twin_pairs(near_twins(usable, frames), tmp_path / "near_twins.csv", paths)
    assert clean["with_twin"] == 0 and pd.read_csv(clean["pairs_file"]).empty
