"""Decoding real and hand-made videos: counts, sizes, rotation, exact pixels, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slic.data.video import (VideoDecodeError, decode, decode_frames_at, decode_jpegs, encode_jpeg_sequence,
                             file_timeline, probe, scaled_size, write_video)
from tests.conftest import SHARED_VIDEOS, damaged_video


def test_lossless_video_round_trips_exact_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(12, 24, 40, 3), dtype=np.uint8)
    path = tmp_path / "random.mkv"
    write_video(path, frames, fps=10, codec="ffv1")
    assert np.array_equal(decode(path), frames)
    assert np.array_equal(decode(path, start=3, stop=7), frames[3:7])
    info = probe(path)
    assert (info.frames, info.width, info.height, info.rotation) == (12, 40, 24, 0)
    assert info.fps == pytest.approx(10.0)


def _ok_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["decode"] == "ok"]


def test_every_ok_sample_decodes_with_listed_count_and_size(shared_manifest: list[dict[str, str]]) -> None:
    rows = _ok_rows(shared_manifest)
    assert len(rows) >= 10
    for row in rows:
        path = SHARED_VIDEOS / row["file"]
        frames = decode(path)
        width, height = int(row["w"]), int(row["h"])
        info = probe(path)
        if info.rotation in (90, 270):  # rotated files come out rotated: display size is swapped
            width, height = height, width
        assert frames.shape == (int(row["frames"]), height, width, 3), row["file"]
        assert (info.width, info.height) == (width, height), row["file"]
        assert info.fps == pytest.approx(float(row["fps"]), abs=0.01), row["file"]
        # The probe counts packets: at most one more than decodable frames (a trailing empty VOP).
        assert 0 <= info.frames - int(row["frames"]) <= 1, row["file"]


def test_a_file_that_skips_frames_is_timed_by_its_timestamps(shared_manifest: list[dict[str, str]],
                                                              tmp_path: Path) -> None:
    """OpenCV's tree.avi stores 68 pictures in 444 frame slots at 15 fps (an AVI that skips frames): 30 s, not the
    4.5 s that 68 frames at 15 fps would say; every other sample is constant-rate and keeps frames / fps."""
    from slic.data.video import file_clock

    tree = probe(SHARED_VIDEOS / "debian-opencv-doc-4.6.0" / "tree.avi")
    assert (tree.frames, round(tree.fps, 3), tree.variable_rate) == (68, 15.0, True)
    assert tree.duration == pytest.approx(29.9, abs=0.1)
    clock = file_clock(tree.path)
    assert clock.seconds(1) == pytest.approx(11 / 15, abs=1e-3) and clock.frame(11 / 15) == 1  # its 2nd: slot 11
    # extract.fps 25 resamples it by those times: about 30 s of frames, not the 113 that 4.5 s would give
    import pandas as pd

    from slic.data.datasets import extracted_frame_counts
    from slic.data.frames import extract_all

    listed = pd.DataFrame({"video_id": ["tree"], "path": [tree.path], "frames": [tree.frames], "fps": [tree.fps],
                           "duration": [tree.duration]})
    report = extract_all(listed, out_dir=tmp_path, short_side=32, quality=4, workers=1, target_fps=25)
    assert report["frames"] == 744 and extracted_frame_counts(listed, 25.0)[0] == pytest.approx(744, rel=0.01)
    for row in _ok_rows(shared_manifest):
        info = probe(SHARED_VIDEOS / row["file"])
        if info.path != tree.path:
            assert not info.variable_rate and info.duration == pytest.approx(info.frames / info.fps), row["file"]


def test_rotation_metadata_is_applied(shared_manifest: list[dict[str, str]]) -> None:
    folder = SHARED_VIDEOS / "dmlc-decord" / "decode_tests"
    upright = decode(folder / "video_0.mov", stop=1)[0].astype(np.int16)
    rotations = {name: probe(folder / f"{name}.mov").rotation for name in ("video_90", "video_180", "video_270")}
    assert rotations == {"video_90": 270, "video_180": 180, "video_270": 90}
    turned = decode(folder / "video_180.mov", stop=1)[0]
    assert turned.shape == upright.shape
    # video_180 holds the same scene stored upside down: once rotated back it matches video_0
    # far better than the stored (unrotated) orientation would.
    assert np.abs(turned.astype(np.int16) - upright).mean() < np.abs(turned[::-1, ::-1].astype(np.int16) - upright).mean()
    assert decode(folder / "video_90.mov", stop=1).shape[1:3] == (568, 320)


def test_a_damaged_packet_costs_its_frame_not_the_video(shared_manifest: list[dict[str, str]],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """decord's corrupted.mp4: FFmpeg refuses one packet of 50. It is passed over, as ffmpeg passes over it, so the
    other 49 frames decode (before, the first bad packet failed the whole file everywhere), the lost one holds the
    frame before (the frames after keep their numbers: 50, as probed), and each path says so."""
    from slic.data import video

    path = SHARED_VIDEOS / "dmlc-decord" / "decode_tests" / "corrupted.mp4"
    assert probe(path).frames == 50
    video._WARNED_DAMAGE.discard(str(path))  # named once per file and process: this test's decodes name it
    with caplog.at_level("WARNING", logger="slic.data.video"):
        frames = decode(path, short_side=32)
    assert frames.shape == (50, 32, 56, 3)
    held = [i for i in range(1, 50) if np.array_equal(frames[i], frames[i - 1])]
    # The bad packet is the frame at 3.0 s (10 fps): frame 30 holds frame 29 (the 49 others all differ from the one
    # before). The decoder gives frames out two packets late, so placing it when the packet failed held frame 27 at 28.
    assert held == [30]
    assert f"{path}: 1 of 50 packets could not be decoded (their frames hold the frame before; the first lost is " \
           "frame 30: InvalidDataError: Invalid data found when processing input)" in caplog.text
    sequence = encode_jpeg_sequence(path, short_side=32, quality=4)
    assert len(sequence.jpegs) == 50 and sequence.damaged.startswith("1 of 50 packets could not be decoded")
    found, decoded = decode_frames_at(path, [0, 20, 48, 49], short_side=32, frames_of=file_timeline(path))
    assert decoded == 50 and sorted(found) == [0, 20, 48, 49]
    np.testing.assert_array_equal(found[49], frames[49])
    assert caplog.text.count("packets could not be decoded") == 1  # decoded twice, named once


def test_a_file_mostly_damaged_raises_decode_error_naming_file_and_cause(tmp_path: Path) -> None:
    """More than a quarter of the packets bad: the file fails, saying how many and what to do; none decodable: it
    fails already when probed (the manifest excludes it), where before it was listed as usable."""
    path = damaged_video(tmp_path / "mostly.mp4")  # its first frame decodes, 47 of 48 packets do not
    assert probe(path).frames == 48
    for decoding in (lambda: decode(path), lambda: encode_jpeg_sequence(path, short_side=64, quality=4),
                     lambda: decode_frames_at(path, [0, 10, 40], frames_of=file_timeline(path))):
        with pytest.raises(VideoDecodeError) as caught:
            decoding()
        assert caught.value.path == str(path) and str(path) in str(caught.value)
        assert caught.value.cause == ("47 of its 48 packets could not be decoded, more than 25% (InvalidDataError: "
                                      "Invalid data found when processing input): re-encode or replace the file")
    nothing = damaged_video(tmp_path / "nothing.mp4", decodable=0)
    with pytest.raises(VideoDecodeError, match=r"none of its 48 packets could be decoded \(InvalidDataError: Inval"):
        probe(nothing)


def test_a_short_stretch_of_a_mostly_damaged_file_is_refused_as_the_whole_file_is(tmp_path: Path) -> None:
    """A query of its first frames (`slic search --end 0.1`) stops decoding at its last wanted frame, before the
    file's end where the share is checked: it was answered from the first frame held (the audit's finding); now the
    packets read up to there are counted alike."""
    from slic.serving import decode_windows

    path = damaged_video(tmp_path / "mostly.mp4")  # its first frame decodes, 47 of 48 packets do not
    with pytest.raises(VideoDecodeError) as caught:
        decode_frames_at(path, [0], short_side=32, frames_of=file_timeline(path))
    assert caught.value.cause.startswith("47 of the 48 packets read up to frame 0 could not be decoded, more than 25%")
    with pytest.raises(VideoDecodeError, match="could not be decoded, more than 25%"):
        decode_windows(path, short_side=32, clip_len=2, clips=1, frame_step=1, span=(0, 3))
    fine = damaged_video(tmp_path / "few.mp4", decodable=44)  # 4 of 48 packets lost at the end
    assert len(decode_frames_at(fine, [0, 5], short_side=32)[0]) == 2


def test_a_download_cut_short_is_named_as_such(shared_manifest: list[dict[str, str]], tmp_path: Path) -> None:
    whole = SHARED_VIDEOS / "mmaction2" / "kinetics400" / "arm_wrestling" / "demo.mp4"
    cut = tmp_path / "demo.mp4"
    cut.write_bytes(whole.read_bytes()[:200_000])  # an MP4 whose index (moov, at its end here) never arrived
    with pytest.raises(VideoDecodeError) as caught:
        probe(cut)
    assert caught.value.cause == ("InvalidDataError: Invalid data found when processing input (a damaged file, one "
                                  "cut short by an interrupted copy or download, or not a video)")


def test_not_a_video_and_missing_file_raise_decode_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    for path in (junk, tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError) as caught:
            probe(path)
        assert str(path) in str(caught.value)


def test_short_side_resize_matches_ffmpeg_rule() -> None:
    assert scaled_size(320, 240, 128) == (170, 128)  # ffmpeg scale=-2:128 -> 170x128
    assert scaled_size(320, 240, 64) == (86, 64)
    assert scaled_size(240, 320, 64) == (64, 86)
    assert scaled_size(100, 50, None) == (100, 50)


def test_jpeg_sequence_keeps_every_frame_and_pixels_close(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 48)[None, :, None]
    frames = np.stack([np.broadcast_to((t * 255 * (i + 1) / 20) % 255, (36, 48, 3)) for i in range(20)])
    frames = frames.astype(np.uint8)
    path = tmp_path / "ramp.mkv"
    write_video(path, frames, fps=25, codec="ffv1")
    sequence = encode_jpeg_sequence(path, short_side=None, quality=2)
    assert (len(sequence.jpegs), sequence.width, sequence.height) == (20, 48, 36)
    assert all(j[:2] == b"\xff\xd8" and j[-2:] == b"\xff\xd9" for j in sequence.jpegs)
    decoded = decode_jpegs(sequence.jpegs)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 3.0


def test_a_stream_whose_size_changes_midway_decodes_at_the_first_size(tmp_path: Path) -> None:
    """Two MPEG-TS streams joined byte for byte (320x240 then 160x200): a recording whose settings changed.
    extract's shard holds every frame at the first frame's size; decode and the query path (decode_frames_at,
    serving's clips) give the same size, so a clip across the change stacks instead of failing."""
    import av

    from slic.data.video import decode_frames_at, file_timeline
    from slic.serving import decode_windows

    parts = []
    for index, (width, height) in enumerate([(320, 240), (160, 200)]):
        part = tmp_path / f"part{index}.ts"
        with av.open(str(part), "w", format="mpegts") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for number in range(30):
                image = np.full((height, width, 3), 8 * number, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        parts.append(part.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    frames = decode(joined, short_side=64)
    assert frames.shape == (60, 64, 86, 3)
    assert frames[45].mean() == pytest.approx(8 * 15, abs=6)  # the second stream's frame, scaled, not garbled
    at, decoded = decode_frames_at(joined, [10, 29, 30, 59], short_side=64, frames_of=file_timeline(joined))
    assert decoded == 60 and {f.shape for f in at.values()} == {(64, 86, 3)}
    assert all(np.array_equal(at[i], frames[i]) for i in at)
    windows = decode_windows(joined, short_side=64, clip_len=16, clips=3, frame_step=1)
    assert [w.shape for w in windows] == [(16, 64, 86, 3)] * 3  # the middle clip spans the change
    sequence = encode_jpeg_sequence(joined, short_side=64, quality=4)
    assert len(sequence.jpegs) == 60 and {frame.shape for frame in decode_jpegs(sequence.jpegs)} == {(64, 86, 3)}
