"""extract.fps: videos resampled to one frame rate by time, the same frames in the shards, in a segment's shard and
in what serving decodes from the file, so an encoder trained on resampled frames embeds queries alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from slic.data.frames import ShardReader, extract_all, frame_rate_of, read_index, shard_path
from slic.data.video import decode_jpegs, file_timeline, resampled_frames, write_video


def nearest_frames(times: list[float], target: float, count: int) -> list[int]:
    """Resampled frame j (at j / target s) -> the frame of `times` nearest it, the later one on a tie."""
    return [min(range(len(times)), key=lambda i: (round(abs(times[i] - j / target), 9), -i)) for j in range(count)]


@pytest.mark.parametrize("fps, target", [(29.97002997, 25.0), (60.0, 25.0), (10.0, 25.0), (12.5, 25.0),
                                         (25.0, 29.97), (50.0, 24.0), (5.0, 30.0)])
def test_resampling_takes_the_nearest_frame_and_a_range_is_its_files_frames_there(fps: float, target: float) -> None:
    frames = 300
    whole = resampled_frames(0, frames, fps, target)
    # frame j, at j / target seconds, is the source frame nearest that time
    assert whole == nearest_frames([i / fps for i in range(frames)], target, len(whole))
    # the same duration at the new rate, the last source frame kept for the half of its time nearest to it
    assert abs(len(whole) - frames * target / fps) <= 1 + target / fps / 2
    assert resampled_frames(0, frames, 0.0, target, [i / fps for i in range(frames)]) == whole  # by timestamps
    for start, stop in [(0, 1), (7, 123), (150, 300), (299, 300), (40, 40)]:
        assert resampled_frames(start, stop, fps, target) == [i for i in whole if start <= i < stop]


def test_a_variable_frame_rate_video_is_resampled_by_its_timestamps() -> None:
    # a phone in low light: 30 fps for a second, 15 fps for the next, 30 fps again (average 25)
    times = [i / 30 for i in range(30)] + [1 + i / 15 for i in range(15)] + [2 + i / 30 for i in range(30)]
    whole = resampled_frames(0, len(times), 25.0, 30.0, times)
    assert len(whole) == 90  # 3 s at 30 fps
    assert whole == nearest_frames(times, 30.0, 90)
    assert whole[30:37] == [30, 31, 31, 32, 32, 33, 33]  # the 15 fps second: each frame twice (a tie: the later)
    by_average = resampled_frames(0, len(times), 25.0, 30.0)  # 1 / 25 apart, as the average rate says
    assert by_average[30] == 25  # 0.83 s shown at 1.0 s: what timestamps avoid
    for start, stop in [(0, 31), (29, 46), (30, 45), (44, 75), (74, 75)]:
        assert resampled_frames(start, stop, 25.0, 30.0, times) == [i for i in whole if start <= i < stop]


def test_no_target_or_an_unknown_rate_keeps_every_frame() -> None:
    assert resampled_frames(3, 9, 25.0, 0.0) == list(range(3, 9))
    assert resampled_frames(3, 9, 0.0, 25.0) == list(range(3, 9))  # a stream that states no rate
    assert resampled_frames(0, 300, 30000 / 1001, 30.0) == list(range(300))  # 29.97 to 30: no frame lost in 10 s
    assert resampled_frames(0, 10, 50.0, 25.0) == [0, 2, 4, 6, 8]


def moving_square(positions: list[int]) -> np.ndarray:
    """Frames of a white square on grey whose left edge is at each of `positions` (pixels)."""
    frames = np.full((len(positions), 48, 96, 3), 60, np.uint8)
    for t, x in enumerate(positions):
        frames[t, 16:32, x:x + 16] = 250
    return frames


def square_positions(frames: np.ndarray) -> list[int]:
    """The left edge of the bright square in each frame."""
    return [int(np.argmax(frame[24, :, 0] > 155)) for frame in frames]


@pytest.fixture(scope="module")
def two_rates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One motion filmed twice: at 50 fps (the square moves 1 px a frame) and at 25 fps (2 px a frame)."""
    folder = tmp_path_factory.mktemp("rates")
    write_video(folder / "fast.mkv", moving_square(list(range(0, 80))), fps=50, codec="ffv1")
    write_video(folder / "slow.mkv", moving_square(list(range(0, 80, 2))), fps=25, codec="ffv1")
    return {"fast": folder / "fast.mkv", "slow": folder / "slow.mkv"}


def shard_frames(out: Path, video_id: str) -> np.ndarray:
    reader = ShardReader.open(shard_path(out, video_id))
    return decode_jpegs(reader.read_jpegs(0, reader.frames))


def test_extract_at_one_rate_gives_one_motion_the_same_frames(two_rates: dict[str, Path], tmp_path: Path) -> None:
    table = pd.DataFrame({"video_id": list(two_rates), "path": [str(p) for p in two_rates.values()]})
    native = extract_all(table, out_dir=tmp_path / "native", short_side=None, quality=2, workers=1)
    assert native["fps"] == "native" and frame_rate_of(tmp_path / "native") == 0.0
    assert "target_fps" not in read_index(tmp_path / "native")  # as before the setting: nothing re-extracted
    assert "target_fps" not in ShardReader.open(shard_path(tmp_path / "native", "fast")).header
    assert len(shard_frames(tmp_path / "native", "fast")) == 80  # natively, a clip of the fast one spans half the time

    report = extract_all(table, out_dir=tmp_path / "at25", short_side=None, quality=2, workers=1, target_fps=25)
    fast, slow = shard_frames(tmp_path / "at25", "fast"), shard_frames(tmp_path / "at25", "slow")
    assert len(fast) == len(slow) == 40
    assert square_positions(fast) == square_positions(slow) == list(range(0, 80, 2))
    header = ShardReader.open(shard_path(tmp_path / "at25", "fast")).header
    assert header["fps"] == header["target_fps"] == 25.0 and report["fps"] == 25.0
    assert frame_rate_of(tmp_path / "at25") == 25.0 and set(read_index(tmp_path / "at25")["fps"]) == {25.0}

    again = extract_all(table, out_dir=tmp_path / "at25", short_side=None, quality=2, workers=1, target_fps=25)
    assert again["reused"] == 2  # the same rate: the shards are kept
    other = extract_all(table, out_dir=tmp_path / "at25", short_side=None, quality=2, workers=1, target_fps=10)
    assert other["extracted"] == 2 and len(shard_frames(tmp_path / "at25", "fast")) == 16  # another rate: redone
    back = extract_all(table, out_dir=tmp_path / "at25", short_side=None, quality=2, workers=1)
    assert back["extracted"] == 2 and len(shard_frames(tmp_path / "at25", "fast")) == 80  # native again: redone
    assert "target_fps" not in ShardReader.open(shard_path(tmp_path / "at25", "fast")).header


def test_a_segments_shard_is_its_files_resampled_frames_over_its_range(two_rates: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    table = pd.DataFrame({"video_id": ["fast@0.3s"], "path": [str(two_rates["fast"])], "start_frame": [15],
                          "stop_frame": [61]})
    extract_all(table, out_dir=tmp_path, short_side=None, quality=2, workers=1, target_fps=25)
    wanted = resampled_frames(15, 61, 50.0, 25.0)
    assert square_positions(shard_frames(tmp_path, "fast@0.3s")) == wanted == list(range(16, 61, 2))


def test_serving_decodes_a_file_at_the_rate_its_encoder_was_trained_on(tiny_dataset: Path, two_rates: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    """pretrain records extract.fps in the checkpoint; the encoder then decodes a query's clips from the frames
    its shard would hold, not from the native ones."""
    from slic.cli import main
    from slic.serving import VideoEncoder, decode_windows, iic_windows

    params = {"manifest": {"root": str(tiny_dataset), "workers": 1, "min_frames": 8},  # frames at extract.fps
              "validate": {"data_docs": "docs"},
              "extract": {"short_side": 24, "workers": 1, "fps": 10},
              "pretrain": {"mode": "random_init", "backbone": "r3d_18_narrow", "hidden_dim": 32, "out_dim": 16,
                           "clip_len": 4, "frame_step": 1, "size": 16, "workers": 0}}

    def run_stages() -> None:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            for stage in ("manifest", "validate", "extract", "pretrain", "promote"):
                assert main([stage]) == 0
        finally:
            os.chdir(cwd)

    run_stages()
    encoder = VideoEncoder(tmp_path / "data/models/pretrain/best.pt", clips=3)
    assert encoder.frame_rate == 10.0

    import mlflow

    from slic.serving import encoder_of

    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("slic").experiment_id],
                                "tags.mlflow.runName LIKE 'pretrain%'")
    assert run.data.params["frame_rate"] == "10.0"  # the rate, in the UI beside the settings
    champion = client.get_model_version_by_alias("slic-encoder", "champion")
    assert champion.tags["frame_rate"] == "10.0"
    assert encoder_of(mlflow.pyfunc.load_model("models:/slic-encoder@champion")).frame_rate == 10.0  # served alike
    first_shards = {row["video_id"]: len(shard_frames(tmp_path / "data/frames", row["video_id"]))
                    for row in pd.read_csv(tmp_path / "data/manifests/validated.csv").to_dict("records")}

    row = pd.read_csv(tmp_path / "data/manifests/validated.csv").iloc[0]
    stored = shard_frames(tmp_path / "data/frames", row["video_id"])
    assert len(stored) == len(resampled_frames(0, int(row["frames"]), float(row["fps"]), 10.0)) < row["frames"]
    from_file = decode_windows(row["path"], short_side=24, clip_len=4, clips=3, frame_step=1, frame_rate=10.0)
    windows = iic_windows(len(stored), clip_len=4, clips=3)
    for got, window in zip(from_file, windows, strict=True):
        for frame, index in zip(got, window, strict=True):
            # of every frame the shard holds, the one the embed stage takes there is the nearest (JPEG q4 apart)
            distance = np.abs(stored.astype(np.int16) - frame).mean(axis=(1, 2, 3))
            assert int(np.argmin(distance)) == index

    # the next encoder, trained on native frames: the champion is measured on them, and the reason says so
    params["extract"]["fps"] = 0
    run_stages()
    latest = client.get_model_version("slic-encoder", "2")
    assert latest.tags["frame_rate"] == "0.0" and latest.tags["compared_on"] == "candidate validation split"
    assert latest.tags["reason"].endswith("; the champion was trained on 10 fps and is measured here on the "
                                          "candidate's native frames (extract.fps)")
    assert all(len(shard_frames(tmp_path / "data/frames", video)) > frames for video, frames in first_shards.items())

    native = decode_windows(two_rates["fast"], short_side=None, clip_len=4, clips=1, frame_step=1)
    at_25 = decode_windows(two_rates["fast"], short_side=None, clip_len=4, clips=1, frame_step=1, frame_rate=25.0)
    assert np.diff(square_positions(native[0])).tolist() == [1, 1, 1]
    assert np.diff(square_positions(at_25[0])).tolist() == [2, 2, 2]  # 0.16 s of motion, as the shards show it


def frame_number(k: int) -> np.ndarray:
    """A 64x16 frame that names k: a white bar at 2 (k % 30) px in its top half and at 2 (k // 30) px below."""
    frame = np.zeros((16, 64, 3), np.uint8)
    frame[:8, 2 * (k % 30):2 * (k % 30) + 2] = 255
    frame[8:, 2 * (k // 30):2 * (k // 30) + 2] = 255
    return frame


def frame_numbers(frames: np.ndarray) -> list[int]:
    """The k each frame of `frame_number` names (JPEG blurs the bars, their brightest column stays)."""
    return [int(np.argmax(f[4, :, 0].astype(int))) // 2 + 30 * (int(np.argmax(f[12, :, 0].astype(int))) // 2)
            for f in frames]


def write_variable_rate(path: Path, times: list[float]) -> None:
    """A lossless video whose frame k is shown at times[k] s and is `frame_number(k)`."""
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 16, "bgr0"
        stream.time_base = Fraction(1, 1000)
        for k, seconds in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_number(k), format="rgb24")
            frame.pts, frame.time_base = round(seconds * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_extract_and_serving_resample_a_variable_frame_rate_file_alike_by_its_timestamps(tmp_path: Path) -> None:
    from slic.serving import decode_windows, iic_windows

    times = [i / 30 for i in range(30)] + [1 + i / 15 for i in range(15)] + [2 + i / 30 for i in range(30)]
    path = tmp_path / "phone.mkv"
    write_variable_rate(path, times)
    stored_times = file_timeline(path).frame_times()
    assert stored_times is not None and stored_times[31] - stored_times[30] == pytest.approx(1 / 15, abs=2e-3)
    expected = resampled_frames(0, 75, 25.0, 30.0, stored_times)
    assert len(expected) == 90 and expected == nearest_frames(stored_times, 30.0, 90)

    extract_all(pd.DataFrame({"video_id": ["phone"], "path": [str(path)]}), out_dir=tmp_path / "frames",
                short_side=None, quality=2, workers=1, target_fps=30)
    # the shard: each frame at its own time, the 15 fps second's frames twice
    assert frame_numbers(shard_frames(tmp_path / "frames", "phone")) == expected

    windows = decode_windows(path, short_side=None, clip_len=4, clips=3, frame_step=2, frame_rate=30.0)
    assert [frame_numbers(window) for window in windows] == [
        [expected[i] for i in w] for w in iic_windows(90, clip_len=4, clips=3, frame_step=2)]


def test_min_frames_counts_the_frames_extract_stores_at_extract_fps(two_rates: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    import shutil

    from slic.config import ManifestConfig
    from slic.data.datasets import build_manifest, extracted_frame_counts, short_at_rate_advice
    from slic.data.validate import validate_manifest
    from slic.data.video import resampled_count

    folder = tmp_path / "videos"
    folder.mkdir()
    for path in two_rates.values():  # 80 frames at 50 fps and 40 at 25: 1.6 s each
        shutil.copy(path, folder / path.name)
    config = ManifestConfig(root=str(folder), layout="unlabelled", workers=1, min_frames=32)
    native = build_manifest(config).set_index("video_id")
    assert list(native["excluded"]) == ["", ""]
    assert build_manifest(config, target_fps=25.0)["excluded"].tolist() == ["", ""]  # 40 frames each at 25 fps

    at15 = build_manifest(config, target_fps=15.0).set_index("video_id")  # 24 frames each at 15 fps
    assert at15.loc["fast", "excluded"] == "too short: 24 frames at extract.fps 15 (80 at 50 fps) < manifest.min_frames 32"
    assert at15.loc["slow", "excluded"] == "too short: 24 frames at extract.fps 15 (40 at 25 fps) < manifest.min_frames 32"
    assert short_at_rate_advice(at15.reset_index(), 32, 15.0).startswith(
        "2 of 2 videos are too short only at extract.fps 15 (they have 32 frames or more at their own rate)")
    assert short_at_rate_advice(native.reset_index(), 32, 0.0) == ""

    # the count is what extract stores, without decoding a frame
    table = native.reset_index()
    report = extract_all(table, out_dir=tmp_path / "at15", short_side=None, quality=2, workers=1, target_fps=15)
    assert report["extracted"] == 2
    stored = read_index(tmp_path / "at15").set_index("video_id")["frames"]
    assert extracted_frame_counts(table, 15.0).tolist() == [stored["fast"], stored["slow"]] == [24, 24]
    segments = table.assign(start_frame=[15, 0], stop_frame=[61, 40])
    assert extracted_frame_counts(segments, 25.0).tolist() == [len(resampled_frames(15, 61, 50.0, 25.0)), 40]

    # a table listing them as usable fails validation at that rate, naming the rate and the frames counted there
    assert validate_manifest(table, min_frames=32, labelled=False, target_fps=25.0).success
    refused = validate_manifest(table, min_frames=32, labelled=False, target_fps=15.0)
    assert not refused.success
    [failure] = refused.failures
    assert failure.column == "extracted_frames" and failure.unexpected_count == 2 and "extract.fps" in failure.hint
    assert failure.examples == ["fast (extracted_frames=24)", "slow (extracted_frames=24)"]
    assert resampled_count(0, 80, 50.0, 15.0) == 24


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 60.0, 12.5, 7.5, 120.0])
@pytest.mark.parametrize("target", [10.0, 24.0, 25.0, 29.97, 60.0])
def test_resampled_count_is_the_length_of_the_resampled_frames(fps: float, target: float) -> None:
    from slic.data.video import resampled_count

    for start, stop in [(0, 1), (0, 2), (0, 37), (0, 300), (1, 2), (13, 14), (13, 140), (299, 300), (40, 40)]:
        assert resampled_count(start, stop, fps, target) == len(resampled_frames(start, stop, fps, target))
    assert resampled_count(5, 9, fps, 0.0) == resampled_count(5, 9, 0.0, target) == 4
