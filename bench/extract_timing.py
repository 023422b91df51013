"""What bench/extract.py times: the benchmark videos, one timed extraction by each side (ours: slic.data.frames
extract_all into shards; the reference: one ffmpeg per video into JPEG folders), the machine's load around
each run, and the random 16-frame window reads from both layouts. bench/extract.py's docstring says why
the comparison is fair; it runs these and writes the report.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slic.data.frames import process_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "videos"
SYNTHETIC = ROOT / "data" / "raw" / "synthetic"
WINDOW = 16
MIN_FRAMES = 32
QUIET_WAITS: list[float] = []  # seconds each timed extraction waited for a quiet machine


def repo_relative(path: Path) -> str:
    """`path` relative to the repository root (e.g. ../shared/videos), so a report reads the same on any machine."""
    return os.path.relpath(path, ROOT)


def filesystem_of(path: str | Path) -> str:
    """Type of the filesystem holding `path` (tmpfs, ext4, overlay, ...): where the timed extractions write."""
    target, best, kind = os.path.realpath(path), "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            mount = fields[1] if len(fields) > 2 else ""
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if mount and inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


@dataclass(frozen=True)
class Video:
    """One benchmark video: its id (also its output folder), path, decoded frames and orientation."""

    video_id: str
    path: str
    frames: int
    portrait: bool


@dataclass
class Extraction:
    """One timed extraction of all videos by one side: where it wrote and what it cost."""

    out_dir: Path
    seconds: float
    frames: int
    bytes: int
    disk_bytes: int
    per_video_frames: dict[str, int]
    cpu_seconds: float = 0.0
    other_cpu_seconds: float = 0.0


class CpuMeter:
    """CPU seconds used by this process and its reaped children, and by everything else on the machine.

    The machine may be shared: `other` (busy CPU time in /proc/stat minus ours) says how much
    foreign load a timed run competed with.
    """

    def __enter__(self) -> CpuMeter:
        self._ours, self._busy = process_cpu_seconds(), _machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ours = process_cpu_seconds() - self._ours
        self.other = max(0.0, _machine_busy() - self._busy - self.ours)


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Wait until the machine's busy fraction over 0.5 s is <= `max_busy` (or `timeout`); returns seconds waited.

    Other jobs may share this machine; a timed run should not start in the middle of theirs.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        busy = _machine_busy()
        time.sleep(0.5)
        if (_machine_busy() - busy) / 0.5 / (os.cpu_count() or 1) <= max_busy:
            break
    return time.perf_counter() - started


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (0 where /proc/stat is missing)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def select_videos(synthetic_sample: int) -> tuple[list[Video], dict[str, Any]]:
    """Real videos that decode and have >= MIN_FRAMES frames, plus an even sample of synthetic .avi.

    Returns the videos and a description of the set for the report.
    """
    from slic.data.video import probe

    manifest = pd.read_csv(VIDEOS / "MANIFEST.csv")
    real = manifest[(manifest["decode"] == "ok") & (pd.to_numeric(manifest["frames"]) >= MIN_FRAMES)]
    chosen: list[tuple[str, Path]] = [(f"real/{Path(f).with_suffix('')}", VIDEOS / f) for f in real["file"]]
    synthetic = sorted(SYNTHETIC.rglob("*.avi")) if SYNTHETIC.is_dir() else []
    if synthetic and synthetic_sample > 0:
        step = max(1, len(synthetic) // synthetic_sample)
        sample = synthetic[::step][:synthetic_sample]
        chosen += [(f"synthetic/{p.relative_to(SYNTHETIC).with_suffix('')}", p) for p in sample]
    videos = []
    for video_id, path in chosen:
        info = probe(path)
        videos.append(Video(video_id, str(path), info.frames, info.height > info.width))
    real_videos = [v for v in videos if v.video_id.startswith("real/")]
    synth_videos = [v for v in videos if v.video_id.startswith("synthetic/")]
    described = {
        "real": {"count": len(real_videos), "frames_probed": sum(v.frames for v in real_videos),
                 "root": repo_relative(VIDEOS), "rule": f"MANIFEST.csv decode == ok and frames >= {MIN_FRAMES}",
                 "files": {str(Path(v.path).relative_to(VIDEOS)): v.frames for v in real_videos}},
        "synthetic": {"count": len(synth_videos), "frames_probed": sum(v.frames for v in synth_videos),
                      "root": repo_relative(SYNTHETIC), "available": len(synthetic),
                      "rule": "every k-th of the sorted .avi files",
                      "files": [str(Path(v.path).relative_to(SYNTHETIC)) for v in synth_videos]},
    }
    return videos, described


def warm_page_cache(videos: Sequence[Video]) -> int:
    """Read every source video once so no timed run pays for cold reads; returns bytes read."""
    total = 0
    for video in videos:
        with open(video.path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                total += len(chunk)
    return total


def tree_bytes(root: Path, pattern: str) -> tuple[int, int, dict[str, int]]:
    """(apparent bytes, allocated disk bytes, files per parent folder) of files matching `pattern`."""
    apparent = disk = 0
    per_folder: dict[str, int] = {}
    for path in root.rglob(pattern):
        stat = path.stat()
        apparent += stat.st_size
        disk += stat.st_blocks * 512
        key = str(path.parent.relative_to(root))
        per_folder[key] = per_folder.get(key, 0) + 1
    return apparent, disk, per_folder


def run_ours(videos: Sequence[Video], parent: Path, short_side: int, quality: int, workers: int) -> Extraction:
    """Time `extract_all` over all videos into a fresh directory under `parent`."""
    from slic.data.frames import SUFFIX, extract_all

    out = Path(tempfile.mkdtemp(prefix="ours-", dir=parent))
    manifest = pd.DataFrame({"video_id": [v.video_id for v in videos], "path": [v.path for v in videos]})
    with CpuMeter() as cpu:
        started = time.perf_counter()
        report = extract_all(manifest, out_dir=out, short_side=short_side, quality=quality, workers=workers)
        seconds = time.perf_counter() - started
    if report["failed"]:
        raise RuntimeError(f"our extraction failed on {report['failed']}")
    apparent, disk, _ = tree_bytes(out, f"*{SUFFIX}")
    index = pd.read_csv(out / "index.csv", dtype={"video_id": str})
    return Extraction(out, seconds, int(report["frames"]), apparent, disk,
                      dict(zip(index["video_id"], index["frames"].astype(int))), cpu.ours, cpu.other)


def reference_command(video: Video, out_dir: Path, short_side: int, quality: int, fps_mode: str) -> list[str]:
    """The reference's ffmpeg command line for one video (one JPEG per frame)."""
    scale = f"scale={short_side}:-2" if video.portrait else f"scale=-2:{short_side}"
    command = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", video.path, "-vf", scale,
               "-q:v", str(quality), "-threads", "1"]
    if fps_mode != "auto":
        command += ["-fps_mode", fps_mode]
    return command + [str(out_dir).replace("%", "%%") + "/image_%05d.jpg"]  # ffmpeg expands % in names


def run_reference(videos: Sequence[Video], parent: Path, short_side: int, quality: int, workers: int,
                  fps_mode: str) -> Extraction:
    """Time one ffmpeg per video, `workers` at a time, into a fresh directory under `parent`."""
    out = Path(tempfile.mkdtemp(prefix="ref-", dir=parent))

    def one(video: Video) -> None:
        target = out / video.video_id
        target.mkdir(parents=True)
        done = subprocess.run(reference_command(video, target, short_side, quality, fps_mode),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {video.path}: {done.stderr.strip()}")

    with CpuMeter() as cpu:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, videos))
        seconds = time.perf_counter() - started
    apparent, disk, per_video = tree_bytes(out, "image_*.jpg")
    return Extraction(out, seconds, sum(per_video.values()), apparent, disk, per_video, cpu.ours, cpu.other)


def best_of(runs: Sequence[Extraction]) -> Extraction:
    """The faster of the repeated runs."""
    return min(runs, key=lambda r: r.seconds)


def time_side_pair(videos: Sequence[Video], parent: Path, short_side: int, quality: int, workers: int,
                   repeats: int, fps_mode: str,
                   quiet: tuple[float, float]) -> tuple[list[Extraction], list[Extraction]]:
    """Run ours and the reference `repeats` times each, alternating which side goes first.

    Each run waits for a quiet machine first (`quiet` = max busy fraction, timeout s). Outputs of
    all but the last run of each side are deleted at once.
    """
    ours: list[Extraction] = []
    ref: list[Extraction] = []
    sides: list[tuple[list[Extraction], Callable[[], Extraction]]] = [
        (ours, lambda: run_ours(videos, parent, short_side, quality, workers)),
        (ref, lambda: run_reference(videos, parent, short_side, quality, workers, fps_mode)),
    ]
    for repeat in range(repeats):
        for runs, run in (sides if repeat % 2 == 0 else sides[::-1]):
            if runs:
                shutil.rmtree(runs[-1].out_dir)
            QUIET_WAITS.append(wait_for_quiet(*quiet))
            runs.append(run())
    return ours, ref


def reference_jpegs(folder: Path, start: int, count: int) -> list[bytes]:
    """Open and read the reference's JPEG files for frames [start, start + count) (image_00001 is frame 0)."""
    jpegs = []
    for index in range(start, start + count):
        with open(folder / f"image_{index + 1:05d}.jpg", "rb") as handle:
            jpegs.append(handle.read())
    return jpegs


def check_frame_sizes(videos: Sequence[Video], ours: Path, ref: Path) -> list[dict[str, Any]]:
    """Decode frame 0 of every video from both outputs; return the videos whose shapes differ."""
    from slic.data.frames import ShardReader, decode_jpegs, shard_path

    mismatched = []
    for video in videos:
        mine = ShardReader.open(shard_path(ours, video.video_id)).read_window(0, 1).shape
        theirs = decode_jpegs(reference_jpegs(ref / video.video_id, 0, 1)).shape
        if mine != theirs:
            mismatched.append({"video_id": video.video_id, "ours": list(mine), "reference": list(theirs)})
    return mismatched


def time_windows(videos: Sequence[Video], ours: Extraction, ref: Extraction, windows: int, seed: int,
                 repeats: int) -> dict[str, Any]:
    """Mean time to read+decode a random 16-frame window from each layout, and their pixel difference.

    Windows are drawn once (fixed seed) over videos whose two outputs have the same frame count;
    each pass times every window on both sides (alternating order); the faster pass counts.
    """
    from slic.data.frames import ShardReader, decode_jpegs, shard_path

    eligible = [v for v in videos if ours.per_video_frames[v.video_id] == ref.per_video_frames.get(v.video_id)
                and ours.per_video_frames[v.video_id] >= WINDOW]
    rng = random.Random(seed)
    draws = []
    for _ in range(windows):
        video = rng.choice(eligible)
        draws.append((video, rng.randrange(ours.per_video_frames[video.video_id] - WINDOW + 1)))
    decode_jpegs(reference_jpegs(ref.out_dir / eligible[0].video_id, 0, 1))  # import torch outside timing

    def read_ours(video: Video, start: int) -> np.ndarray:
        return ShardReader.open(shard_path(ours.out_dir, video.video_id)).read_window(start, WINDOW)

    def read_ref(video: Video, start: int) -> np.ndarray:
        return decode_jpegs(reference_jpegs(ref.out_dir / video.video_id, start, WINDOW))

    def read_only_ours(video: Video, start: int) -> list[bytes]:
        return ShardReader.open(shard_path(ours.out_dir, video.video_id)).read_jpegs(start, WINDOW)

    def read_only_ref(video: Video, start: int) -> list[bytes]:
        return reference_jpegs(ref.out_dir / video.video_id, start, WINDOW)

    passes: list[dict[str, float]] = []
    diffs: list[float] = []
    shapes_equal = True
    for repeat in range(repeats):
        totals = {"ours": 0.0, "ref": 0.0, "ours_read": 0.0, "ref_read": 0.0}
        for number, (video, start) in enumerate(draws):
            order = [("ours", read_ours), ("ref", read_ref)]
            order += [("ours_read", read_only_ours), ("ref_read", read_only_ref)]
            if (number + repeat) % 2:
                order = [order[1], order[0], order[3], order[2]]
            frames: dict[str, np.ndarray] = {}
            for name, reader in order:
                started = time.perf_counter()
                result = reader(video, start)
                totals[name] += time.perf_counter() - started
                if name in ("ours", "ref"):
                    frames[name] = result
            if repeat == 0:
                shapes_equal &= frames["ours"].shape == frames["ref"].shape
                if frames["ours"].shape == frames["ref"].shape:
                    diffs.append(float(np.abs(frames["ours"].astype(np.int16) - frames["ref"]).mean()))
        passes.append({k: 1000 * v / len(draws) for k, v in totals.items()})
    best = {k: min(p[k] for p in passes) for k in passes[0]}
    return {
        "ours_window_ms": round(best["ours"], 3), "reference_window_ms": round(best["ref"], 3),
        "ours_window_read_only_ms": round(best["ours_read"], 3),
        "reference_window_read_only_ms": round(best["ref_read"], 3),
        "window_passes_ms": [{k: round(v, 3) for k, v in p.items()} for p in passes],
        "windows": len(draws), "window_videos": len(eligible), "window_shapes_equal": bool(shapes_equal),
        "pixel_mean_abs_diff": round(float(np.mean(diffs)), 3) if diffs else None,
        "pixel_mean_abs_diff_max_window": round(float(np.max(diffs)), 3) if diffs else None,
    }
