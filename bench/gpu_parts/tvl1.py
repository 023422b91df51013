"""Item e of bench/gpu.py: slic.tvl1.tvl1_torch on the device, pairs/s, end-point error against OpenCV and the CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_parts.run import Bench


def flow_pairs(bench: Bench) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None, dict[str, Any]]:
    """Grey frame pairs (grouped by size) and OpenCV's flow for them when --reference brings it; else pairs of
    the synthetic smoke shards without a reference."""
    if bench.reference is not None and (bench.reference / "flow_pairs.npz").is_file():
        data = np.load(bench.reference / "flow_pairs.npz")
        meta = json.loads((bench.reference / "flow_pairs.json").read_text())
        groups = meta["groups"]
        firsts = [data[f"i0_{g}"] for g in range(groups)]
        seconds = [data[f"i1_{g}"] for g in range(groups)]
        flows = [data[f"flow_{g}"].astype(np.float32) for g in range(groups)]
        return firsts, seconds, flows, {"reference": "OpenCV's flow at its defaults, carried by --reference", **meta}
    from slic.data.frames import ShardReader
    from slic.tvl1 import to_grey

    data = bench.data["smoke"]
    shards = sorted(Path(data["frames"]).rglob("*.shard"))[:4]
    greys = [to_grey(ShardReader.open(s).read_window(0, min(9, bench.profile.smoke_frames))) for s in shards]
    return ([np.concatenate([g[:-1] for g in greys])], [np.concatenate([g[1:] for g in greys])], None,
            {"source": "the synthetic smoke shards (no --reference: bench clips and OpenCV's flow not carried)",
             "reference": None, "pairs": int(sum(len(g) - 1 for g in greys))})


def epe(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    error = np.concatenate([np.sqrt(((x - y) ** 2).sum(-1)).ravel() for x, y in zip(a, b)])
    return {"mean": round(float(error.mean()), 4), "median": round(float(np.median(error)), 4),
            "p99": round(float(np.quantile(error, 0.99)), 4)}


def tvl1(bench: Bench, out: dict[str, Any]) -> None:
    """Item e: tvl1_torch on the device: pairs/s, EPE against OpenCV (carried) and against tvl1_torch on the CPU."""
    from slic.config import FlowConfig
    from slic.tvl1 import TVL1Params, to_grey, tvl1_torch

    p, device = bench.profile, bench.device
    firsts, seconds, reference, meta = flow_pairs(bench)
    settings = {"opencv_defaults": TVL1Params(), "stage_cpu_default": FlowConfig().tvl1()}
    out.update(inputs=meta, settings={k: vars(v) for k, v in settings.items()},
               epe_unit="px, sqrt(du^2 + dv^2) per pixel over all pairs", rows=[])
    pairs = int(sum(len(f) for f in firsts))
    for name, params in settings.items():
        if bench.left() < 20:
            out["rows"].append({"setting": name, "status": "skipped", "reason": "time budget"})
            continue
        tvl1_torch(firsts[0][:2], seconds[0][:2], params, device=device)  # warm-up
        bench.sync()
        started = time.perf_counter()
        flows = [np.concatenate([tvl1_torch(a[i:i + p.flow_batch], b[i:i + p.flow_batch], params, device=device)
                                 for i in range(0, len(a), p.flow_batch)]) for a, b in zip(firsts, seconds)]
        wall = time.perf_counter() - started
        row: dict[str, Any] = {"setting": name, "device": str(device), "pairs": pairs,
                               "pairs_per_s": round(pairs / wall, 1), "batch": p.flow_batch,
                               "frame_sizes": sorted({f"{f.shape[1]}x{f.shape[2]}" for f in firsts})}
        out["rows"].append(row)
        if reference is not None and name == "opencv_defaults":
            row["epe_vs_opencv"] = epe(flows, reference)
            row["opencv_reference"] = "cv2.optflow.DualTVL1OpticalFlow at its defaults, computed where it is installed"
        count = min(p.flow_cpu_pairs, len(firsts[0]))
        cpu = tvl1_torch(firsts[0][:count], seconds[0][:count], params, device="cpu")
        row["epe_vs_torch_cpu"] = {**epe([flows[0][:count]], [cpu]), "pairs": count}
        if reference is not None and name == "opencv_defaults":
            row["epe_torch_cpu_vs_opencv"] = {**epe([cpu], [reference[0][:count]]), "pairs": count}
        bench.save()
    # Throughput at the preset's frame size (short side 240), one big batch: what the flow stage gets.
    if bench.left() > 30 and "throughput" in bench.data:
        from slic.data.frames import ShardReader

        shards = sorted(Path(bench.data["throughput"]["frames"]).rglob("*.shard"))
        greys = []
        while sum(len(g) - 1 for g in greys) < p.flow_batch and len(greys) < len(shards):
            greys.append(to_grey(ShardReader.open(shards[len(greys)]).read_window(0, min(17, p.shard_frames))))
        a = np.concatenate([g[:-1] for g in greys])[:p.flow_batch]
        b = np.concatenate([g[1:] for g in greys])[:p.flow_batch]
        for name, params in settings.items():
            if bench.left() < 20:
                break
            bench.sync()
            started = time.perf_counter()
            tvl1_torch(a, b, params, device=device)
            wall = time.perf_counter() - started
            out["rows"].append({"setting": name, "device": str(device), "pairs": len(a), "batch": len(a),
                                "frame_sizes": [f"{a.shape[1]}x{a.shape[2]}"], "pairs_per_s": round(len(a) / wall, 1),
                                "inputs": f"the setup's {a.shape[1]}x{a.shape[2]} synthetic shards (full profile: "
                                          "short side 240, the preset's extract.short_side)"})
            bench.save()
