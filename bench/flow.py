"""TV-L1 benchmark: OpenCV's Dual TV-L1 against our batched torch TV-L1 on the same frame pairs.

What is compared, on the SAME grey frame pairs in ONE run:

* OPENCV: ``slic.tvl1.tvl1_opencv``, cv2.optflow.DualTVL1OpticalFlow (opencv-contrib), pair by
  pair, one thread (the stage runs one such process per core).
* TORCH: ``slic.tvl1.tvl1_torch``, the same algorithm in torch, `batch` pairs at a time, one
  thread on the CPU (and on CUDA when torch sees a GPU: rows with ``device: cuda``).

Inputs: the first `--frames` frames of every real clip in ../shared/videos that decodes and has
>= 32 frames (read in place), resized to short side 64 as the frame shards are, plus `--synthetic`
shards of data/frames (the default dataset); both converted to grey with ``slic.tvl1.to_grey``.

Two TV-L1 settings: ``stage`` (params.yaml's flow section, the CPU default) and ``opencv_defaults``
(OpenCV's = the paper's; slower, so on the real clips only). For each: pairs/s of each
implementation (best of `--repeats`, wall clock, after one warm-up batch), the mean / median /
99th percentile end-point error (EPE, px) between the two implementations, and, for ``stage``, the
EPE of each against OpenCV at its defaults (what the CPU setting costs in accuracy).

Run: ``python bench/flow.py`` (writes reports/bench/flow.json and prints a table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
VIDEOS = ROOT.parent / "shared" / "videos"
FRAMES = ROOT / "data" / "frames"
MIN_FRAMES = 32


def repo_relative(path: Path) -> str:
    """`path` relative to the repository root (e.g. ../shared/videos), so a report reads the same on any machine."""
    return os.path.relpath(path, ROOT)


def real_pairs(frames: int, short_side: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Consecutive grey frame pairs of the real clips, grouped by frame size (one array per size)."""
    from slic.data.video import decode
    from slic.tvl1 import to_grey

    manifest = pd.read_csv(VIDEOS / "MANIFEST.csv")
    usable = manifest[(manifest["decode"] == "ok") & (pd.to_numeric(manifest["frames"]) >= MIN_FRAMES)]
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    used: dict[str, int] = {}
    for name in usable["file"]:
        grey = to_grey(decode(VIDEOS / name, stop=frames, short_side=short_side))
        groups.setdefault(grey.shape[1:], []).append(grey)
        used[name] = len(grey) - 1
    firsts = [np.concatenate([g[:-1] for g in gs]) for gs in groups.values()]
    seconds = [np.concatenate([g[1:] for g in gs]) for gs in groups.values()]
    return firsts, seconds, used


def synthetic_pairs(count: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Pairs of `count` evenly spaced shards of data/frames (all one size)."""
    from slic.data.frames import ShardReader, read_index
    from slic.tvl1 import to_grey

    if count <= 0 or not (FRAMES / "index.csv").is_file():
        return [], [], []
    index = read_index(FRAMES)
    rows = index.iloc[:: max(1, len(index) // count)][:count]
    greys = [to_grey(ShardReader.open(FRAMES / s).read_window(0, int(n))) for s, n in zip(rows["shard"], rows["frames"])]
    return ([np.concatenate([g[:-1] for g in greys])], [np.concatenate([g[1:] for g in greys])],
            rows["video_id"].tolist())


def epe(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """End-point error statistics (px) between two lists of (N, H, W, 2) flow fields, over all pixels."""
    error = np.concatenate([np.sqrt(((x - y) ** 2).sum(-1)).ravel() for x, y in zip(a, b)])
    return {"mean": round(float(error.mean()), 4), "median": round(float(np.median(error)), 4),
            "p99": round(float(np.quantile(error, 0.99)), 4)}


def timed(run: Callable[[], list[np.ndarray]], repeats: int) -> tuple[list[np.ndarray], float, float]:
    """(output, best wall seconds, CPU seconds of the best run) over `repeats` runs."""
    best, best_cpu, out = float("inf"), 0.0, []
    for _ in range(repeats):
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        if seconds < best:
            best, best_cpu = seconds, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return out, best, best_cpu


def measure(name: str, params: Any, firsts: list[np.ndarray], seconds: list[np.ndarray], batch: int,
            repeats: int, reference: list[np.ndarray] | None) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Rows (one per implementation and device) for one setting on one input set; returns OpenCV's flow."""
    import torch

    from slic.tvl1 import tvl1_opencv, tvl1_torch

    pairs = sum(len(f) for f in firsts)
    sizes = sorted({f"{f.shape[1]}x{f.shape[2]}" for f in firsts})

    def torch_run(device: str) -> Callable[[], list[np.ndarray]]:
        return lambda: [np.concatenate([tvl1_torch(a[i:i + batch], b[i:i + batch], params, device=device)
                                        for i in range(0, len(a), batch)]) for a, b in zip(firsts, seconds)]

    runs: list[tuple[str, str, Callable[[], list[np.ndarray]]]] = [
        ("opencv", "cpu", lambda: [tvl1_opencv(a, b, params) for a, b in zip(firsts, seconds)]),
        ("torch", "cpu", torch_run("cpu"))]
    if torch.cuda.is_available():
        runs.append(("torch", "cuda", torch_run("cuda")))
    outputs: dict[tuple[str, str], list[np.ndarray]] = {}
    rows = []
    for method, device, run in runs:
        if method == "torch":  # warm-up: first calls allocate
            tvl1_torch(firsts[0][:2], seconds[0][:2], params, device=device)
        out, wall, cpu = timed(run, repeats)
        outputs[method, device] = out
        row = {"setting": name, "method": method, "device": device, "pairs": pairs, "frame_sizes": sizes,
               "batch": batch if method == "torch" else 1, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
               "frames_per_s": round(pairs / wall, 1)}
        row["epe_vs_opencv"] = epe(out, outputs["opencv", "cpu"])
        if reference is not None:
            row["epe_vs_opencv_defaults"] = epe(out, reference)
        rows.append(row)
    return rows, outputs["opencv", "cpu"]


def machine() -> dict[str, Any]:
    """CPU count, Python, torch and OpenCV versions."""
    import cv2
    import torch

    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "opencv": cv2.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_end": list(os.getloadavg()), "platform": platform.platform()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure both implementations at both settings on real and synthetic pairs; write the JSON."""
    import cv2
    import torch

    from slic.config import load
    from slic.tvl1 import TVL1Params, tvl1_opencv

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=17, help="frames decoded per real clip")
    parser.add_argument("--short-side", type=int, default=64, help="as extract.short_side")
    parser.add_argument("--synthetic", type=int, default=6, help="data/frames shards to include (0: none)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "flow.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    flow = load(args.params).flow
    stage, defaults = flow.tvl1(), TVL1Params()
    started = time.perf_counter()
    real_a, real_b, real_used = real_pairs(args.frames, args.short_side)
    syn_a, syn_b, syn_used = synthetic_pairs(args.synthetic)
    rows: list[dict[str, Any]] = []
    # OpenCV at its defaults: the setting's own rows, and the converged reference for the stage setting.
    for label, firsts, seconds in (("real", real_a, real_b), ("synthetic", syn_a, syn_b)):
        if not firsts:
            continue
        reference = None
        if label == "real":
            default_rows, reference = measure("opencv_defaults", defaults, firsts, seconds, flow.batch_pairs,
                                              1, None)
            rows += [{**r, "videos": label} for r in default_rows]
        else:
            reference = [tvl1_opencv(a, b, defaults) for a, b in zip(firsts, seconds)]
        stage_rows, _ = measure("stage", stage, firsts, seconds, flow.batch_pairs, args.repeats, reference)
        rows += [{**r, "videos": label} for r in stage_rows]
    by = {(r["setting"], r["videos"], r["method"], r["device"]): r for r in rows}
    result: dict[str, Any] = {
        "summary": {f"{s}/{v}/{m}/{d}": {"frames_per_s": r["frames_per_s"], "epe_vs_opencv": r["epe_vs_opencv"]["mean"]}
                    for (s, v, m, d), r in by.items()},
        "settings": {"stage": {k: v for k, v in vars(stage).items()}, "opencv_defaults": vars(defaults)},
        "timing": (f"wall seconds over all pairs of a set, best of {args.repeats} runs (opencv_defaults: 1 run), "
                   "one thread per implementation, after a warm-up; frames_per_s = pairs / seconds (one flow "
                   "field per frame pair); the inputs are decoded before timing"),
        "epe": "end-point error in px, sqrt(du^2 + dv^2) per pixel, between full float flows (before quantisation)",
        "inputs": {"real": {"root": repo_relative(VIDEOS), "frames_per_clip": args.frames, "short_side": args.short_side,
                            "pairs_per_clip": real_used},
                   "synthetic": {"root": repo_relative(FRAMES), "videos": syn_used}},
        "rows": rows,
        "machine": machine(),
    }
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'setting':16} {'videos':10} {'method':7} {'device':6} {'pairs':>6} {'frames/s':>9} "
          f"{'EPE vs opencv':>14} {'EPE vs cv defaults':>19}")
    for r in rows:
        ref = r.get("epe_vs_opencv_defaults", {}).get("mean")
        print(f"{r['setting']:16} {r['videos']:10} {r['method']:7} {r['device']:6} {r['pairs']:>6} "
              f"{r['frames_per_s']:>9.1f} {r['epe_vs_opencv']['mean']:>14.4f} {'' if ref is None else f'{ref:.4f}':>19}")
    print(f"bench took {result['bench_seconds']} s; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
