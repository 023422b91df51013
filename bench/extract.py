"""Frame extraction benchmark: our shard writer against the reference's ffmpeg JPEG folders.

What is compared, on the SAME videos in ONE run:

* OURS: ``slic.data.frames.extract_all`` decodes every video with PyAV, resizes it to the short
  side S and JPEG-encodes each frame inside FFmpeg, writing ONE shard file per video (JPEGs
  concatenated behind an offset table), on a process pool of W workers.
* REFERENCE: what users of the SLIC reference code run, one ffmpeg process per video writing one
  JPEG file per frame,
  ``ffmpeg -nostdin -loglevel error -i VIDEO -vf scale=-2:S -q:v Q -threads 1 OUT/image_%05d.jpg``
  (``scale=S:-2`` for portrait videos), W processes at a time from a thread pool.

Why it is fair:

* Same videos (real clips from ../shared/videos read in place, plus a fixed sample of the
  synthetic dataset), same frame size (checked by decoding frame 0 of every video from both
  outputs), same JPEG qscale Q (so bytes compare like for like), same parallelism W.
* By default the reference command gets ``-fps_mode passthrough`` so it writes exactly one JPEG
  per decoded frame, as ours does. The literal command (ffmpeg's default constant-frame-rate
  output) duplicates frames in files whose timestamps do not match their nominal rate (tree.avi:
  68 decoded frames -> 449 JPEGs); that would credit the reference with frames that are not in the
  video and shift its frame numbering. The literal command is still timed once and reported
  under ``reference_literal``; ``--reference-fps-mode auto`` makes it the main reference.
* Every extraction writes into a fresh, empty temporary directory (ours would otherwise reuse
  intact shards) on the same filesystem, which is deleted afterwards. The source videos are read
  once before timing, so every run sees them in the page cache. Each measurement runs twice
  (sides alternate which goes first) and the faster run counts; both are in the JSON.
* Wall time covers the whole extraction of all videos, including our process pool start-up and
  index.csv and the reference's ffmpeg process start-ups. Ours additionally fsyncs each shard
  (crash safety); ffmpeg does not fsync, so this favours the reference.
* Window read: one random 16-frame window (random video, random start, fixed seed), read from
  our shard with ``ShardReader.open(path).read_window`` and from the reference folder by opening
  and reading its 16 JPEG files; both are decoded with the same decoder
  (``slic.data.frames.decode_jpegs``, libjpeg-turbo via torchvision), so the difference is only
  the storage layout. Outputs of the last timed extraction are read, i.e. with a warm page cache
  on both sides. The two sides alternate per window.

Run: ``python bench/extract.py`` (writes reports/bench/extract.json and prints a table). The videos, the
timed extractions and the window reads are in bench/extract_timing.py; this script runs them and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.extract_timing import (  # noqa: E402
    QUIET_WAITS, WINDOW, Extraction, best_of, check_frame_sizes, ffmpeg_exe, filesystem_of, run_reference,
    select_videos, time_side_pair, time_windows, wait_for_quiet, warm_page_cache)


def summarize(short_side: int, workers: int, ours: list[Extraction], ref: list[Extraction]) -> dict[str, Any]:
    """One configuration's row: best-of-runs throughput, bytes and their ratios."""
    mine, theirs = best_of(ours), best_of(ref)
    ours_fps, ref_fps = mine.frames / mine.seconds, theirs.frames / theirs.seconds
    differing = sorted(k for k, n in mine.per_video_frames.items() if theirs.per_video_frames.get(k) != n)
    return {
        "short_side": short_side, "workers": workers,
        "ours_fps": round(ours_fps, 1), "reference_fps": round(ref_fps, 1),
        "speedup": round(ours_fps / ref_fps, 3),
        "ours_seconds_runs": [round(r.seconds, 3) for r in ours],
        "reference_seconds_runs": [round(r.seconds, 3) for r in ref],
        "ours_cpu_seconds_runs": [round(r.cpu_seconds, 3) for r in ours],
        "reference_cpu_seconds_runs": [round(r.cpu_seconds, 3) for r in ref],
        "cpu_speedup": round((min(r.cpu_seconds for r in ref) / theirs.frames)
                             / (min(r.cpu_seconds for r in ours) / mine.frames), 3),
        "ours_other_load_cpu_seconds_runs": [round(r.other_cpu_seconds, 3) for r in ours],
        "reference_other_load_cpu_seconds_runs": [round(r.other_cpu_seconds, 3) for r in ref],
        "ours_bytes": mine.bytes, "reference_bytes": theirs.bytes,
        "bytes_ratio": round(mine.bytes / theirs.bytes, 4),
        "ours_disk_bytes": mine.disk_bytes, "reference_disk_bytes": theirs.disk_bytes,
        "disk_bytes_ratio": round(mine.disk_bytes / theirs.disk_bytes, 4),
        "frames": mine.frames, "reference_frames": theirs.frames, "videos": len(mine.per_video_frames),
        "videos_with_different_frame_counts": differing,
    }


def machine() -> dict[str, Any]:
    """CPU count, Python, PyAV/FFmpeg, torch and torchvision versions."""
    import av
    import torch
    import torchvision

    version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": platform.processor() or _cpu_model(), "python": platform.python_version(),
        "av": av.__version__, "av_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "ffmpeg_cli": version[0] if version else "?", "tempdir_filesystem": filesystem_of(tempfile.gettempdir()),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def print_table(result: dict[str, Any]) -> None:
    """A short human-readable summary of every configuration."""
    print(f"\n{result['videos']} videos, {result['frames']} frames, qscale {result['quality']}, "
          f"best of {result['repeats']} runs; reference fps_mode={result['reference_fps_mode']}")
    header = (f"{'S':>4} {'W':>2} | {'ours f/s':>9} {'ref f/s':>9} {'speedup':>7} | {'ours MB':>8} "
              f"{'ref MB':>8} {'bytes':>6} {'disk':>6} | {'ours ms':>8} {'ref ms':>8} {'diff':>5} | "
              f"{'cpu':>6} {'other':>5}")
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        other = max(row["ours_other_load_cpu_seconds_runs"] + row["reference_other_load_cpu_seconds_runs"])
        print(f"{row['short_side']:>4} {row['workers']:>2} | {row['ours_fps']:>9.0f} {row['reference_fps']:>9.0f} "
              f"{row['speedup']:>6.2f}x | {row['ours_bytes'] / 1e6:>8.2f} {row['reference_bytes'] / 1e6:>8.2f} "
              f"{row['bytes_ratio']:>6.3f} {row['disk_bytes_ratio']:>6.3f} | {row['ours_window_ms']:>8.2f} "
              f"{row['reference_window_ms']:>8.2f} {row['pixel_mean_abs_diff']:>5.2f} | "
              f"{row['cpu_speedup']:>5.2f}x {other:>5.1f}")
    print("bytes/disk: ours/reference (apparent size, allocated blocks); ms: one 16-frame window read+decode; "
          "diff: mean |pixel| difference; cpu: CPU-time speedup per frame; other: max CPU s of foreign load in a run")
    literal = result.get("reference_literal")
    if literal:
        print(f"literal reference command (S={literal['short_side']}, W={literal['workers']}, one run): "
              f"{literal['frames']} JPEGs in {literal['seconds']} s = {literal['fps']} f/s "
              f"({literal['fps_decoded_frames']} f/s counting decoded frames only)")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["targets"].items()))
    print(f"bench took {result['bench_seconds']} s")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every (short side, workers) configuration and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--short-sides", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--quality", type=int, default=4, help="JPEG qscale for both sides (ffmpeg -q:v)")
    parser.add_argument("--windows", type=int, default=300, help="random 16-frame windows to read")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--synthetic", type=int, default=60, help="synthetic videos to sample (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-fps-mode", default="passthrough",
                        help="ffmpeg -fps_mode for the reference (auto: the literal command)")
    parser.add_argument("--no-literal", action="store_true", help="skip timing the literal reference command")
    parser.add_argument("--max-busy", type=float, default=0.3,
                        help="before each timed run, wait until the machine is at most this busy (0..1)")
    parser.add_argument("--quiet-timeout", type=float, default=20.0, help="longest wait for a quiet machine (s)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "extract.json")
    args = parser.parse_args(argv)

    bench_started = time.perf_counter()
    videos, video_set = select_videos(args.synthetic)
    warm_page_cache(videos)
    rows: list[dict[str, Any]] = []
    literal: dict[str, Any] | None = None
    main_side, main_workers = args.short_sides[0], args.workers[0]
    with tempfile.TemporaryDirectory(prefix="slic-bench-extract-") as scratch:
        parent = Path(scratch)
        # 1. Extraction timings. Outputs of the first workers setting are kept per short side for the
        #    window reads, which come last so torch (imported by the JPEG decoder) is not loaded in
        #    this process while our process pool forks its workers.
        kept: dict[int, tuple[Extraction, Extraction]] = {}
        for short_side in args.short_sides:
            for workers in args.workers:
                ours, ref = time_side_pair(videos, parent, short_side, args.quality, workers, args.repeats,
                                           args.reference_fps_mode, (args.max_busy, args.quiet_timeout))
                rows.append(summarize(short_side, workers, ours, ref))
                if short_side not in kept:
                    kept[short_side] = (ours[-1], ref[-1])
                else:
                    shutil.rmtree(ours[-1].out_dir)
                    shutil.rmtree(ref[-1].out_dir)
        # 2. The literal reference command (ffmpeg's default frame-rate handling), timed once.
        if not args.no_literal and args.reference_fps_mode != "auto":
            QUIET_WAITS.append(wait_for_quiet(args.max_busy, args.quiet_timeout))
            run = run_reference(videos, parent, main_side, args.quality, main_workers, "auto")
            decoded = kept[main_side][0].per_video_frames
            literal = {
                "short_side": main_side, "workers": main_workers, "runs": 1,
                "command": f"ffmpeg -nostdin -loglevel error -i VIDEO -vf scale=-2:{main_side} "
                           f"-q:v {args.quality} -threads 1 OUT/image_%05d.jpg",
                "frames": run.frames, "decoded_frames": sum(decoded.values()),
                "seconds": round(run.seconds, 3), "fps": round(run.frames / run.seconds, 1),
                "fps_decoded_frames": round(sum(decoded.values()) / run.seconds, 1),
                "bytes": run.bytes,
                "frame_counts_differing": {k: {"decoded": decoded[k], "jpegs": run.per_video_frames.get(k, 0)}
                                           for k in sorted(decoded)
                                           if decoded[k] != run.per_video_frames.get(k, 0)},
            }
            shutil.rmtree(run.out_dir)
        # 3. Frame sizes and window reads, per short side (outputs do not depend on workers).
        for short_side, (ours_run, ref_run) in kept.items():
            mismatched = check_frame_sizes(videos, ours_run.out_dir, ref_run.out_dir)
            windows = time_windows(videos, ours_run, ref_run, args.windows, args.seed, args.repeats)
            for row in rows:
                if row["short_side"] == short_side:
                    row.update(windows)
                    row["window_outputs_from_workers"] = args.workers[0]
                    row["frame_size_mismatches"] = mismatched

    main_row = next(r for r in rows if r["short_side"] == main_side and r["workers"] == main_workers)
    keys = ["ours_fps", "reference_fps", "speedup", "ours_bytes", "reference_bytes", "bytes_ratio",
            "ours_window_ms", "reference_window_ms", "frames", "videos"]
    result: dict[str, Any] = {
        **{k: main_row[k] for k in keys},
        "main_configuration": {"short_side": main_side, "workers": main_workers},
        "quality": args.quality, "repeats": args.repeats,
        "timing": (f"wall seconds of the whole extraction of all videos, best of {args.repeats} runs "
                   "(sides alternate which runs first), each into a fresh empty temp dir; source videos "
                   "pre-read into the page cache (warm); fps = frames / best seconds"),
        "window_timing": (f"mean over {args.windows} random {WINDOW}-frame windows (seed {args.seed}) of open+read+"
                          f"decode, best of {args.repeats} passes, outputs in page cache (warm)"),
        "load": (f"before each timed extraction the bench waited (up to {args.quiet_timeout} s) for the machine "
                 f"to be at most {args.max_busy:.0%} busy; *_other_load_cpu_seconds_runs give the CPU seconds "
                 "other processes used during each run (0 = the run had the machine to itself)"),
        "quiet_wait_seconds_total": round(sum(QUIET_WAITS), 1),
        "reference_fps_mode": args.reference_fps_mode,
        "reference_command": ("ffmpeg -nostdin -loglevel error -i VIDEO -vf scale=-2:S -q:v Q -threads 1"
                              + ("" if args.reference_fps_mode == "auto" else
                                 f" -fps_mode {args.reference_fps_mode}") + " OUT/image_%05d.jpg"),
        "video_set": video_set,
        "rows": rows,
        "reference_literal": literal,
        "targets": {
            "speedup>=1.5": bool(main_row["speedup"] >= 1.5),
            "bytes_ratio<=1.5": bool(main_row["bytes_ratio"] <= 1.5),
            "window_no_slower": bool(main_row["ours_window_ms"] <= main_row["reference_window_ms"]),
        },
        "machine": machine(),
    }
    result["bench_seconds"] = round(time.perf_counter() - bench_started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
