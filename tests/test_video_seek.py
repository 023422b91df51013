"""slic.data.video.decode_frames_at on long videos: seeking to the keyframe before each far clip gives exactly the
frames of a decode from the start, in the codecs and containers users bring (H.264 with B-frames and open GOPs,
MPEG-4 part 2 in AVI as UCF101, VP9 in WebM), and a timeline that does not hold falls back to decoding from the
start instead of returning other frames."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import slic.data.video as video
from slic.serving import iic_windows

FRAMES = 3000  # two minutes at 25 fps: ten clips 300 frames apart, keyframes every 50 to 250 frames


def moving_texture(frames: int, width: int = 64, height: int = 48) -> Iterator[np.ndarray]:
    """A random texture sliding diagonally with a frame counter in a corner: every frame differs."""
    texture = np.random.default_rng(0).integers(0, 255, (2 * height, 2 * width, 3), dtype=np.uint8)
    for t in range(frames):
        x, y = (3 * t) % width, (2 * t) % height
        frame = texture[y:y + height, x:x + width].copy()
        frame[:8, :16] = (7 * t) % 255
        yield frame


def write(path: Path, codec: str, *, options: dict[str, str] | None = None, gop: int | None = None,
          b_frames: int | None = None, frames: int = FRAMES) -> Path:
    """`frames` of moving_texture at 64x48 and 25 fps in `codec`, with its encoder options, GOP and B-frames."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = options or {}
        if gop is not None:
            stream.codec_context.gop_size = gop
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        for frame in moving_texture(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


KINDS = {
    "h264_bframes.mp4": dict(codec="libx264", options={"preset": "veryfast", "bf": "3"}, gop=250),
    "h264_open_gop.mkv": dict(codec="libx264", options={"preset": "veryfast", "x264-params": "open-gop=1"}, gop=120),
    "mpeg4_bframes.avi": dict(codec="mpeg4", gop=50, b_frames=2),
    "vp9.webm": dict(codec="libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}, gop=100),
}


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long")
    return {name: write(folder / name, **kind) for name, kind in KINDS.items()}


def clip_frames(frames: int) -> list[int]:
    """The frames of ten IIC clips of 8 frames at step 2, as serving decodes them."""
    return sorted({i for window in iic_windows(frames, clip_len=8, clips=10, frame_step=2) for i in window})


@pytest.mark.parametrize("name", list(KINDS))
def test_seeking_gives_the_frames_of_a_decode_from_the_start(long_videos: dict[str, Path], name: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = long_videos[name]
    timeline = video.timeline(path)
    assert timeline.frames == FRAMES and len(timeline.pts) == FRAMES and timeline.keyframes[0] == 0
    wanted = clip_frames(timeline.frames)
    from_start, decoded = video.decode_frames_at(path, wanted, short_side=32)

    def no_fallback(*_: object) -> None:
        raise AssertionError("decoded from the start: the seeks did not hold")

    monkeypatch.setattr(video, "_decode_from_start", no_fallback)
    seeking, decoded_seeking = video.decode_frames_at(path, wanted, short_side=32, frames_of=timeline)
    assert (decoded_seeking, sorted(seeking)) == (decoded, sorted(from_start)) == (wanted[-1] + 1, wanted)
    for index in wanted:
        np.testing.assert_array_equal(seeking[index], from_start[index], err_msg=f"{name} frame {index}")


def test_a_timeline_that_does_not_hold_falls_back_to_decoding_from_the_start(
        long_videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyframes named where the file has none (every 100th frame of a file with one every 250): the seek lands
    on an earlier keyframe, and the frames come from a decode from the start, not from a wrong position."""
    path = long_videos["h264_bframes.mp4"]
    timeline = video.timeline(path)
    wanted = clip_frames(timeline.frames)
    forged = list(range(0, timeline.frames, 100))
    lying = replace(timeline, keyframes=tuple(forged), seek_to=tuple(timeline.pts[i] for i in forged))
    mismatches: list[str] = []
    seeking = video._decode_seeking

    def spied(*args: object) -> object:
        try:
            return seeking(*args)
        except video._SeekMismatch as exc:
            mismatches.append(str(exc))
            raise

    monkeypatch.setattr(video, "_decode_seeking", spied)
    frames, decoded = video.decode_frames_at(path, wanted, short_side=32, frames_of=lying)
    assert mismatches and mismatches[0].endswith("(not decoded as a keyframe)")
    expected, _ = video.decode_frames_at(path, wanted, short_side=32)
    assert decoded == wanted[-1] + 1
    for index in wanted:
        np.testing.assert_array_equal(frames[index], expected[index])


def test_a_timeline_longer_than_the_video_ends_where_the_video_ends(long_videos: dict[str, Path]) -> None:
    """A last packet without a picture (the timeline counts one frame more than the decoder gives): the seeking
    decode, as the one from the start, says how many frames there really were, for serving's second pass."""
    path = long_videos["h264_bframes.mp4"]
    timeline = video.timeline(path)
    longer = replace(timeline, frames=timeline.frames + 1, pts=timeline.pts + (timeline.pts[-1] + 1,))
    wanted = clip_frames(longer.frames)
    assert wanted[-1] == timeline.frames  # the frame that does not exist
    frames, decoded = video.decode_frames_at(path, wanted, short_side=32, frames_of=longer)
    assert decoded == timeline.frames and timeline.frames not in frames
    assert sorted(frames) == wanted[:-1]


def test_no_timestamps_no_seeking(long_videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = long_videos["mpeg4_bframes.avi"]
    bare = replace(video.timeline(path), pts=(), keyframes=(), seek_to=())
    monkeypatch.setattr(video, "_decode_seeking", lambda *_: pytest.fail("sought without timestamps"))
    frames, decoded = video.decode_frames_at(path, [0, FRAMES - 1], short_side=32, frames_of=bare)
    assert decoded == FRAMES and sorted(frames) == [0, FRAMES - 1]
