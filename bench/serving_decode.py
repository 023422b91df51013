"""Decoding for serving (`slic search`, `slic embed-video`, the registered model, added videos): at the file's own
size, or scaled by FFmpeg to short side 2 x the encoder's crop (slic.serving.decode_short_side)?

Each (video, way) runs in a fresh process, so its peak RSS is its own: seconds of `VideoEncoder.embed_paths`
for one video and the peak RSS it adds over the loaded encoder; and the cosine between the two ways'
embeddings of each video.  Videos: real files of ../shared/videos at 1080p, 720x528 and 320x240.  Writes
reports/bench/serving_decode.json.

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

ONE_RUN = """
import json, resource, sys, time
import numpy as np
import slic.serving as serving
from slic.serving import VideoEncoder
checkpoint, video, way, out = sys.argv[1:5]
encoder = VideoEncoder(checkpoint, clips=10)
if way == "full_size":
    serving.decode_short_side = lambda size: None  # the file's own size, as before
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
vector = encoder.embed_paths([video])[0]
seconds = time.perf_counter() - started
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
np.save(out, vector)
print(json.dumps({"seconds": round(seconds, 3), "peak_rss_added_mb": round(grown, 1)}))
"""


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
    for name in VIDEOS:
        video = SHARED / name
        info = probe(video)
        row: dict[str, Any] = {"video": name, "width": info.width, "height": info.height, "frames": info.frames}
        vectors = {}
        for way in ("full_size", "short_side_2x_crop"):
            out = scratch / f"{way}.npy"
            row[way] = run_once(checkpoint, video, way, out)
            vectors[way] = np.load(out)
        a, b = vectors["full_size"], vectors["short_side_2x_crop"]
        row["cosine_between_ways"] = round(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"question": "decode at the file's own size, or at short side 2 x crop, for serving?",
              "checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
              "rows": rows, "machine": machine_info("cpu")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
