"""Decoding for serving (`slic search`, `slic embed-video`, the registered model, added videos): three ways.

- `full_size`: every frame at the file's own size, then the IIC clips taken from them (slic before 2026-12-06);
- `all_frames_2x_crop`: every frame, scaled by FFmpeg to short side 2 x the encoder's crop;
- `clip_frames_2x_crop` (slic's way, slic.serving.decode_windows): the same scale, and only the clips' frames
  kept while decoding, so memory does not grow with the video's length.

Each (video, way) runs in a fresh process, so its peak RSS is its own: seconds of `VideoEncoder.embed_paths`
for one video and the peak RSS it adds over the loaded encoder; and each way's cosine to `full_size`.
Videos: real files of ../shared/videos at 1080p, 720x528 and 320x240, and one long video made here (1,800
frames of 960x540 moving patterns, a minute at 30 fps).  Writes reports/bench/serving_decode.json.

    python bench/serving_decode.py --checkpoint data/models/pretrain/best.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "videos"
VIDEOS = ("mmaction2/ntu_rgbd/A001_drink_water/S001C001P001R001A001_rgb.avi",  # 1920x1080, 103 frames
          "debian-opencv-doc-4.6.0/Megamind_bugy.avi",  # 720x528, 270 frames
          "FingerRec-3DNet_Visualization/ucf101/Shotput/v_Shotput_g05_c02.avi")  # 320x240, 130 frames
DEFAULT_OUT = ROOT / "reports" / "bench" / "serving_decode.json"

WAYS = ("full_size", "all_frames_2x_crop", "clip_frames_2x_crop")
ONE_RUN = """
import json, resource, sys, time
import numpy as np
import slic.serving as serving
from slic.data.video import decode
from slic.serving import VideoEncoder
checkpoint, video, way, out = sys.argv[1:5]
encoder = VideoEncoder(checkpoint, clips=10)

def every_frame(path, short_side, clip_len, clips, frame_step):
    frames = decode(path, short_side=short_side)
    windows = serving.iic_windows(len(frames), clip_len=clip_len, clips=clips, frame_step=frame_step)
    return [frames[w] for w in windows]

if way == "full_size":
    serving.decode_windows = lambda path, short_side, **kw: every_frame(path, None, **kw)
elif way == "all_frames_2x_crop":
    serving.decode_windows = lambda path, short_side, **kw: every_frame(path, short_side, **kw)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
vector = encoder.embed_paths([video])[0]
seconds = time.perf_counter() - started
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
np.save(out, vector)
print(json.dumps({"seconds": round(seconds, 3), "peak_rss_added_mb": round(grown, 1)}))
"""


def write_long_video(path: Path, frames: int = 1800, width: int = 960, height: int = 540) -> Path:
    """A minute of moving colour bands at 30 fps (libx264), written frame by frame; reused when present."""
    import av

    if path.is_file():
        return path
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    x = np.arange(width)[None, :, None]
    y = np.arange(height)[:, None, None]
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "28", "preset": "veryfast"}
        for t in range(frames):
            array = ((np.sin((x + 4 * t) / 40.0 + np.array([0, 2, 4])) * 0.5 + 0.5) * 200
                     + (y * 55 // height)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    partial.replace(path)
    return path


def run_once(checkpoint: Path, video: Path, way: str, out: Path) -> dict[str, Any]:
    """One embedding of `video` the `way` way in a fresh process: its seconds and peak RSS growth."""
    done = subprocess.run([sys.executable, "-c", ONE_RUN, str(checkpoint), str(video), way, str(out)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "data" / "models" / "pretrain" / "best.pt"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
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
    report = {"question": "serving's decode: every frame at the file's size, every frame at 2 x crop, or only "
                          "the clips' frames at 2 x crop?",
              "checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
              "rows": rows, "machine": machine_info("cpu")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
