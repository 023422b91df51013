"""Decoding for serving (`slic search`, `slic embed-video`, the registered model, added videos): four ways.

- `full_size`: every frame at the file's own size, then the IIC clips taken from them (slic before 2026-12-06);
- `all_frames_2x_crop`: every frame, scaled by FFmpeg to short side 2 x the encoder's crop;
- `clip_frames_from_start`: the same scale, only the clips' frames kept and scaled (so memory does not grow
  with the video's length), every frame decoded from the start up to the last clip;
- `clip_frames_seeking` (slic's way, slic.serving.decode_windows): as the last, and a clip whose keyframe lies
  SEEK_GAP frames or more ahead is reached by seeking to that keyframe, so a long video decodes only around
  its clips.

Each (video, way) runs in a fresh process, so its peak RSS is its own: seconds of `VideoEncoder.embed_paths`
for one video and the peak RSS it adds over the loaded encoder; and each way's cosine to `full_size`.
Videos: real files of ../shared/videos at 1080p, 720x528 and 320x240, and one long video made here (1,800
frames of 960x540 moving patterns, a minute at 30 fps).  Then long videos made here, 10 minutes each, with
the two clip ways only (every frame of them would not fit in memory) and the largest difference between
their embeddings (0: the same frames): moving bands at 640x360 in H.264 (libx264, B-frames, a keyframe every
250 frames), a moving random texture at 640x360 (5 minutes; H.264 as the bands, but every frame as costly to
decode as a detailed, fast-moving real one), and ucf101_6's test clips (170x128) back to back, re-encoded in
UCF101's MPEG-4 part 2 (a keyframe every 12 frames).  Writes reports/bench/serving_decode.json.

    python bench/serving_decode.py --checkpoint data/models/pretrain/best.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "videos"
VIDEOS = ("mmaction2/ntu_rgbd/A001_drink_water/S001C001P001R001A001_rgb.avi",  # 1920x1080, 103 frames
          "debian-opencv-doc-4.6.0/Megamind_bugy.avi",  # 720x528, 270 frames
          "FingerRec-3DNet_Visualization/ucf101/Shotput/v_Shotput_g05_c02.avi")  # 320x240, 130 frames
DEFAULT_OUT = ROOT / "reports" / "bench" / "serving_decode.json"

WAYS = ("full_size", "all_frames_2x_crop", "clip_frames_from_start", "clip_frames_seeking")
LONG_WAYS = WAYS[2:]
REAL = ROOT.parent / "shared" / "real" / "ucf101_6"
ONE_RUN = """
import json, resource, sys, time
import numpy as np
import slic.data.video as video_module
import slic.serving as serving
from slic.data.video import decode
from slic.serving import VideoEncoder
checkpoint, video, way, out = sys.argv[1:5]
encoder = VideoEncoder(checkpoint, clips=10)

def every_frame(path, short_side, clip_len, clips, frame_step, frame_rate=0.0):  # the bench's encoder: native frames
    frames = decode(path, short_side=short_side)
    windows = serving.iic_windows(len(frames), clip_len=clip_len, clips=clips, frame_step=frame_step)
    return [frames[w] for w in windows]

if way == "full_size":
    serving.decode_windows = lambda path, short_side, **kw: every_frame(path, None, **kw)
elif way == "all_frames_2x_crop":
    serving.decode_windows = lambda path, short_side, **kw: every_frame(path, short_side, **kw)
elif way == "clip_frames_from_start":
    video_module.SEEK_GAP = 1 << 62  # seeking never pays
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
vector = encoder.embed_paths([video])[0]
seconds = time.perf_counter() - started
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
np.save(out, vector)
print(json.dumps({"seconds": round(seconds, 3), "peak_rss_added_mb": round(grown, 1)}))
"""


def write_video_stream(path: Path, frames: Iterator[np.ndarray], *, width: int, height: int, fps: int,
                       codec: str) -> Path:
    """RGB frames streamed into a video file (libx264 veryfast crf 28, or mpeg4 at qscale 4 as UCF101's); the
    file is reused when present, and written under another name first, so a stopped run leaves none."""
    import av

    if path.is_file():
        return path
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "28", "preset": "veryfast"}
        else:
            stream.codec_context.qscale, stream.codec_context.global_quality = True, 4 * 118
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    partial.replace(path)
    return path


def moving_bands(frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Colour bands sliding sideways over a vertical ramp, `frames` frames."""
    x = np.arange(width)[None, :, None]
    y = np.arange(height)[:, None, None]
    for t in range(frames):
        yield ((np.sin((x + 4 * t) / 40.0 + np.array([0, 2, 4])) * 0.5 + 0.5) * 200 + (y * 55 // height)).astype(
            np.uint8)


def moving_texture(frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Random texture sliding diagonally, `frames` frames: every pixel changes, so each frame costs the decoder
    about what a detailed, fast-moving real frame does (the bands above cost little)."""
    texture = np.random.default_rng(0).integers(0, 255, (2 * height, 2 * width, 3), dtype=np.uint8)
    for t in range(frames):
        x, y = (3 * t) % width, (2 * t) % height
        yield texture[y:y + height, x:x + width]


def clips_back_to_back(videos: list[Path], frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """The frames of `videos` one after the other, until `frames` frames (videos repeat); a video of another
    frame size than width x height is left out (ucf101_6's are all 170x128)."""
    from slic.data.video import decode

    made = 0
    while made < frames:
        before = made
        for video in videos:
            for frame in decode(video):
                if frame.shape[:2] == (height, width):
                    yield frame
                    made += 1
                    if made == frames:
                        return
        if made == before:
            raise SystemExit(f"bench/serving_decode.py: error: none of the {len(videos)} videos is {width}x{height}")


def write_long_video(path: Path, frames: int = 1800, width: int = 960, height: int = 540) -> Path:
    """A minute of moving colour bands at 30 fps (libx264), written frame by frame; reused when present."""
    return write_video_stream(path, moving_bands(frames, width, height), width=width, height=height, fps=30,
                              codec="libx264")


def long_videos(scratch: Path, minutes: float) -> list[Path]:
    """The long videos of the module docstring (`minutes` each): made here once, reused after."""
    bands = int(minutes * 60 * 30)
    made = [write_video_stream(scratch / f"bands_640x360_{bands}.mp4", moving_bands(bands, 640, 360), width=640,
                               height=360, fps=30, codec="libx264")]
    texture = int(minutes * 60 * 25) // 2
    made.append(write_video_stream(scratch / f"texture_640x360_{texture}.mp4", moving_texture(texture, 640, 360),
                                   width=640, height=360, fps=25, codec="libx264"))
    tests = REAL / "splits" / "testlist01.txt"
    if tests.is_file():
        names = [line.split()[0] for line in tests.read_text().splitlines() if line.strip()]
        clips = int(minutes * 60 * 25)
        made.append(write_video_stream(scratch / f"ucf101_6_test_back_to_back_{clips}.avi",
                                       clips_back_to_back([REAL / "videos" / n for n in names], clips, 170, 128),
                                       width=170, height=128, fps=25, codec="mpeg4"))
    return made


def run_once(checkpoint: Path, video: Path, way: str, out: Path) -> dict[str, Any]:
    """One embedding of `video` the `way` way in a fresh process: its seconds and peak RSS growth."""
    done = subprocess.run([sys.executable, "-c", ONE_RUN, str(checkpoint), str(video), way, str(out)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "data" / "models" / "pretrain" / "best.pt"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--long-minutes", type=float, default=10.0, help="length of each long video made here")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        sys.exit(f"bench/serving_decode.py: error: {checkpoint}: no checkpoint; run `make run` first or pass "
                 "--checkpoint")
    sys.path.insert(0, str(ROOT))
    from slic.data.video import probe
    from slic.machine import machine_info

    rows = []
    scratch = ROOT / "data" / "bench" / "serving_decode"
    scratch.mkdir(parents=True, exist_ok=True)
    videos = [SHARED / name for name in VIDEOS] + [write_long_video(scratch / "long_960x540_1800.mp4")]
    for video in videos:
        info = probe(video)
        name = str(video.relative_to(SHARED)) if video.is_relative_to(SHARED) else f"made here: {video.name}"
        row: dict[str, Any] = {"video": name, "width": info.width, "height": info.height, "frames": info.frames}
        vectors = {}
        for way in WAYS:
            out = scratch / f"{way}.npy"
            row[way] = run_once(checkpoint, video, way, out)
            vectors[way] = np.load(out)
        full = vectors["full_size"]
        for way in WAYS[1:]:
            row[way]["cosine_to_full_size"] = round(float(vectors[way] @ full / np.linalg.norm(vectors[way])
                                                          / np.linalg.norm(full)), 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    long_rows = []
    for video in long_videos(scratch, args.long_minutes):
        info = probe(video)
        row = {"video": f"made here: {video.name}", "width": info.width, "height": info.height,
               "frames": info.frames, "codec": info.codec}
        for way in LONG_WAYS:
            row[way] = run_once(checkpoint, video, way, scratch / f"{way}.npy")
        seeking, from_start = (np.load(scratch / f"{way}.npy") for way in LONG_WAYS[::-1])
        row["max_abs_difference"] = float(np.abs(seeking - from_start).max())
        row["speedup"] = round(row[LONG_WAYS[0]]["seconds"] / row[LONG_WAYS[1]]["seconds"], 1)
        long_rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"question": "serving's decode: every frame at the file's size, every frame at 2 x crop, or only "
                          "the clips' frames at 2 x crop, decoded from the start or seeking to each clip's keyframe?",
              "checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
              "rows": rows, "long_videos": long_rows, "machine": machine_info("cpu")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
