"""Long videos as segments (manifest.segment_seconds): the manifest cuts a long file into rows of about that many
seconds on one side of every split, Great Expectations checks their ranges, extract writes each segment's frames
(reached by seeking, the same JPEG bytes as those frames of the whole file's shard), and search says where in
its file a segment lies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.config import IndexConfig, ManifestConfig
from slic.data.datasets import SEGMENT_COLUMNS, DatasetError, build_manifest
from slic.data.video import segment_bounds
from slic.data.validate import validate_manifest
from tests.conftest import StubEncoder
from tests.test_video_seek import write

LONG_FRAMES = 1500  # a minute at 25 fps


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unlabelled folder: a minute of H.264 (a keyframe every 50 frames) and a 3-second MPEG-4 clip."""
    root = tmp_path_factory.mktemp("segments")
    write(root / "long" / "match.mp4", "libx264", options={"preset": "veryfast", "bf": "2"}, gop=50,
          frames=LONG_FRAMES)
    write(root / "short.avi", "mpeg4", gop=12, frames=75)
    return root


def test_segment_bounds_cut_equal_parts_near_the_length_asked() -> None:
    assert segment_bounds(1500, 25.0, 10.0) == [(i, i + 250) for i in range(0, 1500, 250)]
    assert segment_bounds(380, 25.0, 10.0) == [(0, 190), (190, 380)]  # 15.2 s: two parts of 7.6 s
    assert segment_bounds(370, 25.0, 10.0) == [(0, 370)]  # 14.8 s, under 1.5 x 10 s: one part
    assert segment_bounds(0, 0.0, 10.0) == [(0, 0)]  # unreadable: one row, which stays excluded


def test_the_manifest_cuts_long_videos_into_segments_that_validate(archive: Path) -> None:
    whole = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1))
    assert list(whole.columns) == [c for c in whole.columns if c not in SEGMENT_COLUMNS]  # off: the old table
    table = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1, segment_seconds=10))
    assert table["video_id"].tolist() == [f"long/match@{s}.0s" for s in (0, 10, 20, 30, 40, 50)] + ["short"]
    long = table[table["path"].str.endswith("match.mp4")]
    assert long["start_frame"].tolist() == list(range(0, LONG_FRAMES, 250)) and set(long["frames"]) == {250}
    assert (long["stop_frame"] - long["start_frame"]).tolist() == [250] * 6 and set(long["duration"]) == {10.0}
    assert table.set_index("video_id").loc["short", ["start_frame", "stop_frame", "frames"]].tolist() == [0, 75, 75]
    assert validate_manifest(table, min_frames=32, labelled=False).success
    broken = table.copy()
    broken.loc[2, "stop_frame"] = broken.loc[2, "start_frame"]  # an empty range
    report = validate_manifest(broken, min_frames=32, labelled=False)
    assert not report.success and "stop_frame" in report.summary() and "long/match@20.0s" in report.summary()
    short_segments = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1,
                                                   segment_seconds=1, min_frames=32))
    with pytest.raises(DatasetError, match=r"manifest.segment_seconds = 0.5: a segment must be 1 second or longer"):
        build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", segment_seconds=0.5))
    excluded = short_segments[short_segments["excluded"] != ""]["excluded"]
    assert len(excluded) == 60 + 3  # every one-second segment of both files
    assert excluded.iloc[0] == "too short: 25 frames < manifest.min_frames 32 (a segment of manifest.segment_seconds 1)"


def test_a_segment_shard_holds_those_frames_of_the_whole_files_shard(archive: Path, tmp_path: Path) -> None:
    from slic.data.frames import ShardReader, extract_all, shard_path

    segments = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1, segment_seconds=10))
    whole = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1))
    extract_all(segments, out_dir=tmp_path / "segments", short_side=32, quality=4, workers=1)
    extract_all(whole, out_dir=tmp_path / "whole", short_side=32, quality=4, workers=1)
    full = ShardReader.open(shard_path(tmp_path / "whole", "long/match"))
    for start in (0, 750, 1250):  # the first segment, one reached by a seek, the last
        shard = ShardReader.open(shard_path(tmp_path / "segments", f"long/match@{start // 25}.0s"))
        assert (shard.frames, shard.header["start_frame"], shard.header["stop_frame"]) == (250, start, start + 250)
        assert shard.read_jpegs(0, 250) == full.read_jpegs(start, 250)  # byte for byte
    again = extract_all(segments, out_dir=tmp_path / "segments", short_side=32, quality=4, workers=1)
    assert (again["extracted"], again["reused"]) == (0, 7)


def test_search_says_where_in_its_file_a_segment_lies(archive: Path, tmp_path: Path) -> None:
    from slic.index import build_stage, load_index
    from slic.search import format_table, search_videos

    table = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1, segment_seconds=10))
    table.to_csv(tmp_path / "validated.csv", index=False)
    vectors = np.random.default_rng(0).normal(size=(len(table), 8)).astype(np.float32)
    np.savez(tmp_path / "embeddings.npz", video_id=table["video_id"].to_numpy(str), label=np.full(len(table), -1),
             class_name=np.array([""] * len(table)), split=table["split"].to_numpy(str), embedding=vectors)
    cfg = IndexConfig(manifest=str(tmp_path / "validated.csv"), kind="flat", out=str(tmp_path / "index"))
    build_stage(cfg, embeddings=str(tmp_path / "embeddings.npz"), checkpoint=str(tmp_path / "none.pt"), clips=2)
    loaded = load_index(tmp_path / "index")
    for row, span in ((3, (30.0, 40.0)), (6, (None, None))):  # a segment; the short video, one whole row
        answers, errors = search_videos([Path("/q.mp4")], StubEncoder(lambda _, r=row: vectors[r]), loaded, k=2)
        top = answers[0]["results"][0]
        assert errors == [] and (top["video_id"], top["start_s"], top["end_s"]) == (table["video_id"][row], *span)
    answers, _ = search_videos([Path("/q.mp4")], StubEncoder(lambda _: vectors[3]), loaded, k=1)
    assert format_table(answers[0]).splitlines()[2].endswith("long/match.mp4 [00:30.0-00:40.0]")
    rows = pd.read_csv(tmp_path / "index" / "rows.csv", keep_default_na=False)
    assert list(rows.columns) == ["row", "video_id", "path", "class", "label", "start_s", "end_s", "recording"]
    assert rows.groupby("path")["recording"].unique().map(list).to_dict() == {  # a file's segments: one recording
        str(archive / "long" / "match.mp4"): ["long/match"], str(archive / "short.avi"): ["short"]}
    from slic.report import video_captions  # the retrieval report's caption of each video: the same span

    shown = video_captions(tmp_path / "validated.csv")
    assert shown["long/match@30.0s"] == f"{archive / 'long' / 'match.mp4'} [00:30.0-00:40.0]"
    assert shown["short"] == str(archive / "short.avi")  # a file of one row: its path alone


def test_the_segments_bench_names_each_segments_majority_and_present_classes() -> None:
    """bench/segments.py's judge: a segment straddling two clips is of the class with more of its frames."""
    from bench.segments import segment_classes

    timeline = pd.DataFrame({"file": ["a.avi"] * 3 + ["b.avi"], "class": ["Archery", "Surfing", "Archery", "Surfing"],
                             "start": [0, 100, 160, 0], "stop": [100, 160, 300, 90]})
    rows = pd.DataFrame({"path": ["/x/a.avi", "/x/a.avi", "/x/b.avi"], "start_frame": [0, 90, 0],
                         "stop_frame": [90, 200, 90]})
    majority, present = segment_classes(rows, timeline)
    assert majority == ["Archery", "Surfing", "Surfing"]  # 90..200: 10 + 40 Archery frames, 60 Surfing
    assert present == [{"Archery"}, {"Archery", "Surfing"}, {"Surfing"}]


def test_long_added_videos_are_indexed_as_segments_and_reused(archive: Path, tmp_path: Path) -> None:
    """With manifest.segment_seconds the index stage's added videos are cut as the gallery is: a row per segment
    (`added/<path>@<start>s`, start_s, end_s), each the embedding of its frames alone, kept in the cache by the
    file's sha256 and the segment's frames; a short file stays one row."""
    from slic.added_videos import CACHE_FILE, embed_added
    from slic.config import PretrainConfig
    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    tiny = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=8)
    save_checkpoint(tmp_path / "best.pt", build_encoder(tiny), None, TrainState(), tiny)
    cache = tmp_path / "index" / CACHE_FILE
    added = embed_added(archive, (".mp4", ".avi"), checkpoint=tmp_path / "best.pt", clips=2, cache_file=cache,
                        segment_seconds=10)
    rows = added.rows
    assert rows["video_id"].tolist() == [f"added/long/match.mp4@{s}.0s" for s in (0, 10, 20, 30, 40, 50)] + [
        "added/short.avi"]
    assert rows["start_s"].tolist()[:6] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0] and rows["end_s"].tolist()[5] == 60.0
    assert pd.isna(rows["start_s"].iloc[6]) and (added.embedded_now, added.reused, added.failed) == (2, 0, [])
    long = archive / "long" / "match.mp4"
    alone = dict((p, v) for p, v, _ in VideoEncoder(tmp_path / "best.pt", clips=2).embed_files(
        [long, long], spans=[(250, 500), (1250, 1500)]))
    np.testing.assert_allclose(added.vectors[[1, 5]], np.stack([alone[0], alone[1]]), atol=1e-6)
    again = embed_added(archive, (".mp4", ".avi"), checkpoint=tmp_path / "best.pt", clips=2, cache_file=cache,
                        segment_seconds=10)
    assert (again.embedded_now, again.reused) == (0, 2) and np.array_equal(again.vectors, added.vectors)
    longer = embed_added(archive, (".mp4", ".avi"), checkpoint=tmp_path / "best.pt", clips=2, cache_file=cache,
                         segment_seconds=20)
    assert len(longer.rows) == 3 + 1 and (longer.embedded_now, longer.reused) == (1, 1)  # the short file reused
    assert len(np.load(cache)["sha256"]) == 3 + 1  # the 10-second segments are gone from the cache


def test_the_segments_bench_holds_whole_group_numbers_out_of_its_archive() -> None:
    """bench/segments.py's val queries: seeded group numbers, the same in every class, never in the archive."""
    from bench.segments import held_out

    clips = [(f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi", c) for c in ("Archery", "Surfing") for g in range(8, 26)
             for k in (1, 2)]
    kept, val = held_out(clips, seed=7, groups=3)
    groups = {name.rsplit("_g", 1)[1][:2] for name, _ in val}
    assert len(groups) == 3 and len(val) == 3 * 2 * 2 and len(kept) + len(val) == len(clips)
    assert not groups & {name.rsplit("_g", 1)[1][:2] for name, _ in kept}
    assert held_out(clips, seed=7, groups=3) == (kept, val) and held_out(clips, seed=8, groups=3) != (kept, val)


def test_search_with_a_stretch_of_a_long_video_finds_that_moment(archive: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`slic search FILE --start --end` embeds only that stretch of the file, as the index embedded its segments
    (the same frames, the same encoder): the segment it was cut from comes first, at similarity 1; with
    --other-files the file's own segments are left out. Times outside the file, or a folder, are refused."""
    from slic.cli import main
    from slic.config import PretrainConfig
    from slic.index import build_stage
    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    tiny = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=16)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, build_encoder(tiny), None, TrainState(), tiny)
    table = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1, segment_seconds=10))
    table.to_csv(tmp_path / "validated.csv", index=False)
    spans = list(zip(table["start_frame"], table["stop_frame"]))
    vectors = np.stack([v for _, v, _ in VideoEncoder(checkpoint, clips=2).embed_files(
        [Path(p) for p in table["path"]], spans=spans)])
    np.savez(tmp_path / "embeddings.npz", video_id=table["video_id"].to_numpy(str), label=np.full(len(table), -1),
             class_name=np.array([""] * len(table)), split=table["split"].to_numpy(str), embedding=vectors)
    cfg = IndexConfig(manifest=str(tmp_path / "validated.csv"), kind="flat", out=str(tmp_path / "index"))
    build_stage(cfg, embeddings=str(tmp_path / "embeddings.npz"), checkpoint=str(checkpoint), clips=2)
    params = tmp_path / "params.yaml"
    params.write_text(f"index:\n  out: {tmp_path / 'index'}\n  add_videos: ''\nembed:\n  workers: 0\n")
    match = archive / "long" / "match.mp4"

    def search(*args: str) -> tuple[int, str, str]:
        code = main(["--params", str(params), "search", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = search(str(match), "--start", "0:30", "--end", "40", "--json", "-k", "2")
    answer = json.loads(out)["queries"][0]
    assert code == 0 and (answer["start_s"], answer["end_s"]) == (30.0, 40.0)
    top = answer["results"][0]
    assert top["video_id"] == "long/match@30.0s" and top["similarity"] == pytest.approx(1.0, abs=1e-5)
    code, out, _ = search(str(match), "--start", "30", "--end", "40", "-k", "1")
    assert out.splitlines()[0] == f"query: {match} [00:30.0-00:40.0]"
    assert out.splitlines()[2].endswith(f"{match} [00:30.0-00:40.0]")
    code, out, _ = search(str(match), "--start", "30", "--end", "40", "--other-files", "--json")
    hits = json.loads(out)["queries"][0]["results"]
    assert code == 0 and [h["video_id"] for h in hits] == ["short"]  # the only other file
    code, out, _ = search(str(match), "--json", "-k", "3")  # whole: no stretch named
    assert code == 0 and json.loads(out)["queries"][0]["start_s"] is None
    for args, said in [((str(match), "--start", "5:00"), f"--start 05:00.0 is past the end of {match} (01:00.0 long)"),
                       ((str(match), "--start", "40", "--end", "30"), "--end must come after --start"),
                       ((str(match), "--start", "1:75"), "--start '1:75': expected seconds (176.9) or [hh:]mm:ss"),
                       ((str(archive), "--start", "10"), f"{archive} is a folder (2 videos): name one of its files")]:
        code, _, err = search(*args)
        assert code == 2 and err.count("\n") == 1 and said in err, err


def test_times_are_read_as_search_prints_them() -> None:
    from slic.data.video import clock
    from slic.search import SearchUsageError, parse_time

    assert [parse_time(t, "--start") for t in ("176.9", "2:56.9", "1:02:56", "0")] == [176.9, 176.9, 3776.0, 0.0]
    for seconds in (0.0, 59.96, 176.94, 3599.9):
        assert parse_time(clock(seconds), "--end") == pytest.approx(round(seconds, 1))
    for bad in ("", "a", "1:2:3:4", "-5", "1:60", "nan", "inf", "1:nan"):
        with pytest.raises(SearchUsageError, match="expected seconds"):
            parse_time(bad, "--start")


def test_a_segments_thumbnail_plays_frames_of_its_own_stretch(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """search --html shows a segment by frames spread over its own stretch of the file, not over the whole file."""
    import base64
    import io

    from PIL import Image

    import slic.data.video as video
    from slic.search_report import file_thumbnail

    asked: list[list[int]] = []
    decode_frames_at = video.decode_frames_at

    def recording(path, indices, **kwargs):  # noqa: ANN001, ANN202 - the wrapped function's own signature
        asked.append(list(indices))
        return decode_frames_at(path, indices, **kwargs)

    monkeypatch.setattr(video, "decode_frames_at", recording)
    thumb = file_thumbnail(archive / "long" / "match.mp4", 30.0, 40.0)
    assert asked == [np.linspace(750, 999, 12).round().astype(int).tolist()]
    assert thumb.data_uri is not None and thumb.width == 96
    animation = Image.open(io.BytesIO(base64.b64decode(thumb.data_uri.split(",", 1)[1])))
    assert animation.n_frames == 12 and animation.size == (96, 72)
    broken = file_thumbnail(archive / "absent.mp4")
    assert broken.data_uri is None and broken.error


def test_a_variable_rate_recording_is_cut_and_timed_by_its_timestamps(archive: Path, tmp_path: Path) -> None:
    """A phone video whose rate drops from 30 to 10 fps for a while: at its average rate a time in it would be off by
    seconds, so its segments are cut and timed by its frames' timestamps, and search's --start/--end reads them so."""
    from slic.added_videos import EmbeddingCache
    from slic.data.video import file_clock, probe
    from slic.index import build_stage, load_index
    from slic.report import video_captions
    from slic.search import query_span
    from tests.data.test_frame_rate import write_variable_rate

    root = tmp_path / "phone"
    root.mkdir()
    video = root / "walk.mkv"  # 10 s at 30 fps, 10 s at 10 fps, 10 s at 30 fps: 700 frames, the stream says 30 fps
    write_variable_rate(video, [i / 30 for i in range(300)] + [10 + i / 10 for i in range(100)] +
                        [20 + i / 30 for i in range(300)])
    info = probe(video)
    assert info.variable_rate and info.frames == 700 and not probe(archive / "long" / "match.mp4").variable_rate
    clock = file_clock(video)
    assert 400 / info.fps == pytest.approx(13.3, abs=0.1)  # where frame 400 would be said to be at the stream's rate
    assert [clock.seconds(f) for f in (0, 300, 400, 700)] == pytest.approx([0.0, 10.0, 20.0, 30.0], abs=0.01)
    assert [clock.frame(s) for s in (0.0, 10.0, 15.04, 20.0, 30.0)] == [0, 300, 350, 400, 700]

    table = build_manifest(ManifestConfig(root=str(root), layout="unlabelled", workers=1, segment_seconds=10))
    assert table["video_id"].tolist() == ["walk@0.0s", "walk@10.0s", "walk@20.0s"]
    assert list(zip(table["start_frame"], table["stop_frame"])) == [(0, 300), (300, 400), (400, 700)]
    assert table["start_s"].tolist() == [0.0, 10.0, 20.0]
    assert table["end_s"].tolist() == pytest.approx([10, 20, 30], abs=0.01)
    assert table["duration"].tolist() == pytest.approx([10.0, 10.0, 10.0], abs=0.01)
    assert validate_manifest(table, min_frames=32, labelled=False).success
    span = query_span(video, 20.0, 30.0)  # the stretch shown as 00:20.0-00:30.0 is those frames
    assert (span.start_frame, span.stop_frame) == (400, 700)
    span = query_span(video, 10.0, None)
    assert (span.start_frame, span.start_s, span.end_s) == (300, 10.0, pytest.approx(30.0, abs=0.01))

    table.to_csv(tmp_path / "validated.csv", index=False)
    assert video_captions(tmp_path / "validated.csv")["walk@10.0s"] == f"{video} [00:10.0-00:20.0]"
    from slic.archive_clusters import file_spans  # the clusters stage's table: the file and the segment's seconds

    assert file_spans(tmp_path / "validated.csv")["walk@10.0s"] == (str(video), "10.000", "20.000")
    vectors = np.eye(3, 8, dtype=np.float32)
    np.savez(tmp_path / "embeddings.npz", video_id=table["video_id"].to_numpy(str), label=np.full(3, -1),
             class_name=np.array([""] * 3), split=table["split"].to_numpy(str), embedding=vectors)
    build_stage(IndexConfig(manifest=str(tmp_path / "validated.csv"), kind="flat", out=str(tmp_path / "index")),
                embeddings=str(tmp_path / "embeddings.npz"), checkpoint=str(tmp_path / "none.pt"), clips=2)
    rows = load_index(tmp_path / "index").rows
    assert rows["start_s"].tolist() == [0.0, 10.0, 20.0] and rows["end_s"].tolist() == [10.0, 20.0, 30.0]

    cache = EmbeddingCache(tmp_path / "added.npz", "checkpoint", 2, segment_seconds=10)  # an added copy: alike
    spans = cache.segments_of(video, "sha")
    assert [span[:2] for span in spans] == [(0, 300), (300, 400), (400, 700)]
    assert [t for span in spans for t in span[2:]] == pytest.approx([0.0, 10.0, 10.0, 20.0, 20.0, 30.0], abs=0.01)
    cache.save()
    assert EmbeddingCache(tmp_path / "added.npz", "checkpoint", 2, segment_seconds=10).segments["sha"] == spans


def test_per_file_keeps_the_best_moments_of_different_files_not_neighbouring_segments(archive: Path,
                                                                                      tmp_path: Path) -> None:
    from slic.index import build_stage, load_index
    from slic.search import search_videos

    table = build_manifest(ManifestConfig(root=str(archive), layout="unlabelled", workers=1, segment_seconds=10))
    table.to_csv(tmp_path / "validated.csv", index=False)
    # the six segments of the long recording lie near the query, one behind the other; the short clip further off
    query = np.eye(8, dtype=np.float32)[0]
    vectors = np.stack([query + 0.1 * (i + 1) * np.eye(8, dtype=np.float32)[1] for i in range(6)] +
                       [query + 2.0 * np.eye(8, dtype=np.float32)[2]])
    np.savez(tmp_path / "embeddings.npz", video_id=table["video_id"].to_numpy(str), label=np.full(len(table), -1),
             class_name=np.array([""] * len(table)), split=table["split"].to_numpy(str), embedding=vectors)
    build_stage(IndexConfig(manifest=str(tmp_path / "validated.csv"), kind="flat", out=str(tmp_path / "index")),
                embeddings=str(tmp_path / "embeddings.npz"), checkpoint=str(tmp_path / "none.pt"), clips=2)
    loaded = load_index(tmp_path / "index")

    def hits(**options: int) -> list[str]:
        answers, _ = search_videos([Path("/q.mp4")], StubEncoder(lambda _: query), loaded, k=3, **options)
        return [hit["video_id"] for hit in answers[0]["results"]]

    assert hits() == ["long/match@0.0s", "long/match@10.0s", "long/match@20.0s"]  # one recording fills the list
    assert hits(per_file=1) == ["long/match@0.0s", "short"]  # searched to the end: two files, two hits
    assert hits(per_file=2) == ["long/match@0.0s", "long/match@10.0s", "short"]
