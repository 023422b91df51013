"""Benchmark: the `flow` stage's work before and after it followed the clips' frame_step, on real video.

Before, the stage computed every pair (t, t+1) of every train video; now it computes only the pairs the clips
read, (k s, (k+1) s) for s = `pretrain.frame_step`. On a seeded sample of `--videos` train videos of a frame
folder (default: the ucf101_6 frames `bench/real.py` extracted), the stage (`slic.data.flow.flow_all`, the
flow section's settings, `flow.workers` processes) runs at frame_step 1 and at each `--steps` value into a
fresh folder, alternating, `--repeats` times: pairs, wall seconds and pairs/s of each. The pairs of the whole
train split at each step are exact (from the frame counts), and its wall time is projected from the measured
pairs/s. Writes reports/bench/flow_stage.json.

    python bench/flow_stage.py                  # 40 ucf101_6 train videos, steps 1 and 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown  # noqa: E402
from slic.config import load  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "bench" / "real" / "data"


def pairs_at(frames: pd.Series, step: int) -> int:
    """Flow pairs of videos with `frames` decoded frames each when clips take every `step`-th frame."""
    return int(((frames.astype(int) - 1) // step).sum())


def measure(manifest: pd.DataFrame, frames_dir: Path, step: int, config: Any) -> dict[str, Any]:
    """One run of the stage at `step` into a temporary folder: pairs computed, wall seconds, pairs/s."""
    from slic.data.flow import flow_all

    cfg = config.flow
    with tempfile.TemporaryDirectory(prefix="slic-flow-stage-") as tmp:
        started = time.perf_counter()
        report = flow_all(manifest, frames_dir=frames_dir, out_dir=tmp, splits=("train",), method=cfg.method,
                          device=cfg.device, bound=cfg.bound, quality=cfg.quality, params=cfg.tvl1(),
                          batch_pairs=cfg.batch_pairs, workers=cfg.workers, fail_fast=True, frame_step=step)
        seconds = time.perf_counter() - started
    return {"frame_step": step, "pairs": report["pairs_computed"], "seconds": round(seconds, 2),
            "pairs_per_s": round(report["pairs_computed"] / seconds, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with validated.csv and frames/ (default: bench/real.py's ucf101_6 data)")
    parser.add_argument("--videos", type=int, default=40, help="train videos sampled (seed 7)")
    parser.add_argument("--steps", type=int, nargs="+", default=[2], help="frame steps compared with 1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "flow_stage.json")
    args = parser.parse_args(argv)
    manifest_path, frames_dir = args.data / "validated.csv", args.data / "frames"
    if not manifest_path.is_file() or not frames_dir.is_dir():
        sys.exit(f"bench/flow_stage.py: error: {args.data}: no validated.csv and frames/ there; run bench/real.py "
                 "first (it extracts the ucf101_6 frames) or pass --data")
    import torch

    config = load(args.params)
    manifest = pd.read_csv(manifest_path, dtype={"video_id": str}, keep_default_na=False)
    train = manifest[manifest["split"] == "train"]
    sample = train.iloc[np.sort(np.random.default_rng(7).choice(len(train), min(args.videos, len(train)),
                                                               replace=False))]
    steps = [1, *[s for s in args.steps if s != 1]]
    runs: dict[int, list[dict[str, Any]]] = {s: [] for s in steps}
    for _ in range(args.repeats):
        for step in steps:  # alternating, so both see the same machine
            runs[step].append(measure(sample, frames_dir, step, config))
            print(f"frame_step {step}: {runs[step][-1]}", flush=True)
    rows = []
    for step in steps:
        best = max(runs[step], key=lambda r: r["pairs_per_s"])
        whole = pairs_at(train["frames"], step)
        rows.append({**best, "runs": runs[step], "train_pairs": whole,
                     "train_seconds_projected": round(whole / best["pairs_per_s"], 1)})
    report = {"data": shown(args.data), "train_videos": len(train), "sampled_videos": len(sample),
              "flow": {k: v for k, v in vars(config.flow).items() if k not in ("manifest", "frames", "out")},
              "rows": rows, "machine": machine(torch.device("cpu"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for row in rows:
        print(f"frame_step {row['frame_step']}: {row['pairs']} pairs in {row['seconds']} s ({row['pairs_per_s']} "
              f"pairs/s); whole train split {row['train_pairs']} pairs, about {row['train_seconds_projected']} s")
    print(f"-> {args.out}")
    return report


if __name__ == "__main__":
    main()
