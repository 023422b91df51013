"""Benchmark: what passing over damaged packets costs extract, and what it saves.

slic decodes packet by packet (`slic.data.video._decoded`), passing over a packet FFmpeg refuses, where PyAV's
`container.decode(stream)` stops the whole file at the first. Two ways, alternated per video in one run on one
machine, each JPEG-encoding every frame as `extract` does (`encode_jpeg_sequence`, short side 64, quality 4):

    packet_by_packet   slic's decoder (the one the stages use)
    stop_at_first      `container.decode(stream)`, the decoder before (`_decoded` swapped for it)

Reported: on whole videos (ucf101_6's first N, or ../shared/videos' decodable ones), the seconds of each way (sum
and median ratio) and whether their JPEG bytes are identical; on damaged copies (a file with packets whose NAL
length was overwritten, as tests/conftest.py's `damaged_video` makes them, and decord's corrupted.mp4), the frames
each way gives (slic's holds a lost frame's place with the frame before) or why it fails.

    python bench/damaged_packets.py                      # 60 ucf101_6 videos -> reports/bench/damaged_packets.json
    python bench/damaged_packets.py --videos 10 --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slic.data import video  # noqa: E402
from slic.machine import machine_info  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "damaged_packets.json"
REAL = ROOT.parent / "shared" / "real" / "ucf101_6" / "videos"
SHARED = ROOT.parent / "shared" / "videos"
PACKET_BY_PACKET = video._decoded


def stop_at_first(container: Any, stream: Any, path: Path, damage: video.Damage | None = None) -> Iterator[Any]:
    """PyAV's own loop, as slic decoded before: the first packet FFmpeg refuses ends the file."""
    yield from container.decode(stream)


def encode(path: Path, way: str) -> tuple[float, list[bytes] | str]:
    """(seconds, the JPEGs or why the file failed) of `encode_jpeg_sequence` with the decoder `way`."""
    video._decoded = PACKET_BY_PACKET if way == "packet_by_packet" else stop_at_first
    try:
        start = time.perf_counter()
        try:
            jpegs: list[bytes] | str = video.encode_jpeg_sequence(path, short_side=64, quality=4).jpegs
        except video.VideoDecodeError as exc:
            jpegs = exc.cause
        return time.perf_counter() - start, jpegs
    finally:
        video._decoded = PACKET_BY_PACKET


def whole_videos(count: int) -> list[Path]:
    """The videos timed: ucf101_6's first `count` (sorted), else the decodable files of ../shared/videos."""
    found = sorted(REAL.rglob("*.avi"))[:count]
    if found:
        return found
    return [path for path in sorted(SHARED.rglob("*")) if path.suffix in (".avi", ".mp4", ".mov", ".mkv")
            and path.name != "corrupted.mp4"][:count]


def damaged_copies(folder: Path) -> dict[str, Path]:
    """Files with damaged packets: decord's corrupted.mp4 (1 bad packet of 50) and made ones (tests/conftest.py)."""
    from tests.conftest import damaged_video

    made = {f"made, {48 - keep} of 48 packets damaged": damaged_video(folder / f"keep{keep}.mp4", decodable=keep)
            for keep in (46, 40, 30)}
    corrupted = SHARED / "dmlc-decord" / "decode_tests" / "corrupted.mp4"
    return ({"decord corrupted.mp4 (1 of 50 damaged)": corrupted} if corrupted.is_file() else {}) | made


def measure(videos: list[Path], damaged: dict[str, Path]) -> dict[str, Any]:
    """Both ways on each whole video (alternating which goes first) and on each damaged one."""
    rows = []
    for position, path in enumerate(videos):
        order = ("packet_by_packet", "stop_at_first") if position % 2 == 0 else ("stop_at_first", "packet_by_packet")
        timed = {way: encode(path, way) for way in order}
        rows.append({"video": path.name, "frames": len(timed["packet_by_packet"][1]),
                     **{f"{way}_s": round(seconds, 4) for way, (seconds, _) in timed.items()},
                     "identical": timed["packet_by_packet"][1] == timed["stop_at_first"][1]})
    ratios = [row["packet_by_packet_s"] / row["stop_at_first_s"] for row in rows if row["stop_at_first_s"] > 0]
    kept = {}
    for name, path in damaged.items():
        results = {way: encode(path, way)[1] for way in ("packet_by_packet", "stop_at_first")}
        kept[name] = {way: (len(result) if isinstance(result, list) else f"failed: {result}")
                      for way, result in results.items()}
    return {"whole_videos": len(rows), "frames": sum(row["frames"] for row in rows),
            "packet_by_packet_s": round(sum(row["packet_by_packet_s"] for row in rows), 3),
            "stop_at_first_s": round(sum(row["stop_at_first_s"] for row in rows), 3),
            "median_ratio": round(statistics.median(ratios), 4) if ratios else None,
            "all_identical": all(row["identical"] for row in rows), "damaged": kept, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=60, help="whole videos to time (default 60)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    videos = whole_videos(args.videos)
    if not videos:
        raise SystemExit(f"no videos found under {REAL} or {SHARED}")
    with tempfile.TemporaryDirectory() as folder:
        result = measure(videos, damaged_copies(Path(folder)))
    source = REAL if REAL.is_dir() else SHARED
    report = {"machine": machine_info(), "source": f"../{source.relative_to(ROOT.parent)}", "short_side": 64,
              "quality": 4, **result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['whole_videos']} whole videos, {report['frames']} frames: packet by packet "
          f"{report['packet_by_packet_s']} s, stop at first {report['stop_at_first_s']} s (median ratio "
          f"{report['median_ratio']}), identical JPEGs: {report['all_identical']}")
    for name, ways in report["damaged"].items():
        print(f"  {name}: frames given {ways}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
